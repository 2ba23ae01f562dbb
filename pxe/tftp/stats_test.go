package tftp_test

import (
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/pxe/tftp"
)

// TestTransferStats: a raw client that leaves the server's second DATA
// packet unacknowledged once. The transfer's event reports the block size
// it negotiated, every packet sent and the one retransmission, and the
// per-file metrics count them.
func TestTransferStats(t *testing.T) {
	h := start(t, func(s *tftp.Server) { s.Timeout = 100 * time.Millisecond })
	want := h.fsys["ipxe.efi"].Data // 2048 bytes: two full blocks of 1024, then an empty one
	c := dialRaw(t, h.addr)
	c.send(t, rrq("ipxe.efi", "octet", "blksize", "1024"))
	if op, _ := c.recv(t); op != opOACK {
		t.Fatalf("opcode %d, want OACK", op)
	}
	c.send(t, ack(0))
	var got []byte
	seen := map[uint16]int{}
	for block := uint16(1); ; {
		op, body := c.recv(t)
		if op != opDATA {
			t.Fatalf("opcode %d, want DATA", op)
		}
		n := uint16(body[0])<<8 | uint16(body[1])
		seen[n]++
		if n == 2 && seen[n] == 1 {
			continue // lose our ACK of block 2 the first time: the server sends it again
		}
		if n == block {
			got = append(got, body[2:]...)
			block++
		}
		c.send(t, ack(n))
		if len(body)-2 < 1024 {
			break
		}
	}
	if string(got) != string(want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	ev := h.event(t)
	// OACK, DATA 1, DATA 2 twice, DATA 3 (the empty last block).
	if ev.Err != nil || ev.BlockSize != 1024 || ev.Datagrams != 5 || ev.Retransmits != 1 || ev.Bytes != int64(len(want)) {
		t.Errorf("event = %+v, want block size 1024, 5 datagrams, 1 retransmit, %d bytes", ev, len(want))
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_retransmits_total", "ipxe.efi"}); got != 1 {
		t.Errorf("retransmits_total{file=ipxe.efi} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_bytes_total", "ipxe.efi"}); got != float64(len(want)) {
		t.Errorf("bytes_total{file=ipxe.efi} = %v, want %d", got, len(want))
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_transfers_total", "ipxe.efi"}); got != 1 {
		t.Errorf("transfers_total{file=ipxe.efi} = %v, want 1", got)
	}

	// A refused name is counted under file="other", and leaves no
	// statistics behind.
	c2 := dialRaw(t, h.addr)
	c2.send(t, rrq("../etc/passwd", "octet"))
	if op, _ := c2.recv(t); op != opERROR {
		t.Fatalf("opcode %d, want ERROR", op)
	}
	h.event(t)
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_transfers_total", "other"}); got != 1 {
		t.Errorf("transfers_total{file=other} = %v, want 1", got)
	}
}

// TestClientPortClosed: a client that asks for a file and closes its port
// (the kernel answers the server's DATA with ICMP port unreachable) ends
// its transfer at once, not after the retransmit timeout, and the event
// says the client is gone.
//
// The request is sent from a raw socket with the source port of a socket
// already closed: closing a socket after sending from it raced the
// server's first DATA, which then sat in the socket's queue and drew no
// ICMP error (a third of the runs under -race waited for the timeout).
func TestClientPortClosed(t *testing.T) {
	h := start(t, func(s *tftp.Server) { s.Timeout = 5 * time.Second })
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close() // nothing listens on port now
	raw, err := net.ListenPacket("ip4:udp", "127.0.0.1")
	if err != nil {
		t.Skipf("needs a raw socket (root): %v", err)
	}
	defer raw.Close()
	payload := rrq("undionly.kpxe", "octet")
	udp := make([]byte, 8, 8+len(payload)) // checksum 0: none (IPv4)
	binary.BigEndian.PutUint16(udp[0:], uint16(port))
	binary.BigEndian.PutUint16(udp[2:], h.addr.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)
	if _, err := raw.WriteTo(udp, &net.IPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ev := h.event(t)
	var ne net.Error
	if !errors.As(ev.Err, &ne) || !ne.Timeout() || !strings.Contains(ev.Err.Error(), "port is closed") {
		t.Errorf("event error = %v, want a timeout saying the client's port is closed", ev.Err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("transfer to a closed port ended after %v, want at once (the timeout is 5 s)", d)
	}
}

// TestNetascii: a netascii transfer sends CR LF for LF and CR NUL for CR.
func TestNetascii(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.Root.(fstest.MapFS)["text"] = &fstest.MapFile{Data: []byte("a\nb\rc")}
		s.Files = append(s.Files, "text")
	})
	c := dialRaw(t, h.addr)
	c.send(t, rrq("text", "netascii"))
	op, body := c.recv(t)
	if op != opDATA || string(body[2:]) != "a\r\nb\r\x00c" {
		t.Fatalf("opcode %d, data %q, want \"a\\r\\nb\\r\\x00c\"", op, body[2:])
	}
	c.send(t, ack(1))
	if ev := h.event(t); ev.Err != nil {
		t.Error(ev.Err)
	}
}
