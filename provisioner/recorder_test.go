package provisioner

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// recorderHead is one node's head as ramboot serve wires it for a DHCP
// packet: the DHCP server's decision, then the recorder, on a state.
type recorderHead struct {
	db  *state.DB
	rec *recorder
	srv *dhcp.Server
	hw  net.HardwareAddr
	ip  netip.Addr
}

// newRecorderHead makes a head on 10.77.0.1/24 with one node, name, with
// mac and ip.
func newRecorderHead(t *testing.T, name, mac, ip string) *recorderHead {
	t.Helper()
	db, err := state.Open(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	h := &recorderHead{db: db, rec: newRecorder(db, nil), ip: netip.MustParseAddr(ip)}
	if err := db.AddNode(state.Node{Name: name, Interfaces: []inventory.Interface{{MAC: mac, IP: h.ip}}}); err != nil {
		t.Fatal(err)
	}
	heads := NewNodes(db, &plan.Defaults{Image: "default", Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24")}}}, "http://10.77.0.1")
	h.srv = &dhcp.Server{
		ServerIP:  netip.MustParseAddr("10.77.0.1"),
		Inventory: heads,
		BootFiles: map[pxe.Arch]string{pxe.Arch(0): "undionly.kpxe", pxe.Arch(7): "snponly.efi"},
	}
	h.hw, _ = net.ParseMAC(mac)
	return h
}

// send answers req and records the event, as the daemon does, and waits
// for the write (the recorder posts: the reply does not wait for it).
func (h *recorderHead) send(t *testing.T, req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	t.Helper()
	reply, ev, err := h.srv.Handle(context.Background(), dhcp.Request{Msg: req})
	if err != nil || reply == nil {
		t.Fatalf("%s not answered: %v", req.MessageType(), err)
	}
	h.rec.dhcp(ev)
	h.db.Flush()
	return reply
}

// discover returns a DHCPDISCOVER of the node's UEFI x64 firmware (vendor
// class "PXEClient:Arch:00007:UNDI:003016") or of another client with
// vendor class and extra options.
func (h *recorderHead) discover(t *testing.T, vendorClass string, opts ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	mods := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier(vendorClass))}
	if strings.Contains(vendorClass, "Arch:00007") {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
	}
	m, err := dhcpv4.NewDiscovery(h.hw, append(mods, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// booted runs node name's boot on to booted: script, overlay, the agent's
// registration.
func (h *recorderHead) booted(t *testing.T, name string, r state.Report) {
	t.Helper()
	nonce, err := h.db.NewBootNonce(name, state.Event{Step: state.StepScript})
	if err != nil {
		t.Fatal(err)
	}
	tok := state.NewToken()
	if err := h.db.ConsumeNonce(name, nonce, tok, state.Event{Step: state.StepOverlay}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.db.Register(name, tok, h.ip, r, state.Agent{}); err != nil {
		t.Fatal(err)
	}
}

const uefiFirmware = "PXEClient:Arch:00007:UNDI:003016"

// TestSpoofedDiscoverKeepsHistory sends a firmware DHCPDISCOVER with a
// booted node's MAC through the DHCP server's decision and the recorder,
// as ramboot serve does with a packet: the head offers (it cannot tell a
// spoof from a reboot) and starts a new boot record, but the booted boot,
// its timeline and its report stay, and the node's token still works for
// nothing but that boot.
func TestSpoofedDiscoverKeepsHistory(t *testing.T) {
	h := newRecorderHead(t, "n1", "52:54:00:00:00:01", "10.77.0.11")
	db := h.db

	// Boot 1 runs to booted.
	h.send(t, h.discover(t, uefiFirmware))
	h.booted(t, "n1", state.Report{State: "ready", Kernel: "6.1"})
	booted, _ := db.Get("n1")

	// The spoofed DISCOVER.
	h.send(t, h.discover(t, uefiFirmware))
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
	h := newRecorderHead(t, "n2", "52:54:00:00:00:02", "10.77.0.12")
	h.send(t, h.discover(t, "PXEClient:Arch:00000:UNDI:002001", dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))))
	h.booted(t, "n2", state.Report{State: "ready"})
	osReq, _ := dhcpv4.NewDiscovery(h.hw)
	if reply := h.send(t, osReq); reply.BootFileName != "" || reply.Options.Has(dhcpv4.OptionBootfileName) {
		t.Errorf("the OS's DHCP got boot file %q", reply.BootFileName)
	}
	n, _ := h.db.Get("n2")
	if n.Status.ID != 1 || n.Status.State != state.StateBooted || n.Status.Timeline[len(n.Status.Timeline)-1].Step != state.StepLease {
		t.Fatalf("after the OS's DISCOVER: boot %d %s, timeline %v", n.Status.ID, n.Status.State, n.Status.Timeline)
	}
}

// TestRepeatedDiscoverKeepsNonce: a busy head may answer a DISCOVER that
// iPXE retransmitted after the node, served by the first answer, already
// fetched its script. That late offer (same transaction id) must not start
// a new boot, which would void the script's nonce and make the head refuse
// the node's overlay (the boot storm found 20 of 1,000 nodes rebooting for
// it); a DISCOVER of a new transaction after the script still starts one.
// The firmware's own retransmission starts no second boot either.
func TestRepeatedDiscoverKeepsNonce(t *testing.T) {
	h := newRecorderHead(t, "n3", "52:54:00:00:00:03", "10.77.0.13")
	db := h.db
	boot := func(t *testing.T) int {
		t.Helper()
		n, err := db.Get("n3")
		if err != nil {
			t.Fatal(err)
		}
		return n.Status.ID
	}
	fw := h.discover(t, uefiFirmware)
	ipxe := func(t *testing.T) *dhcpv4.DHCPv4 {
		return h.discover(t, "PXEClient:Arch:00007:UNDI:003010", dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	}

	h.send(t, fw)
	h.send(t, fw) // the firmware's retransmission, answered too
	if id := boot(t); id != 1 {
		t.Fatalf("after the firmware's DISCOVER and its retransmission: boot %d, want 1", id)
	}
	first := ipxe(t)
	h.send(t, first)
	nonce, err := db.NewBootNonce("n3", state.Event{Step: state.StepScript})
	if err != nil {
		t.Fatal(err)
	}
	h.send(t, first) // iPXE's retransmission, answered after the script
	if err := db.CheckNonce("n3", nonce); err != nil {
		t.Fatalf("after a late answer to a retransmitted DISCOVER: %v", err)
	}
	if id := boot(t); id != 1 {
		t.Errorf("after a late answer to a retransmitted DISCOVER: boot %d, want 1", id)
	}

	h.send(t, ipxe(t)) // a new transaction: iPXE started again (a reboot into an iPXE ROM)
	if id := boot(t); id != 2 {
		t.Errorf("after a new DISCOVER past the script: boot %d, want 2", id)
	}
	if err := db.CheckNonce("n3", nonce); !errors.Is(err, state.ErrBadToken) {
		t.Errorf("the first boot's nonce after a new boot: %v, want ErrBadToken", err)
	}
}

// TestRecorderDetails: the timeline details of DHCP events, built without
// fmt on the reply path, read as they always did: who asked (firmware and
// its architecture, iPXE, HTTP boot), the address or the proxy's port, the
// boot file of an offer (and of a proxy's ack), and the xid on offers only.
func TestRecorderDetails(t *testing.T) {
	db, err := state.Open(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const mac = "52:54:00:00:00:07"
	if err := db.AddNode(state.Node{Name: "n7", Interfaces: []inventory.Interface{{MAC: mac, IP: netip.MustParseAddr("10.77.0.17")}}}); err != nil {
		t.Fatal(err)
	}
	hw, _ := net.ParseMAC(mac)
	rec := newRecorder(db, nil)
	ip := netip.MustParseAddr("10.77.0.17")
	for i, c := range []struct {
		e    dhcp.Event
		step state.Step
		want string
	}{
		{dhcp.Event{Reply: dhcp.ReplyOffer, NetBoot: true, Arch: 7, IP: ip, BootFile: "snponly.efi", XID: 0x1234}, state.StepDHCPOffer, "firmware " + pxe.Arch(7).String() + ": 10.77.0.17, boot snponly.efi"},
		{dhcp.Event{Reply: dhcp.ReplyAck, NetBoot: true, Arch: 7, IP: ip, BootFile: "snponly.efi", XID: 0x1234}, state.StepDHCPAck, "firmware " + pxe.Arch(7).String() + ": 10.77.0.17"},
		{dhcp.Event{Reply: dhcp.ReplyOffer, NetBoot: true, Arch: 0, Proxy: true, Port: 4011, BootFile: "undionly.kpxe", XID: 0x99}, state.StepDHCPOffer, "firmware " + pxe.Arch(0).String() + ": proxy (port 4011), boot undionly.kpxe"},
		{dhcp.Event{Reply: dhcp.ReplyAck, NetBoot: true, Arch: 0, Proxy: true, Port: 4011, BootFile: "undionly.kpxe"}, state.StepDHCPAck, "firmware " + pxe.Arch(0).String() + ": proxy (port 4011), boot undionly.kpxe"},
		{dhcp.Event{Reply: dhcp.ReplyOffer, NetBoot: true, IPXE: true, Arch: 7, IP: ip, BootFile: "http://h/boot/ipxe", XID: 0x55}, state.StepDHCPOffer, "iPXE: 10.77.0.17, boot http://h/boot/ipxe"},
		{dhcp.Event{Reply: dhcp.ReplyOffer, NetBoot: true, Stage: dhcp.StageHTTPBoot, Arch: 16, IP: ip, BootFile: "http://h/x.efi", XID: 0x66}, state.StepDHCPOffer, "HTTP boot " + pxe.Arch(16).String() + ": 10.77.0.17, boot http://h/x.efi"},
		{dhcp.Event{Reply: dhcp.ReplyNak, NetBoot: true, IPXE: true, Request: dhcp.RequestRequest}, state.StepIgnored, "iPXE: " + string(dhcp.RequestRequest) + " refused (NAK)"},
	} {
		c.e.MAC = hw
		rec.dhcp(c.e)
		db.Flush()
		n, err := db.Get("n7")
		if err != nil {
			t.Fatal(err)
		}
		got := n.Status.Timeline[len(n.Status.Timeline)-1]
		wantXID := uint32(0)
		if c.step == state.StepDHCPOffer {
			wantXID = c.e.XID
		}
		if got.Step != c.step || got.Detail != c.want || got.XID != wantXID {
			t.Errorf("event %d: %s %q xid %#x, want %s %q xid %#x", i, got.Step, got.Detail, got.XID, c.step, c.want, wantXID)
		}
	}
}
