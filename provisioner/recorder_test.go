package provisioner

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// TestSpoofedDiscoverKeepsHistory sends a firmware DHCPDISCOVER with a
// booted node's MAC through the DHCP server's decision and the recorder,
// as ramboot serve does with a packet: the head offers (it cannot tell a
// spoof from a reboot) and starts a new boot record, but the booted boot,
// its timeline and its report stay, and the node's token still works for
// nothing but that boot.
func TestSpoofedDiscoverKeepsHistory(t *testing.T) {
	db, err := state.Open(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const mac = "52:54:00:00:00:01"
	if err := db.AddNode(state.Node{Name: "n1", Interfaces: []inventory.Interface{{MAC: mac, IP: netip.MustParseAddr("10.77.0.11")}}}); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(db, nil)
	heads := NewNodes(db, &plan.Defaults{Image: "default", Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24")}}}, "http://10.77.0.1")
	srv := &dhcp.Server{
		ServerIP:  netip.MustParseAddr("10.77.0.1"),
		Inventory: heads,
		BootFiles: map[pxe.Arch]string{pxe.Arch(7): "snponly.efi"},
	}
	hw, _ := net.ParseMAC(mac)
	discover := func(t *testing.T) {
		t.Helper()
		req, err := dhcpv4.NewDiscovery(hw,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		if err != nil {
			t.Fatal(err)
		}
		reply, ev, err := srv.Handle(context.Background(), dhcp.Request{Msg: req})
		if err != nil || reply == nil {
			t.Fatalf("DISCOVER not answered: %v", err)
		}
		rec.dhcp(ev)
		db.Flush() // the recorder posts: the reply did not wait for the write
	}

	// Boot 1 runs to booted.
	discover(t)
	nonce, err := db.NewBootNonce("n1", state.Event{Step: state.StepScript})
	if err != nil {
		t.Fatal(err)
	}
	tok := state.NewToken()
	if err := db.ConsumeNonce("n1", nonce, tok, state.Event{Step: state.StepOverlay}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Register("n1", tok, netip.MustParseAddr("10.77.0.11"), state.Report{State: "ready", Kernel: "6.1"}, state.Agent{}); err != nil {
		t.Fatal(err)
	}
	booted, _ := db.Get("n1")

	// The spoofed DISCOVER.
	discover(t)
	n, _ := db.Get("n1")
	if n.Status.ID != 2 || !slices.Equal(n.Status.History, []int{1}) {
		t.Fatalf("after the DISCOVER: %+v", n.Status)
	}
	b1, err := db.BootByID("n1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if b1.State != state.StateBooted || b1.Report == nil || len(b1.Timeline) != len(booted.Status.Timeline) {
		t.Fatalf("boot 1 after a spoofed DISCOVER: %+v; was %+v", b1, booted.Status.Boot)
	}
}

// TestOSDHCPStartsNoBoot: a booted node's own OS renewing its address (a
// DISCOVER without PXE options, as systemd-networkd sends) gets its
// address and no boot file, and starts no boot record: the node stays
// booted.
func TestOSDHCPStartsNoBoot(t *testing.T) {
	db, err := state.Open(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const mac = "52:54:00:00:00:02"
	if err := db.AddNode(state.Node{Name: "n2", Interfaces: []inventory.Interface{{MAC: mac, IP: netip.MustParseAddr("10.77.0.12")}}}); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(db, nil)
	heads := NewNodes(db, &plan.Defaults{Image: "default", Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24")}}}, "http://10.77.0.1")
	srv := &dhcp.Server{ServerIP: netip.MustParseAddr("10.77.0.1"), Inventory: heads}
	hw, _ := net.ParseMAC(mac)
	send := func(t *testing.T, req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		t.Helper()
		reply, ev, err := srv.Handle(context.Background(), dhcp.Request{Msg: req})
		if err != nil || reply == nil {
			t.Fatalf("not answered: %v", err)
		}
		rec.dhcp(ev)
		db.Flush()
		return reply
	}
	fw, _ := dhcpv4.NewDiscovery(hw, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)))
	send(t, fw)
	nonce, _ := db.NewBootNonce("n2", state.Event{Step: state.StepScript})
	tok := state.NewToken()
	if err := db.ConsumeNonce("n2", nonce, tok, state.Event{Step: state.StepOverlay}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Register("n2", tok, netip.MustParseAddr("10.77.0.12"), state.Report{State: "ready"}, state.Agent{}); err != nil {
		t.Fatal(err)
	}
	osReq, _ := dhcpv4.NewDiscovery(hw)
	if reply := send(t, osReq); reply.BootFileName != "" || reply.Options.Has(dhcpv4.OptionBootfileName) {
		t.Errorf("the OS's DHCP got boot file %q", reply.BootFileName)
	}
	n, _ := db.Get("n2")
	if n.Status.ID != 1 || n.Status.State != state.StateBooted || n.Status.Timeline[len(n.Status.Timeline)-1].Step != state.StepLease {
		t.Fatalf("after the OS's DISCOVER: boot %d %s, timeline %v", n.Status.ID, n.Status.State, n.Status.Timeline)
	}
}
