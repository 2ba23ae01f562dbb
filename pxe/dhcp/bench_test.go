package dhcp

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkDiscoverBurst sends bursts of 5,000 DISCOVERs as fast as one
// socket can on loopback to a server whose inventory answers at once, and
// reports the datagrams the kernel dropped at the server socket per burst
// (ramboot_dhcp_socket_drops_total): with the kernel's default receive
// buffer (net.core.rmem_default) and with the server's 4 MiB default.
func BenchmarkDiscoverBurst(b *testing.B) {
	for _, bc := range []struct {
		name   string
		buffer int
	}{{"buffer=kernel-default", -1}, {"buffer=4MiB", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			reg := prometheus.NewRegistry()
			s := &Server{ServerIP: serverIP, Inventory: &testInventory{}, Metrics: NewMetrics(reg), ReceiveBuffer: bc.buffer}
			conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			client, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			s.relayPort = client.LocalAddr().(*net.UDPAddr).Port
			ctx, cancel := context.WithCancel(b.Context())
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, conn) }()
			defer func() { cancel(); <-done }()
			// Drain the replies so the client socket is not the bottleneck.
			go func() {
				buf := make([]byte, 1500)
				for {
					if _, _, err := client.ReadFrom(buf); err != nil {
						return
					}
				}
			}()
			discover := relayedDiscover(macNode1, 1).ToBytes()
			const burst = 5000
			sent, bursts := 0, 0
			for b.Loop() {
				for range burst {
					if _, err := client.WriteTo(discover, conn.LocalAddr()); err != nil {
						b.Fatal(err)
					}
				}
				sent += burst
				bursts++
				// Wait until every DISCOVER was either handled or dropped.
				deadline := time.Now().Add(10 * time.Second)
				for gather(b, reg, `ramboot_dhcp_requests_total{port="67",type="discover"}`)+float64(s.Metrics.drops.Total()) < float64(sent) {
					if time.Now().After(deadline) {
						b.Fatal("server did not drain its queue within 10 s")
					}
					time.Sleep(time.Millisecond)
				}
			}
			b.ReportMetric(float64(s.Metrics.drops.Total())/float64(bursts), "drops/burst")
		})
	}
}

// BenchmarkReplyPath is the work a worker does per packet, without the
// socket: decode a relayed DISCOVER from firmware, decide (an inventory
// that answers from a map), encode the OFFER.
func BenchmarkReplyPath(b *testing.B) {
	s, _ := newTestServer()
	s.Metrics = NewMetrics(nil)
	s.Observer = func(Event) {}
	req := relayedDiscover(macNode1, 1).ToBytes()
	peer := netip.MustParseAddrPort("127.0.0.1:67")
	buf := make([]byte, 0, 1500)
	b.ReportAllocs()
	for b.Loop() {
		m := s.decode(req, peer)
		reply, _ := s.respond(b.Context(), Request{Msg: m, Peer: peer, LinkAddrs: link77})
		if reply == nil {
			b.Fatal("no reply")
		}
		buf = appendMessage(buf[:0], reply)
	}
}
