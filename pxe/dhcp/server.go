// Package dhcp is ramboot's DHCPv4 server in reservation mode: it answers
// only the MACs its Inventory knows, with the address, network settings and
// boot file (an iPXE binary for firmware, the node's iPXE script URL for
// iPXE) that the inventory reserves for them, and ignores everyone else.
//
// Usage:
//
//	srv := &dhcp.Server{
//		ServerIP: netip.MustParseAddr("10.77.0.1"),
//		Inventory: dhcp.InventoryFunc(func(ctx context.Context, mac net.HardwareAddr) (dhcp.Reservation, error) {
//			n, ok := nodes[mac.String()]
//			if !ok {
//				return dhcp.Reservation{}, dhcp.ErrUnknown
//			}
//			return dhcp.Reservation{
//				IP: n.IP, PrefixLen: 24, Router: gw, Hostname: n.Name,
//				ScriptURL: "http://10.77.0.1/boot/ipxe?mac=" + mac.String(),
//			}, nil
//		}),
//		Metrics:  dhcp.NewMetrics(prometheus.DefaultRegisterer),
//		Observer: func(ev dhcp.Event) { timeline.Add(ev) },
//		Logger:   logger,
//	}
//	err := srv.ListenAndServe(ctx, "eth1") // until ctx ends
//
// Handle is the decision alone, for tests and for callers that do their own
// I/O; Serve runs it on a caller-made net.PacketConn, Listen makes the
// socket ListenAndServe uses.
//
// One server per link: Listen binds port 67 on the interface without
// SO_REUSEADDR, so a second DHCP server on the same interface of the same
// host (another ramboot, a dnsmasq) cannot start beside it: the one that
// starts second fails with an error naming the holder. RivalDetector
// watches the link for the servers that live on other hosts.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/pxe"
	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

const (
	// DefaultLeaseTime is the lease time (option 51) when Server.LeaseTime
	// is zero: addresses are reservations, so long leases cost nothing.
	DefaultLeaseTime = 7 * 24 * time.Hour
	// DefaultReceiveBuffer is the receive buffer asked for the server
	// socket when Server.ReceiveBuffer is zero: a few thousand requests,
	// so a boot storm waits in the queue instead of being dropped.
	DefaultReceiveBuffer = 4 << 20

	// maxInFlight bounds the requests Serve handles at once; beyond it,
	// packets wait in the socket's receive buffer.
	maxInFlight = 64
	// handleTimeout bounds one request's Inventory lookup: a client
	// retransmits after ~4 s, so a later answer is useless.
	handleTimeout = 5 * time.Second
	// maxPacket is the read buffer: the largest UDP payload.
	maxPacket = 1 << 16
)

var errNoInventory = errors.New("check dhcp server: Inventory is nil")

// Server is a DHCPv4 server in reservation mode. Set ServerIP and Inventory,
// then call ListenAndServe, or Serve on a socket of your own. A Server must
// not be changed once serving; Handle and Serve are safe for concurrent use.
type Server struct {
	// ServerIP is this server's IPv4 address on the boot network: siaddr,
	// server identifier (option 54) and TFTP server (option 66). Required.
	ServerIP netip.Addr
	// Inventory says which reservation a MAC has. Required.
	Inventory Inventory
	// BootFiles maps client architectures (option 93) to the NBP firmware
	// PXE clients get; nil means pxe.DefaultBootFiles(). A network-boot
	// client whose architecture is missing, and whose reservation names no
	// BootFile, is ignored.
	BootFiles map[pxe.Arch]string
	// LeaseTime is the lease time sent in option 51; zero means
	// DefaultLeaseTime (7 days).
	LeaseTime time.Duration
	// Observer, if set, is called synchronously with the Event of every
	// decoded packet, whether answered or not. It must be fast and safe for
	// concurrent use.
	Observer func(Event)
	// Logger receives per-packet detail at Debug, inventory failures,
	// declined addresses and send errors at Warn; nil discards.
	Logger *slog.Logger
	// Metrics, if set, counts requests, replies, ignored requests,
	// malformed packets and the datagrams the kernel dropped at the socket;
	// see NewMetrics.
	Metrics *Metrics
	// ReceiveBuffer is the receive buffer, in bytes, Serve asks for on its
	// socket (SO_RCVBUFFORCE, else SO_RCVBUF, which net.core.rmem_max
	// caps). Requests that arrive while it is full are dropped by the
	// kernel and counted in ramboot_dhcp_socket_drops_total. Default 4 MiB
	// (DefaultReceiveBuffer); negative leaves the socket as it is.
	ReceiveBuffer int

	// relayPort replaces port 67 for replies to relays (giaddr), so tests
	// on 127.0.0.1 can receive them; zero means 67.
	relayPort int
}

// ListenAndServe opens the server socket on the network interface iface
// with Listen and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, iface string) error {
	if err := s.check(); err != nil {
		return err
	}
	conn, err := Listen(ctx, iface)
	if err != nil {
		return err
	}
	return s.Serve(ctx, conn)
}

// Listen binds UDP 0.0.0.0:67 on the network interface iface for Serve:
// SO_BINDTODEVICE, so replies leave through the interface requests came in
// on, and SO_BROADCAST. It needs CAP_NET_BIND_SERVICE for port 67, and
// CAP_NET_RAW for SO_BINDTODEVICE on kernels before 5.7.
//
// The socket is bound without SO_REUSEADDR: while another DHCP server (or a
// relay) holds port 67 on iface, or on every interface, Listen fails with
// an error that wraps syscall.EADDRINUSE and reads "another DHCP server is
// already serving IFACE (pid N (NAME))". Two DHCP servers on one link are
// the classic PXE outage: a node takes whichever offer comes first.
func Listen(ctx context.Context, iface string) (net.PacketConn, error) {
	if iface == "" {
		return nil, errors.New("listen dhcp: no interface name")
	}
	return listen(ctx, iface, dhcpv4.ServerPort)
}

// listen opens the server socket on iface:port.
func listen(ctx context.Context, iface string, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				serr = fmt.Errorf("set SO_BROADCAST: %w", serr)
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
	conn, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if errors.Is(err, syscall.EADDRINUSE) {
		holder := udpsock.Holders(port)
		if holder == "" {
			holder = fmt.Sprintf("a process holds UDP port %d", port)
		}
		return nil, fmt.Errorf("listen dhcp on %s: another DHCP server is already serving %s (%s): %w", iface, iface, holder, err)
	}
	if err != nil {
		return nil, fmt.Errorf("listen dhcp on %s: %w", iface, err)
	}
	return conn, nil
}

// Serve reads DHCP requests from conn (a UDP socket on port 67) and answers
// them until ctx ends; then it closes conn, waits for its goroutines and
// returns nil. It returns an error, after closing conn, if the Server is
// misconfigured or conn fails for another reason. Malformed packets are
// dropped and counted (ramboot_dhcp_malformed_total and a Debug log).
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	if err := s.check(); err != nil {
		conn.Close()
		return err
	}
	untrack := func() {}
	if sc, ok := conn.(syscall.Conn); ok {
		if size := s.receiveBuffer(); size > 0 {
			if _, err := udpsock.SetReceiveBuffer(sc, size); err != nil {
				conn.Close()
				return fmt.Errorf("serve dhcp on %s: %w", conn.LocalAddr(), err)
			}
		}
		untrack = s.Metrics.trackDrops(sc)
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() {
		untrack() // the socket's last drop count, before it closes
		conn.Close()
	})
	var wg sync.WaitGroup
	defer func() {
		stop()
		cancel() // abort in-flight lookups when conn failed
		untrack()
		conn.Close()
		wg.Wait()
	}()

	sem := make(chan struct{}, maxInFlight)
	return readLoop(ctx, conn, "read dhcp request", s.logger(), func(b []byte, peer net.Addr) bool {
		req := s.decode(b, peer)
		if req == nil {
			return true
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		wg.Go(func() {
			defer func() { <-sem }()
			s.serveOne(ctx, conn, req, peer)
		})
		return true
	})
}

// readLoop reads datagrams from conn and passes each to handle, until ctx
// ends (it returns nil) or conn is closed under it (it returns the error,
// wrapped with what). Other read errors (for example ICMP errors reported
// on the socket) are transient: logged with what, then it backs off a
// little and carries on. handle's b is reused by the next read; handle
// returns false to stop, which it does only when ctx has ended.
func readLoop(ctx context.Context, conn net.PacketConn, what string, log *slog.Logger, handle func(b []byte, peer net.Addr) bool) error {
	buf := make([]byte, maxPacket)
	var backoff time.Duration
	for {
		n, peer, err := conn.ReadFrom(buf)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("%s: %w", what, err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn(what, "err", err, "dur", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if !handle(buf[:n], peer) {
			return nil
		}
	}
}

// serveOne handles one decoded request and sends the reply, if any.
func (s *Server) serveOne(ctx context.Context, conn net.PacketConn, req *dhcpv4.DHCPv4, peer net.Addr) {
	ctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	out, dst := s.respond(ctx, req, peer)
	if out == nil {
		return
	}
	if _, err := conn.WriteTo(out, dst); err != nil && ctx.Err() == nil {
		s.logger().Warn("send dhcp reply", "mac", req.ClientHWAddr.String(), "ip", dst.String(), "err", err)
	}
}

// decode parses one packet; a malformed one is counted, logged at Debug and
// returned as nil. It is the first half of what Serve does with a packet.
func (s *Server) decode(b []byte, peer net.Addr) *dhcpv4.DHCPv4 {
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.Metrics.malformedPacket()
		s.logger().Debug("drop malformed dhcp packet", "ip", addrString(peer), "bytes", len(b), "err", err)
		return nil
	}
	return req
}

// respond runs Handle on req, counts, observes and logs the outcome, and
// returns the encoded reply with its destination, or nil. It is the second
// half of what Serve does with a packet.
func (s *Server) respond(ctx context.Context, req *dhcpv4.DHCPv4, peer net.Addr) ([]byte, *net.UDPAddr) {
	reply, ev, err := s.Handle(ctx, req)
	s.Metrics.observe(ev)
	if s.Observer != nil {
		s.Observer(ev)
	}
	log := s.logger()
	mac := ev.MAC.String()
	switch {
	case err != nil && ctx.Err() != nil:
		log.Debug("dhcp request cut by shutdown or timeout", "mac", mac, "request", ev.Request, "err", err)
	case err != nil:
		log.Warn("dhcp request not answered", "mac", mac, "request", ev.Request, "err", err)
	case ev.Ignored != "":
		log.Debug("dhcp request ignored", "mac", mac, "request", ev.Request, "ip", addrString(peer), "reason", ev.Ignored)
	case ev.Request == "decline":
		log.Warn("dhcp client declined its reserved address, is it in use elsewhere?", "mac", mac, "ip", ev.IP.String())
	case reply == nil:
		log.Debug("dhcp "+ev.Request, "mac", mac, "ip", ev.IP.String())
	default:
		log.Debug("dhcp reply", "mac", mac, "request", ev.Request, "reply", ev.Reply,
			"ip", ev.IP.String(), "ipxe", ev.IPXE, "arch", ev.Arch.String(), "path", ev.BootFile)
	}
	if reply == nil {
		return nil, nil
	}
	return reply.ToBytes(), s.replyAddr(req, reply)
}

// check reports a misconfigured Server.
func (s *Server) check() error {
	if _, err := s.serverIP(); err != nil {
		return err
	}
	if s.Inventory == nil {
		return errNoInventory
	}
	return nil
}

// serverIP returns ServerIP as plain IPv4.
func (s *Server) serverIP() (netip.Addr, error) {
	ip := s.ServerIP.Unmap()
	if !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("check dhcp server: ServerIP %q is not IPv4", s.ServerIP)
	}
	return ip, nil
}

// receiveBuffer returns ReceiveBuffer or its default; negative means leave
// the socket alone.
func (s *Server) receiveBuffer() int {
	if s.ReceiveBuffer == 0 {
		return DefaultReceiveBuffer
	}
	return s.ReceiveBuffer
}

// leaseTime returns LeaseTime or its default, within what option 51 holds.
func (s *Server) leaseTime() time.Duration {
	d := s.LeaseTime
	if d <= 0 {
		d = DefaultLeaseTime
	}
	return min(d, dhcpv4.MaxLeaseTime-time.Second) // 0xffffffff would mean infinite
}

// logger returns Logger or a discarding one.
func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// addrString returns the IP of a peer address, or its string form.
func addrString(a net.Addr) string {
	if u, ok := a.(*net.UDPAddr); ok {
		return u.IP.String()
	}
	if a == nil {
		return ""
	}
	return a.String()
}
