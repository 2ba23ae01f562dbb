package api

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

func settingsOut(s inventory.Settings) Settings {
	s = s.Clone()
	out := Settings{Image: s.Image, KernelArgs: s.KernelArgs, BootFile: s.BootFile, Network: s.Network, Tags: s.Tags, Values: s.Values}
	if s.Modules != nil {
		m := s.Modules
		out.Modules = &m
	}
	if !s.Root.IsZero() {
		out.Root = &Root{Mode: s.Root.Mode, Size: s.Root.Size}
	}
	return out
}

func settingsIn(s Settings) inventory.Settings {
	out := inventory.Settings{Image: s.Image, KernelArgs: s.KernelArgs, BootFile: s.BootFile, Network: s.Network, Tags: s.Tags, Values: s.Values}
	if s.Modules != nil {
		out.Modules = *s.Modules
		if out.Modules == nil {
			out.Modules = []string{}
		}
	}
	if s.Root != nil {
		out.Root = inventory.Root{Mode: s.Root.Mode, Size: s.Root.Size}
	}
	return out.Clone()
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// NodeOut returns the wire form of an inventory node.
func NodeOut(n *inventory.Node) NodeSpec {
	out := NodeSpec{Name: n.Name, Hostname: n.Hostname, Profiles: append([]string(nil), n.Profiles...), Settings: settingsOut(n.Settings), Created: n.Created}
	out.Interfaces = make([]Interface, 0, len(n.Interfaces))
	for _, i := range n.Interfaces {
		out.Interfaces = append(out.Interfaces, Interface{Name: i.Name, MAC: i.MAC, ClientID: i.ClientID, IP: addrString(i.IP), Gateway: addrString(i.Gateway), MTU: i.MTU})
	}
	return out
}

// NodeIn returns the inventory node a wire node describes; an error names
// the node, the interface and the field.
func NodeIn(n NodeSpec) (*inventory.Node, error) {
	out := &inventory.Node{Name: n.Name, Hostname: n.Hostname, Profiles: append([]string(nil), n.Profiles...), Settings: settingsIn(n.Settings)}
	for i, w := range n.Interfaces {
		ifc := inventory.Interface{Name: w.Name, MAC: w.MAC, ClientID: w.ClientID, MTU: w.MTU}
		var err error
		if w.IP != "" {
			if ifc.IP, err = netip.ParseAddr(w.IP); err != nil || !ifc.IP.Is4() {
				return nil, badRequest{fmt.Errorf("node %s interface %d: ip %q: not an IPv4 address", n.Name, i, w.IP)}
			}
		}
		if w.Gateway != "" {
			if ifc.Gateway, err = netip.ParseAddr(w.Gateway); err != nil || !ifc.Gateway.Is4() {
				return nil, badRequest{fmt.Errorf("node %s interface %d: gateway %q: not an IPv4 address", n.Name, i, w.Gateway)}
			}
		}
		out.Interfaces = append(out.Interfaces, ifc)
	}
	return out, nil
}

// ProfileOut returns the wire form of a profile.
func ProfileOut(p *inventory.Profile) Profile {
	return Profile{Name: p.Name, Inherits: append([]string(nil), p.Inherits...), Settings: settingsOut(p.Settings)}
}

// ProfileIn returns the inventory profile a wire profile describes.
func ProfileIn(p Profile) *inventory.Profile {
	return &inventory.Profile{Name: p.Name, Inherits: append([]string(nil), p.Inherits...), Settings: settingsIn(p.Settings)}
}

// BootOut returns the wire form of a boot.
func BootOut(b state.Boot) Boot {
	out := Boot{ID: b.ID, Started: b.Started, State: string(b.State), Timeline: make([]Event, 0, len(b.Timeline))}
	for _, e := range b.Timeline {
		out.Timeline = append(out.Timeline, Event{Time: e.Time, Step: string(e.Step), Detail: e.Detail})
	}
	if r := b.Report; r != nil {
		out.Report = &Report{Received: r.Received, State: r.State, Error: r.Error, ImageName: r.ImageName, ImageDigest: r.ImageDigest,
			ContentDigest: r.ContentDigest, Kernel: r.Kernel, MemTotalBytes: r.MemTotalBytes, UptimeSeconds: r.UptimeSeconds}
		viaJSON(r.Registration, &out.Report.Registration)
	}
	return out
}

// viaJSON copies src into dst, a wire type with the same JSON fields: for
// the agent's records, which mirror the state's field by field.
func viaJSON(src, dst any) {
	b, err := json.Marshal(src)
	if err == nil {
		_ = json.Unmarshal(b, dst)
	}
}

// StatusOut returns the wire form of a node with its status.
func StatusOut(n state.NodeStatus) NodeStatus {
	out := NodeStatus{NodeSpec: NodeOut(&n.Node), Status: Status{Boot: BootOut(n.Status.Boot), Boots: n.Status.Boots, History: n.Status.History}}
	if p := n.Status.Pin; p != nil {
		out.Status.Pin = &Pin{Ref: p.Ref, Digest: p.Digest, Boot: p.Boot}
	}
	if n.Agent != nil {
		out.Agent = new(AgentStatus)
		viaJSON(n.Agent, out.Agent)
	}
	return out
}

// PlanOut returns the wire form of a plan.
func PlanOut(p plan.Plan) *Plan {
	out := &Plan{Hostname: p.Hostname, Profiles: p.Profiles, Image: p.Image, Digest: p.Digest, KernelArgs: p.KernelArgs,
		Modules: p.Modules, BootFile: p.BootFile, Root: Root{Mode: p.Root.Mode, Size: p.Root.Size}, Network: p.Network,
		Tags: p.Tags, Values: p.Values, Sources: p.Sources, Interfaces: make([]PlanInterface, 0, len(p.Interfaces))}
	if out.Modules == nil {
		out.Modules = []string{}
	}
	for _, i := range p.Interfaces {
		pi := PlanInterface{Name: i.Name, MAC: i.MAC, ClientID: i.ClientID, Gateway: addrString(i.Gateway), MTU: i.MTU}
		if i.Address.IsValid() {
			pi.Address = i.Address.String()
		}
		for _, d := range i.DNS {
			pi.DNS = append(pi.DNS, d.String())
		}
		out.Interfaces = append(out.Interfaces, pi)
	}
	return out
}

// Printable replaces control characters (terminal escapes included) and
// invalid UTF-8 in s, so that text a node sent is safe to print.
func Printable(s string) string { return state.Printable(s) }

// RowOut returns a node's line of a listing.
func RowOut(n state.NodeStatus) NodeRow {
	r := NodeRow{Name: n.Name, Profiles: n.Profiles, Image: n.Image, State: string(n.Status.State), Boots: n.Status.Boots}
	if len(n.Interfaces) > 0 {
		i := n.Interfaces[0]
		r.IP, r.MAC, r.ClientID = addrString(i.IP), i.MAC, i.ClientID
	}
	if p := n.Status.Pin; p != nil {
		r.Image = p.Ref + "@" + p.Digest
	}
	if tl := n.Status.Timeline; len(tl) > 0 {
		e := tl[len(tl)-1]
		r.Last = &Event{Time: e.Time, Step: string(e.Step), Detail: e.Detail}
	}
	return r
}
