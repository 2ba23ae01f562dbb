package tftp

import (
	"bufio"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// datagram is where a request came from and to.
type datagram struct {
	peer    netip.AddrPort // the client (IPv4 unmapped, IPv6 with its zone)
	dst     netip.Addr     // the address it was sent to; zero when unknown
	ifindex int            // the interface it came in on; 0 when unknown
}

// requestConn is the server socket: it reads requests with the address and
// interface they came to (IP_PKTINFO, IPV6_PKTINFO) and sends refusals
// from that address.
type requestConn struct {
	conn net.PacketConn
	p4   *ipv4.PacketConn // one of p4 and p6 is set on a *net.UDPConn
	p6   *ipv6.PacketConn
	raw  syscall.RawConn

	mu   sync.Mutex
	mtus map[int]mtuEntry
}

type mtuEntry struct {
	mtu int
	at  time.Time
}

// mtuTTL is how long an interface's MTU is cached.
const mtuTTL = 10 * time.Second

func newRequestConn(conn net.PacketConn) (*requestConn, error) {
	c := &requestConn{conn: conn, mtus: map[int]mtuEntry{}}
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		return c, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c.raw = raw
	if uc.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
		c.p4 = ipv4.NewPacketConn(uc)
		err = c.p4.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	} else {
		c.p6 = ipv6.NewPacketConn(uc)
		err = c.p6.SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	}
	return c, err
}

// read reads one datagram.
func (c *requestConn) read(b []byte) (int, datagram, error) {
	var d datagram
	var n int
	var from net.Addr
	var err error
	switch {
	case c.p4 != nil:
		var cm *ipv4.ControlMessage
		n, cm, from, err = c.p4.ReadFrom(b)
		if cm != nil {
			d.ifindex = cm.IfIndex
			d.dst, _ = netip.AddrFromSlice(cm.Dst.To4())
		}
	case c.p6 != nil:
		var cm *ipv6.ControlMessage
		n, cm, from, err = c.p6.ReadFrom(b)
		if cm != nil {
			d.ifindex = cm.IfIndex
			d.dst, _ = netip.AddrFromSlice(cm.Dst)
		}
	default:
		n, from, err = c.conn.ReadFrom(b)
	}
	if ua, ok := from.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		d.peer = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return n, d, err
}

// reply sends b to the client of in from the address it wrote to.
func (c *requestConn) reply(b []byte, in datagram) {
	to := net.UDPAddrFromAddrPort(in.peer)
	unicast := in.dst.IsValid() && !in.dst.IsMulticast() && in.dst != netip.AddrFrom4([4]byte{255, 255, 255, 255})
	switch {
	case c.p4 != nil && unicast:
		c.p4.WriteTo(b, &ipv4.ControlMessage{Src: net.IP(in.dst.AsSlice()), IfIndex: in.ifindex}, to)
	case c.p6 != nil && unicast:
		c.p6.WriteTo(b, &ipv6.ControlMessage{Src: net.IP(in.dst.AsSlice()), IfIndex: in.ifindex}, to)
	default:
		c.conn.WriteTo(b, to)
	}
}

// limit is the largest block size for a request that came in as in: max,
// capped so that a DATA packet fits the interface's MTU unfragmented; 512
// when the interface is unknown.
func (c *requestConn) limit(in datagram, max int) int {
	if in.ifindex == 0 || c.raw == nil {
		return 512
	}
	mtu := c.mtu(in.ifindex)
	if mtu == 0 {
		return max
	}
	headers := 20 + 8 + 4 // IPv4, UDP, TFTP
	if c.p6 != nil {
		headers = 40 + 8 + 4
	}
	return min(max, mtu-headers)
}

// mtu returns the MTU of interface ifindex as the server socket's network
// namespace sees it (ioctls on the socket), 0 when it cannot tell.
func (c *requestConn) mtu(ifindex int) int {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.mtus[ifindex]; ok && now.Sub(e.at) < mtuTTL {
		return e.mtu
	}
	mtu := 0
	c.raw.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			return
		}
		ifr.SetUint32(uint32(ifindex))
		if unix.IoctlIfreq(int(fd), unix.SIOCGIFNAME, ifr) != nil {
			return
		}
		named, err := unix.NewIfreq(ifr.Name())
		if err != nil || unix.IoctlIfreq(int(fd), unix.SIOCGIFMTU, named) != nil {
			return
		}
		mtu = int(named.Uint32())
	})
	c.mtus[ifindex] = mtuEntry{mtu, now}
	return mtu
}

// namespace returns a file descriptor of the server socket's network
// namespace, or -1.
func (c *requestConn) namespace() int {
	ns := -1
	if c.raw != nil {
		c.raw.Control(func(fd uintptr) { ns = socketNamespace(int(fd)) })
	}
	return ns
}

// netascii reads a file as netascii (RFC 764): LF becomes CR LF, a bare CR
// becomes CR NUL.
type netascii struct {
	r    *bufio.Reader
	next byte // a byte owed after the CR just returned
	owed bool
}

func (n *netascii) Read(p []byte) (int, error) {
	i := 0
	for i < len(p) {
		if n.owed {
			p[i] = n.next
			n.owed = false
			i++
			continue
		}
		b, err := n.r.ReadByte()
		if err != nil {
			if i > 0 {
				return i, nil
			}
			return 0, err
		}
		switch b {
		case '\n':
			p[i], n.next, n.owed = '\r', '\n', true
		case '\r':
			p[i], n.next, n.owed = '\r', 0, true
		default:
			p[i] = b
		}
		i++
	}
	return i, nil
}
