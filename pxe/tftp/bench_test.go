package tftp_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ramboot/ramboot/pxe/tftp"
)

// BenchmarkRefusal measures one refused read request, from the RRQ to the
// client receiving the TFTP ERROR, sequentially on loopback: over the
// per-client limit (the flood's case; pin has bound a transfer socket
// before the server refuses, and closes it after the ERROR) and, for
// comparison, a name outside the catalogue (the same path through pin).
// Its inverse is how many refusals a second the server sustains.
func BenchmarkRefusal(b *testing.B) {
	for _, bc := range []struct{ name, file, want string }{
		{"over-limit", "undionly.kpxe", "server busy"},
		{"not-in-catalogue", "pxelinux.0", "file not found"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := start(b, func(s *tftp.Server) {
				s.Logger, s.Observer = nil, nil // per-request logs and events are not what is measured
				s.MaxTransfersPerClient = 1
				s.Timeout = 20 * time.Second // the held transfer outlives the benchmark
				s.Retries = 1
			})
			from := netip.MustParseAddr("127.0.0.1")
			hold := dialRawFrom(b, from, h.addr)
			hold.send(b, rrq("ipxe.efi", "octet"))
			if op, _ := hold.recv(b); op != opDATA {
				b.Fatalf("held transfer: opcode %d", op)
			}
			c := dialRawFrom(b, from, h.addr)
			req := rrq(bc.file, "octet")
			for b.Loop() {
				c.peer = nil
				c.send(b, req)
				op, body := c.recv(b)
				if op != opERROR || !bytes.Contains(body, []byte(bc.want)) {
					b.Fatalf("opcode %d %q, want ERROR %s", op, body, bc.want)
				}
			}
			hold.send(b, errPacket(0, "benchmark done")) // ends the held transfer
		})
	}
}

// BenchmarkPinRequestParts measures two things pin/tftp does for every
// read request before the server's handler can refuse it: bind a UDP
// socket for the transfer (closed again after the ERROR), and look up the
// interface the request came in on (net.InterfaceByIndex, a netlink dump),
// to compare with BenchmarkRefusal.
func BenchmarkPinRequestParts(b *testing.B) {
	b.Run("bind-and-close-socket", func(b *testing.B) {
		for b.Loop() {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("interface-lookup", func(b *testing.B) {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			b.Skip("no lo")
		}
		for b.Loop() {
			if _, err := net.InterfaceByIndex(lo.Index); err != nil {
				b.Fatal(err)
			}
		}
	})
}
