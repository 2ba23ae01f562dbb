package tftp_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ramboot/ramboot/pxe/tftp"
)

// BenchmarkRefusal measures one refused read request, from the RRQ to the
// client receiving the TFTP ERROR, sequentially on loopback: over the
// per-client limit (the flood's case) and a name outside the catalogue.
// Both are answered from the server port without opening a socket. Its
// inverse is how many refusals a second the server sustains.
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
