package dhcp

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe"
)

// discoveryLab is a server with a discovery range of three addresses on
// 10.77.0.0/24 and a clock the test moves.
type discoveryLab struct {
	t   *testing.T
	s   *Server
	inv *testInventory
	d   *Discovery
	now time.Time
}

var (
	rangeFirst = netip.MustParseAddr("10.77.0.200")
	rangeLast  = netip.MustParseAddr("10.77.0.202")
)

func newDiscoveryLab(t *testing.T, path string) *discoveryLab {
	t.Helper()
	d, err := OpenDiscovery(path)
	if err != nil {
		t.Fatal(err)
	}
	l := &discoveryLab{t: t, d: d, now: time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)}
	d.now = func() time.Time { return l.now }
	s, inv := newTestServer()
	s.ServerIP = netip.Addr{}
	s.Subnets = []Subnet{{
		Prefix: netip.MustParsePrefix("10.77.0.0/24"), Router: netip.MustParseAddr("10.77.0.254"),
		DNS: []netip.Addr{netip.MustParseAddr("10.77.0.1")}, MTU: 9000,
		Discovery: Range{rangeFirst, rangeLast},
	}}
	s.Discovery = d
	s.DiscoveryScriptURL = "http:///boot/discovery?mac=${mac}"
	l.s, l.inv = s, inv
	return l
}

// handle sends m from the head's link and returns the reply (nil if none).
func (l *discoveryLab) handle(m *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, Event) {
	l.t.Helper()
	reply, ev, err := l.s.Handle(l.t.Context(), Request{Msg: m, LinkAddrs: link77})
	if err != nil {
		l.t.Fatal(err)
	}
	return reply, ev
}

// dora runs DISCOVER then REQUEST for mac and returns the address bound.
func (l *discoveryLab) dora(mac net.HardwareAddr, mods ...dhcpv4.Modifier) netip.Addr {
	l.t.Helper()
	offer, ev := l.handle(pkt(mac, dhcpv4.MessageTypeDiscover, mods...))
	if offer == nil {
		l.t.Fatalf("no offer to %s: %s", mac, ev.Ignored)
	}
	ip := addrFrom(offer.YourIPAddr)
	ack, ev := l.handle(pkt(mac, dhcpv4.MessageTypeRequest, append(mods, requestIP(ip.String()), serverID("10.77.0.1"))...))
	if ack == nil {
		l.t.Fatalf("no ACK: %+v", ev)
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck {
		l.t.Fatalf("got %s, want ACK", ack.MessageType())
	}
	return ip
}

func macN(n byte) net.HardwareAddr { return net.HardwareAddr{0x52, 0x54, 0x00, 0xdd, 0x00, n} }

func TestDiscoveryLeases(t *testing.T) {
	l := newDiscoveryLab(t, filepath.Join(t.TempDir(), "discovery.json"))

	// A UEFI machine the inventory does not know: a short lease from the
	// range, the iPXE binary, and a record with what it reported.
	offer, ev := l.handle(pkt(macN(1), dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...))
	if offer == nil {
		t.Fatalf("no offer to an unknown machine: %s", ev.Ignored)
	}
	if !ev.Discovery || ev.IP != rangeFirst || offer.BootFileName != "snponly.efi" {
		t.Errorf("event %+v, file %q", ev, offer.BootFileName)
	}
	if lt := offer.IPAddressLeaseTime(0); lt != DefaultDiscoveryLease {
		t.Errorf("lease time %v, want %v", lt, DefaultDiscoveryLease)
	}
	if r := offer.Router(); len(r) != 1 || !r[0].Equal(net.ParseIP("10.77.0.254")) {
		t.Errorf("router %v", r)
	}
	if mtu := offer.Options.Get(dhcpv4.OptionInterfaceMTU); len(mtu) != 2 || int(mtu[0])<<8|int(mtu[1]) != 9000 {
		t.Errorf("MTU option % x", mtu)
	}
	ack, _ := l.handle(pkt(macN(1), dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_X86_64),
		[]dhcpv4.Modifier{requestIP(rangeFirst.String()), serverID("10.77.0.1")})...))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(net.IP(rangeFirst.AsSlice())) {
		t.Fatalf("REQUEST for the offered address: %v", ack)
	}
	m, ok := l.d.Find("52-54-00-DD-00-01")
	if !ok || m.Arch != pxe.ArchEFIx64 || !m.HasArch || m.Stage != StageFirmware ||
		!strings.HasPrefix(m.VendorClass, "PXEClient:Arch:00007") || m.IP != rangeFirst || m.Subnet != netip.MustParsePrefix("10.77.0.0/24") {
		t.Errorf("discovered machine = %+v, %v", m, ok)
	}

	// iPXE from a discovered machine gets the discovery script.
	ipxe, _ := l.handle(pkt(macN(1), dhcpv4.MessageTypeDiscover, ipxeROM()...))
	if ipxe == nil || ipxe.BootFileNameOption() != "http://10.77.0.1/boot/discovery?mac=${mac}" || !ipxe.YourIPAddr.Equal(net.IP(rangeFirst.AsSlice())) {
		t.Fatalf("iPXE discovery offer: %v", ipxe)
	}

	// Two more machines take the other two addresses; a fourth finds the
	// range full while the others hold them.
	if a := l.dora(macN(2)); a != rangeFirst.Next() {
		t.Errorf("second machine got %s", a)
	}
	if a := l.dora(macN(3)); a != rangeLast {
		t.Errorf("third machine got %s", a)
	}
	if reply, ev := l.handle(pkt(macN(4), dhcpv4.MessageTypeDiscover)); reply != nil || ev.reason != reasonPoolExhausted {
		t.Fatalf("fourth machine: reply %v, event %+v, want pool_exhausted", reply, ev)
	}
	if leases, machines, _ := l.d.Stats(); leases != 3 || machines != 4 {
		t.Errorf("stats: %d leases, %d machines, want 3 and 4", leases, machines)
	}

	// A REQUEST for another machine's address is refused.
	if nak, _ := l.handle(pkt(macN(4), dhcpv4.MessageTypeRequest, requestIP(rangeLast.String()))); nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("REQUEST for a held address: %v, want NAK", nak)
	}
	// One outside the range is another server's business.
	if reply, ev := l.handle(pkt(macN(4), dhcpv4.MessageTypeRequest, requestIP("10.77.0.50"))); reply != nil || ev.reason != reasonUnknownMAC {
		t.Fatalf("REQUEST outside the range: %v, %+v", reply, ev)
	}

	// The second machine releases its address; the fourth gets it.
	if _, ev := l.handle(pkt(macN(2), dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(net.IP(rangeFirst.Next().AsSlice())), serverID("10.77.0.1"))); !ev.Discovery {
		t.Errorf("release not applied: %+v", ev)
	}
	if a := l.dora(macN(4)); a != rangeFirst.Next() {
		t.Errorf("after the release, the fourth machine got %s", a)
	}

	// The third declines its address (someone else answers ARP for it): it
	// is held back, so the third machine finds the range full.
	if _, ev := l.handle(pkt(macN(3), dhcpv4.MessageTypeDecline, requestIP(rangeLast.String()), serverID("10.77.0.1"))); !ev.Discovery {
		t.Errorf("decline not applied: %+v", ev)
	}
	if reply, ev := l.handle(pkt(macN(3), dhcpv4.MessageTypeDiscover)); reply != nil || ev.reason != reasonPoolExhausted {
		t.Fatalf("declined address offered again: %v %+v", reply, ev)
	}
	// After DeclineHold and the leases' expiry it is lent again.
	l.now = l.now.Add(DefaultDeclineHold + time.Minute)
	if a := l.dora(macN(3)); !(Range{rangeFirst, rangeLast}).Contains(a) {
		t.Errorf("after the hold: %s", a)
	}

	// The machine is adopted: the inventory knows it now. Its next
	// request gets its reservation, and the discovery record and lease go.
	l.inv.extra.Store(&macN(1)[5])
	if offer, ev := l.handle(pkt(macN(1), dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...)); offer == nil || ev.Discovery || ev.IP != netip.MustParseAddr("10.77.0.11") {
		t.Fatalf("adopted machine: %v %+v", offer, ev)
	}
	if _, ok := l.d.Find(macN(1).String()); ok {
		t.Error("adopted machine still listed as discovered")
	}
}

func TestDiscoveryPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "discovery.json")
	l := newDiscoveryLab(t, path)
	a := l.dora(macN(1), relayInfoMod())
	l.dora(macN(2))
	if err := l.d.Flush(); err != nil {
		t.Fatal(err)
	}
	before := l.d.Machines()

	// A restarted head: the same leases and machines.
	l2 := newDiscoveryLab(t, path)
	l2.now = l.now.Add(time.Minute)
	after := l2.d.Machines()
	if len(after) != 2 || after[0].Key != before[0].Key || after[0].IP != a || after[0].CircuitID != "eth0/1/7" || after[0].RemoteID != "leaf-03" {
		t.Fatalf("after a restart: %+v\nwant %+v", after, before)
	}
	// The first machine renews from its address (ciaddr): ACK, same address.
	ack, _ := l2.handle(pkt(macN(1), dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(net.IP(a.AsSlice()))))
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("renewal after restart: %v", ack)
	}
	// A new machine does not get the addresses lent before the restart.
	if got := l2.dora(macN(3)); got != rangeLast {
		t.Errorf("new machine after restart got %s, want %s", got, rangeLast)
	}

	// A machine whose lease the head lost (the last second before a
	// crash) asks for its address again: it is free, so it gets it.
	l3 := newDiscoveryLab(t, filepath.Join(t.TempDir(), "lost.json"))
	if ack, _ := l3.handle(pkt(macN(9), dhcpv4.MessageTypeRequest, requestIP(rangeLast.String()))); ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("INIT-REBOOT for a free address: %v", ack)
	}

	// A damaged file is an error that names it, never silently replaced.
	if err := os.WriteFile(path, []byte("{\"version\":1,\"leases\":[{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDiscovery(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("damaged file: %v", err)
	}
}

func TestDiscoveryRunFlushes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "discovery.json")
	l := newDiscoveryLab(t, path)
	l.d.FlushInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.d.Run(ctx) }()
	l.dora(macN(1))
	waitFor(t, 5*time.Second, "the lease on disk", func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), rangeFirst.String())
	})
	l.dora(macN(2))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	d, err := OpenDiscovery(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(d.Machines()); n != 2 {
		t.Errorf("%d machines on disk after Run ended, want 2", n)
	}
}

func TestDiscoveryLimitsAndModes(t *testing.T) {
	t.Run("machines capped", func(t *testing.T) {
		l := newDiscoveryLab(t, "")
		l.d.MaxMachines = 2
		l.s.Subnets[0].Discovery = Range{}
		for i := range byte(5) {
			l.handle(pkt(macN(i), dhcpv4.MessageTypeDiscover))
		}
		if _, machines, dropped := l.d.Stats(); machines != 2 || dropped != 3 {
			t.Errorf("%d machines, %d dropped, want 2 and 3", machines, dropped)
		}
	})
	t.Run("InUse addresses are never lent", func(t *testing.T) {
		l := newDiscoveryLab(t, "")
		l.d.InUse = func(a netip.Addr) bool { return a == rangeFirst }
		if a := l.dora(macN(1)); a != rangeFirst.Next() {
			t.Errorf("got %s, want the first address not in use", a)
		}
	})
	t.Run("proxy mode records but lends nothing", func(t *testing.T) {
		l := newDiscoveryLab(t, "")
		l.s.Mode = ModeProxy
		reply, ev := l.handle(pkt(macN(1), dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...))
		if reply != nil || !strings.Contains(ev.Ignored, "recorded for discovery") {
			t.Fatalf("proxy mode, unknown machine: %v %+v", reply, ev)
		}
		if _, ok := l.d.Find(macN(1).String()); !ok {
			t.Error("not recorded")
		}
	})
	t.Run("no range on the subnet records only", func(t *testing.T) {
		l := newDiscoveryLab(t, "")
		l.s.Subnets[0].Discovery = Range{}
		reply, ev := l.handle(pkt(macN(1), dhcpv4.MessageTypeDiscover))
		if reply != nil || ev.reason != reasonUnknownMAC || !strings.Contains(ev.Ignored, "no discovery range") {
			t.Fatalf("%v %+v", reply, ev)
		}
	})
	t.Run("forget", func(t *testing.T) {
		l := newDiscoveryLab(t, "")
		a := l.dora(macN(1))
		m, _ := l.d.Find(macN(1).String())
		if !l.d.Forget(m.Key) || l.d.Forget(m.Key) {
			t.Fatal("Forget did not report the machine once")
		}
		if got := l.dora(macN(2)); got != a {
			t.Errorf("the forgotten machine's address %s was not lent again (got %s)", a, got)
		}
	})
}

func relayInfoMod() dhcpv4.Modifier { return dhcpv4.WithOption(relayInfo) }
