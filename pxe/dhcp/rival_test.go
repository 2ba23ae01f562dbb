package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// ipv4UDP wraps payload in UDP and IPv4 headers, as a SOCK_DGRAM packet
// socket delivers it. Checksums are left zero: the detector does not
// check them (the kernel has, for packets it received).
func ipv4UDP(src netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 28, 28+len(payload))
	b[0] = 0x45 // IPv4, 20-byte header
	binary.BigEndian.PutUint16(b[2:4], uint16(28+len(payload)))
	b[8] = 64
	b[9] = 17 // UDP
	s := src.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], []byte{255, 255, 255, 255})
	binary.BigEndian.PutUint16(b[20:22], sport)
	binary.BigEndian.PutUint16(b[22:24], dport)
	binary.BigEndian.PutUint16(b[24:26], uint16(8+len(payload)))
	return append(b, payload...)
}

// serverReply is a reply of type mt from the server id to mac; id ""
// leaves option 54 out.
func serverReply(mac net.HardwareAddr, mt dhcpv4.MessageType, id string) []byte {
	mods := []dhcpv4.Modifier{
		dhcpv4.WithReply(pkt(mac, dhcpv4.MessageTypeDiscover)),
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(net.ParseIP("10.77.0.150")),
	}
	if id != "" {
		mods = append(mods, dhcpv4.WithServerIP(net.ParseIP(id)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(id))))
	}
	p, err := dhcpv4.New(mods...)
	if err != nil {
		panic(err)
	}
	return p.ToBytes()
}

// rivalOffer is a DHCPOFFER from server id (also the IP source) to mac.
func rivalOffer(mac net.HardwareAddr, id string) []byte {
	return ipv4UDP(netip.MustParseAddr(id), 67, 68, serverReply(mac, dhcpv4.MessageTypeOffer, id))
}

// TestRivalDetector feeds the detector the packets a packet socket would
// deliver, over a real UDP socket on loopback, and checks what counts as a
// rival: an OFFER from another server to a MAC the inventory knows.
func TestRivalDetector(t *testing.T) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sender, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	var logMu sync.Mutex
	d := &RivalDetector{
		ServerIP:  serverIP,
		Inventory: &testInventory{},
		Metrics:   NewMetrics(reg),
		Logger:    slog.New(slog.NewTextHandler(syncWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	runServer(t, func(ctx context.Context) error { return d.Serve(ctx, conn) })
	send := func(b []byte) {
		t.Helper()
		if _, err := sender.WriteTo(b, conn.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	rival := func(server string) float64 {
		return gatherOr0(t, reg, `ramboot_dhcp_rival_offers_total{server="`+server+`"}`)
	}
	other := func() float64 { return testutil.ToFloat64(d.Metrics.otherOffers) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// Not counted: this server's own offer, replies that are not offers,
	// datagrams that are not DHCP replies, garbage, an offer to a stranger.
	// The stranger's offer is sent last; once it is counted, the detector
	// has seen the others too.
	send(rivalOffer(macNode1, serverIP.String()))
	send(ipv4UDP(netip.MustParseAddr("10.77.0.9"), 67, 68, serverReply(macNode1, dhcpv4.MessageTypeAck, "10.77.0.9")))
	send(ipv4UDP(netip.MustParseAddr("10.77.0.9"), 68, 67, serverReply(macNode1, dhcpv4.MessageTypeOffer, "10.77.0.9")))
	send(ipv4UDP(netip.MustParseAddr("10.77.0.9"), 67, 68, []byte("not dhcp")))
	send([]byte{0x45, 0, 0})
	send(rivalOffer(macNode1, "10.77.0.9")[:40])
	send(rivalOffer(macNobody, "10.77.0.9"))
	waitFor("the offer to an unknown MAC", func() bool { return other() == 1 })
	if got := rival("10.77.0.9") + rival(serverIP.String()); got != 0 {
		t.Fatalf("rival offers = %v before any rival offer to a node", got)
	}

	// A rival: four offers to a node, one Warn line.
	for range 4 {
		send(rivalOffer(macNode1, "10.77.0.9"))
	}
	waitFor("four rival offers", func() bool { return rival("10.77.0.9") == 4 })
	// No option 54: the IP source names the server.
	send(ipv4UDP(netip.MustParseAddr("10.77.0.8"), 67, 68, serverReply(macNode2, dhcpv4.MessageTypeOffer, "")))
	waitFor("the offer without option 54", func() bool { return rival("10.77.0.8") == 1 })

	// Server values from packets are bounded: 16 label values, then other.
	for i := range 20 {
		send(rivalOffer(macNode1, fmt.Sprintf("10.77.1.%d", i)))
	}
	waitFor("the offers of 20 more servers", func() bool { return rival("other") == 6 })
	if n, err := testutil.GatherAndCount(reg, "ramboot_dhcp_rival_offers_total"); err != nil || n != maxRivalLabels+1 {
		t.Errorf("%d series of ramboot_dhcp_rival_offers_total (%v), want %d", n, err, maxRivalLabels+1)
	}

	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	warns := strings.Count(out, `level=WARN msg="rival dhcp server offered an address to a node ramboot serves; the node may boot from it" server=10.77.0.9`)
	if warns != 1 {
		t.Errorf("%d Warn lines about 10.77.0.9, want 1 (one per minute):\n%s", warns, out)
	}
	for _, want := range []string{"mac=52:54:00:00:00:01 node=n001 ip=10.77.0.150 reserved=10.77.0.11", "server=10.77.0.8"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// FuzzParseReply feeds arbitrary packets to the detector's parser: it must
// never panic, and what it accepts must carry a DHCP message.
func FuzzParseReply(f *testing.F) {
	f.Add([]byte{}) // and the seeds in testdata/fuzz/FuzzParseReply
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, src, ok := parseReply(b)
		if !ok {
			return
		}
		if msg == nil || !src.Is4() {
			t.Fatalf("parseReply accepted %x with message %v, source %v", b, msg, src)
		}
	})
}

// rivalSeeds are the packets under testdata/fuzz/FuzzParseReply.
func rivalSeeds() map[string][]byte {
	offer := rivalOffer(macNode1, "10.77.0.9")
	withOptions := bytes.Clone(offer)
	withOptions[0] = 0x46 // a 24-byte IP header: the UDP header starts 4 bytes later
	withOptions = append(withOptions[:20], append([]byte{1, 1, 1, 0}, withOptions[20:]...)...)
	return map[string][]byte{
		"rival-offer":     offer,
		"ip-options":      withOptions,
		"truncated":       offer[:40],
		"no-server-id":    ipv4UDP(netip.MustParseAddr("10.77.0.8"), 67, 68, serverReply(macNode2, dhcpv4.MessageTypeOffer, "")),
		"udp-length-long": append(offer[:24:24], 0xff, 0xff, 0, 0),
	}
}

// TestRivalDetectorProxyMode: next to a site's DHCP server, its
// address-only offers to the nodes are expected (counted as other), while
// an offer that tells a node what to boot (a boot file, or option 60
// PXEClient: another proxy) is a rival's.
func TestRivalDetectorProxyMode(t *testing.T) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sender, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	reg := prometheus.NewRegistry()
	d := &RivalDetector{ServerIP: serverIP, Inventory: &testInventory{}, Mode: ModeProxy, Metrics: NewMetrics(reg)}
	runServer(t, func(ctx context.Context) error { return d.Serve(ctx, conn) })
	send := func(b []byte) {
		t.Helper()
		if _, err := sender.WriteTo(b, conn.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	offerWith := func(server string, mods ...dhcpv4.Modifier) []byte {
		m, err := dhcpv4.FromBytes(serverReply(macNode1, dhcpv4.MessageTypeOffer, server))
		if err != nil {
			t.Fatal(err)
		}
		for _, mod := range mods {
			mod(m)
		}
		return ipv4UDP(netip.MustParseAddr(server), 67, 68, m.ToBytes())
	}
	rival := func(server string) float64 {
		return gatherOr0(t, reg, `ramboot_dhcp_rival_offers_total{server="`+server+`"}`)
	}
	send(offerWith("10.77.0.2")) // the site's server: an address only
	send(offerWith("10.77.0.7", dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient"))))
	send(offerWith("10.77.0.8", func(m *dhcpv4.DHCPv4) { m.BootFileName = "pxelinux.0" }))
	waitFor(t, 5*time.Second, "the proxy and boot-file offers", func() bool { return rival("10.77.0.7") == 1 && rival("10.77.0.8") == 1 })
	if got := rival("10.77.0.2"); got != 0 {
		t.Errorf("the site server's address-only offer counted as a rival's (%v)", got)
	}
	if got := testutil.ToFloat64(d.Metrics.otherOffers); got != 1 {
		t.Errorf("other offers = %v, want 1 (the site server's)", got)
	}
}
