package storm

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// bufSize is the read buffer of a download: large reads keep the
// generator's CPU per byte low.
const bufSize = 256 << 10

// ipxeWindow is iPXE's TCP receive window (TCP_MAX_WINDOW_SIZE in its
// tcp.h: 256 KiB). Every simulated node's connections get a receive
// buffer that advertises it: the head meets the windows real nodes
// offer, and a thousand nodes that the generator drains late cannot
// exhaust the host's TCP memory (tcp_mem), which would drop packets and
// stall connections in retransmission timeouts that no real node sees.
const ipxeWindow = 256 << 10

func (r *runner) buffer() *[]byte {
	if b, ok := r.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, bufSize)
	return &b
}

// stallError is a read that waited longer than the stall timeout.
type stallError struct{ d time.Duration }

func (e stallError) Error() string   { return fmt.Sprintf("nothing received for %s", e.d) }
func (e stallError) Timeout() bool   { return true }
func (e stallError) Temporary() bool { return false }

// stallConn fails a read that waits longer than d, as iPXE's TCP gives up
// on a silent server.
type stallConn struct {
	net.Conn
	d time.Duration
}

func (c *stallConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.d))
	n, err := c.Conn.Read(p)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return n, stallError{c.d}
	}
	return n, err
}

// httpClient is a node's iPXE HTTP client: from the node's address, one
// connection kept alive (iPXE pools its connections), no compression, no
// proxy, a download cut when it stalls.
func (r *runner) httpClient(local netip.Addr) *http.Client {
	return newHTTPClient(local, r.cfg.HTTPStall)
}

func newHTTPClient(local netip.Addr, stall time.Duration) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice()}, Timeout: stall, KeepAlive: -1,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, ipxeWindow)
			})
			if err != nil {
				return err
			}
			return serr
		}}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &stallConn{Conn: c, d: stall}, nil
		},
		Proxy:                 nil,
		MaxIdleConnsPerHost:   1,
		DisableCompression:    true,
		ResponseHeaderTimeout: stall,
		ReadBufferSize:        64 << 10,
	}}
}
