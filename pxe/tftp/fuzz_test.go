package tftp_test

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/ramboot/ramboot/pxe/tftp"
)

// FuzzDatagram sends one arbitrary datagram to the server port of a live
// server (pin parses requests; this package only judges the names), then
// checks that the server still serves. Seeds: testdata/fuzz/FuzzDatagram
// and garbageSeeds.
func FuzzDatagram(f *testing.F) {
	for _, b := range garbageSeeds() {
		f.Add(b)
	}
	h := start(f, func(s *tftp.Server) {
		s.Timeout = 500 * time.Millisecond
		s.Retries = 2
		s.Observer = nil
	})
	want := h.fsys["ipxe.efi"].Data
	server := net.UDPAddrFromAddrPort(h.addr)

	// One sender for all inputs. It answers whatever the server sends it
	// (a fuzzed request may start a transfer) with an ERROR packet, so those
	// transfers end at once, and its port is never reused by the checking
	// client (pin's client accepts the first DATA it gets from the server).
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			_, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			conn.WriteToUDP(errPacket(0, "fuzz client"), from)
		}
	}()
	f.Cleanup(func() {
		conn.Close()
		<-done
	})

	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := conn.WriteToUDP(b, server); err != nil {
			t.Fatal(err)
		}
		got, _, err := h.get(t, "ipxe.efi", 0, false)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("fetch after datagram %q: %d bytes, %v", b, len(got), err)
		}
	})
}
