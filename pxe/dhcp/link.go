package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// linkTTL is how long the addresses of an interface are cached.
const linkTTL = 5 * time.Second

// packetConn reads datagrams with the destination address and interface
// they arrived on (IP_PKTINFO) and sends replies from a chosen address out
// of a chosen interface. Without IP_PKTINFO (a socket that is not a
// *net.UDPConn) it reads and writes plainly.
type packetConn struct {
	conn net.PacketConn
	p4   *ipv4.PacketConn // nil without IP_PKTINFO
	raw  syscall.RawConn  // for the neighbour entries of unicast replies; nil without
}

// datagram is one received datagram and where it came from.
type datagram struct {
	peer    netip.AddrPort
	dst     netip.Addr
	ifindex int
}

// newPacketConn turns IP_PKTINFO on when conn is a *net.UDPConn.
func newPacketConn(conn net.PacketConn) (*packetConn, error) {
	c := &packetConn{conn: conn}
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		return c, nil
	}
	c.p4 = ipv4.NewPacketConn(uc)
	if err := c.p4.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
		return nil, fmt.Errorf("set IP_PKTINFO: %w", err)
	}
	raw, err := uc.SyscallConn()
	if err == nil {
		c.raw = raw
	}
	return c, nil
}

// read reads one datagram into b.
func (c *packetConn) read(b []byte) (int, datagram, error) {
	var d datagram
	if c.p4 == nil {
		n, peer, err := c.conn.ReadFrom(b)
		if ua, ok := peer.(*net.UDPAddr); ok {
			d.peer = unmapPort(ua.AddrPort())
		}
		return n, d, err
	}
	n, cm, peer, err := c.p4.ReadFrom(b)
	if ua, ok := peer.(*net.UDPAddr); ok {
		d.peer = unmapPort(ua.AddrPort())
	}
	if cm != nil {
		d.ifindex = cm.IfIndex
		if a, ok := netip.AddrFromSlice(cm.Dst.To4()); ok {
			d.dst = a
		}
	}
	return n, d, err
}

// batchSize is how many datagrams a worker reads (recvmmsg) and sends
// (sendmmsg) in one system call when they are queued.
const batchSize = 16

// batchBufLen is the size of each batch slot: larger datagrams arrive
// truncated and fail to decode (a DHCP message over 1500 bytes is not one a
// client sends).
const batchBufLen = 4096

// batch is one worker's buffers for reading and answering a batch.
type batch struct {
	in   []ipv4.Message
	dgs  []datagram
	out  []ipv4.Message
	outN int
	bufs [][]byte // reply buffers, one per slot
}

func newBatch(withCM bool) *batch {
	b := &batch{in: make([]ipv4.Message, batchSize), dgs: make([]datagram, batchSize),
		out: make([]ipv4.Message, batchSize), bufs: make([][]byte, batchSize)}
	for i := range b.in {
		b.in[i].Buffers = [][]byte{make([]byte, batchBufLen)}
		if withCM {
			b.in[i].OOB = ipv4.NewControlMessage(ipv4.FlagDst | ipv4.FlagInterface)
		}
		b.bufs[i] = make([]byte, 0, 1500)
	}
	return b
}

// readBatch reads at least one datagram, and as many more as are queued
// (up to batchSize), into b. It returns how many.
func (c *packetConn) readBatch(b *batch) (int, error) {
	if c.p4 == nil {
		n, d, err := c.read(b.in[0].Buffers[0])
		if err != nil {
			return 0, err
		}
		b.in[0].N, b.dgs[0] = n, d
		return 1, nil
	}
	for i := range b.in {
		b.in[i].OOB = b.in[i].OOB[:cap(b.in[i].OOB)]
	}
	n, err := c.p4.ReadBatch(b.in, 0)
	if err != nil {
		return 0, err
	}
	for i := range n {
		m := &b.in[i]
		d := datagram{}
		if ua, ok := m.Addr.(*net.UDPAddr); ok {
			d.peer = unmapPort(ua.AddrPort())
		}
		var cm ipv4.ControlMessage
		if m.NN > 0 && cm.Parse(m.OOB[:m.NN]) == nil {
			d.ifindex = cm.IfIndex
			if a, ok := netip.AddrFromSlice(cm.Dst.To4()); ok {
				d.dst = a
			}
		}
		if m.Flags&unix.MSG_TRUNC != 0 {
			m.N = 0 // a truncated datagram: too large to be a request
		}
		b.dgs[i] = d
	}
	return n, nil
}

// queue adds a reply to the batch's outgoing messages: b (in one of the
// batch's buffers) to dst from src out of ifindex, as write does.
func (c *packetConn) queue(bt *batch, b []byte, dst netip.AddrPort, src netip.Addr, ifindex int) {
	m := &bt.out[bt.outN]
	bt.outN++
	m.Buffers = append(m.Buffers[:0], b)
	m.Addr = net.UDPAddrFromAddrPort(dst)
	m.OOB = nil
	if c.p4 != nil && (ifindex != 0 || src.IsValid()) {
		cm := ipv4.ControlMessage{IfIndex: ifindex}
		if src.IsValid() {
			cm.Src = net.IP(src.AsSlice())
		}
		m.OOB = cm.Marshal()
	}
}

// flush sends the queued replies (sendmmsg) and returns how many of them
// went out, and the error that stopped the rest.
func (c *packetConn) flush(bt *batch) (int, error) {
	out := bt.out[:bt.outN]
	bt.outN = 0
	if c.p4 == nil {
		for i, m := range out {
			if _, err := c.conn.WriteTo(m.Buffers[0], m.Addr); err != nil {
				return i, err
			}
		}
		return len(out), nil
	}
	sent := 0
	for sent < len(out) {
		n, err := c.p4.WriteBatch(out[sent:], 0)
		if err != nil {
			return sent, err
		}
		sent += n
	}
	return sent, nil
}

// setNeighbour adds (or refreshes) the kernel's neighbour entry ip -> mac
// on the interface named dev, the way dnsmasq delivers a reply to a client
// that has no address yet and asked for unicast: the kernel then sends an
// ordinary UDP datagram to ip without an ARP request the client could not
// answer. It needs CAP_NET_ADMIN.
func (c *packetConn) setNeighbour(dev string, ip netip.Addr, mac net.HardwareAddr) error {
	if c.raw == nil {
		return errors.New("no socket to set a neighbour entry through")
	}
	if len(mac) != 6 || !ip.Is4() || len(dev) >= unix.IFNAMSIZ {
		return fmt.Errorf("cannot set neighbour entry %s -> %s on %q", ip, mac, dev)
	}
	var req arpreq
	req.pa.Family = unix.AF_INET
	req.pa.Addr = ip.As4()
	req.ha.Family = unix.ARPHRD_ETHER
	for i, b := range mac {
		req.ha.Data[i] = int8(b)
	}
	req.flags = atfCom
	copy(req.dev[:], dev)
	var errno syscall.Errno
	err := c.raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.SIOCSARP, uintptr(unsafe.Pointer(&req)))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return fmt.Errorf("set neighbour entry %s -> %s on %s: %w", ip, mac, dev, errno)
	}
	return nil
}

// arpreq is struct arpreq of <net/if_arp.h>, for SIOCSARP.
type arpreq struct {
	pa      unix.RawSockaddrInet4
	ha      unix.RawSockaddr
	flags   int32
	netmask unix.RawSockaddrInet4
	dev     [16]byte
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// links caches the name and IPv4 addresses of interfaces by index, as the
// network namespace its netlink handle was opened in sees them (the
// server's socket's, not that of whichever thread asks). It is safe for
// concurrent use.
type links struct {
	h  *netlink.Handle // nil: the calling thread's namespace
	mu sync.Mutex
	m  map[int]linkInfo
}

// newLinks opens the netlink handle in the calling thread's network
// namespace; without one, lookups use the standard library.
func newLinks() *links {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return &links{}
	}
	return &links{h: h}
}

// close releases the netlink handle.
func (l *links) close() {
	if l.h != nil {
		l.h.Close()
	}
}

type linkInfo struct {
	name  string
	addrs []netip.Prefix
	at    time.Time
}

// get returns the interface's name and IPv4 addresses, at most linkTTL
// old; an unknown index (an interface that went away) gives nothing.
func (l *links) get(ifindex int) linkInfo {
	if ifindex <= 0 {
		return linkInfo{}
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if li, ok := l.m[ifindex]; ok && now.Sub(li.at) < linkTTL {
		return li
	}
	li := linkInfo{at: now}
	if l.h != nil {
		if link, err := l.h.LinkByIndex(ifindex); err == nil {
			li.name = link.Attrs().Name
			addrs, _ := l.h.AddrList(link, unix.AF_INET)
			for _, a := range addrs {
				if addr, ok := netip.AddrFromSlice(a.IP.To4()); ok && a.IPNet != nil {
					ones, _ := a.Mask.Size()
					li.addrs = append(li.addrs, netip.PrefixFrom(addr, ones))
				}
			}
		}
	} else if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		li.name = ifi.Name
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil {
				continue
			}
			ones, _ := ipn.Mask.Size()
			addr, _ := netip.AddrFromSlice(ipn.IP.To4())
			li.addrs = append(li.addrs, netip.PrefixFrom(addr, ones))
		}
	}
	if l.m == nil {
		l.m = map[int]linkInfo{}
	}
	l.m[ifindex] = li
	return li
}

// atfCom is ATF_COM of <net/if_arp.h>: a complete entry (lladdr valid).
const atfCom = 0x02
