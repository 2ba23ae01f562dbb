// Package ra sends IPv6 Router Advertisements on the provisioning link.
//
// iPXE's autoboot waits for all of its network configurators, IPv6 router
// discovery included: on a link with no IPv6 router it keeps soliciting for
// 13-16 s before it boots. Any Router Advertisement ends that wait. By
// default the server advertises Router Lifetime 0 ("not a default router",
// RFC 4861 4.2), no M/O flags and no prefixes, so nodes learn nothing from
// it except that router discovery is over. It answers every Router
// Solicitation at once and repeats the advertisement every Interval.
//
// Usage:
//
//	srv := &ra.Server{
//		Interface: "pxebr0",
//		Logger:    logger,
//		Metrics:   ra.NewMetrics(prometheus.DefaultRegisterer),
//	}
//	if err := srv.ListenAndServe(ctx); err != nil { // until ctx ends
//		return err
//	}
//
// It needs CAP_NET_RAW. The interface may have no usable IPv6 link-local
// address yet (a bridge gets one only once a port has carrier, and it is
// tentative during duplicate address detection): advertisements then fail,
// are logged at Debug and retried on the next tick or solicitation.
package ra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// DefaultInterval is the period of unsolicited advertisements when
// Server.Interval is zero.
const DefaultInterval = 10 * time.Second

// minSolicitedGap is the shortest time between two advertisements sent in
// answer to solicitations. RFC 4861 6.2.6 asks for 3 s and a random delay;
// 200 ms keeps a storm of solicitations cheap while answering each booting
// node at once.
const minSolicitedGap = 200 * time.Millisecond

var (
	allNodes   = net.ParseIP("ff02::1")
	allRouters = net.ParseIP("ff02::2")
)

// Server sends Router Advertisements on one interface. Set the fields
// before calling ListenAndServe and do not change them afterwards.
type Server struct {
	// Interface is the name of the link to advertise on. Required; it must
	// exist when ListenAndServe starts.
	Interface string
	// Interval is the period of unsolicited advertisements; each one is
	// sent after a random 75-100% of Interval, and the first at once.
	// Default 10s (DefaultInterval). RFC 4861 6.2.1 bounds
	// MaxRtrAdvInterval to 4s..1800s; shorter values are accepted for
	// tests and labs.
	Interval time.Duration
	// RouterLifetime is the advertised Router Lifetime, whole seconds up
	// to 65535s (RFC 8319; RFC 4861 allowed up to 9000s). Default 0: the
	// head is not a default router, so nodes do not send their traffic to
	// it. A non-zero value makes every node use the head as default router.
	RouterLifetime time.Duration
	// Prefixes are optional /64 prefixes advertised with the on-link and
	// autonomous flags, so nodes configure addresses by SLAAC (valid
	// lifetime 1 day, preferred 4 hours). Default none.
	Prefixes []netip.Prefix
	// Logger receives the server's logs. Nil discards them.
	Logger *slog.Logger
	// Metrics, if not nil, counts advertisements and solicitations.
	Metrics *Metrics
}

// ListenAndServe opens the socket with Listen and calls Serve. It returns
// an error only when the configuration is invalid, the interface does not
// exist or the socket cannot be opened; failures to send are logged and
// retried.
//
// It looks the interface and its addresses up on the calling goroutine
// only, so a caller that has locked its OS thread into a network namespace
// serves that namespace.
func (s *Server) ListenAndServe(ctx context.Context) error {
	if _, err := s.newState(); err != nil {
		return err
	}
	c, err := Listen(s.Interface)
	if err != nil {
		return err
	}
	return s.Serve(ctx, c)
}

// Listen opens the ICMPv6 raw socket a Server advertises on (it needs
// CAP_NET_RAW), for the interface iface, which must exist.
func Listen(iface string) (*icmp.PacketConn, error) {
	if _, err := net.InterfaceByName(iface); err != nil {
		return nil, fmt.Errorf("find interface %s: %w", iface, err)
	}
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("listen icmpv6 for %s: %w", iface, err)
	}
	return c, nil
}

// Serve joins the all-routers group on the interface and advertises on c
// (from Listen) until ctx ends; then it closes c, waits for its goroutine
// and returns nil. It closes c and returns an error when the
// configuration is invalid or the interface is gone.
func (s *Server) Serve(ctx context.Context, c *icmp.PacketConn) error {
	st, err := s.newState()
	if err != nil {
		c.Close()
		return err
	}
	ifi, err := net.InterfaceByName(s.Interface)
	if err != nil {
		c.Close()
		return fmt.Errorf("find interface %s: %w", s.Interface, err)
	}
	st.conn = c.IPv6PacketConn()
	if err := st.setup(); err != nil {
		c.Close()
		return fmt.Errorf("set up icmpv6 socket for %s: %w", s.Interface, err)
	}
	st.index.Store(int32(ifi.Index))
	st.join(ifi)

	st.log.Info("router advertisement server started", "iface", s.Interface,
		"router_lifetime", st.advert.routerLifetime)
	solicits := make(chan solicitation, 16)
	var wg sync.WaitGroup
	wg.Go(func() { st.receive(solicits) })
	st.loop(ctx, solicits)
	c.Close()
	wg.Wait()
	st.log.Info("router advertisement server stopped", "iface", s.Interface)
	return nil
}

// state is what one ListenAndServe call works with.
type state struct {
	name     string
	interval time.Duration
	advert   advert // linkAddr is filled in at each send
	log      *slog.Logger
	metrics  *Metrics
	conn     *ipv6.PacketConn

	// index is the interface index the receiver accepts solicitations on.
	index atomic.Int32
	// Owned by loop.
	joined   int // interface index ff02::2 was joined on; 0: not joined
	lastSend time.Time
	working  bool // the last send succeeded
}

// newState checks the configuration and applies the defaults; it reports
// every problem at once.
func (s *Server) newState() (*state, error) {
	st := &state{
		name:     s.Interface,
		interval: s.Interval,
		log:      s.Logger,
		metrics:  s.Metrics,
	}
	var errs []error
	if s.Interface == "" {
		errs = append(errs, errors.New("interface name is empty (Interface)"))
	}
	switch {
	case s.Interval < 0:
		errs = append(errs, fmt.Errorf("interval %v is negative (Interval)", s.Interval))
	case s.Interval == 0:
		st.interval = DefaultInterval
	}
	switch {
	case s.RouterLifetime < 0 || s.RouterLifetime > 65535*time.Second:
		errs = append(errs, fmt.Errorf("router lifetime %v is outside 0..65535s (RouterLifetime)", s.RouterLifetime))
	case s.RouterLifetime > 0:
		st.advert.routerLifetime = uint16(max(1, s.RouterLifetime/time.Second))
	}
	for _, p := range s.Prefixes {
		if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() || p.Bits() != 64 || p.Masked() != p {
			errs = append(errs, fmt.Errorf("prefix %v is not an IPv6 /64 prefix", p))
			continue
		}
		st.advert.prefixes = append(st.advert.prefixes, p)
	}
	if st.log == nil {
		st.log = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("configure router advertisements: %w", err)
	}
	return st, nil
}

// setup sets the socket options that do not depend on the interface.
func (st *state) setup() error {
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	return errors.Join(
		st.conn.SetICMPFilter(&f),
		st.conn.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagInterface, true),
		st.conn.SetHopLimit(ndHopLimit),
		st.conn.SetMulticastHopLimit(ndHopLimit),
		st.conn.SetMulticastLoopback(false),
	)
}

// join joins ff02::2 on ifi so the link delivers Router Solicitations, once
// per interface index. A failure (for example IPv6 disabled on the link) is
// retried on the next tick.
func (st *state) join(ifi *net.Interface) {
	if st.joined == ifi.Index {
		return
	}
	if err := st.conn.JoinGroup(ifi, &net.IPAddr{IP: allRouters}); err != nil {
		st.log.Debug("cannot join all-routers group yet", "iface", st.name, "err", err)
		return
	}
	st.joined = ifi.Index
	st.index.Store(int32(ifi.Index))
}

// loop sends periodic advertisements and answers solicitations until ctx
// ends. It runs on ListenAndServe's goroutine.
func (st *state) loop(ctx context.Context, solicits <-chan solicitation) {
	periodic := time.NewTimer(0) // the first advertisement goes out at once
	defer periodic.Stop()
	deferred := time.NewTimer(time.Hour) // a solicited advertisement held back by the rate limit
	deferred.Stop()
	defer deferred.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-periodic.C:
			st.send(reasonPeriodic)
			periodic.Reset(st.jitter())
		case rs := <-solicits:
			st.log.Debug("router solicitation", "iface", st.name, "ip", rs.src, "mac", rs.linkAddr.String())
			if pending {
				continue // the held-back advertisement answers this one too
			}
			if wait := minSolicitedGap - time.Since(st.lastSend); wait > 0 {
				pending = true
				deferred.Reset(wait)
				continue
			}
			st.send(reasonSolicited)
		case <-deferred.C:
			pending = false
			st.send(reasonSolicited)
		}
	}
}

// jitter returns the time to the next unsolicited advertisement: a random
// 75-100% of the interval, so several senders do not synchronise.
func (st *state) jitter() time.Duration {
	return st.interval*3/4 + rand.N(st.interval/4+1)
}

// reason is the value of the reason label of ramboot_ra_sent_total.
type reason string

const (
	reasonPeriodic  reason = "periodic"
	reasonSolicited reason = "solicited"
)

// send multicasts one advertisement to ff02::1 from the interface's
// link-local address. Failures are expected while the link has no usable
// link-local address; they are logged at Debug and counted.
func (st *state) send(why reason) {
	st.lastSend = time.Now()
	ifi, src, err := st.prepare()
	if err == nil {
		cm := &ipv6.ControlMessage{HopLimit: ndHopLimit, IfIndex: ifi.Index, Src: src}
		_, err = st.conn.WriteTo(st.advert.marshal(), cm, &net.IPAddr{IP: allNodes})
		if err != nil {
			err = fmt.Errorf("send router advertisement on %s: %w", st.name, err)
		}
	}
	if err != nil {
		st.metrics.failed()
		if st.working {
			st.log.Debug("router advertisements failing", "iface", st.name, "err", err)
		} else {
			st.log.Debug("cannot send router advertisement yet", "iface", st.name, "err", err)
		}
		st.working = false
		return
	}
	st.metrics.sent(why)
	if !st.working {
		st.log.Info("router advertisements going out", "iface", st.name, "ip", src.String())
		st.working = true
	}
	st.log.Debug("router advertisement sent", "iface", st.name, "reason", string(why))
}

// prepare looks the interface up again (its index, link-layer address and
// addresses change when a bridge is recreated or gains ports), joins
// ff02::2 if needed and returns the link-local source address.
func (st *state) prepare() (*net.Interface, net.IP, error) {
	ifi, err := net.InterfaceByName(st.name)
	if err != nil {
		return nil, nil, fmt.Errorf("find interface %s: %w", st.name, err)
	}
	st.join(ifi)
	st.advert.linkAddr = ifi.HardwareAddr
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses of %s: %w", st.name, err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() == nil && ipn.IP.IsLinkLocalUnicast() {
			// A tentative address is listed too; the kernel refuses it as
			// source until duplicate address detection is done.
			return ifi, ipn.IP, nil
		}
	}
	return nil, nil, fmt.Errorf("send router advertisement on %s: no IPv6 link-local address", st.name)
}

// receive reads Router Solicitations until the socket is closed and hands
// the valid ones to the loop.
func (st *state) receive(solicits chan<- solicitation) {
	buf := make([]byte, 1500)
	for {
		n, cm, from, err := st.conn.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			st.log.Debug("read icmpv6", "iface", st.name, "err", err)
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
			continue
		}
		hopLimit, ifIndex := -1, 0
		if cm != nil {
			hopLimit, ifIndex = cm.HopLimit, cm.IfIndex
		}
		if ifIndex != 0 && ifIndex != int(st.index.Load()) {
			continue // another link's solicitation
		}
		var src netip.Addr
		if ipa, ok := from.(*net.IPAddr); ok {
			src, _ = netip.AddrFromSlice(ipa.IP)
		}
		rs, err := parseRS(buf[:n], src, hopLimit)
		if err != nil {
			st.metrics.malformed()
			st.log.Debug("router solicitation dropped", "iface", st.name, "ip", src, "err", err)
			continue
		}
		st.metrics.solicited()
		select {
		case solicits <- rs:
		default: // the loop is behind; an advertisement is due anyway
		}
	}
}
