// Package netstack writes the provisioning interface's configuration for
// the network stack the node's image runs, so that the stack, when it
// starts after the agent's init, keeps the interface as the agent set it
// up instead of taking it down or asking DHCP.
//
// The agent configures the interface itself at boot (package netconf);
// these files only tell the image's own stack about it. They go to /run,
// which the agent mounts and systemd keeps, so the image's /etc is left as
// the admin built it:
//
//	written, err := netstack.Write("/", netstack.Interface{
//		MAC:     "52:54:00:12:34:56",
//		Address: netip.MustParsePrefix("10.77.0.10/24"),
//		Gateway: netip.MustParseAddr("10.77.0.1"),
//	})
//	// written: run/systemd/network/10-ramboot.network (Debian, systemd-networkd)
//	//          run/NetworkManager/system-connections/ramboot.nmconnection (Rocky)
//
// A stack counts as present when its program is in the image; an image
// with neither gets nothing (its interface stays as the agent left it).
// ifupdown needs nothing: it only touches interfaces marked "auto" in its
// own files.
package netstack

import (
	"crypto/sha1"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Paths of the files written, relative to the root.
const (
	NetworkdPath = "run/systemd/network/10-ramboot.network"
	KeyfilePath  = "run/NetworkManager/system-connections/ramboot.nmconnection"
)

// stacks are the network stacks known, each with the programs whose
// presence in the image selects it.
var stacks = []struct {
	name     string
	programs []string
}{
	{"systemd-networkd", []string{"usr/lib/systemd/systemd-networkd", "lib/systemd/systemd-networkd"}},
	{"NetworkManager", []string{"usr/sbin/NetworkManager", "sbin/NetworkManager"}},
}

// Interface is the provisioning interface as the agent configured it.
type Interface struct {
	// MAC selects the interface (names may change when udev renames it).
	MAC string
	// Address is the address with its prefix length.
	Address netip.Prefix
	// Gateway is the default route's next hop; zero means none.
	Gateway netip.Addr
	// DNS lists name servers.
	DNS []netip.Addr
}

// Stacks returns the network stacks whose programs are under root:
// "systemd-networkd", "NetworkManager".
func Stacks(root string) []string {
	var out []string
	for _, s := range stacks {
		for _, p := range s.programs {
			if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() {
				out = append(out, s.name)
				break
			}
		}
	}
	return out
}

// Write writes the configuration of every stack present under root and
// returns the paths written (relative to root).
func Write(root string, ifc Interface) ([]string, error) {
	var written []string
	for _, stack := range Stacks(root) {
		path, data, mode := NetworkdPath, Networkd(ifc), os.FileMode(0o644)
		if stack == "NetworkManager" {
			path, data, mode = KeyfilePath, Keyfile(ifc), 0o600 // NM ignores readable keyfiles
		}
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return written, fmt.Errorf("write %s configuration: %w", stack, err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			return written, fmt.Errorf("write %s configuration: %w", stack, err)
		}
		if err := os.Chmod(p, mode); err != nil {
			return written, fmt.Errorf("write %s configuration: %w", stack, err)
		}
		written = append(written, path)
	}
	return written, nil
}

// Networkd returns a systemd.network(5) file for the interface: static,
// no DHCP, no router advertisements, and KeepConfiguration so that
// networkd never drops the address the node's root depends on.
func Networkd(ifc Interface) []byte {
	var b strings.Builder
	b.WriteString("# Written by ramboot-agent at boot: the provisioning interface.\n")
	fmt.Fprintf(&b, "[Match]\nMACAddress=%s\n\n", ifc.MAC)
	b.WriteString("[Link]\nRequiredForOnline=yes\n\n")
	fmt.Fprintf(&b, "[Network]\nAddress=%s\n", ifc.Address)
	if ifc.Gateway.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", ifc.Gateway)
	}
	for _, d := range ifc.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	b.WriteString("DHCP=no\nIPv6AcceptRA=no\nLinkLocalAddressing=no\nKeepConfiguration=yes\n")
	return []byte(b.String())
}

// Keyfile returns a NetworkManager keyfile (nm-settings-keyfile(5)) for
// the interface: a static ethernet connection bound to the MAC, with IPv6
// disabled.
func Keyfile(ifc Interface) []byte {
	var b strings.Builder
	b.WriteString("# Written by ramboot-agent at boot: the provisioning interface.\n")
	fmt.Fprintf(&b, "[connection]\nid=ramboot-provisioning\nuuid=%s\ntype=ethernet\nautoconnect=true\nautoconnect-priority=100\n\n", uuidFor(ifc.MAC))
	fmt.Fprintf(&b, "[ethernet]\nmac-address=%s\n\n", strings.ToUpper(ifc.MAC))
	b.WriteString("[ipv4]\nmethod=manual\n")
	if ifc.Gateway.IsValid() {
		fmt.Fprintf(&b, "address1=%s,%s\n", ifc.Address, ifc.Gateway)
	} else {
		fmt.Fprintf(&b, "address1=%s\n", ifc.Address)
	}
	if len(ifc.DNS) > 0 {
		var ds []string
		for _, d := range ifc.DNS {
			ds = append(ds, d.String())
		}
		fmt.Fprintf(&b, "dns=%s;\n", strings.Join(ds, ";"))
	}
	b.WriteString("may-fail=false\n\n[ipv6]\nmethod=disabled\n")
	return []byte(b.String())
}

// uuidFor derives a stable UUID (version 5 layout) from the MAC, so that
// every boot of a node names its connection the same.
func uuidFor(mac string) string {
	h := sha1.Sum([]byte("ramboot-provisioning:" + strings.ToLower(mac)))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
