// Package dhcp is ramboot's DHCPv4 server for network boot. It answers
// PXE firmware, UEFI HTTP boot and iPXE with the boot file for their stage,
// in one of three modes:
//
//   - reservation (the default): the server is the link's DHCP server for
//     the clients its Inventory knows; each gets its reserved address and
//     network settings with the boot file. Unknown clients are ignored, or
//     lent a short-lived discovery address so an admin can adopt them.
//   - proxy: a site's own DHCP server hands out the addresses; ramboot
//     answers only PXE clients it knows, with a proxy offer (boot file, no
//     address; PXE specification "ProxyDHCP").
//   - off: nothing on port 67; the site's DHCP server points nodes at
//     ramboot's TFTP and HTTP itself.
//
// Port 4011 (PXEPort, PXE boot server requests, which UEFI firmware sends
// after every proxy offer) is served in every mode.
//
// Usage:
//
//	srv := &dhcp.Server{
//		Inventory: dhcp.InventoryFunc(func(ctx context.Context, c dhcp.Client) (dhcp.Reservation, error) {
//			n, ok := nodes[c.MAC.String()]
//			if !ok {
//				return dhcp.Reservation{}, dhcp.ErrUnknown
//			}
//			return dhcp.Reservation{
//				IP: n.IP, PrefixLen: 24, Router: gw, Hostname: n.Name,
//				ScriptURL: "http://" + c.Server.String() + "/boot/ipxe?mac=" + c.MAC.String(),
//			}, nil
//		}),
//		Subnets:  []dhcp.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.0/24")}},
//		Metrics:  dhcp.NewMetrics(prometheus.DefaultRegisterer),
//		Observer: func(ev dhcp.Event) { timeline.Add(ev) },
//		Logger:   logger,
//	}
//	conn, err := dhcp.Listen(ctx, "eth1")     // port 67 on eth1
//	pxeConn, err := dhcp.ListenPXE(ctx, "eth1") // port 4011
//	go srv.Serve(ctx, pxeConn)
//	err = srv.Serve(ctx, conn) // until ctx ends
//
// Handle is the decision alone, for tests and for callers that do their own
// I/O; BootTable.Choose is the boot-file part of it, a pure function of the
// request. Serve runs Handle on a caller-made socket with a bounded pool of
// workers; replies leave by the interface the request came in on, from
// that interface's address, which is also their server identifier.
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
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

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
	// DefaultWorkers is the size of the worker pool when Server.Workers is
	// zero. Workers block only on the Inventory, which answers from
	// memory; more of them than cores buys little.
	DefaultWorkers = 16

	// handleTimeout bounds one request's Inventory lookup: a client
	// retransmits after ~4 s, so a later answer is useless.
	handleTimeout = 5 * time.Second
	// maxPacket is the read buffer: the largest UDP payload.
	maxPacket = 1 << 16
)

// Mode is what the server does on port 67.
type Mode string

// The modes. The zero Mode is ModeReservation.
const (
	// ModeReservation answers the clients the inventory knows with their
	// reserved address and boot file.
	ModeReservation Mode = "reservation"
	// ModeProxy answers PXE clients the inventory knows with a proxy
	// offer: the boot file and no address, next to a site's DHCP server.
	ModeProxy Mode = "proxy"
	// ModeOff answers nothing on port 67; port 4011 is still served.
	ModeOff Mode = "off"
)

// ParseMode returns the Mode named s ("" is reservation).
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeReservation:
		return ModeReservation, nil
	case ModeProxy, ModeOff:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown dhcp mode %q (want reservation, proxy or off)", s)
}

var errNoInventory = errors.New("check dhcp server: Inventory is nil")

// Server is a DHCPv4 server for network boot. Set Inventory (and usually
// Subnets), then call Serve on sockets from Listen and ListenPXE, or
// ListenAndServe. A Server must not be changed once serving; Handle and
// Serve are safe for concurrent use, and one Server may serve several
// sockets (port 67 and 4011, several interfaces) at once.
type Server struct {
	// Mode is what the server does on port 67: ModeReservation (the
	// default), ModeProxy or ModeOff.
	Mode Mode
	// Inventory says which reservation a client has. Required.
	Inventory Inventory
	// ServerIP, if set, is the server identifier (option 54), siaddr and
	// TFTP server (option 66) of every reply. Zero means the address of the
	// interface the request came in on (on the client's subnet), which is
	// what a head with several interfaces needs; the socket must then come
	// from Listen or ListenPXE (IP_PKTINFO).
	ServerIP netip.Addr
	// Subnets are the subnets served: the link's own and those behind
	// relays. A relayed request is answered only for the subnet holding its
	// giaddr, a local one for the subnets on its interface; a reserved
	// address outside the client's subnet is not handed out
	// (wrong_subnet). Empty means the prefixes of the interface's own
	// addresses, and relayed requests unchecked.
	Subnets []Subnet
	// BootFiles maps client architectures (option 93) to the NBP firmware
	// and HTTP-boot clients get; nil means DefaultBootTable(). A
	// network-boot client whose architecture is missing, and whose
	// reservation names no BootFile, is ignored.
	BootFiles BootTable
	// HTTPBootURL is the URL prefix UEFI HTTP-boot clients get their NBP
	// from: the NBP's name is appended. A URL with an empty host, such as
	// "http://:8080/boot/nbp/", gets the server's address for the request.
	// Empty means HTTP-boot clients are ignored.
	HTTPBootURL string
	// Discovery, if set, records clients the inventory does not know and
	// lends them addresses from their subnet's Discovery range
	// (reservation mode). Nil ignores unknown clients.
	Discovery *Discovery
	// DiscoveryScriptURL is the boot file iPXE gets with a discovery
	// address (its host filled in as for HTTPBootURL; iPXE expands
	// ${mac} itself). Empty gives iPXE an address only.
	DiscoveryScriptURL string
	// LeaseTime is the lease time sent in option 51 with reservations;
	// zero means DefaultLeaseTime (7 days).
	LeaseTime time.Duration
	// Workers is the number of requests handled at once per socket; beyond
	// it, requests wait in the socket's receive buffer. Default 16
	// (DefaultWorkers).
	Workers int
	// Observer, if set, is called synchronously with the Event of every
	// decoded packet, whether answered or not, from the worker that
	// handled it. It must be fast (no disk I/O: replies wait for it) and
	// safe for concurrent use.
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
	// clientPort replaces port 68 for replies to clients, for tests.
	clientPort int
	// noNeighbour is set once setting a neighbour entry failed for lack
	// of privilege: unicast replies then go out as broadcasts.
	noNeighbour atomic.Bool
	// swapped, once SetSubnets was called, replaces Subnets.
	swapped atomic.Pointer[[]Subnet]
}

// SetSubnets replaces Subnets while the server serves (a configuration
// reload); requests already being handled finish with the old ones. It
// returns an error, and changes nothing, if a subnet is invalid or two
// overlap.
func (s *Server) SetSubnets(subnets []Subnet) error {
	if err := checkSubnets(subnets); err != nil {
		return err
	}
	subnets = slices.Clone(subnets)
	s.swapped.Store(&subnets)
	return nil
}

// subnets returns the subnets served now.
func (s *Server) subnets() []Subnet {
	if p := s.swapped.Load(); p != nil {
		return *p
	}
	return s.Subnets
}

// ListenAndServe opens the port 67 socket on the network interface iface
// with Listen (the port 4011 one with ListenPXE too) and serves both until
// ctx ends. In ModeOff it serves port 4011 only.
func (s *Server) ListenAndServe(ctx context.Context, iface string) error {
	if err := s.checkConfig(); err != nil {
		return err
	}
	var conns []net.PacketConn
	if s.mode() != ModeOff {
		conn, err := Listen(ctx, iface)
		if err != nil {
			return err
		}
		conns = append(conns, conn)
	}
	pxeConn, err := ListenPXE(ctx, iface)
	if err != nil {
		for _, c := range conns {
			c.Close()
		}
		return err
	}
	conns = append(conns, pxeConn)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(conns))
	for _, c := range conns {
		go func() { errs <- s.Serve(ctx, c) }()
	}
	var first error
	for range conns {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel() // one socket failed: stop the other
		}
	}
	return first
}

// Listen binds UDP 0.0.0.0:67 on the network interface iface for Serve:
// SO_BINDTODEVICE, so replies leave through the interface requests came in
// on, SO_BROADCAST, and IP_PKTINFO, so each request says which of the
// interface's addresses it reached. It needs CAP_NET_BIND_SERVICE for port
// 67, and CAP_NET_RAW for SO_BINDTODEVICE on kernels before 5.7; unicast
// replies to clients without an address need CAP_NET_ADMIN (they are
// broadcast without it).
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

// ListenPXE binds UDP 0.0.0.0:4011 (PXEPort) on the network interface
// iface, like Listen, for Serve: the PXE boot server port, where firmware
// asks for its boot file after a proxy offer.
func ListenPXE(ctx context.Context, iface string) (net.PacketConn, error) {
	if iface == "" {
		return nil, errors.New("listen pxe: no interface name")
	}
	return listen(ctx, iface, PXEPort)
}

// listen opens the server socket on iface:port.
func listen(ctx context.Context, iface string, port int) (net.PacketConn, error) {
	what := "dhcp"
	if port == PXEPort {
		what = "pxe"
	}
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
		if port == PXEPort {
			return nil, fmt.Errorf("listen pxe on %s: another PXE boot server is already serving %s (%s): %w", iface, iface, holder, err)
		}
		return nil, fmt.Errorf("listen dhcp on %s: another DHCP server is already serving %s (%s): %w", iface, iface, holder, err)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s on %s: %w", what, iface, err)
	}
	return conn, nil
}

// Serve reads DHCP requests from conn (a UDP socket on port 67 or 4011)
// and answers them with a pool of Workers until ctx ends; then it closes
// conn, waits for its workers and returns nil. It returns an error, after
// closing conn, if the Server is misconfigured or conn fails for another
// reason. Malformed packets are dropped and counted
// (ramboot_dhcp_malformed_total and a Debug log).
//
// The port of conn's local address says which service it is: PXEPort
// serves PXE boot server requests, any other port DHCP.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	if err := s.checkConfig(); err != nil {
		conn.Close()
		return err
	}
	port := dhcpv4.ServerPort
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok && ua.Port == PXEPort {
		port = PXEPort
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
	pc, err := newPacketConn(conn)
	if err != nil {
		conn.Close()
		return fmt.Errorf("serve dhcp on %s: %w", conn.LocalAddr(), err)
	}
	lk := newLinks() // in this thread's network namespace: the socket's
	defer lk.close()
	s.Metrics.trackDiscovery(s.Discovery)

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() {
		untrack() // the socket's last drop count, before it closes
		conn.Close()
	})
	var wg sync.WaitGroup
	var once sync.Once
	var serr error
	defer func() {
		stop()
		cancel() // abort in-flight lookups when conn failed
		untrack()
		conn.Close()
		wg.Wait()
	}()
	for range s.workers() {
		wg.Go(func() {
			err := s.work(ctx, pc, lk, port)
			if err != nil {
				once.Do(func() { serr = err })
				cancel()
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil && serr == nil {
		return nil
	}
	return serr
}

// work is one worker: it reads the requests queued on the socket (at
// least one, at most batchSize, in one system call), handles them and sends
// the replies together, until ctx ends (it returns nil) or conn is closed
// under it (it returns the error).
func (s *Server) work(ctx context.Context, pc *packetConn, lk *links, port int) error {
	bt := newBatch(pc.p4 != nil)
	re := readErrors{what: "read dhcp request", log: s.logger()}
	var replied []Event
	var started []time.Time
	for {
		n, err := pc.readBatch(bt)
		if stop, rerr := re.judge(ctx, err); stop {
			return rerr
		} else if err != nil {
			continue
		}
		replied, started = replied[:0], started[:0]
		for i := range n {
			m, d := &bt.in[i], bt.dgs[i]
			req := s.decode(m.Buffers[0][:m.N], d.peer)
			if req == nil {
				continue
			}
			start := time.Now()
			if ev, ok := s.serveOne(ctx, pc, bt, lk, Request{Msg: req, Port: port, Peer: d.peer, Dst: d.dst}, d.ifindex); ok {
				replied = append(replied, ev)
				started = append(started, start)
			}
		}
		if bt.outN == 0 {
			continue
		}
		sent, err := pc.flush(bt)
		for i, ev := range replied[:sent] {
			s.Metrics.replied(ev, time.Since(started[i]))
		}
		if err != nil && ctx.Err() == nil {
			s.logger().Warn("send dhcp replies", "err", err, "unsent", len(replied)-sent)
		}
	}
}

// serveOne handles one decoded request and queues the reply, if any, in
// the batch; it reports whether it did, with the request's Event.
func (s *Server) serveOne(ctx context.Context, pc *packetConn, bt *batch, lk *links, r Request, ifindex int) (Event, bool) {
	li := lk.get(ifindex)
	r.LinkAddrs = li.addrs
	ctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	reply, ev := s.respond(ctx, r)
	if reply == nil {
		return ev, false
	}
	slot := bt.outN
	bt.bufs[slot] = appendMessage(bt.bufs[slot][:0], reply)
	dst, unicastHW := s.replyAddr(r, reply)
	// Send from the server identifier when it is the interface's own
	// address, and out of the interface the request came in on when the
	// destination is on the link; routed destinations (a relay, a client
	// with an address) follow the routing table.
	var src netip.Addr
	for _, la := range li.addrs {
		if la.Addr() == ev.Server {
			src = ev.Server
		}
	}
	oif := 0 // the interface to send out of; 0: the routing table's choice
	if unicastHW {
		if err := s.neighbour(pc, li.name, dst.Addr(), reply.ClientHWAddr); err != nil {
			dst = netip.AddrPortFrom(bcast, dst.Port())
		}
		oif = ifindex
	}
	if dst.Addr() == bcast {
		oif = ifindex
	}
	pc.queue(bt, bt.bufs[slot], dst, src, oif)
	return ev, true
}

// neighbour sets the neighbour entry for a unicast reply to a client
// without an address. Without the privilege to, it stops trying (and logs
// it once): replies are then broadcast.
func (s *Server) neighbour(pc *packetConn, dev string, ip netip.Addr, mac net.HardwareAddr) error {
	if s.noNeighbour.Load() {
		return errors.New("neighbour entries disabled")
	}
	err := pc.setNeighbour(dev, ip, mac)
	if err == nil {
		return nil
	}
	s.Metrics.unicastFallback()
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		if s.noNeighbour.CompareAndSwap(false, true) {
			s.logger().Warn("cannot set neighbour entries (needs CAP_NET_ADMIN): replies to clients that ask for unicast are broadcast", "err", err)
		}
		return err
	}
	s.logger().Debug("unicast dhcp reply sent as broadcast", "mac", mac.String(), "ip", ip.String(), "err", err)
	return err
}

var bcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// decode parses one packet; a malformed one is counted, logged at Debug and
// returned as nil. It is the first half of what Serve does with a packet.
func (s *Server) decode(b []byte, peer netip.AddrPort) *dhcpv4.DHCPv4 {
	req, err := decodeMessage(b)
	if err != nil {
		s.Metrics.malformedPacket()
		s.logger().Debug("drop malformed dhcp packet", "ip", peer.String(), "bytes", len(b), "err", err)
		return nil
	}
	return req
}

// respond runs Handle on r, counts, observes and logs the outcome, and
// returns the reply, or nil. It is the second half of what Serve does with
// a packet.
func (s *Server) respond(ctx context.Context, r Request) (*dhcpv4.DHCPv4, Event) {
	reply, ev, err := s.Handle(ctx, r)
	s.Metrics.observe(ev)
	if s.Observer != nil {
		s.Observer(ev)
	}
	log := s.logger()
	warn := err != nil || (reply == nil && ev.Request == RequestDecline)
	if !warn && !log.Enabled(ctx, slog.LevelDebug) {
		return reply, ev
	}
	who := clientName(Client{MAC: ev.MAC, ClientID: ev.ClientID})
	switch {
	case err != nil:
		log.Warn("dhcp request not answered", "mac", who, "err", err)
	case reply == nil && ev.Request == RequestDecline:
		log.Warn("dhcp client declined its address: another host uses it", "mac", who, "ip", ev.IP.String(), "discovery", ev.Discovery)
	case reply == nil && ev.Ignored == "":
		log.Debug("dhcp "+string(ev.Request), "mac", who, "ip", ev.IP.String())
	case reply == nil:
		log.Debug("dhcp request ignored", "mac", who, "type", string(ev.Request), "port", ev.Port, "reason", ev.Ignored)
	default:
		log.Debug("dhcp reply", "mac", who, "type", string(ev.Reply), "port", ev.Port, "ip", ev.IP.String(), "path", ev.BootFile, "proxy", ev.Proxy)
	}
	return reply, ev
}

// readLoop reads datagrams with read and passes each to handle, with where
// it came from, until ctx ends (it returns nil) or the socket is closed
// under it (it returns the error, wrapped with what). Other read errors
// are transient (see readErrors). handle's b is reused by the next read;
// handle returns false to stop, which it does only when ctx has ended.
func readLoop[T any](ctx context.Context, read func([]byte) (int, T, error), what string, log *slog.Logger, handle func(b []byte, from T) bool) error {
	buf := make([]byte, maxPacket)
	re := readErrors{what: what, log: log}
	for {
		n, peer, err := read(buf)
		if stop, rerr := re.judge(ctx, err); stop {
			return rerr
		} else if err != nil {
			continue
		}
		if !handle(buf[:n], peer) {
			return nil
		}
	}
}

// readErrors judges the errors of a socket's reads.
type readErrors struct {
	what    string
	log     *slog.Logger
	backoff time.Duration
}

// judge says whether a read's outcome ends the loop (stop), and with what
// error: nil when ctx has ended, the error (wrapped) when the socket was
// closed under the loop. Other errors (for example ICMP errors reported on
// the socket) are transient: judge logs them, backs off a little (5 ms
// doubling to 1 s) and lets the loop carry on.
func (r *readErrors) judge(ctx context.Context, err error) (stop bool, _ error) {
	if ctx.Err() != nil {
		return true, nil
	}
	if err == nil {
		r.backoff = 0
		return false, nil
	}
	if errors.Is(err, net.ErrClosed) {
		return true, fmt.Errorf("%s: %w", r.what, err)
	}
	r.backoff = min(max(2*r.backoff, 5*time.Millisecond), time.Second)
	r.log.Warn(r.what, "err", err, "dur", r.backoff)
	select {
	case <-ctx.Done():
		return true, nil
	case <-time.After(r.backoff):
	}
	return false, nil
}

// replyAddr is where a reply to r goes, and whether it is a unicast to a
// client without an address (which needs a neighbour entry first):
//
//   - port 4011: back to the sender's address and port;
//   - relayed (giaddr): the relay at giaddr:67;
//   - a NAK: broadcast;
//   - the client has an address (ciaddr): ciaddr:68;
//   - the client asked for broadcast, has no Ethernet address (InfiniBand)
//     or gets no address: broadcast;
//   - otherwise unicast to yiaddr:68 at chaddr (RFC 2131 section 4.1).
func (s *Server) replyAddr(r Request, reply *dhcpv4.DHCPv4) (netip.AddrPort, bool) {
	req := r.Msg
	clientPort := uint16(dhcpv4.ClientPort)
	if s.clientPort != 0 {
		clientPort = uint16(s.clientPort)
	}
	if r.port() == PXEPort {
		if a := addrFrom(req.ClientIPAddr); a.IsValid() && !r.Peer.Addr().IsValid() {
			return netip.AddrPortFrom(a, r.Peer.Port()), false
		}
		return r.Peer, false
	}
	if relay := addrFrom(req.GatewayIPAddr); relay.IsValid() {
		port := uint16(dhcpv4.ServerPort)
		if s.relayPort != 0 {
			port = uint16(s.relayPort)
		}
		return netip.AddrPortFrom(relay, port), false
	}
	if msgType(reply) == dhcpv4.MessageTypeNak {
		return netip.AddrPortFrom(bcast, clientPort), false
	}
	if a := addrFrom(req.ClientIPAddr); a.IsValid() {
		return netip.AddrPortFrom(a, clientPort), false
	}
	yi := addrFrom(reply.YourIPAddr)
	if req.IsBroadcast() || !yi.IsValid() || req.HWType != 1 || len(req.ClientHWAddr) != 6 {
		return netip.AddrPortFrom(bcast, clientPort), false
	}
	return netip.AddrPortFrom(yi, clientPort), true
}

// checkConfig reports every problem of a misconfigured Server at once.
func (s *Server) checkConfig() error {
	if s.Inventory == nil {
		return errNoInventory
	}
	var errs []error
	if s.ServerIP.IsValid() && !s.ServerIP.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("ServerIP %q is not IPv4", s.ServerIP))
	}
	if _, err := ParseMode(string(s.Mode)); err != nil {
		errs = append(errs, err)
	}
	if err := checkSubnets(s.subnets()); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("check dhcp server: %w", err)
	}
	return nil
}

// mode returns Mode, with the zero value meaning ModeReservation.
func (s *Server) mode() Mode {
	if s.Mode == "" {
		return ModeReservation
	}
	return s.Mode
}

// table returns BootFiles or the default table.
func (s *Server) table() BootTable {
	if s.BootFiles == nil {
		return defaultBootTable
	}
	return s.BootFiles
}

// defaultBootTable is what a Server with nil BootFiles uses; never modified.
var defaultBootTable = DefaultBootTable()

func (s *Server) workers() int {
	if s.Workers > 0 {
		return s.Workers
	}
	return DefaultWorkers
}

func (s *Server) leaseTime() time.Duration {
	lt := DefaultLeaseTime
	if s.LeaseTime > 0 {
		lt = s.LeaseTime
	}
	// Option 51 is a 32-bit count of seconds; 0xffffffff means "infinite".
	return min(lt, dhcpv4.MaxLeaseTime-time.Second)
}

func (s *Server) receiveBuffer() int {
	if s.ReceiveBuffer == 0 {
		return DefaultReceiveBuffer
	}
	return s.ReceiveBuffer
}

// logger returns Logger or a discarding one.
func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return discard
	}
	return s.Logger
}

// discard is the logger of a Server without one.
var discard = slog.New(slog.DiscardHandler)
