// Package plan is the head's one policy seam: Resolve decides what a node
// gets (its addresses per interface, image and pinned digest, kernel
// arguments, modules, boot-file override, root settings, network stack,
// tags and template values) from the inventory, its profiles and the
// configuration, and records where each value came from. The DHCP
// reservations, the iPXE script, the overlay and the node API all ask it;
// none of them keeps a copy of a default.
//
//	d := plan.Defaults{Image: "default", KernelArgs: "console=ttyS0", Subnets: subnets}
//	p, err := d.Resolve(inv, inv.Nodes["n001"], plan.Pin{})
//	p.Interfaces[0].Address // 10.0.0.11/24, from the subnet it lies in
//	p.Sources["image"]      // "profile compute"
package plan

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/ramboot/ramboot/provisioner/inventory"
)

// Subnet is a configured subnet: the addresses on it get its prefix
// length, gateway, name servers and MTU.
type Subnet struct {
	// Prefix is the subnet, e.g. 10.0.0.0/24.
	Prefix netip.Prefix
	// Gateway is its default router; the zero value means none.
	Gateway netip.Addr
	// DNS are its name servers.
	DNS []netip.Addr
	// MTU is its MTU; 0 leaves the default.
	MTU int
	// From names where it was configured, for Sources.
	From string
}

// Defaults are the configuration's values, used where neither a node nor
// its profiles set one.
type Defaults struct {
	// Image is the image reference of nodes that set none
	// (boot.default_image).
	Image string
	// KernelArgs are the kernel arguments (boot.kernel_args).
	KernelArgs string
	// Modules are the modules the agent loads (boot.modules).
	Modules []string
	// Network is the network stack overlays are written for; "" means
	// networkd.
	Network string
	// Root is the root file system setting (boot.root).
	Root inventory.Root
	// ConsoleShell gives a root shell on the console of a node whose
	// agent stays PID 1 (boot.console_shell).
	ConsoleShell bool
	// Subnets are every subnet nodes may have addresses on, the
	// provisioning interface's own first.
	Subnets []Subnet
	// BootFiles are the boot files the head serves (the TFTP catalogue,
	// tftp.files): a node's or profile's boot_file must be one of them
	// when it is set or changed. nil checks nothing.
	BootFiles []string
}

// Pin is the image digest a node was given at an earlier script.
type Pin struct {
	// Ref is the reference it was resolved from.
	Ref string
	// Digest is the manifest digest.
	Digest string
	// Boot is the boot it was first given in.
	Boot int
}

// Interface is one interface of a node with its effective settings.
type Interface struct {
	// Name is its name on the node (eth0, ib0), if set.
	Name string
	// MAC is its hardware address, if any.
	MAC string
	// ClientID is its DHCP client identifier, if any.
	ClientID string
	// Address is its address with its subnet's prefix length; the zero
	// value when it has no address.
	Address netip.Prefix
	// Gateway is its default router; zero means none.
	Gateway netip.Addr
	// DNS are its name servers.
	DNS []netip.Addr
	// MTU is its MTU; 0 leaves the default.
	MTU int
}

// Plan is what a node gets. Sources maps each value's name ("image",
// "kernel_args", "interfaces[0].gateway", ...) to where it came from:
// "node", "profile NAME", or a configuration key.
type Plan struct {
	// Node is the node's name.
	Node string
	// Hostname is its host name (its Hostname, or its name).
	Hostname string
	// Profiles is its profile chain, most general first.
	Profiles []string
	// Interfaces are its interfaces; the first is the provisioning one.
	Interfaces []Interface
	// Image is the image reference it boots.
	Image string
	// Digest is the manifest digest it is pinned to; empty when its next
	// script resolves Image (it then pins that digest).
	Digest string
	// KernelArgs are its kernel arguments (besides initrd= and
	// ramboot.node=, which the script adds).
	KernelArgs string
	// Modules are the kernel modules the agent loads.
	Modules []string
	// BootFile is the iPXE binary its firmware gets instead of its
	// architecture's; empty means the architecture's.
	BootFile string
	// Root is its root file system setting.
	Root inventory.Root
	// Network is the network stack of its image.
	Network string
	// ConsoleShell gives a root shell on its console when its agent stays
	// PID 1.
	ConsoleShell bool
	// Tags are its tags (profiles', then its own).
	Tags map[string]string
	// Values are its template values (profiles', then its own).
	Values map[string]string
	// Sources says where each value came from.
	Sources map[string]string
}

// InterfaceOf returns the interface with hardware address mac, else the
// one with DHCP client identifier clientID, if any ("" matches nothing).
func (p *Plan) InterfaceOf(mac, clientID string) (Interface, bool) {
	for _, ifc := range p.Interfaces {
		if (mac != "" && ifc.MAC == mac) || (clientID != "" && ifc.ClientID == clientID) {
			return ifc, true
		}
	}
	return Interface{}, false
}

// Interface returns the interface with hardware address mac, if any.
func (p *Plan) Interface(mac string) (Interface, bool) {
	for _, ifc := range p.Interfaces {
		if ifc.MAC == mac {
			return ifc, true
		}
	}
	return Interface{}, false
}

// Resolve returns node n's plan. Settings apply in order: the
// configuration's defaults, each profile of the chain (most general
// first), the node's own; the last one that sets a value wins, and tags
// and values merge key by key. pin is the digest the node was given (zero
// if none): it stays the plan's digest while the image reference is the
// one it was resolved from. An address outside every subnet is an error.
func (d *Defaults) Resolve(inv *inventory.Inventory, n *inventory.Node, pin Pin) (Plan, error) {
	p := Plan{
		Node:         n.Name,
		Hostname:     n.Name,
		Profiles:     inv.Chain(n),
		Image:        d.Image,
		KernelArgs:   d.KernelArgs,
		Modules:      d.Modules,
		Root:         d.Root,
		Network:      d.Network,
		ConsoleShell: d.ConsoleShell,
		Sources: map[string]string{
			"image": "config boot.default_image", "kernel_args": "config boot.kernel_args",
			"modules": "config boot.modules", "network": "default", "root.mode": "config boot.root.mode", "root.size": "config boot.root.size",
		},
	}
	if p.Network == "" {
		p.Network = "networkd"
	}
	if p.Root.Mode == "" {
		p.Root.Mode, p.Sources["root.mode"] = "tmpfs", "default"
	}
	if p.Root.Size == "" {
		p.Sources["root.size"] = "default (the agent's)"
	}
	if n.Hostname != "" {
		p.Hostname, p.Sources["hostname"] = n.Hostname, "node"
	}
	apply := func(s *inventory.Settings, from string) {
		if s.Image != "" {
			p.Image, p.Sources["image"] = s.Image, from
		}
		if s.KernelArgs != nil {
			p.KernelArgs, p.Sources["kernel_args"] = *s.KernelArgs, from
		}
		if s.Modules != nil {
			p.Modules, p.Sources["modules"] = s.Modules, from
		}
		if s.BootFile != "" {
			p.BootFile, p.Sources["boot_file"] = s.BootFile, from
		}
		if s.Root.Mode != "" {
			p.Root.Mode, p.Sources["root.mode"] = s.Root.Mode, from
		}
		if s.Root.Size != "" {
			p.Root.Size, p.Sources["root.size"] = s.Root.Size, from
		}
		if s.Network != "" {
			p.Network, p.Sources["network"] = s.Network, from
		}
		for k, v := range s.Tags {
			if p.Tags == nil {
				p.Tags = map[string]string{}
			}
			p.Tags[k], p.Sources["tags."+k] = v, from
		}
		for k, v := range s.Values {
			if p.Values == nil {
				p.Values = map[string]string{}
			}
			p.Values[k], p.Sources["values."+k] = v, from
		}
	}
	for _, name := range p.Profiles {
		apply(&inv.Profiles[name].Settings, "profile "+name)
	}
	apply(&n.Settings, "node")
	p.Modules = slices.Clone(p.Modules)
	if p.Image == pin.Ref && pin.Digest != "" {
		p.Digest = pin.Digest
		p.Sources["digest"] = fmt.Sprintf("pinned at boot %d", pin.Boot)
	}
	for i, ifc := range n.Interfaces {
		pi := Interface{Name: ifc.Name, MAC: ifc.MAC, ClientID: ifc.ClientID, MTU: ifc.MTU}
		key := fmt.Sprintf("interfaces[%d]", i)
		if ifc.IP.IsValid() {
			sn, ok := d.subnet(ifc.IP)
			if !ok {
				return Plan{}, fmt.Errorf("node %s: %s: ip %s is outside every configured subnet", n.Name, key, ifc.IP)
			}
			pi.Address = netip.PrefixFrom(ifc.IP, sn.Prefix.Bits())
			pi.Gateway, pi.DNS = sn.Gateway, slices.Clone(sn.DNS)
			p.Sources[key+".prefix"] = sn.From
			if sn.Gateway.IsValid() {
				p.Sources[key+".gateway"] = sn.From
			}
			if len(sn.DNS) > 0 {
				p.Sources[key+".dns"] = sn.From
			}
			if pi.MTU == 0 && sn.MTU != 0 {
				pi.MTU, p.Sources[key+".mtu"] = sn.MTU, sn.From
			}
		}
		if ifc.Gateway.IsValid() {
			pi.Gateway, p.Sources[key+".gateway"] = ifc.Gateway, "node"
		}
		p.Interfaces = append(p.Interfaces, pi)
	}
	return p, nil
}

// subnet returns the most specific configured subnet holding ip.
func (d *Defaults) subnet(ip netip.Addr) (Subnet, bool) {
	best, found := Subnet{}, false
	for _, s := range d.Subnets {
		if s.Prefix.Contains(ip) && (!found || s.Prefix.Bits() > best.Prefix.Bits()) {
			best, found = s, true
		}
	}
	return best, found
}

// Prefixes returns the configured subnets' prefixes, for
// inventory.Validate.
func (d *Defaults) Prefixes() []netip.Prefix {
	out := make([]netip.Prefix, len(d.Subnets))
	for i, s := range d.Subnets {
		out[i] = s.Prefix
	}
	return out
}

// SourceKeys returns the keys of p.Sources in a stable order: the plain
// values first, then tags, values and interfaces.
func (p *Plan) SourceKeys() []string {
	keys := slices.Collect(maps.Keys(p.Sources))
	rank := func(k string) int {
		switch {
		case strings.HasPrefix(k, "interfaces["):
			return 3
		case strings.HasPrefix(k, "tags."), strings.HasPrefix(k, "values."):
			return 2
		}
		return 1
	}
	slices.SortFunc(keys, func(a, b string) int {
		if r := rank(a) - rank(b); r != 0 {
			return r
		}
		return strings.Compare(a, b)
	})
	return keys
}
