package inventory_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/inventory"
)

func ifc(mac, ip string) inventory.Interface {
	return inventory.Interface{MAC: mac, IP: netip.MustParseAddr(ip)}
}

func valid() *inventory.Inventory {
	inv := inventory.New()
	inv.Profiles["base"] = &inventory.Profile{Name: "base", Settings: inventory.Settings{Image: "debian"}}
	inv.Profiles["compute"] = &inventory.Profile{Name: "compute", Inherits: []string{"base"}}
	inv.Nodes["n1"] = &inventory.Node{Name: "n1", Profiles: []string{"compute"}, Interfaces: []inventory.Interface{
		ifc("52:54:00:00:00:01", "10.0.0.11"),
		{Name: "ib0", ClientID: "ff:00:00:00:00:00:02:00:00:02:c9:00:00:02:c9:03:00:00:00:01", IP: netip.MustParseAddr("10.1.0.11")},
	}}
	return inv
}

var subnets = []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.1.0.0/24")}

// TestValidate: every kind of bad inventory is an error that names the
// node or profile, and all of them are reported at once.
func TestValidate(t *testing.T) {
	if err := valid().Validate(subnets); err != nil {
		t.Fatalf("valid inventory: %v", err)
	}
	cases := []struct {
		name string
		edit func(inv *inventory.Inventory)
		want []string
		dup  bool
	}{
		{"duplicate MAC on another node's second interface", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{ifc("52:54:00:00:00:02", "10.0.0.12"), ifc("52:54:00:00:00:01", "10.1.0.12")}}
		}, []string{"node n2 interface 1: mac 52:54:00:00:00:01 already exists (node n1)"}, true},
		{"duplicate IP", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{ifc("52:54:00:00:00:02", "10.1.0.11")}}
		}, []string{"ip 10.1.0.11 already exists (node n1)"}, true},
		{"duplicate client id, written otherwise", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{{ClientID: "FF0000000000020000 02C9000002C903000000 01", IP: netip.MustParseAddr("10.1.0.12")}}}
		}, []string{"node n2"}, false},
		{"IP outside every subnet", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{ifc("52:54:00:00:00:02", "192.168.9.9")}}
		}, []string{"node n2 interface 0: ip 192.168.9.9 is outside every configured subnet (10.0.0.0/24, 10.1.0.0/24)"}, false},
		{"the head's address", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{ifc("52:54:00:00:00:02", "10.0.0.1")}}
		}, []string{"node n2 interface 0: ip 10.0.0.1 is the head's own address"}, false},
		{"invalid MAC", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{ifc("52:54:00:zz:00:02", "10.0.0.12")}}
		}, []string{`node n2 interface 0: mac "52:54:00:zz:00:02": not an Ethernet MAC`}, false},
		{"unknown profile", func(inv *inventory.Inventory) {
			inv.Nodes["n1"].Profiles = []string{"gpu"}
		}, []string{`node n1: unknown profile "gpu"`}, false},
		{"profile cycle, and an unknown parent, at once", func(inv *inventory.Inventory) {
			inv.Profiles["base"].Inherits = []string{"compute"}
			inv.Profiles["gpu"] = &inventory.Profile{Name: "gpu", Inherits: []string{"nope"}}
		}, []string{"profile cycle: base -> compute -> base", `profile gpu: inherits unknown profile "nope"`}, false},
		{"bad settings", func(inv *inventory.Inventory) {
			inv.Profiles["base"].Root = inventory.Root{Mode: "disk", Size: "lots"}
			inv.Profiles["base"].Network = "wicked"
			inv.Profiles["base"].BootFile = "../ipxe.efi"
		}, []string{`profile base: root mode "disk"`, `profile base: root size "lots"`, `profile base: network "wicked"`, `profile base: boot file "../ipxe.efi"`}, false},
		{"no interface", func(inv *inventory.Inventory) {
			inv.Nodes["n2"] = &inventory.Node{Name: "n2"}
		}, []string{"node n2: no interface"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := valid()
			// Entries are shared between copies: edit clones.
			for k, v := range inv.Profiles {
				inv.Profiles[k] = v.Clone()
			}
			for k, v := range inv.Nodes {
				inv.Nodes[k] = v.Clone()
			}
			tc.edit(inv)
			for k, n := range inv.Nodes {
				inv.Nodes[k] = n.Normalize()
			}
			err := inv.Validate(subnets)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if tc.dup != errors.Is(err, inventory.ErrDuplicate) {
				t.Errorf("errors.Is(ErrDuplicate) = %v, want %v", !tc.dup, tc.dup)
			}
		})
	}
}

// TestChain: profiles come after the profiles they inherit, in order,
// each once.
func TestChain(t *testing.T) {
	inv := inventory.New()
	for name, parents := range map[string][]string{"base": nil, "net": {"base"}, "compute": {"base", "net"}, "gpu": {"compute"}, "site": nil} {
		inv.Profiles[name] = &inventory.Profile{Name: name, Inherits: parents}
	}
	got := strings.Join(inv.Chain(&inventory.Node{Profiles: []string{"gpu", "site", "net"}}), " ")
	if want := "base net compute gpu site"; got != want {
		t.Fatalf("chain %q, want %q", got, want)
	}
}

// TestUpgrade: a node stored by the first layout (one MAC and IP, a root
// mode of its own at the top level) reads as the same node in this one,
// and the compressed mode is a valid setting.
func TestUpgrade(t *testing.T) {
	var n inventory.Node
	if err := json.Unmarshal([]byte(`{"name":"c1","mac":"52:54:00:00:00:11","ip":"10.0.0.21","image":"debian12","rootMode":"compressed","created":"2026-11-01T00:00:00Z"}`), &n); err != nil {
		t.Fatal(err)
	}
	n.Upgrade()
	if len(n.Interfaces) != 1 || n.Interfaces[0] != ifc("52:54:00:00:00:11", "10.0.0.21") || n.Image != "debian12" ||
		n.Root != (inventory.Root{Mode: "compressed"}) || n.MAC != "" || n.IP.IsValid() || n.RootMode != "" {
		t.Fatalf("upgraded: %+v", n)
	}
	b, err := json.Marshal(n)
	if err != nil || strings.Contains(string(b), `"rootMode"`) || !strings.Contains(string(b), `"root":{"mode":"compressed"}`) {
		t.Errorf("written back: %s %v", b, err)
	}
	inv := valid()
	inv.Nodes["c1"] = &n
	if err := inv.Validate(subnets); err != nil {
		t.Errorf("a node in the compressed mode: %v", err)
	}
	n.Root.Mode = "squashfs"
	if err := inv.Validate(subnets); err == nil || !strings.Contains(err.Error(), `node c1: root mode "squashfs": want one of tmpfs, compressed`) {
		t.Errorf("an unknown root mode: %v", err)
	}
}
