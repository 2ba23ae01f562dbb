package dhcp

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRivalDetectorPeerHeads: offers from a peer head (several heads on
// one inventory) are not a rival's; another server's still are.
func TestRivalDetectorPeerHeads(t *testing.T) {
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
	peer := netip.MustParseAddr("10.77.0.2")
	d := &RivalDetector{ServerIP: serverIP, Inventory: &testInventory{}, Metrics: NewMetrics(reg),
		Peer: func(a netip.Addr) bool { return a == peer }}
	runServer(t, func(ctx context.Context) error { return d.Serve(ctx, conn) })
	for _, server := range []string{"10.77.0.2", "10.77.0.2", "10.77.0.9"} {
		if _, err := sender.WriteTo(rivalOffer(macNode1, server), conn.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for gatherOr0(t, reg, `ramboot_dhcp_rival_offers_total{server="10.77.0.9"}`) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the rival's offer was not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := gatherOr0(t, reg, `ramboot_dhcp_rival_offers_total{server="10.77.0.2"}`); n != 0 {
		t.Fatalf("%v offers of a peer head counted as a rival's", n)
	}
}
