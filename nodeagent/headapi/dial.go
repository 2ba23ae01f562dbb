package headapi

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
)

// Privileged source ports the Dialer picks from, as rresvport(3) and NFS
// clients do: only root (or CAP_NET_BIND_SERVICE) may bind them, so a
// connection from one comes from a privileged process on the node.
const (
	PrivilegedPortMin = 600
	PrivilegedPortMax = 1023
)

// Dialer dials TCP from a random privileged source port. When the process
// may not bind one (EACCES) it dials from an ephemeral port from then on;
// when the ports it tries are taken it falls back for that one connection.
type Dialer struct {
	// Timeout bounds a connect. Zero means 10 s.
	Timeout time.Duration
	// Local, when valid, is the address connections leave from; the zero
	// value lets the kernel pick (the provisioning interface's address,
	// for a head on the provisioning network).
	Local netip.Addr

	refused    atomic.Bool // binding a privileged port is not allowed here
	privileged atomic.Bool // the last connection got one
}

// Privileged reports whether the last connection left from a privileged
// port.
func (d *Dialer) Privileged() bool { return d.privileged.Load() }

// DialContext connects to addr, from a privileged port if it can.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if !d.refused.Load() {
		for range 8 {
			port := PrivilegedPortMin + rand.N(PrivilegedPortMax-PrivilegedPortMin+1)
			nd := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: d.ip(), Port: port}, Control: reuseAddr}
			c, err := nd.DialContext(ctx, network, addr)
			if err == nil {
				d.privileged.Store(true)
				return c, nil
			}
			switch {
			case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
				d.refused.Store(true)
			case errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL):
				continue // that port is busy: try another
			default:
				return nil, err // the head is not there: no use trying other ports
			}
			break
		}
	}
	d.privileged.Store(false)
	nd := net.Dialer{Timeout: timeout}
	if ip := d.ip(); ip != nil {
		nd.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return nd.DialContext(ctx, network, addr)
}

// ip returns Local as a net.IP, nil when it is not set.
func (d *Dialer) ip() net.IP {
	if !d.Local.IsValid() {
		return nil
	}
	return net.IP(d.Local.AsSlice())
}

// NewTransport returns an HTTP transport that dials through a new Dialer,
// ignores proxy settings (the head is on the provisioning network) and
// keeps one idle connection, so that heartbeats reuse it.
func NewTransport() *http.Transport {
	d := &Dialer{}
	return &http.Transport{
		Proxy:               nil,
		DialContext:         d.DialContext,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     5 * time.Minute,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}

// reuseAddr sets SO_REUSEADDR, so a port whose earlier connection is in
// TIME_WAIT can be bound again (to another peer; the same peer gives
// EADDRNOTAVAIL at connect, and the Dialer tries another port).
func reuseAddr(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return serr
}
