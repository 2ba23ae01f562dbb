// Package config is the typed configuration of `ramboot serve`: an embedded
// default (default.yaml) that a file may override key by key, decoded
// strictly so that an unknown or mistyped key is an error that names the key
// and its line.
//
//	cfg, err := config.Load(configPath) // "" = the embedded default only
//	if err != nil { ... }               // e.g. `config.yaml:7: dhcp.lease_tme: unknown key`
//	cfg.Interface = "eth1"
//	if err := cfg.Validate(); err != nil { ... } // every problem at once
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/pxe"
)

// Default is the embedded default configuration, as YAML.
//
//go:embed default.yaml
var Default []byte

// Config is the whole configuration of `ramboot serve`.
type Config struct {
	// Interface is the provisioning interface; its first IPv4 address is the
	// head's address.
	Interface string `yaml:"interface"`
	// StateDir holds the database, the image store and the admin socket.
	StateDir string `yaml:"state_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// DHCP configures the DHCP server.
	DHCP DHCP `yaml:"dhcp"`
	// TFTP configures the TFTP server.
	TFTP TFTP `yaml:"tftp"`
	// HTTP configures the boot and node API server.
	HTTP HTTP `yaml:"http"`
	// RA configures IPv6 router advertisements.
	RA RA `yaml:"ra"`
	// Boot configures what nodes boot.
	Boot Boot `yaml:"boot"`
	// Agent configures the node agent that nodes run as /init.
	Agent Agent `yaml:"agent"`
	// State configures the state database.
	State State `yaml:"state"`
	// Cluster names the cluster, for overlays and templates.
	Cluster Cluster `yaml:"cluster"`
	// Overlay configures the nodes' overlays.
	Overlay Overlay `yaml:"overlay"`
	// API configures the admin API's TCP listener.
	API API `yaml:"api"`
	// Subnets are subnets besides the provisioning interface's own that
	// nodes may have addresses on (relayed subnets, other interfaces'
	// networks such as InfiniBand).
	Subnets []Subnet `yaml:"subnets"`

	// SFTP configures the image push and pull endpoint.
	SFTP SFTP `yaml:"sftp"`

	// lines maps dotted key paths to the line they were set on, for errors.
	lines map[string]line
}

type line struct {
	file string
	n    int
}

// Cluster names the cluster for overlays and templates.
type Cluster struct {
	// Name is the cluster's name (.Cluster.Name).
	Name string `yaml:"name"`
	// Domain is its DNS domain: /etc/hosts and known_hosts list
	// "n001.DOMAIN", network configurations search it.
	Domain string `yaml:"domain"`
	// HeadName is the head's name in /etc/hosts; empty = the head's host
	// name.
	HeadName string `yaml:"head_name"`
	// Values are site values for templates (.Values).
	Values map[string]string `yaml:"values"`
}

// Overlay configures the nodes' overlays.
type Overlay struct {
	// Templates is the directory of template trees: Templates/PROFILE/ is
	// profile PROFILE's.
	Templates string `yaml:"templates"`
	// HostKeys keeps SSH host keys per node (STATE_DIR/ssh-host-keys).
	HostKeys bool `yaml:"host_keys"`
	// KnownHosts puts every node's keys in /etc/ssh/ssh_known_hosts.
	KnownHosts bool `yaml:"known_hosts"`
	// AuthorizedKeys is root's authorized_keys on every node; empty or a
	// missing file means none.
	AuthorizedKeys string `yaml:"authorized_keys"`
	// Accounts selects the head's users and groups merged into every
	// node's passwd, group, shadow and gshadow.
	Accounts Accounts `yaml:"accounts"`
}

// Accounts selects head accounts by name or id range.
type Accounts struct {
	// Users and Groups are names.
	Users  []string `yaml:"users"`
	Groups []string `yaml:"groups"`
	// UIDs and GIDs are ranges, "1000-59999".
	UIDs []string `yaml:"uids"`
	GIDs []string `yaml:"gids"`
}

// Selected reports whether any account is selected.
func (a Accounts) Selected() bool {
	return len(a.Users)+len(a.Groups)+len(a.UIDs)+len(a.GIDs) > 0
}

// API configures the admin API over TCP.
type API struct {
	// Listen is the TCP address ("0.0.0.0:8443"); empty = the unix socket
	// only.
	Listen string `yaml:"listen"`
	// TLSCert and TLSKey are the server's certificate and key (PEM).
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// Tokens is a file of bearer tokens, one per line: "admin TOKEN" or
	// "read TOKEN".
	Tokens string `yaml:"tokens"`
}

// Subnet is a subnet node addresses may lie on, with what addresses on
// it get.
type Subnet struct {
	// Prefix is the subnet, e.g. 10.1.0.0/24.
	Prefix string `yaml:"prefix"`
	// Gateway is its default router; empty = none.
	Gateway string `yaml:"gateway"`
	// DNS are its name servers.
	DNS []string `yaml:"dns"`
	// MTU is its MTU; 0 leaves the default.
	MTU int `yaml:"mtu"`
	// Discovery is the range lent to machines the inventory does not know,
	// "FIRST-LAST" (dhcp.discovery.enabled); empty lends none.
	Discovery string `yaml:"discovery"`
}

// DHCP configures the DHCP server.
type DHCP struct {
	// Enabled turns the DHCP server on.
	Enabled bool `yaml:"enabled"`
	// Mode is what it does on port 67: reservation, proxy or off (port
	// 4011 is served in every mode).
	Mode string `yaml:"mode"`
	// HTTPBoot serves the TFTP catalogue over HTTP (/boot/nbp/) and answers
	// UEFI HTTP boot clients with its URLs.
	HTTPBoot bool `yaml:"http_boot"`
	// Workers is the number of requests handled at once per socket.
	Workers int `yaml:"workers"`
	// Discovery records and lends addresses to unknown machines.
	Discovery Discovery `yaml:"discovery"`
	// LeaseTime is the lease time of every reservation.
	LeaseTime Duration `yaml:"lease_time"`
	// BootFiles maps client architecture (DHCP option 93, by number or name)
	// to the iPXE binary firmware gets over TFTP.
	BootFiles map[string]string `yaml:"boot_files"`
	// Router is the default router given to nodes (option 3); empty = none.
	Router string `yaml:"router"`
	// DNS lists name servers given to nodes (option 6).
	DNS []string `yaml:"dns"`
	// ReceiveBuffer is the DHCP socket's receive buffer, in bytes.
	ReceiveBuffer int `yaml:"receive_buffer"`
	// DetectRivals watches the link for other DHCP servers answering nodes.
	DetectRivals bool `yaml:"detect_rivals"`
}

// Discovery configures the recording of, and addresses lent to, machines
// the inventory does not know.
type Discovery struct {
	// Enabled records unknown machines (ramboot node discovered).
	Enabled bool `yaml:"enabled"`
	// Range is the provisioning subnet's range lent to them, "FIRST-LAST";
	// empty lends none there (subnets[].discovery for the others).
	Range string `yaml:"range"`
	// LeaseTime is the lease of a discovery address.
	LeaseTime Duration `yaml:"lease_time"`
	// MaxMachines caps the machines recorded.
	MaxMachines int `yaml:"max_machines"`
}

// TFTP configures the TFTP server.
type TFTP struct {
	// Enabled turns the TFTP server on.
	Enabled bool `yaml:"enabled"`
	// Root is the directory the iPXE binaries are read from.
	Root string `yaml:"root"`
	// Port is the UDP port, on the head's address; 0 picks a free one
	// (tests).
	Port int `yaml:"port"`
	// Files is the catalogue; empty means the values of DHCP.BootFiles.
	Files []string `yaml:"files"`
	// MaxTransfers caps the transfers in flight.
	MaxTransfers int `yaml:"max_transfers"`
	// MaxTransfersPerClient caps the transfers in flight from one address.
	MaxTransfersPerClient int `yaml:"max_transfers_per_client"`
	// ReceiveBuffer is the TFTP socket's receive buffer, in bytes.
	ReceiveBuffer int `yaml:"receive_buffer"`
	// IPv6 also serves every IPv6 address of the interface (link-local
	// and global), on the same port.
	IPv6 bool `yaml:"ipv6"`
}

// HTTP configures the boot and node API server.
type HTTP struct {
	// Port is the TCP port, on the head's address; 0 picks a free one
	// (tests).
	Port int `yaml:"port"`
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes keep-alive connections idle that long.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// SendTimeout is the window in which a client with data waiting must
	// acknowledge MinSendRate × SendTimeout bytes, or be cut off.
	SendTimeout Duration `yaml:"send_timeout"`
	// MinSendRate is the slowest download kept, in bytes per second; 0
	// means any progress at all.
	MinSendRate int64 `yaml:"min_send_rate"`
	// MaxConnsPerClient caps open connections from one address.
	MaxConnsPerClient int `yaml:"max_conns_per_client"`
	// MaxConns caps open connections in total.
	MaxConns int `yaml:"max_conns"`
}

// RA configures IPv6 router advertisements on the provisioning link.
type RA struct {
	// Enabled turns router advertisements on.
	Enabled bool `yaml:"enabled"`
	// Interval is the period of unsolicited advertisements.
	Interval Duration `yaml:"interval"`
}

// Boot configures what nodes boot.
type Boot struct {
	// DefaultImage is the image of nodes added without one.
	DefaultImage string `yaml:"default_image"`
	// KernelArgs are appended to every node's kernel command line.
	KernelArgs string `yaml:"kernel_args"`
	// Modules are loaded by the agent before it configures the network,
	// besides those it finds for the devices present (modalias).
	Modules []string `yaml:"modules"`
	// Root is the nodes' root file system.
	Root Root `yaml:"root"`
	// ConsoleShell gives a root shell on the console of a node whose
	// agent stays PID 1 (its image has no init to hand over to).
	ConsoleShell bool `yaml:"console_shell"`
	// StallTimeout marks a boot stalled after that long without progress.
	StallTimeout Duration `yaml:"stall_timeout"`
	// Retry is the iPXE script's schedule for a file it cannot fetch.
	Retry Retry `yaml:"retry"`
}

// Retry is the iPXE script's retry schedule (pxe/ipxe.Script): the
// defaults ride out a head restart; shorter ones are for tests.
type Retry struct {
	// Attempts is how many times each file is tried.
	Attempts int `yaml:"attempts"`
	// MaxWait caps the wait between attempts, which starts at 1 s and
	// doubles.
	MaxWait Duration `yaml:"max_wait"`
	// FailPause is how long the console shows why the boot failed before
	// iPXE reboots the node.
	FailPause Duration `yaml:"fail_pause"`
}

// Root configures the nodes' root file system.
type Root struct {
	// Mode is the root mode: tmpfs or compressed (docs/agent.md).
	Mode string `yaml:"mode"`
	// Size caps the root's RAM: bytes with k, m, g, t, or a percentage of
	// the node's RAM.
	Size string `yaml:"size"`
}

// State configures the state database.
type State struct {
	// BootHistory is how many boots each node keeps, the current one
	// included.
	BootHistory int `yaml:"boot_history"`
	// BackupInterval is how often the daemon refreshes its rolling backup
	// of the database, when it changed.
	BackupInterval Duration `yaml:"backup_interval"`
	// Backend is where the state lives: bolt (a file in the state
	// directory, one head) or etcd (an etcd cluster several heads share).
	Backend string `yaml:"backend"`
	// Etcd configures the etcd backend.
	Etcd Etcd `yaml:"etcd"`
}

// Etcd configures the etcd state backend (docs/scale-out.md).
type Etcd struct {
	// Endpoints are the members' client URLs, http:// or https://.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is put before every key: several clusters may share one etcd.
	Prefix string `yaml:"prefix"`
	// CAFile is the CA (PEM) that signed the members' certificates;
	// CertFile and KeyFile are this head's client certificate and key.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Username and PasswordFile authenticate with etcd's own users.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// DialTimeout bounds connecting to a member; RequestTimeout one read
	// or transaction.
	DialTimeout    Duration `yaml:"dial_timeout"`
	RequestTimeout Duration `yaml:"request_timeout"`
	// MaxTxnOps is the members' --max-txn-ops: larger writes are split.
	MaxTxnOps int `yaml:"max_txn_ops"`
}

// Agent configures the node agent.
type Agent struct {
	// Binary is the ramboot-agent executable served as the nodes' /init;
	// empty means next to the running executable, then $PATH.
	Binary string `yaml:"binary"`
	// HeartbeatInterval is how often the agent daemons heartbeat.
	HeartbeatInterval Duration `yaml:"heartbeat_interval"`
	// DownAfter is how long the head waits without a heartbeat before it
	// marks a node down.
	DownAfter Duration `yaml:"down_after"`
	// RequirePrivilegedPort refuses agent requests that do not come from a
	// port below 1024 (only root on the node can bind one).
	RequirePrivilegedPort bool `yaml:"require_privileged_port"`
}

// SFTP configures the SFTP endpoint `ramboot image push` and `image pull`
// talk to.
type SFTP struct {
	// Enabled turns the endpoint on.
	Enabled bool `yaml:"enabled"`
	// Address is the address to listen on; empty = every address.
	Address string `yaml:"address"`
	// Port is the TCP port.
	Port int `yaml:"port"`
	// AuthorizedKeys is the authorized_keys file of the keys that may
	// push and pull; empty = STATE_DIR/authorized_keys.
	AuthorizedKeys string `yaml:"authorized_keys"`
	// MaxConns caps open connections in total, MaxConnsPerClient those
	// from one address.
	MaxConns          int `yaml:"max_conns"`
	MaxConnsPerClient int `yaml:"max_conns_per_client"`
	// LoginTimeout disconnects a client not logged in by then.
	LoginTimeout Duration `yaml:"login_timeout"`
	// IdleTimeout disconnects a client silent that long.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxUpload caps one uploaded blob ("64g"); "0" = no cap.
	MaxUpload string `yaml:"max_upload"`
	// MinFree is the free space uploads must leave in the image store's
	// file system ("1g"); "0" = none.
	MinFree string `yaml:"min_free"`
}

// sftpBytes converts sftp.max_upload or sftp.min_free: a size such as
// 512m or 64g, or 0.
func sftpBytes(s string) (int64, error) {
	if s == "0" {
		return 0, nil
	}
	if strings.HasSuffix(s, "%") {
		return 0, fmt.Errorf("%q: a size such as 512m or 64g, not a percentage", s)
	}
	return overlay.SizeBytes(s, 0)
}

// SFTPMaxUploadBytes returns sftp.max_upload in bytes, 0 = no cap.
func (c Config) SFTPMaxUploadBytes() int64 {
	n, _ := sftpBytes(c.SFTP.MaxUpload)
	return n
}

// SFTPMinFreeBytes returns sftp.min_free in bytes, 0 = no reserve.
func (c Config) SFTPMinFreeBytes() int64 {
	n, _ := sftpBytes(c.SFTP.MinFree)
	return n
}

// SFTPAuthorizedKeys returns SFTP.AuthorizedKeys or its default.
func (c Config) SFTPAuthorizedKeys() string {
	if c.SFTP.AuthorizedKeys != "" {
		return c.SFTP.AuthorizedKeys
	}
	return filepath.Join(c.StateDir, "authorized_keys")
}

// Bounds of dhcp.receive_buffer and tftp.receive_buffer: the kernel's
// minimum is about 4.5 KiB; 1 GiB is far past any use.
const (
	minReceiveBuffer = 4096
	maxReceiveBuffer = 1 << 30
)

// Duration is a time.Duration written as "90s", "168h".
type Duration time.Duration

// UnmarshalYAML decodes a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%q is not a duration like 90s or 168h", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML encodes d as a Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Load returns the embedded default overridden by the YAML file at path
// ("" = the default alone).
func Load(path string) (Config, error) {
	var c Config
	if err := c.decode("default.yaml", Default); err != nil {
		return Config{}, fmt.Errorf("decode embedded default: %w", err)
	}
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	if err := c.decode(path, b); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Parse decodes YAML over the embedded default; name is used in errors.
func Parse(name string, b []byte) (Config, error) {
	var c Config
	if err := c.decode("default.yaml", Default); err != nil {
		return Config{}, fmt.Errorf("decode embedded default: %w", err)
	}
	if err := c.decode(name, b); err != nil {
		return Config{}, err
	}
	return c, nil
}

var (
	domainRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
	valueKeyRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$`)
	idRangeRE  = regexp.MustCompile(`^[0-9]{1,10}(-[0-9]{1,10})?$`)
)

var yamlLine = regexp.MustCompile(`^(yaml: )?line (\d+): `)

// decode decodes the YAML b (from file name) over c, key by key. Every
// problem names the file, the line and the key, list items included
// (dhcp.dns[1]); all of them are reported at once.
func (c *Config) decode(name string, b []byte) error {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%s:%s: %s", name, m[2], yamlLine.ReplaceAllString(err.Error(), ""))
		}
		return fmt.Errorf("%s: %s", name, msg)
	}
	if len(root.Content) == 0 { // empty file
		return nil
	}
	if c.lines == nil {
		c.lines = map[string]line{}
	}
	d := decoder{file: name, lines: c.lines}
	d.value(root.Content[0], reflect.ValueOf(c).Elem(), "")
	return errors.Join(d.errs...)
}

// decoder decodes a yaml.Node tree into a value, field by field, so that
// each error is tied to its key and line.
type decoder struct {
	file  string
	lines map[string]line
	errs  []error
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	if path == "" {
		path = "(top level)"
	}
	d.errs = append(d.errs, fmt.Errorf("%s:%d: %s: %s", d.file, n.Line, path, fmt.Sprintf(format, args...)))
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// field returns the field of struct v whose yaml tag is key.
func field(v reflect.Value, key string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag == key && tag != "" && tag != "-" {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

var unmarshaler = reflect.TypeFor[yaml.Unmarshaler]()

func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		if v.Kind() != reflect.Struct {
			v.SetZero() // "dns:" with nothing: none
		}
		return
	}
	if reflect.PointerTo(v.Type()).Implements(unmarshaler) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(n, path, "%s", yamlLine.ReplaceAllString(err.Error(), ""))
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, "must be a mapping of keys, not %s", kindName(n))
			return
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			if l, dup := seen[k.Value]; dup {
				d.fail(k, p, "set twice (also on line %d)", l)
				continue
			}
			seen[k.Value] = k.Line
			d.lines[p] = line{d.file, k.Line}
			f, ok := field(v, k.Value)
			if !ok {
				d.fail(k, p, "unknown key")
				continue
			}
			d.value(val, f, p)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, "must be a mapping, not %s", kindName(n))
			return
		}
		// A file that sets a map replaces it as a whole, so one entry
		// never has two spellings (dhcp.boot_files: 7 and efi-x64).
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				d.fail(k, p, "set twice")
				continue
			}
			d.lines[p] = line{d.file, k.Line}
			e := reflect.New(v.Type().Elem()).Elem()
			d.value(val, e, p)
			m.SetMapIndex(reflect.ValueOf(k.Value), e)
		}
		v.Set(m)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "must be a list, like [a, b], not %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = line{d.file, item.Line}
			d.value(item, s.Index(i), p)
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "must be a single value, not %s", kindName(n))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			switch v.Kind() {
			case reflect.Bool:
				d.fail(n, path, "%q is not true or false", n.Value)
			case reflect.Int, reflect.Int64, reflect.Uint16:
				d.fail(n, path, "%q is not a whole number", n.Value)
			default:
				d.fail(n, path, "%s", yamlLine.ReplaceAllString(err.Error(), ""))
			}
		}
	}
}

// Keys returns every key path of the configuration, such as
// "dhcp.lease_time", sorted; free-form maps appear as their own key.
func Keys() []string {
	var out []string
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for i := range t.NumField() {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			p := join(path, tag)
			if ft := t.Field(i).Type; ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshaler) {
				walk(ft, p)
				continue
			}
			out = append(out, p)
		}
	}
	walk(reflect.TypeFor[Config](), "")
	slices.Sort(out)
	return out
}

// Line returns "file:line: " for a key path that a file set, or "".
func (c Config) Line(path string) string {
	if l, ok := c.lines[path]; ok {
		return fmt.Sprintf("%s:%d: ", l.file, l.n)
	}
	return ""
}

// ParseRange parses an address range "FIRST-LAST" of IPv4 addresses, FIRST
// not after LAST and at most 65,536 addresses.
func ParseRange(s string) (first, last netip.Addr, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return first, last, fmt.Errorf("%q is not a range like 10.0.0.200-10.0.0.250", s)
	}
	first, err1 := netip.ParseAddr(strings.TrimSpace(a))
	last, err2 := netip.ParseAddr(strings.TrimSpace(b))
	switch {
	case err1 != nil || err2 != nil || !first.Is4() || !last.Is4():
		return first, last, fmt.Errorf("%q is not a range of IPv4 addresses like 10.0.0.200-10.0.0.250", s)
	case last.Less(first):
		return first, last, fmt.Errorf("%q runs backwards", s)
	}
	f, l := first.As4(), last.As4()
	size := (uint32(l[0])<<24 | uint32(l[1])<<16 | uint32(l[2])<<8 | uint32(l[3])) -
		(uint32(f[0])<<24 | uint32(f[1])<<16 | uint32(f[2])<<8 | uint32(f[3]))
	if size >= 1<<16 {
		return first, last, fmt.Errorf("%q holds more than 65536 addresses", s)
	}
	return first, last, nil
}

// archNames maps the names of pxe.Arch values (bios, efi-x64, ...) to
// their option 93 numbers, for boot_files keys.
var archNames = func() map[string]uint16 {
	m := map[string]uint16{}
	for a := range pxe.Arch(64) {
		if n := a.String(); !strings.HasPrefix(n, "arch-") {
			m[n] = uint16(a)
		}
	}
	return m
}()

// BootFileMap returns DHCP.BootFiles keyed by option 93 value.
func (c Config) BootFileMap() (map[uint16]string, error) {
	out := map[uint16]string{}
	spelled := map[uint16]string{}
	var errs []error
	keys := make([]string, 0, len(c.DHCP.BootFiles))
	for k := range c.DHCP.BootFiles {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := c.DHCP.BootFiles[k]
		a, ok := archNames[k]
		if !ok {
			n, err := strconv.ParseUint(k, 10, 16)
			if err != nil {
				errs = append(errs, fmt.Errorf("%sdhcp.boot_files.%s: not an option 93 number or an architecture name like bios, efi-x64, efi-bc", c.Line("dhcp.boot_files."+k), k))
				continue
			}
			a = uint16(n)
		}
		if other, dup := spelled[a]; dup {
			errs = append(errs, fmt.Errorf("%sdhcp.boot_files.%s: architecture %d is also set as %q", c.Line("dhcp.boot_files."+k), k, a, other))
			continue
		}
		spelled[a] = k
		if v == "" || strings.ContainsAny(v, "/\\") {
			errs = append(errs, fmt.Errorf("%sdhcp.boot_files.%s: %q must be a plain file name in tftp.root", c.Line("dhcp.boot_files."+k), k, v))
			continue
		}
		out[a] = v
	}
	return out, errors.Join(errs...)
}

// StockBootFiles are the iPXE binaries of Debian's ipxe package that the
// TFTP catalogue holds by default, besides dhcp.boot_files' values.
var StockBootFiles = []string{"ipxe.efi", "snponly.efi", "undionly.kpxe"}

// TFTPFiles returns the TFTP catalogue: TFTP.Files, or StockBootFiles and
// the boot file names, sorted.
func (c Config) TFTPFiles() []string {
	if len(c.TFTP.Files) > 0 {
		return c.TFTP.Files
	}
	// The stock iPXE binaries too: a node's or profile's boot_file names
	// one of them to work around a firmware quirk (ipxe.efi where
	// snponly.efi hangs), and it must be served without a tftp.files list.
	out := slices.Clone(StockBootFiles)
	for _, v := range c.DHCP.BootFiles {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// Validate reports every problem at once, each naming its key (and line,
// when a file set it).
func (c Config) Validate() error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", c.Line(path), path, fmt.Sprintf(format, args...)))
	}
	if c.Interface == "" {
		bad("interface", "required (the provisioning interface, e.g. --interface eth1)")
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		bad("state_dir", "%q must be an absolute path", c.StateDir)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.DHCP.LeaseTime < Duration(time.Minute) {
		bad("dhcp.lease_time", "%s is shorter than 1m", time.Duration(c.DHCP.LeaseTime))
	}
	switch c.DHCP.Mode {
	case "reservation", "proxy", "off":
	default:
		bad("dhcp.mode", "%q is not one of reservation, proxy, off", c.DHCP.Mode)
	}
	if c.DHCP.Workers < 1 || c.DHCP.Workers > 1024 {
		bad("dhcp.workers", "%d is not between 1 and 1024", c.DHCP.Workers)
	}
	if c.DHCP.Discovery.Range != "" {
		if _, _, err := ParseRange(c.DHCP.Discovery.Range); err != nil {
			bad("dhcp.discovery.range", "%v", err)
		}
	}
	if c.DHCP.Discovery.LeaseTime < Duration(time.Minute) {
		bad("dhcp.discovery.lease_time", "%s is shorter than 1m", time.Duration(c.DHCP.Discovery.LeaseTime))
	}
	if c.DHCP.Discovery.MaxMachines < 1 {
		bad("dhcp.discovery.max_machines", "%d is less than 1", c.DHCP.Discovery.MaxMachines)
	}
	if _, err := c.BootFileMap(); err != nil {
		errs = append(errs, err)
	}
	if c.DHCP.Router != "" {
		if a, err := netip.ParseAddr(c.DHCP.Router); err != nil || !a.Is4() {
			bad("dhcp.router", "%q is not an IPv4 address", c.DHCP.Router)
		}
	}
	for i, d := range c.DHCP.DNS {
		if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
			bad(fmt.Sprintf("dhcp.dns[%d]", i), "%q is not an IPv4 address", d)
		}
	}
	if c.TFTP.Enabled && c.TFTP.Root == "" {
		bad("tftp.root", "required when tftp.enabled")
	}
	for _, k := range []struct {
		path string
		v    int
	}{{"dhcp.receive_buffer", c.DHCP.ReceiveBuffer}, {"tftp.receive_buffer", c.TFTP.ReceiveBuffer}} {
		if k.v < minReceiveBuffer || k.v > maxReceiveBuffer {
			bad(k.path, "%d is not between %d and %d bytes", k.v, minReceiveBuffer, maxReceiveBuffer)
		}
	}
	if c.TFTP.MaxTransfers < 1 {
		bad("tftp.max_transfers", "%d is less than 1", c.TFTP.MaxTransfers)
	}
	if c.TFTP.MaxTransfersPerClient < 1 || c.TFTP.MaxTransfersPerClient > max(c.TFTP.MaxTransfers, 1) {
		bad("tftp.max_transfers_per_client", "%d is not between 1 and tftp.max_transfers (%d)", c.TFTP.MaxTransfersPerClient, c.TFTP.MaxTransfers)
	}
	for i, f := range c.TFTP.Files {
		if f == "" || strings.ContainsAny(f, "/\\") {
			bad(fmt.Sprintf("tftp.files[%d]", i), "%q must be a plain file name", f)
		}
	}
	if c.HTTP.Port < 0 || c.HTTP.Port > 65535 {
		bad("http.port", "%d is not a TCP port", c.HTTP.Port)
	}
	if c.TFTP.Port < 0 || c.TFTP.Port > 65535 {
		bad("tftp.port", "%d is not a UDP port", c.TFTP.Port)
	}
	for _, d := range []struct {
		key string
		v   Duration
		min time.Duration
	}{
		{"http.read_header_timeout", c.HTTP.ReadHeaderTimeout, 100 * time.Millisecond},
		{"http.idle_timeout", c.HTTP.IdleTimeout, 100 * time.Millisecond},
		{"http.send_timeout", c.HTTP.SendTimeout, 100 * time.Millisecond},
		{"boot.stall_timeout", c.Boot.StallTimeout, time.Second},
		{"state.backup_interval", c.State.BackupInterval, time.Minute},
	} {
		if time.Duration(d.v) < d.min {
			bad(d.key, "%s is shorter than %s", time.Duration(d.v), d.min)
		}
	}
	if c.HTTP.MinSendRate < 0 {
		bad("http.min_send_rate", "%d is negative", c.HTTP.MinSendRate)
	}
	if c.HTTP.MaxConnsPerClient < 1 {
		bad("http.max_conns_per_client", "%d: at least 1", c.HTTP.MaxConnsPerClient)
	}
	if c.HTTP.MaxConns < c.HTTP.MaxConnsPerClient {
		bad("http.max_conns", "%d is less than http.max_conns_per_client (%d)", c.HTTP.MaxConns, c.HTTP.MaxConnsPerClient)
	}
	if c.State.BootHistory < 1 || c.State.BootHistory > 1000 {
		bad("state.boot_history", "%d is not between 1 and 1000", c.State.BootHistory)
	}
	c.validateEtcd(bad)
	if c.RA.Enabled && c.RA.Interval < Duration(time.Second) {
		bad("ra.interval", "%s is shorter than 1s", time.Duration(c.RA.Interval))
	}
	if c.SFTP.Enabled && (c.SFTP.Port < 0 || c.SFTP.Port > 65535) {
		bad("sftp.port", "%d is not a TCP port", c.SFTP.Port)
	}
	if c.SFTP.Address != "" {
		if _, err := netip.ParseAddr(c.SFTP.Address); err != nil {
			bad("sftp.address", "%q is not an IP address", c.SFTP.Address)
		}
	}
	if c.SFTP.AuthorizedKeys != "" && !filepath.IsAbs(c.SFTP.AuthorizedKeys) {
		bad("sftp.authorized_keys", "%q must be an absolute path", c.SFTP.AuthorizedKeys)
	}
	if c.Boot.Retry.Attempts < 2 || c.Boot.Retry.Attempts > 100 {
		bad("boot.retry.attempts", "%d is not between 2 and 100", c.Boot.Retry.Attempts)
	}
	if r := time.Duration(c.Boot.Retry.MaxWait); r < time.Second || r > 10*time.Minute {
		bad("boot.retry.max_wait", "%s is not between 1s and 10m", r)
	}
	if r := time.Duration(c.Boot.Retry.FailPause); r < 2*time.Second || r > time.Hour {
		bad("boot.retry.fail_pause", "%s is not between 2s and 1h", r)
	}
	if c.SFTP.MaxConnsPerClient < 1 {
		bad("sftp.max_conns_per_client", "%d: at least 1", c.SFTP.MaxConnsPerClient)
	}
	if c.SFTP.MaxConns < c.SFTP.MaxConnsPerClient {
		bad("sftp.max_conns", "%d is less than sftp.max_conns_per_client (%d)", c.SFTP.MaxConns, c.SFTP.MaxConnsPerClient)
	}
	if c.SFTP.LoginTimeout < Duration(time.Second) {
		bad("sftp.login_timeout", "%s is shorter than 1s", time.Duration(c.SFTP.LoginTimeout))
	}
	if c.SFTP.IdleTimeout < Duration(10*time.Second) {
		bad("sftp.idle_timeout", "%s is shorter than 10s", time.Duration(c.SFTP.IdleTimeout))
	}
	if _, err := sftpBytes(c.SFTP.MaxUpload); err != nil {
		bad("sftp.max_upload", "%v", err)
	}
	if _, err := sftpBytes(c.SFTP.MinFree); err != nil {
		bad("sftp.min_free", "%v", err)
	}
	if c.Boot.DefaultImage == "" {
		bad("boot.default_image", "required")
	}
	if c.Cluster.Domain != "" && !domainRE.MatchString(c.Cluster.Domain) {
		bad("cluster.domain", "%q is not a DNS domain", c.Cluster.Domain)
	}
	for k := range c.Cluster.Values {
		if !valueKeyRE.MatchString(k) {
			bad("cluster.values."+k, "keys are letters, digits, '_', '-' and '.'")
		}
	}
	if c.Overlay.Templates != "" && !filepath.IsAbs(c.Overlay.Templates) {
		bad("overlay.templates", "%q must be an absolute path", c.Overlay.Templates)
	}
	for i, r := range c.Overlay.Accounts.UIDs {
		if !idRangeRE.MatchString(r) {
			bad(fmt.Sprintf("overlay.accounts.uids[%d]", i), "%q is not an id range like 1000-59999", r)
		}
	}
	for i, r := range c.Overlay.Accounts.GIDs {
		if !idRangeRE.MatchString(r) {
			bad(fmt.Sprintf("overlay.accounts.gids[%d]", i), "%q is not an id range like 1000-59999", r)
		}
	}
	if c.API.Listen != "" {
		if _, _, err := net.SplitHostPort(c.API.Listen); err != nil {
			bad("api.listen", "%q is not HOST:PORT", c.API.Listen)
		}
		if c.API.TLSCert == "" || c.API.TLSKey == "" {
			bad("api.tls_cert", "api.listen needs api.tls_cert and api.tls_key: the admin API never goes over plain TCP")
		}
		if c.API.Tokens == "" {
			bad("api.tokens", "api.listen needs a tokens file")
		}
	}
	for i, sn := range c.Subnets {
		key := fmt.Sprintf("subnets[%d]", i)
		p, err := netip.ParsePrefix(sn.Prefix)
		if err != nil || !p.Addr().Is4() {
			bad(key+".prefix", "%q is not an IPv4 prefix like 10.1.0.0/24", sn.Prefix)
		} else if sn.Gateway != "" {
			if g, err := netip.ParseAddr(sn.Gateway); err != nil || !p.Contains(g) {
				bad(key+".gateway", "%q is not an address in %s", sn.Gateway, p.Masked())
			}
		}
		for j, d := range sn.DNS {
			if a, err := netip.ParseAddr(d); err != nil || !a.Is4() {
				bad(fmt.Sprintf("%s.dns[%d]", key, j), "%q is not an IPv4 address", d)
			}
		}
		if sn.MTU != 0 && (sn.MTU < 576 || sn.MTU > 65520) {
			bad(key+".mtu", "%d is not between 576 and 65520", sn.MTU)
		}
		if sn.Discovery != "" {
			first, last, err := ParseRange(sn.Discovery)
			switch {
			case err != nil:
				bad(key+".discovery", "%v", err)
			case p.IsValid() && (!p.Contains(first) || !p.Contains(last)):
				bad(key+".discovery", "%s is not inside %s", sn.Discovery, p.Masked())
			}
		}
	}
	for i, m := range c.Boot.Modules {
		if m == "" || strings.ContainsAny(m, "/ ") {
			bad(fmt.Sprintf("boot.modules[%d]", i), "%q is not a module name", m)
		}
	}
	if !overlay.RootMode(c.Boot.Root.Mode).Valid() {
		bad("boot.root.mode", "%q is not a root mode (tmpfs, compressed)", c.Boot.Root.Mode)
	}
	if _, err := overlay.SizeBytes(c.Boot.Root.Size, 1<<30); err != nil {
		bad("boot.root.size", "%v", err)
	}
	if c.Agent.HeartbeatInterval < Duration(time.Second) {
		bad("agent.heartbeat_interval", "%s is shorter than 1s", time.Duration(c.Agent.HeartbeatInterval))
	}
	if c.Agent.DownAfter < 2*c.Agent.HeartbeatInterval {
		bad("agent.down_after", "%s is shorter than two heartbeat intervals (%s)", time.Duration(c.Agent.DownAfter), time.Duration(2*c.Agent.HeartbeatInterval))
	}
	return errors.Join(errs...)
}

// validateEtcd checks state.backend and, for etcd, state.etcd.*.
func (c Config) validateEtcd(bad func(path, format string, args ...any)) {
	switch c.State.Backend {
	case "bolt":
		return
	case "etcd":
	default:
		bad("state.backend", "%q is not one of bolt, etcd", c.State.Backend)
		return
	}
	e := c.State.Etcd
	if len(e.Endpoints) == 0 {
		bad("state.etcd.endpoints", "required with state.backend etcd (the members' client URLs, e.g. https://10.0.0.1:2379)")
	}
	tlsSet := e.CAFile != "" || e.CertFile != "" || e.KeyFile != ""
	for i, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
			bad(fmt.Sprintf("state.etcd.endpoints[%d]", i), "%q is not an http:// or https:// URL with a host", ep)
		case u.Scheme == "https" && !tlsSet:
			bad(fmt.Sprintf("state.etcd.endpoints[%d]", i), "%q is https: set state.etcd.ca_file (and cert_file, key_file for client certificates)", ep)
		case u.Scheme == "http" && tlsSet:
			bad(fmt.Sprintf("state.etcd.endpoints[%d]", i), "%q is plain http while TLS files are set: use https://", ep)
		}
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") || len(e.Prefix) < 2 {
		bad("state.etcd.prefix", "%q must start and end with / (e.g. /ramboot/)", e.Prefix)
	}
	if (e.CertFile == "") != (e.KeyFile == "") {
		bad("state.etcd.cert_file", "a client certificate needs both state.etcd.cert_file and state.etcd.key_file")
	}
	for _, f := range []struct{ key, v string }{{"state.etcd.ca_file", e.CAFile}, {"state.etcd.cert_file", e.CertFile}, {"state.etcd.key_file", e.KeyFile}, {"state.etcd.password_file", e.PasswordFile}} {
		if f.v != "" && !filepath.IsAbs(f.v) {
			bad(f.key, "%q must be an absolute path", f.v)
		}
	}
	if (e.Username == "") != (e.PasswordFile == "") {
		bad("state.etcd.username", "etcd authentication needs both state.etcd.username and state.etcd.password_file")
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"state.etcd.dial_timeout", e.DialTimeout}, {"state.etcd.request_timeout", e.RequestTimeout}} {
		if d.v < Duration(100*time.Millisecond) || d.v > Duration(5*time.Minute) {
			bad(d.key, "%s is not between 100ms and 5m", time.Duration(d.v))
		}
	}
	// A chunk holds the fence's compare and the mark's write besides its
	// own operations.
	if e.MaxTxnOps < 16 {
		bad("state.etcd.max_txn_ops", "%d is less than 16 (etcd's default --max-txn-ops is 128)", e.MaxTxnOps)
	}
}

// reloadable lists the keys a running daemon applies on reload (SIGHUP);
// every other key needs a restart.
var reloadable = []string{"log_level", "boot", "subnets", "cluster", "overlay", "api.tls_cert", "api.tls_key", "api.tokens", "dhcp.router", "dhcp.dns", "dhcp.discovery"}

// RestartKeys returns the top-level sections and keys that differ between
// old and next and that a running daemon does not apply on reload.
func RestartKeys(old, next Config) []string {
	var out []string
	ov, nv := reflect.ValueOf(old), reflect.ValueOf(next)
	t := ov.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		f := t.Field(i)
		if f.Type.Kind() == reflect.Struct && !reflect.PointerTo(f.Type).Implements(unmarshaler) {
			for j := range f.Type.NumField() {
				sub, _, _ := strings.Cut(f.Type.Field(j).Tag.Get("yaml"), ",")
				key := tag + "." + sub
				if slices.Contains(reloadable, tag) || slices.Contains(reloadable, key) {
					continue
				}
				if !reflect.DeepEqual(ov.Field(i).Field(j).Interface(), nv.Field(i).Field(j).Interface()) {
					out = append(out, key)
				}
			}
			continue
		}
		if slices.Contains(reloadable, tag) {
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, tag)
		}
	}
	// The discovery pool's ranges, lease time and cap are reloaded; the
	// pool is open or not as at start.
	if old.DHCP.Discovery.Enabled != next.DHCP.Discovery.Enabled {
		out = append(out, "dhcp.discovery.enabled")
	}
	return out
}
