package tftp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// Listen opens a UDP socket on addr for Serve and asks the kernel to report
// the destination address and interface of each datagram. Requests that
// reach a socket before that is on are served with 512-byte blocks, so a
// caller that makes its own socket should set the same options (pin/tftp
// sets them only once Serve runs) or use Listen.
//
// The socket is bound without SO_REUSEADDR, so a second TFTP server on the
// same address fails here; its error wraps syscall.EADDRINUSE and names the
// process that holds the port when it can be found.
func Listen(ctx context.Context, addr string) (*net.UDPConn, error) {
	var lc net.ListenConfig
	return listen(ctx, lc, "udp", addr, addr)
}

// ListenIPv6 opens a UDP socket for Serve on every IPv6 address of the
// network interface iface, port port: [::]:PORT bound to the interface
// (SO_BINDTODEVICE, IPV6_V6ONLY), so it serves the interface's link-local
// and global addresses, including those added later (a bridge gets its
// link-local address only once a port has carrier). Replies leave from the
// address a request came to, link-local ones with the client's zone. It
// needs CAP_NET_RAW for SO_BINDTODEVICE on kernels before 5.7, and does not
// conflict with an IPv4 socket on the same port.
func ListenIPv6(ctx context.Context, iface string, port int) (*net.UDPConn, error) {
	if iface == "" {
		return nil, errors.New("listen tftp ipv6: no interface name")
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); serr != nil {
				serr = fmt.Errorf("set IPV6_V6ONLY: %w", serr)
				return
			}
			if serr = unix.BindToDevice(int(fd), iface); serr != nil {
				serr = fmt.Errorf("bind to device %s: %w", iface, serr)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	bind := net.JoinHostPort("::", strconv.Itoa(port))
	return listen(ctx, lc, "udp6", bind, bind+" on "+iface)
}

// listen opens the socket on bind and turns on the control messages pin
// reads; name is the address errors give.
func listen(ctx context.Context, lc net.ListenConfig, network, bind, name string) (*net.UDPConn, error) {
	pc, err := lc.ListenPacket(ctx, network, bind)
	if errors.Is(err, syscall.EADDRINUSE) {
		holder := "another process"
		if ua, rerr := net.ResolveUDPAddr(network, bind); rerr == nil {
			if h := udpsock.Holders(ua.Port); h != "" {
				holder = h
			}
		}
		return nil, fmt.Errorf("listen tftp %s: another TFTP server is already serving this address (%s): %w", name, holder, err)
	}
	if err != nil {
		return nil, fmt.Errorf("listen tftp %s: %w", name, err)
	}
	conn := pc.(*net.UDPConn)
	if la := conn.LocalAddr().(*net.UDPAddr); la.IP.To4() != nil {
		err = ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	} else {
		err = ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("listen tftp %s: %w", name, err)
	}
	return conn, nil
}
