package ra_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/pxe/internal/netnstest"
	"github.com/ramboot/ramboot/pxe/ra"
)

// The tests in this file need root: they create a network namespace with a
// veth pair whose both ends stay inside it, run the server on one end and
// a Router Solicitation client on the other. No packet leaves the
// namespace.

// testNS is a network namespace owned by one test, with a netlink handle
// in it.
type testNS struct {
	netnstest.NS
	handle netns.NsHandle
	nl     *netlink.Handle
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	n := &testNS{NS: netnstest.New(t, "ramboot-ra")}
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", n.Name, err)
	}
	n.handle = h
	t.Cleanup(func() { h.Close() })
	if n.nl, err = netlink.NewHandleAt(h); err != nil {
		t.Fatalf("netlink in %s: %v", n.Name, err)
	}
	t.Cleanup(n.nl.Close)
	// No duplicate address detection, so link-local addresses are usable
	// at once; no kernel solicitations, so the tests count only their own.
	netnstest.IP(t, "netns", "exec", n.Name, "sysctl", "-q", "-w",
		"net.ipv6.conf.all.accept_dad=0",
		"net.ipv6.conf.default.accept_dad=0",
		"net.ipv6.conf.default.router_solicitations=0")
	return n
}

// veth creates a veth pair inside the namespace; up brings both ends up.
func (n *testNS) veth(t *testing.T, a, b string, up bool) (la, lb netlink.Link) {
	t.Helper()
	if err := n.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
		t.Fatalf("add veth %s/%s: %v", a, b, err)
	}
	la, lb = n.link(t, a), n.link(t, b)
	if up {
		n.up(t, la, lb)
	}
	return la, lb
}

func (n *testNS) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return l
}

// up brings the links up and waits until each has a link-local address
// that is no longer tentative.
func (n *testNS) up(t *testing.T, links ...netlink.Link) {
	t.Helper()
	for _, l := range links {
		if err := n.nl.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", l.Attrs().Name, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, l := range links {
		for !n.linkLocalReady(t, l) {
			if time.Now().After(deadline) {
				t.Fatalf("%s has no usable link-local address after 10s", l.Attrs().Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (n *testNS) linkLocalReady(t *testing.T, l netlink.Link) bool {
	addrs, err := n.nl.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatalf("list addresses of %s: %v", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() && a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
			return true
		}
	}
	return false
}

// serve runs the server inside the namespace until the test ends (or stop
// is called) and checks that ListenAndServe returns nil promptly.
func (n *testNS) serve(t *testing.T, s *ra.Server) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Do(func() error { return s.ListenAndServe(ctx) }) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("ListenAndServe: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("ListenAndServe did not return within 5s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// rsClient is a host on the other end of the veth: it sends Router
// Solicitations and reads Router Advertisements.
type rsClient struct {
	conn  *ipv6.PacketConn
	index int
	mac   net.HardwareAddr
}

func (n *testNS) client(t *testing.T, l netlink.Link) *rsClient {
	t.Helper()
	var c *icmp.PacketConn
	err := n.Do(func() (err error) {
		c, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		return err
	})
	if err != nil {
		t.Fatalf("open icmpv6 socket in %s: %v", n.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	p := c.IPv6PacketConn()
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterAdvertisement)
	if err := errors.Join(
		p.SetICMPFilter(&f),
		p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagInterface, true),
	); err != nil {
		t.Fatal(err)
	}
	return &rsClient{conn: p, index: l.Attrs().Index, mac: l.Attrs().HardwareAddr}
}

// solicit sends a Router Solicitation with the given code and IP hop limit.
func (c *rsClient) solicit(t *testing.T, code byte, hopLimit int, opts ...byte) {
	t.Helper()
	b := append([]byte{133, code, 0, 0, 0, 0, 0, 0}, opts...)
	cm := &ipv6.ControlMessage{HopLimit: hopLimit, IfIndex: c.index}
	if _, err := c.conn.WriteTo(b, cm, &net.IPAddr{IP: net.ParseIP("ff02::2")}); err != nil {
		t.Fatalf("send router solicitation: %v", err)
	}
}

// sll is the client's source link-layer address option.
func (c *rsClient) sll() []byte { return append([]byte{1, 1}, c.mac...) }

// received is one Router Advertisement as the client saw it.
type received struct {
	at       time.Time
	src      net.IP
	hopLimit int
	lifetime uint16
	body     []byte
}

// advert waits up to d for the next Router Advertisement on the client's
// link; ok is false if none came.
func (c *rsClient) advert(t *testing.T, d time.Duration) (ra received, ok bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 1500)
	for {
		c.conn.SetReadDeadline(deadline)
		n, cm, from, err := c.conn.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return received{}, false
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if cm == nil || cm.IfIndex != c.index {
			continue
		}
		m, err := icmp.ParseMessage(58, buf[:n])
		if err != nil {
			t.Fatalf("parse ICMPv6: %v", err)
		}
		if m.Type != ipv6.ICMPTypeRouterAdvertisement {
			t.Fatalf("got ICMPv6 type %v, want router advertisement", m.Type)
		}
		body := m.Body.(*icmp.RawBody).Data
		return received{
			at:       time.Now(),
			src:      from.(*net.IPAddr).IP,
			hopLimit: cm.HopLimit,
			lifetime: binary.BigEndian.Uint16(body[2:4]),
			body:     body,
		}, true
	}
}

func (c *rsClient) mustAdvert(t *testing.T, d time.Duration, what string) received {
	t.Helper()
	ra, ok := c.advert(t, d)
	if !ok {
		t.Fatalf("no router advertisement (%s) within %v", what, d)
	}
	return ra
}

// checkAdvert checks what every advertisement of the default server must
// be: hop limit 255, link-local source, router lifetime 0, the server's
// link-layer address.
func checkAdvert(t *testing.T, ra received, serverMAC net.HardwareAddr) {
	t.Helper()
	if ra.hopLimit != 255 {
		t.Errorf("IP hop limit = %d, want 255", ra.hopLimit)
	}
	if !ra.src.IsLinkLocalUnicast() {
		t.Errorf("source %v is not link-local", ra.src)
	}
	if ra.lifetime != 0 {
		t.Errorf("router lifetime = %d, want 0", ra.lifetime)
	}
	if ra.body[0] != 0 || ra.body[1] != 0 {
		t.Errorf("cur hop limit %d flags %#x, want 0 and 0", ra.body[0], ra.body[1])
	}
	if want := string(append([]byte{1, 1}, serverMAC...)); len(ra.body) < 20 || string(ra.body[12:20]) != want {
		t.Errorf("options % x, want source link-layer address %v", ra.body[12:], serverMAC)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == reason) {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("metric %s{%s} not found", name, reason)
	return 0
}

// eventually waits up to d for cond, polling.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSolicited(t *testing.T) {
	n := newTestNS(t)
	srvLink, cliLink := n.veth(t, "ra0", "ra1", true)
	reg := prometheus.NewRegistry()
	c := n.client(t, cliLink)
	n.serve(t, &ra.Server{Interface: "ra0", Interval: time.Hour, Metrics: ra.NewMetrics(reg)})
	mac := srvLink.Attrs().HardwareAddr

	// The first advertisement goes out at start.
	checkAdvert(t, c.mustAdvert(t, 5*time.Second, "at start"), mac)
	eventually(t, 2*time.Second, "periodic counter", func() bool {
		return counter(t, reg, "ramboot_ra_sent_total", "periodic") == 1
	})

	t.Run("answered at once", func(t *testing.T) {
		time.Sleep(250 * time.Millisecond) // past the rate limit of the first advertisement
		sent := time.Now()
		c.solicit(t, 0, 255, c.sll()...)
		ra := c.mustAdvert(t, 2*time.Second, "solicited")
		checkAdvert(t, ra, mac)
		if d := ra.at.Sub(sent); d > time.Second {
			t.Errorf("answered after %v", d)
		}
		eventually(t, 2*time.Second, "solicited counters", func() bool {
			return counter(t, reg, "ramboot_ra_sent_total", "solicited") == 1 &&
				counter(t, reg, "ramboot_ra_solicitations_total", "") == 1
		})
	})

	t.Run("rate limited", func(t *testing.T) {
		time.Sleep(250 * time.Millisecond)
		for range 5 {
			c.solicit(t, 0, 255)
		}
		// One answer at once, one held back for the rest.
		c.mustAdvert(t, 2*time.Second, "first of a burst")
		c.mustAdvert(t, 2*time.Second, "held back")
		if ra, ok := c.advert(t, 500*time.Millisecond); ok {
			t.Errorf("third advertisement for one burst at %v", ra.at)
		}
		if got := counter(t, reg, "ramboot_ra_solicitations_total", ""); got != 6 {
			t.Errorf("solicitations = %v, want 6", got)
		}
		if got := counter(t, reg, "ramboot_ra_sent_total", "solicited"); got != 3 {
			t.Errorf("sent solicited = %v, want 3", got)
		}
	})

	t.Run("malformed dropped", func(t *testing.T) {
		c.solicit(t, 0, 64)                          // forwarded: hop limit not 255
		c.solicit(t, 1, 255)                         // code 1
		c.solicit(t, 0, 255, 1, 0, 0, 0, 0, 0, 0, 0) // zero-length option
		eventually(t, 2*time.Second, "malformed counter", func() bool {
			return counter(t, reg, "ramboot_ra_malformed_total", "") == 3
		})
		if ra, ok := c.advert(t, 400*time.Millisecond); ok {
			t.Errorf("advertisement at %v for malformed solicitations", ra.at)
		}
		if got := counter(t, reg, "ramboot_ra_solicitations_total", ""); got != 6 {
			t.Errorf("solicitations = %v, want 6", got)
		}
	})
}

func TestPeriodic(t *testing.T) {
	n := newTestNS(t)
	srvLink, cliLink := n.veth(t, "ra0", "ra1", true)
	reg := prometheus.NewRegistry()
	const interval = 300 * time.Millisecond
	c := n.client(t, cliLink)
	n.serve(t, &ra.Server{Interface: "ra0", Interval: interval, Metrics: ra.NewMetrics(reg)})
	first := c.mustAdvert(t, 5*time.Second, "at start")
	checkAdvert(t, first, srvLink.Attrs().HardwareAddr)
	prev := first
	for i := range 3 {
		ra := c.mustAdvert(t, 10*interval, fmt.Sprintf("periodic %d", i+1))
		checkAdvert(t, ra, srvLink.Attrs().HardwareAddr)
		if gap := ra.at.Sub(prev.at); gap < interval/2 {
			t.Errorf("advertisements %v apart, want about %v", gap, interval)
		}
		prev = ra
	}
	eventually(t, 2*time.Second, "periodic counter", func() bool {
		return counter(t, reg, "ramboot_ra_sent_total", "periodic") >= 4
	})
	if got := counter(t, reg, "ramboot_ra_sent_total", "solicited"); got != 0 {
		t.Errorf("sent solicited = %v, want 0", got)
	}
}

func TestPrefixesAndLifetime(t *testing.T) {
	n := newTestNS(t)
	_, cliLink := n.veth(t, "ra0", "ra1", true)
	c := n.client(t, cliLink)
	n.serve(t, &ra.Server{
		Interface:      "ra0",
		Interval:       time.Hour,
		RouterLifetime: 30 * time.Minute,
		Prefixes:       []netip.Prefix{netip.MustParsePrefix("fd00:77::/64")},
	})
	ra := c.mustAdvert(t, 5*time.Second, "at start")
	if ra.lifetime != 1800 {
		t.Errorf("router lifetime = %d, want 1800", ra.lifetime)
	}
	// Options: source link-layer address (8 octets), then the prefix.
	if len(ra.body) != 12+8+32 || ra.body[20] != 3 || ra.body[22] != 64 {
		t.Fatalf("options % x, want a prefix information option", ra.body[12:])
	}
	// The client's link configures an address from the prefix (SLAAC).
	eventually(t, 5*time.Second, "SLAAC address on ra1", func() bool {
		addrs, err := n.nl.AddrList(cliLink, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if netip.MustParsePrefix("fd00:77::/64").Contains(netip.MustParseAddr(a.IP.String())) {
				return true
			}
		}
		return false
	})
}

// TestNoLinkLocalYet starts the server while the link is down (no IPv6
// address at all), then brings the link up: sends fail quietly, the server
// stays up and advertises once the link-local address is usable.
func TestNoLinkLocalYet(t *testing.T) {
	n := newTestNS(t)
	srvLink, cliLink := n.veth(t, "ra0", "ra1", false)
	reg := prometheus.NewRegistry()
	stop := n.serve(t, &ra.Server{Interface: "ra0", Interval: 100 * time.Millisecond, Metrics: ra.NewMetrics(reg)})
	eventually(t, 5*time.Second, "failed sends counted", func() bool {
		return counter(t, reg, "ramboot_ra_send_failures_total", "") >= 2
	})
	if got := counter(t, reg, "ramboot_ra_sent_total", "periodic"); got != 0 {
		t.Errorf("sent periodic = %v without a link-local address", got)
	}
	c := n.client(t, cliLink)
	n.up(t, srvLink, cliLink)
	checkAdvert(t, c.mustAdvert(t, 5*time.Second, "after link up"), srvLink.Attrs().HardwareAddr)
	stop()
}

// TestIPv6Disabled: the server comes up and stops cleanly on a link where
// IPv6 is disabled.
func TestIPv6Disabled(t *testing.T) {
	n := newTestNS(t)
	n.veth(t, "ra0", "ra1", false)
	netnstest.IP(t, "netns", "exec", n.Name, "sysctl", "-q", "-w", "net.ipv6.conf.ra0.disable_ipv6=1")
	if err := n.nl.LinkSetUp(n.link(t, "ra0")); err != nil {
		t.Fatal(err)
	}
	n.up(t, n.link(t, "ra1"))
	reg := prometheus.NewRegistry()
	stop := n.serve(t, &ra.Server{Interface: "ra0", Interval: 100 * time.Millisecond, Metrics: ra.NewMetrics(reg)})
	eventually(t, 5*time.Second, "failed sends counted", func() bool {
		return counter(t, reg, "ramboot_ra_send_failures_total", "") >= 2
	})
	stop()
}

func TestMissingInterface(t *testing.T) {
	n := newTestNS(t)
	err := n.Do(func() error {
		return (&ra.Server{Interface: "nosuch0"}).ListenAndServe(context.Background())
	})
	if err == nil {
		t.Fatal("ListenAndServe on a missing interface returned nil")
	}
}
