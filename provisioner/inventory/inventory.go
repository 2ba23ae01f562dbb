// Package inventory is the data model of the head's inventory: nodes, each
// with one or more network interfaces, and profiles that nodes inherit
// settings from, with the rules every inventory must keep (unique names,
// MACs, client ids and addresses; addresses on a configured subnet;
// profiles that exist and inherit without a cycle). It holds no state and
// does no I/O: provisioner/state stores an Inventory, provisioner/plan
// resolves a node's effective boot plan from it.
//
//	inv := inventory.New()
//	inv.Profiles["compute"] = &inventory.Profile{Name: "compute", Settings: inventory.Settings{Image: "rocky9"}}
//	inv.Nodes["n001"] = &inventory.Node{Name: "n001", Profiles: []string{"compute"},
//		Interfaces: []inventory.Interface{{MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("10.0.0.11")}}}
//	err := inv.Validate(subnets) // every problem at once, each naming its object
package inventory

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
)

// ErrDuplicate is wrapped by the errors of Validate that report a name,
// MAC, client id or address another node already has.
var ErrDuplicate = errors.New("already exists")

// Settings are what a node and a profile may set; a zero field inherits
// (from the profiles, then the configuration).
type Settings struct {
	// Image is the image reference the node boots.
	Image string `json:"image,omitempty" yaml:"image,omitempty"`
	// KernelArgs replaces the kernel arguments it inherits; nil inherits,
	// a pointer to "" sets none.
	KernelArgs *string `json:"kernelArgs,omitempty" yaml:"kernel_args,omitempty"`
	// Modules replaces the kernel modules the agent loads; nil inherits,
	// an empty list loads none (so it is stored even when empty).
	Modules []string `json:"modules" yaml:"modules,omitempty"`
	// BootFile is the iPXE binary firmware gets instead of the one for its
	// architecture (a firmware quirk: snponly.efi, ipxe.efi).
	BootFile string `json:"bootFile,omitempty" yaml:"boot_file,omitempty"`
	// Root is how the node's root file system lives in RAM.
	Root Root `json:"root,omitzero" yaml:"root,omitempty"`
	// Network is the network stack of the image (networkd,
	// networkmanager, ifupdown, none) the overlay writes configuration for.
	Network string `json:"network,omitempty" yaml:"network,omitempty"`
	// Tags are key/values; a node's win over its profiles'.
	Tags map[string]string `json:"tags,omitempty" yaml:"tags,omitempty"`
	// Values are key/values for overlay templates (.Values).
	Values map[string]string `json:"values,omitempty" yaml:"values,omitempty"`
}

// Root is the node's root file system settings.
type Root struct {
	// Mode is "tmpfs" (the image unpacked into a size-capped tmpfs) or
	// "compressed" (the image's squashfs kept in RAM under an overlay
	// whose writable tmpfs upper is size-capped).
	Mode string `json:"mode,omitempty" yaml:"mode,omitempty"`
	// Size caps the root's tmpfs (the upper's, in the compressed mode): bytes with a suffix (16G) or a
	// percentage of RAM (50%).
	Size string `json:"size,omitempty" yaml:"size,omitempty"`
}

// IsZero reports whether r sets nothing.
func (r Root) IsZero() bool { return r == Root{} }

// Interface is one network interface of a node.
type Interface struct {
	// Name is its name on the node (eth0, ib0); optional.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// MAC is its hardware address, lower case with colons.
	MAC string `json:"mac,omitempty" yaml:"mac,omitempty"`
	// ClientID identifies an interface without a usable MAC (InfiniBand,
	// DHCP option 61), as hex with colons.
	ClientID string `json:"clientId,omitempty" yaml:"client_id,omitempty"`
	// IP is its reserved IPv4 address; it must lie in a configured
	// subnet, whose prefix, gateway and name servers it gets.
	IP netip.Addr `json:"ip,omitzero" yaml:"ip,omitempty"`
	// Gateway overrides the subnet's gateway for this interface.
	Gateway netip.Addr `json:"gateway,omitzero" yaml:"gateway,omitempty"`
	// MTU is its MTU; 0 leaves the default.
	MTU int `json:"mtu,omitempty" yaml:"mtu,omitempty"`
}

// Node is one inventory node.
type Node struct {
	// Name is its unique name, a host name label.
	Name string `json:"name" yaml:"name"`
	// Hostname is the host name to set; empty means Name.
	Hostname string `json:"hostname,omitempty" yaml:"hostname,omitempty"`
	// Profiles are the profiles it inherits from, in order: a later one's
	// settings win over an earlier one's.
	Profiles []string `json:"profiles,omitempty" yaml:"profiles,omitempty"`
	// Interfaces are its network interfaces; the first is the
	// provisioning interface.
	Interfaces []Interface `json:"interfaces,omitempty" yaml:"interfaces,omitempty"`
	// Settings are its own settings, over its profiles'.
	Settings `yaml:",inline"`
	// Created is when it was added.
	Created time.Time `json:"created,omitzero" yaml:"-"`

	// Legacy fields of the first layout (one interface, a root mode of
	// its own), read only.
	MAC      string     `json:"mac,omitempty" yaml:"-"`
	IP       netip.Addr `json:"ip,omitzero" yaml:"-"`
	RootMode string     `json:"rootMode,omitempty" yaml:"-"`
}

// Upgrade moves the first layout's MAC and IP into Interfaces and its
// root mode into Settings.
func (n *Node) Upgrade() {
	if n.MAC != "" || n.IP.IsValid() {
		if len(n.Interfaces) == 0 {
			n.Interfaces = []Interface{{MAC: n.MAC, IP: n.IP}}
		}
		n.MAC, n.IP = "", netip.Addr{}
	}
	if n.RootMode != "" {
		if n.Root.Mode == "" {
			n.Root.Mode = n.RootMode
		}
		n.RootMode = ""
	}
}

// Clone returns a deep copy of n.
func (n *Node) Clone() *Node {
	c := *n
	c.Profiles = slices.Clone(n.Profiles)
	c.Interfaces = slices.Clone(n.Interfaces)
	c.Settings = n.Settings.Clone()
	return &c
}

// Clone returns a deep copy of s.
func (s Settings) Clone() Settings {
	c := s
	if s.KernelArgs != nil {
		v := *s.KernelArgs
		c.KernelArgs = &v
	}
	c.Modules = slices.Clone(s.Modules)
	c.Tags = maps.Clone(s.Tags)
	c.Values = maps.Clone(s.Values)
	return c
}

func (s Settings) normalize() Settings {
	if len(s.Tags) == 0 {
		s.Tags = nil
	}
	if len(s.Values) == 0 {
		s.Values = nil
	}
	return s
}

// Normalize returns p with empty lists and maps as nil.
func (p *Profile) Normalize() *Profile {
	c := p.Clone()
	if len(c.Inherits) == 0 {
		c.Inherits = nil
	}
	c.Settings = c.Settings.normalize()
	return c
}

// Profile is a named set of settings that nodes (and other profiles)
// inherit.
type Profile struct {
	// Name is its unique name.
	Name string `json:"name" yaml:"name"`
	// Inherits are the profiles it inherits from, in order.
	Inherits []string `json:"inherits,omitempty" yaml:"inherits,omitempty"`
	// Settings are its settings, over those it inherits.
	Settings `yaml:",inline"`
}

// Clone returns a deep copy of p.
func (p *Profile) Clone() *Profile {
	c := *p
	c.Inherits = slices.Clone(p.Inherits)
	c.Settings = p.Settings.Clone()
	return &c
}

// Inventory is every node and profile, by name. Entries are replaced, never
// changed in place, so that copies of the maps share them safely.
type Inventory struct {
	Nodes    map[string]*Node
	Profiles map[string]*Profile
}

// New returns an empty inventory.
func New() *Inventory {
	return &Inventory{Nodes: map[string]*Node{}, Profiles: map[string]*Profile{}}
}

// Copy returns a copy of the maps (the entries are shared).
// Profiles is copied too: an edit must not reach a published map.
func (inv *Inventory) Copy() *Inventory {
	return &Inventory{Nodes: maps.Clone(inv.Nodes), Profiles: maps.Clone(inv.Profiles)}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName checks that name can be a node or profile name: a host name
// label.
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: must be 1-63 lower-case letters, digits or '-', not starting or ending with '-'", kind, name)
	}
	return nil
}

// NormalizeMAC parses an Ethernet MAC address and returns it lower case
// with colons.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("mac %q: not an Ethernet MAC address like 52:54:00:12:34:56", s)
	}
	return hw.String(), nil
}

// NormalizeClientID parses a DHCP client identifier written as hex bytes,
// with or without colons, and returns it lower case with colons.
func NormalizeClientID(s string) (string, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
	if err != nil || len(b) < 2 || len(b) > 255 {
		return "", fmt.Errorf("client id %q: not 2-255 bytes of hex (like ff:00:00:00:00:00:02:00:00:02:c9:00:...)", s)
	}
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02x", c)
	}
	return strings.Join(parts, ":"), nil
}

// Network stacks a node's overlay can configure.
var networkStacks = []string{"networkd", "networkmanager", "ifupdown", "none"}

// rootModes are the root modes a node may set (images/overlay's).
var rootModes = func() []string {
	var ms []string
	for _, m := range overlay.RootModes {
		ms = append(ms, string(m))
	}
	return ms
}()

var sizeRE = regexp.MustCompile(`^([0-9]+[kKmMgGtT]?|[0-9]{1,3}%)$`)

// check checks what one Settings holds, appending problems named after
// what (a node or profile).
func (s Settings) check(what string, errs *[]error) {
	bad := func(format string, args ...any) {
		*errs = append(*errs, fmt.Errorf("%s: %s", what, fmt.Sprintf(format, args...)))
	}
	if s.Image != "" && !imageRefRE.MatchString(s.Image) {
		bad("image %q: not an image reference (name, name:tag)", s.Image)
	}
	for _, m := range s.Modules {
		if m == "" || strings.ContainsAny(m, "/ \t") {
			bad("module %q: not a module name", m)
		}
	}
	if s.BootFile != "" && (strings.ContainsAny(s.BootFile, "/\\ ") || len(s.BootFile) > 127) {
		bad("boot file %q: must be a plain file name served by TFTP", s.BootFile)
	}
	if s.Root.Mode != "" && !slices.Contains(rootModes, s.Root.Mode) {
		bad("root mode %q: want one of %s", s.Root.Mode, strings.Join(rootModes, ", "))
	}
	if s.Root.Size != "" && !sizeRE.MatchString(s.Root.Size) {
		bad("root size %q: want bytes with a suffix (16G) or a percentage of RAM (50%%)", s.Root.Size)
	}
	if s.Network != "" && !slices.Contains(networkStacks, s.Network) {
		bad("network %q: want one of %s", s.Network, strings.Join(networkStacks, ", "))
	}
	for k := range s.Tags {
		if !keyRE.MatchString(k) {
			bad("tag %q: keys are letters, digits, '_', '-' and '.'", k)
		}
	}
	for k := range s.Values {
		if !keyRE.MatchString(k) {
			bad("value %q: keys are letters, digits, '_', '-' and '.'", k)
		}
	}
}

var (
	imageRefRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$`)
	keyRE      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$`)
)

// Subnet is a configured subnet nodes may have addresses on.
type Subnet = netip.Prefix

// Validate checks the whole inventory and reports every problem at once,
// each naming its node or profile: names, MACs and client ids (unique across
// every interface of every node), addresses (unique, inside one of
// subnets when any are given, not a subnet's network or broadcast
// address), profiles that exist and inherit without a cycle, settings.
func (inv *Inventory) Validate(subnets []Subnet) error { return inv.ValidateChange(subnets, nil) }

// ValidateChange is Validate for an inventory where the nodes in changed
// were just added or changed: they are checked after the others, so a
// duplicate is reported on the node that takes what another already had.
func (inv *Inventory) ValidateChange(subnets []Subnet, changed map[string]bool) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(inv.Profiles)) {
		p := inv.Profiles[name]
		what := "profile " + name
		if p.Name != name {
			errs = append(errs, fmt.Errorf("%s: holds profile %q", what, p.Name))
		}
		if err := ValidName("profile", name); err != nil {
			errs = append(errs, err)
		}
		for _, parent := range p.Inherits {
			if _, ok := inv.Profiles[parent]; !ok {
				errs = append(errs, fmt.Errorf("%s: inherits unknown profile %q", what, parent))
			}
		}
		p.Settings.check(what, &errs)
	}
	if cycle := inv.cycle(); cycle != nil {
		errs = append(errs, fmt.Errorf("profile cycle: %s", strings.Join(cycle, " -> ")))
	}
	macs, ids, ips := map[string]string{}, map[string]string{}, map[netip.Addr]string{}
	names := slices.Sorted(maps.Keys(inv.Nodes))
	slices.SortStableFunc(names, func(a, b string) int {
		switch ca, cb := changed[a], changed[b]; {
		case ca == cb:
			return 0
		case cb:
			return -1
		}
		return 1
	})
	for _, name := range names {
		n := inv.Nodes[name]
		what := "node " + name
		if n.Name != name {
			errs = append(errs, fmt.Errorf("%s: holds node %q", what, n.Name))
		}
		if err := ValidName("node", name); err != nil {
			errs = append(errs, err)
		}
		if n.Hostname != "" && !hostnameRE.MatchString(n.Hostname) {
			errs = append(errs, fmt.Errorf("%s: hostname %q is not a host name", what, n.Hostname))
		}
		for _, p := range n.Profiles {
			if _, ok := inv.Profiles[p]; !ok {
				errs = append(errs, fmt.Errorf("%s: unknown profile %q", what, p))
			}
		}
		if len(n.Interfaces) == 0 {
			errs = append(errs, fmt.Errorf("%s: no interface (give it a MAC or a client id and an address)", what))
		}
		for i, ifc := range n.Interfaces {
			iw := fmt.Sprintf("%s interface %d", what, i)
			if ifc.Name != "" {
				iw = fmt.Sprintf("%s interface %s", what, ifc.Name)
			}
			switch {
			case i == 0 && ifc.MAC == "" && ifc.ClientID == "":
				errs = append(errs, fmt.Errorf("%s: needs a MAC or a client id (DHCP answers the provisioning interface by them)", iw))
			case ifc.MAC == "" && ifc.ClientID == "" && ifc.Name == "":
				errs = append(errs, fmt.Errorf("%s: needs a name, a MAC or a client id (to be found on the node)", iw))
			}
			if ifc.MAC != "" {
				if m, err := NormalizeMAC(ifc.MAC); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", iw, err))
				} else if other, dup := macs[m]; dup {
					errs = append(errs, fmt.Errorf("%s: mac %s %w (node %s)", iw, m, ErrDuplicate, other))
				} else {
					macs[m] = name
				}
			}
			if ifc.ClientID != "" {
				if c, err := NormalizeClientID(ifc.ClientID); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", iw, err))
				} else if other, dup := ids[c]; dup {
					errs = append(errs, fmt.Errorf("%s: client id %s %w (node %s)", iw, c, ErrDuplicate, other))
				} else {
					ids[c] = name
				}
			}
			if !ifc.IP.IsValid() {
				if i == 0 {
					errs = append(errs, fmt.Errorf("%s: needs an IPv4 address", iw))
				}
				continue
			}
			if !ifc.IP.Is4() {
				errs = append(errs, fmt.Errorf("%s: ip %s is not IPv4", iw, ifc.IP))
				continue
			}
			if other, dup := ips[ifc.IP]; dup {
				errs = append(errs, fmt.Errorf("%s: ip %s %w (node %s)", iw, ifc.IP, ErrDuplicate, other))
			} else {
				ips[ifc.IP] = name
			}
			if len(subnets) > 0 {
				if err := onSubnet(ifc.IP, subnets); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", iw, err))
				}
			}
			if ifc.Gateway.IsValid() && !ifc.Gateway.Is4() {
				errs = append(errs, fmt.Errorf("%s: gateway %s is not IPv4", iw, ifc.Gateway))
			}
			if ifc.MTU != 0 && (ifc.MTU < 576 || ifc.MTU > 65520) {
				errs = append(errs, fmt.Errorf("%s: mtu %d is not between 576 and 65520", iw, ifc.MTU))
			}
		}
		n.Settings.check(what, &errs)
	}
	if len(errs) > maxErrors {
		errs = append(errs[:maxErrors], fmt.Errorf("... and %d more problems", len(errs)-maxErrors))
	}
	return errors.Join(errs...)
}

// maxErrors bounds the problems Validate lists: a bulk change that is
// wrong for 10,000 nodes says so in a screenful.
const maxErrors = 50

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// onSubnet checks that ip is a host address of one of subnets.
func onSubnet(ip netip.Addr, subnets []Subnet) error {
	for _, s := range subnets {
		if !s.Contains(ip) {
			continue
		}
		m := s.Masked()
		if s.Bits() <= 30 && (ip == m.Addr() || ip == lastAddr(m)) {
			return fmt.Errorf("ip %s is the network or broadcast address of %s", ip, m)
		}
		if ip == s.Addr() && s.Addr() != m.Addr() {
			return fmt.Errorf("ip %s is the head's own address on %s", ip, m)
		}
		return nil
	}
	names := make([]string, len(subnets))
	for i, s := range subnets {
		names[i] = s.Masked().String()
	}
	return fmt.Errorf("ip %s is outside every configured subnet (%s)", ip, strings.Join(names, ", "))
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// cycle returns a profile inheritance cycle, if there is one.
func (inv *Inventory) cycle() []string {
	const (
		unseen = iota
		active
		done
	)
	mark := map[string]int{}
	var stack []string
	var visit func(string) []string
	visit = func(name string) []string {
		switch mark[name] {
		case active:
			i := slices.Index(stack, name)
			return append(slices.Clone(stack[i:]), name)
		case done:
			return nil
		}
		mark[name] = active
		stack = append(stack, name)
		if p, ok := inv.Profiles[name]; ok {
			for _, parent := range p.Inherits {
				if c := visit(parent); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		mark[name] = done
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(inv.Profiles)) {
		if c := visit(name); c != nil {
			return c
		}
	}
	return nil
}

// Chain returns the profiles node n inherits from, most general first:
// each profile comes after the profiles it inherits, in the order they are
// listed, each once. Unknown profiles are skipped (Validate reports them).
func (inv *Inventory) Chain(n *Node) []string {
	var out []string
	seen := map[string]bool{}
	var add func(string, int)
	add = func(name string, depth int) {
		if seen[name] || depth > 64 {
			return
		}
		p, ok := inv.Profiles[name]
		if !ok {
			return
		}
		seen[name] = true
		for _, parent := range p.Inherits {
			add(parent, depth+1)
		}
		out = append(out, name)
	}
	for _, p := range n.Profiles {
		add(p, 0)
	}
	return out
}

// Normalize returns n with its MACs and client ids written canonically
// (invalid ones are left for Validate to report) and empty lists and maps
// as nil (except Modules, where empty and nil differ).
func (n *Node) Normalize() *Node {
	c := n.Clone()
	if len(c.Profiles) == 0 {
		c.Profiles = nil
	}
	c.Settings = c.Settings.normalize()
	for i := range c.Interfaces {
		if m, err := NormalizeMAC(c.Interfaces[i].MAC); err == nil {
			c.Interfaces[i].MAC = m
		}
		if id, err := NormalizeClientID(c.Interfaces[i].ClientID); err == nil {
			c.Interfaces[i].ClientID = id
		}
		c.Interfaces[i].IP = c.Interfaces[i].IP.Unmap()
	}
	return c
}
