// Package tftptest runs a ramboot TFTP server on loopback for tests, the
// way net/http/httptest runs HTTP servers.
//
// Usage:
//
//	addr := tftptest.Start(t, &tftp.Server{
//		Root:  fstest.MapFS{"snponly.efi": {Data: nbp}},
//		Files: []string{"snponly.efi"},
//	})
//	c, _ := pintftp.NewClient(addr.String())
package tftptest

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ramboot/ramboot/pxe/tftp"
)

// StopTimeout bounds how long the cleanup that Start registers waits for
// Serve to return after the test ends.
const StopTimeout = 15 * time.Second

// Start serves s on a new UDP socket on 127.0.0.1 with a kernel-chosen port
// and returns the socket's address. When the test ends, a cleanup stops the
// server and fails the test if Serve returned an error or did not return
// within StopTimeout.
func Start(tb testing.TB, s *tftp.Server) netip.AddrPort {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := tftp.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	addr := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("tftp server on %s: %v", addr, err)
			}
		case <-time.After(StopTimeout):
			tb.Errorf("tftp server on %s did not stop within %v", addr, StopTimeout)
		}
	})
	return addr
}
