package overlayrender

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"slices"
	"strings"

	"github.com/ramboot/ramboot/images/overlay"
)

// Built-in output paths.
const (
	HostnamePath       = "etc/hostname"
	HostsPath          = "etc/hosts"
	KnownHostsPath     = "etc/ssh/ssh_known_hosts"
	AuthorizedKeysPath = "root/.ssh/authorized_keys"
	networkdDir        = "etc/systemd/network"
	nmDir              = "etc/NetworkManager/system-connections"
	IfupdownPath       = "etc/network/interfaces.d/ramboot"
)

// header is the first line of every built-in text file.
func header(comment string) string {
	return comment + " Written by the ramboot head; changes made on the node are lost at reboot.\n"
}

// fqdn returns name.domain; a name with a dot is already qualified.
func fqdn(name, domain string) string {
	if domain == "" || strings.Contains(name, ".") {
		return name
	}
	return name + "." + domain
}

// hostNames returns the names of a node's interface i in /etc/hosts and
// known_hosts. The first interface carries the node's host name, its short
// form and its inventory name; another interface "<short>-<interface
// name>" (none when it has no name), where short is the host name's first
// label.
func hostNames(n *Node, i int, domain string) []string {
	h := n.HostnameOrName()
	short, _, _ := strings.Cut(h, ".")
	if i > 0 {
		if n.Interfaces[i].Name == "" {
			return nil
		}
		alias := short + "-" + n.Interfaces[i].Name
		return dedupe(fqdn(alias, domain), alias)
	}
	return dedupe(fqdn(h, domain), h, short, n.Name)
}

func dedupe(s ...string) []string {
	var out []string
	for _, x := range s {
		if x != "" && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// hostsFile renders /etc/hosts: localhost, the head, then every address of
// every node.
func hostsFile(c *Cluster) []byte {
	var b bytes.Buffer
	b.Grow(64 * (len(c.Nodes) + 4))
	b.WriteString(header("#"))
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	if c.Head.Name != "" {
		for _, a := range c.Head.Addresses {
			fmt.Fprintf(&b, "%s\t%s\n", a, strings.Join(dedupe(fqdn(c.Head.Name, c.Domain), c.Head.Name), " "))
		}
	}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		for j, ifc := range n.Interfaces {
			names := hostNames(n, j, c.Domain)
			if len(names) == 0 || !ifc.Address.IsValid() {
				continue
			}
			b.WriteString(ifc.Address.Addr().String())
			b.WriteByte('\t')
			b.WriteString(strings.Join(names, " "))
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// nodeConfig returns the agent's configuration (images/overlay.Config),
// without its overlay generation.
func nodeConfig(c *Cluster, n *Node, token string) (overlay.Config, error) {
	cfg := overlay.Config{
		Node:         n.Name,
		Hostname:     n.Hostname,
		HeadURL:      strings.TrimRight(c.Head.URL, "/"),
		Token:        token,
		Modules:      n.Modules,
		Image:        overlay.ImageRef{Name: n.Image.Name, Digest: n.Image.Digest, ContentDigest: n.Image.ContentDigest},
		Root:         n.Root,
		ConsoleShell: n.ConsoleShell,
		Peers:        peersFor(c.Head, n.Name),
	}
	if len(n.Interfaces) > 0 {
		ifc := n.Interfaces[0]
		cfg.Interface = overlay.Interface{MAC: ifc.MAC, Address: ifc.Address.String()}
		if ifc.Gateway.IsValid() {
			cfg.Interface.Gateway = ifc.Gateway.String()
		}
		for _, d := range ifc.DNS {
			cfg.Interface.DNS = append(cfg.Interface.DNS, d.String())
		}
	}
	if err := cfg.Validate(); err != nil {
		return overlay.Config{}, fmt.Errorf("agent configuration: %w", err)
	}
	return cfg, nil
}

// peersFor returns the peer heads of h as node name's agent gets them:
// without h itself and duplicates, sorted, then rotated by a hash of the
// node's name (every node of a dead head calling the same peer first
// would move its whole load to that one).
func peersFor(h Head, name string) []string {
	if h.Peers == nil {
		return nil
	}
	self := strings.TrimRight(h.URL, "/")
	var out []string
	for _, p := range h.Peers() {
		p = strings.TrimRight(p, "/")
		if p != "" && p != self && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if len(out) < 2 {
		return out
	}
	slices.Sort(out)
	f := fnv.New32a()
	f.Write([]byte(name))
	k := int(f.Sum32() % uint32(len(out)))
	return slices.Concat(out[k:], out[:k])
}

// encodeConfig returns the agent's configuration as node.json holds it.
func encodeConfig(cfg overlay.Config) ([]byte, error) {
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	return append(js, '\n'), nil
}

// Generation identifies an overlay's content for the agent daemon, which
// fetches the runtime overlay again when the head's differs from its own:
// the SHA-256 of the configuration without its token and generation, and
// of each other file's path, mode and content digest.
func Generation(c overlay.Config, files []overlay.File) (string, error) {
	return generation(c, files, sha256.Sum256)
}

// generation is Generation with the files' content digests from sum: a
// snapshot hashes the files every node shares (/etc/hosts, known_hosts:
// megabytes in a large cluster) once, not at every render, which every
// registration and heartbeat asks for.
func generation(c overlay.Config, files []overlay.File, sum func([]byte) [32]byte) (string, error) {
	c.Token, c.OverlayGeneration, c.Peers = "", "", nil
	js, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("overlay generation of node %s: %w", c.Node, err)
	}
	h := sha256.New()
	h.Write(js)
	for _, f := range files {
		d := sum(f.Data)
		fmt.Fprintf(h, "\x00%s\x00%o\x00", f.Path, f.Mode)
		h.Write(d[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}

// ifaceID names interface i in file names: its name, or "if<i>".
func ifaceID(ifc Interface, i int) string {
	if ifc.Name != "" {
		return ifc.Name
	}
	return fmt.Sprintf("if%d", i)
}

// networkFiles renders the node's network configuration for its image's
// stack.
func networkFiles(c *Cluster, n *Node) ([]File, error) {
	stack := n.Network
	if stack == "" {
		stack = Networkd
	}
	var files []File
	switch stack {
	case NoNetwork:
		return nil, nil
	case Networkd:
		for i, ifc := range n.Interfaces {
			files = append(files, File{
				Path: fmt.Sprintf("%s/10-ramboot-%s.network", networkdDir, ifaceID(ifc, i)),
				Mode: 0o644, Data: networkdFile(c, n, ifc),
			})
		}
		// Enable systemd-networkd, as `systemctl enable` would: without it
		// the .network files would be read by nothing.
		files = append(files,
			File{Path: "etc/systemd/system/multi-user.target.wants/systemd-networkd.service", Mode: fs.ModeSymlink | 0o777, Linkname: "/lib/systemd/system/systemd-networkd.service"},
			File{Path: "etc/systemd/system/sockets.target.wants/systemd-networkd.socket", Mode: fs.ModeSymlink | 0o777, Linkname: "/lib/systemd/system/systemd-networkd.socket"},
		)
	case NetworkManager:
		for i, ifc := range n.Interfaces {
			b, err := nmKeyfile(c, n, ifc, i)
			if err != nil {
				return nil, err
			}
			// NetworkManager ignores keyfiles not owned by root or readable
			// by others.
			files = append(files, File{Path: fmt.Sprintf("%s/ramboot-%s.nmconnection", nmDir, ifaceID(ifc, i)), Mode: 0o600, Data: b})
		}
	case Ifupdown:
		files = append(files, File{Path: IfupdownPath, Mode: 0o644, Data: ifupdownFile(c, n)})
	default:
		return nil, fmt.Errorf("network stack %q: want networkd, networkmanager, ifupdown or none", stack)
	}
	return files, nil
}

func networkdFile(c *Cluster, n *Node, ifc Interface) []byte {
	var b bytes.Buffer
	b.WriteString(header("#"))
	fmt.Fprintf(&b, "[Match]\nMACAddress=%s\n", ifc.MAC)
	if ifc.MTU > 0 {
		fmt.Fprintf(&b, "\n[Link]\nMTUBytes=%d\n", ifc.MTU)
	}
	b.WriteString("\n[Network]\n")
	if ifc.Address.IsValid() {
		fmt.Fprintf(&b, "Address=%s\n", ifc.Address)
	}
	if ifc.Gateway.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", ifc.Gateway)
	}
	for _, d := range ifc.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	if c.Domain != "" {
		fmt.Fprintf(&b, "Domains=%s\n", c.Domain)
	}
	// The agent configured the provisioning interface before networkd
	// starts; keep that address and route rather than flush them.
	b.WriteString("KeepConfiguration=static\n")
	return b.Bytes()
}

// nmUUID derives a connection's UUID from the node and MAC, so that the
// same node always gets the same keyfile (name-based, RFC 4122 version 5
// layout over SHA-1).
func nmUUID(node, mac string) string {
	h := sha1.Sum([]byte("ramboot/" + node + "/" + strings.ToLower(mac)))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

func nmKeyfile(c *Cluster, n *Node, ifc Interface, i int) ([]byte, error) {
	hw, err := net.ParseMAC(ifc.MAC)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifaceID(ifc, i), err)
	}
	kind := "ethernet"
	if len(hw) == 20 {
		kind = "infiniband"
	}
	var b bytes.Buffer
	b.WriteString(header("#"))
	fmt.Fprintf(&b, "[connection]\nid=ramboot-%s\nuuid=%s\ntype=%s\nautoconnect=true\nautoconnect-priority=100\n", ifaceID(ifc, i), nmUUID(n.Name, ifc.MAC), kind)
	if ifc.Name != "" {
		fmt.Fprintf(&b, "interface-name=%s\n", ifc.Name)
	}
	fmt.Fprintf(&b, "\n[%s]\nmac-address=%s\n", kind, strings.ToUpper(ifc.MAC))
	if ifc.MTU > 0 {
		fmt.Fprintf(&b, "mtu=%d\n", ifc.MTU)
	}
	b.WriteString("\n[ipv4]\n")
	if !ifc.Address.IsValid() {
		b.WriteString("method=disabled\n")
	} else {
		fmt.Fprintf(&b, "method=manual\naddress1=%s\n", ifc.Address)
		if ifc.Gateway.IsValid() {
			fmt.Fprintf(&b, "gateway=%s\n", ifc.Gateway)
		} else {
			b.WriteString("never-default=true\n")
		}
		if len(ifc.DNS) > 0 {
			b.WriteString("dns=")
			for _, d := range ifc.DNS {
				fmt.Fprintf(&b, "%s;", d)
			}
			b.WriteByte('\n')
		}
		if c.Domain != "" {
			fmt.Fprintf(&b, "dns-search=%s;\n", c.Domain)
		}
	}
	b.WriteString("\n[ipv6]\nmethod=ignore\n")
	return b.Bytes(), nil
}

func ifupdownFile(c *Cluster, n *Node) []byte {
	var b bytes.Buffer
	b.WriteString(header("#"))
	for i, ifc := range n.Interfaces {
		name := ifc.Name
		b.WriteByte('\n')
		if name == "" {
			// ifupdown 0.8 matches a pattern of the MAC address and maps
			// it to a logical interface name.
			name = fmt.Sprintf("ramboot%d", i)
			fmt.Fprintf(&b, "auto mac/%s/=%s\n", strings.ToLower(ifc.MAC), name)
		} else {
			fmt.Fprintf(&b, "auto %s\n", name)
		}
		if !ifc.Address.IsValid() {
			fmt.Fprintf(&b, "iface %s inet manual\n", name)
			continue
		}
		fmt.Fprintf(&b, "iface %s inet static\n\taddress %s\n", name, ifc.Address)
		if ifc.Gateway.IsValid() {
			fmt.Fprintf(&b, "\tgateway %s\n", ifc.Gateway)
		}
		if ifc.MTU > 0 {
			fmt.Fprintf(&b, "\tmtu %d\n", ifc.MTU)
		}
		if len(ifc.DNS) > 0 {
			s := make([]string, len(ifc.DNS))
			for k, d := range ifc.DNS {
				s[k] = d.String()
			}
			fmt.Fprintf(&b, "\tdns-nameservers %s\n", strings.Join(s, " "))
		}
		if c.Domain != "" {
			fmt.Fprintf(&b, "\tdns-search %s\n", c.Domain)
		}
	}
	return b.Bytes()
}
