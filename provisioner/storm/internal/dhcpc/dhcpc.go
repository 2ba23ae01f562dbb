// Package dhcpc carries the DHCP exchanges of many simulated clients over
// one socket, so that thousands of nodes can share one machine: as a relay
// agent (requests carry giaddr and go to every server, as a relay
// configured with several servers sends them; replies come back to
// giaddr:67) or as clients on the link (broadcast from port 68; replies,
// broadcast flag set, come back to port 68). Each exchange registers its
// transaction id, sends, waits for a reply that its accept function takes,
// and retransmits on the caller's schedule, the way firmware does.
//
//	c, err := dhcpc.ListenRelay(giaddr, []netip.AddrPort{head})
//	defer c.Close()
//	offer, st, err := c.Exchange(ctx, discover, dhcpc.FirmwareSchedule, isOffer)
package dhcpc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// Retransmission schedules: how long a client waits for a reply before
// each retransmission, and after the last.
var (
	// FirmwareSchedule is the PXE specification's, which EDK2 (OVMF)
	// follows: 4 tries, 4, 8, 16 and 32 s apart (60 s in all).
	FirmwareSchedule = []time.Duration{4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second}
	// IPXESchedule is iPXE's (config/dhcp.h): discovery starts at 1 s and
	// doubles while under 10 s: 1, 2, 4, 8 s.
	IPXESchedule = []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
)

// ErrTimeout means no acceptable reply came within the schedule.
var ErrTimeout = errors.New("dhcp: no reply")

// ErrClosed means the Conn was closed.
var ErrClosed = errors.New("dhcp: connection closed")

// Stats describe one exchange.
type Stats struct {
	// Sent counts the requests sent (1 + retransmissions).
	Sent int
	// Replies counts the replies received for this transaction, accepted
	// or not (a second server's offer, a NAK).
	Replies int
}

// Counters are a Conn's totals.
type Counters struct {
	// Sent counts datagrams sent (one per server in relay mode).
	Sent int64
	// Received counts replies read.
	Received int64
	// Stray counts replies for no exchange in progress (a late answer to
	// a retransmitted request, a second server's offer).
	Stray int64
	// Malformed counts datagrams that did not decode.
	Malformed int64
	// Dropped counts replies the kernel dropped at this socket (its
	// receive buffer was full), -1 when unknown: the generator's loss, not
	// the head's.
	Dropped int64
}

// Conn is one socket shared by many exchanges.
type Conn struct {
	conn    *net.UDPConn
	relay   netip.Addr       // giaddr; zero on the link
	servers []netip.AddrPort // where requests go

	mu      sync.Mutex
	waiting map[uint32]chan *dhcpv4.DHCPv4
	closed  bool

	sent, received, stray, malformed atomic.Int64
	done                             chan struct{}
}

// ListenRelay opens a relay agent's socket on giaddr:67 that sends every
// request to each of servers (their port 67 if zero).
func ListenRelay(giaddr netip.Addr, servers []netip.AddrPort) (*Conn, error) {
	return ListenRelayPort(giaddr, dhcpv4.ServerPort, servers)
}

// ListenRelayPort is ListenRelay on another port than 67, for servers
// that answer relays there.
func ListenRelayPort(giaddr netip.Addr, port int, servers []netip.AddrPort) (*Conn, error) {
	if !giaddr.Is4() {
		return nil, fmt.Errorf("dhcp relay: giaddr %s is not an IPv4 address", giaddr)
	}
	if len(servers) == 0 {
		return nil, errors.New("dhcp relay: no server to relay to")
	}
	var targets []netip.AddrPort
	for _, s := range servers {
		if s.Port() == 0 {
			s = netip.AddrPortFrom(s.Addr(), dhcpv4.ServerPort)
		}
		targets = append(targets, s)
	}
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(giaddr, uint16(port))))
	if err != nil {
		return nil, fmt.Errorf("dhcp relay: listen on %s:%d: %w", giaddr, port, err)
	}
	setBuffers(conn)
	return start(conn, giaddr, targets), nil
}

// ListenDirect opens a socket on iface's port 68 that broadcasts requests
// to port 67 on the link, as clients without an address do.
func ListenDirect(ctx context.Context, iface string) (*Conn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			serr = unix.BindToDevice(int(fd), iface)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", dhcpv4.ClientPort))
	if err != nil {
		return nil, fmt.Errorf("dhcp client: listen on %s port %d: %w", iface, dhcpv4.ClientPort, err)
	}
	conn := pc.(*net.UDPConn)
	setBuffers(conn)
	bcast := netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), dhcpv4.ServerPort)
	return start(conn, netip.Addr{}, []netip.AddrPort{bcast}), nil
}

// socketBuffer is the receive buffer asked for: a storm's replies arrive
// in bursts, and a reply the generator's own socket drops must not be
// blamed on the head.
const socketBuffer = 16 << 20

// setBuffers asks for large socket buffers, past net.core.rmem_max where
// the process may (SO_RCVBUFFORCE, as root). Errors leave the defaults.
func setBuffers(c *net.UDPConn) {
	_ = c.SetWriteBuffer(4 << 20)
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer)
		}
	})
}

// skMeminfoDrops is the index of the drop count in SO_MEMINFO's answer
// (SK_MEMINFO_DROPS in linux/sock_diag.h).
const skMeminfoDrops = 8

// drops returns the datagrams the kernel dropped at the socket because
// its buffer was full (SO_MEMINFO), or -1 when it cannot tell.
func (c *Conn) drops() int64 {
	rc, err := c.conn.SyscallConn()
	if err != nil {
		return -1
	}
	n := int64(-1)
	_ = rc.Control(func(fd uintptr) {
		var info [9]uint32
		size := uint32(unsafe.Sizeof(info))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == 0 && size > skMeminfoDrops*4 {
			n = int64(info[skMeminfoDrops])
		}
	})
	return n
}

func start(conn *net.UDPConn, relay netip.Addr, servers []netip.AddrPort) *Conn {
	c := &Conn{conn: conn, relay: relay, servers: servers, waiting: map[uint32]chan *dhcpv4.DHCPv4{}, done: make(chan struct{})}
	go c.read()
	return c
}

// Relay returns the giaddr, or the zero Addr on the link.
func (c *Conn) Relay() netip.Addr { return c.relay }

// Counters returns the socket's totals so far.
func (c *Conn) Counters() Counters {
	return Counters{Sent: c.sent.Load(), Received: c.received.Load(), Stray: c.stray.Load(), Malformed: c.malformed.Load(), Dropped: c.drops()}
}

// Close closes the socket and waits for its reader; exchanges in progress
// end with ErrClosed.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Conn) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, _, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.received.Add(1)
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			c.malformed.Add(1)
			continue
		}
		c.mu.Lock()
		ch, ok := c.waiting[binary.BigEndian.Uint32(m.TransactionID[:])]
		c.mu.Unlock()
		if !ok {
			c.stray.Add(1)
			continue
		}
		select {
		case ch <- m:
		default:
			c.stray.Add(1) // the exchange has more replies than it can look at
		}
	}
}

// Exchange sends req (its giaddr and hop count set in relay mode) and
// waits for a reply with its transaction id and hardware address that
// accept takes, retransmitting req after each wait of schedule. It
// returns ErrTimeout when the schedule ran out.
func (c *Conn) Exchange(ctx context.Context, req *dhcpv4.DHCPv4, schedule []time.Duration, accept func(*dhcpv4.DHCPv4) bool) (*dhcpv4.DHCPv4, Stats, error) {
	var st Stats
	if len(schedule) == 0 {
		return nil, st, errors.New("dhcp: empty retransmission schedule")
	}
	if c.relay.IsValid() {
		req.GatewayIPAddr = net.IP(c.relay.AsSlice())
		req.HopCount = 1
	}
	xid := binary.BigEndian.Uint32(req.TransactionID[:])
	ch := make(chan *dhcpv4.DHCPv4, 8)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, st, ErrClosed
	}
	if _, busy := c.waiting[xid]; busy {
		c.mu.Unlock()
		return nil, st, fmt.Errorf("dhcp: transaction id %#08x already in use", xid)
	}
	c.waiting[xid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, xid)
		c.mu.Unlock()
	}()

	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i, wait := range schedule {
		if i > 0 {
			// RFC 2131 4.4.1: secs is the time since the client began.
			req.NumSeconds = uint16(min(time.Since(start)/time.Second, 65535))
		}
		if err := c.send(req); err != nil {
			return nil, st, err
		}
		st.Sent++
		timer.Reset(wait)
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil, st, ctx.Err()
			case <-c.done:
				return nil, st, ErrClosed
			case m := <-ch:
				st.Replies++
				if !sameHW(m.ClientHWAddr, req.ClientHWAddr) || !accept(m) {
					continue
				}
				return m, st, nil
			case <-timer.C:
				break wait
			}
		}
	}
	return nil, st, fmt.Errorf("%w to %s from %s after %d tries", ErrTimeout, req.MessageType(), req.ClientHWAddr, st.Sent)
}

func (c *Conn) send(req *dhcpv4.DHCPv4) error {
	b := req.ToBytes()
	for _, s := range c.servers {
		if _, err := c.conn.WriteToUDPAddrPort(b, s); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return ErrClosed
			}
			return fmt.Errorf("dhcp: send %s to %s: %w", req.MessageType(), s, err)
		}
		c.sent.Add(1)
	}
	return nil
}

func sameHW(a, b net.HardwareAddr) bool {
	return len(a) >= len(b) && string(a[:len(b)]) == string(b)
}
