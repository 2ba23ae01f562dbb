package provisioner

import (
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// TestLookupCacheFollowsChanges: Lookup caches each interface's
// reservation, and every change it depends on is served at the very next
// packet: the node's own entry (host name, address), a profile of its
// chain (boot-file override), the defaults (a reload moving the gateway),
// a MAC moved to another node, and a node deleted.
func TestLookupCacheFollowsChanges(t *testing.T) {
	db, err := state.Open(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	_, err = db.ChangeInventory(false, func(inv *inventory.Inventory) error {
		inv.Profiles["base"] = &inventory.Profile{Name: "base"}
		inv.Profiles["compute"] = &inventory.Profile{Name: "compute", Inherits: []string{"base"}}
		inv.Nodes["n1"] = &inventory.Node{Name: "n1", Profiles: []string{"compute"}, Interfaces: []inventory.Interface{
			{MAC: mac.String(), IP: netip.MustParseAddr("10.77.0.11")}}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defaults := func(gw string) *plan.Defaults {
		return &plan.Defaults{Image: "default", Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24"), Gateway: netip.MustParseAddr(gw)}}}
	}
	heads := NewNodes(db, defaults("10.77.0.254"), "http://10.77.0.1")
	lookup := func() dhcp.Reservation {
		t.Helper()
		r, err := heads.Lookup(t.Context(), dhcp.Client{MAC: mac})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	change := func(fn func(inv *inventory.Inventory)) {
		t.Helper()
		if _, err := db.ChangeInventory(false, func(inv *inventory.Inventory) error { fn(inv); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	node := func(inv *inventory.Inventory, name string) *inventory.Node {
		n := *inv.Nodes[name]
		n.Interfaces = append([]inventory.Interface(nil), n.Interfaces...)
		inv.Nodes[name] = &n
		return &n
	}

	if r := lookup(); r.Hostname != "n1" || r.IP.String() != "10.77.0.11" || r.Router.String() != "10.77.0.254" || r.BootFile != "" {
		t.Fatalf("first: %+v", r)
	}
	lookup() // served from the cache from here on

	change(func(inv *inventory.Inventory) { node(inv, "n1").Hostname = "gpu01" })
	if r := lookup(); r.Hostname != "gpu01" {
		t.Errorf("after the node's host name changed: %q", r.Hostname)
	}
	change(func(inv *inventory.Inventory) { node(inv, "n1").Interfaces[0].IP = netip.MustParseAddr("10.77.0.12") })
	if r := lookup(); r.IP.String() != "10.77.0.12" {
		t.Errorf("after the node's address changed: %s", r.IP)
	}
	change(func(inv *inventory.Inventory) {
		p := *inv.Profiles["base"]
		p.BootFile = "snponly.efi"
		inv.Profiles["base"] = &p
	})
	if r := lookup(); r.BootFile != "snponly.efi" {
		t.Errorf("after a profile of the chain changed: boot file %q", r.BootFile)
	}
	heads.SetDefaults(defaults("10.77.0.253"))
	if r := lookup(); r.Router.String() != "10.77.0.253" {
		t.Errorf("after a reload: router %s", r.Router)
	}
	change(func(inv *inventory.Inventory) {
		n := node(inv, "n1")
		n.Interfaces[0].MAC = "52:54:00:00:00:09"
		inv.Nodes["n2"] = &inventory.Node{Name: "n2", Interfaces: []inventory.Interface{{MAC: mac.String(), IP: netip.MustParseAddr("10.77.0.20")}}}
	})
	if r := lookup(); r.Hostname != "n2" || r.IP.String() != "10.77.0.20" || r.BootFile != "" {
		t.Errorf("after the MAC moved to n2: %+v", r)
	}
	change(func(inv *inventory.Inventory) { delete(inv.Nodes, "n2") })
	if _, err := heads.Lookup(t.Context(), dhcp.Client{MAC: mac}); err == nil {
		t.Errorf("a deleted node's MAC still has a reservation")
	}
}
