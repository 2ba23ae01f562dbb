package dhcp

import (
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// ignoreReason is a label value of ramboot_dhcp_ignored_total{reason}: why
// a request got no reply, in a word.
type ignoreReason string

// Label values of ramboot_dhcp_ignored_total{reason}.
const (
	reasonNotRequest    ignoreReason = "not_bootrequest"  // op is not BOOTREQUEST
	reasonNoType        ignoreReason = "no_message_type"  // BOOTP, no option 53
	reasonUnsupported   ignoreReason = "unsupported_type" // a message type this port or mode does not answer
	reasonNoHWAddr      ignoreReason = "no_hwaddr"        // neither chaddr nor option 61
	reasonOtherServer   ignoreReason = "other_server"     // option 54 names another server
	reasonUnknownMAC    ignoreReason = "unknown_mac"      // Inventory returned ErrUnknown (no discovery address)
	reasonInventory     ignoreReason = "inventory_error"  // Inventory failed or returned an invalid reservation
	reasonUnknownArch   ignoreReason = "unknown_arch"     // no boot file for a network-boot client's architecture
	reasonReplyTooLarge ignoreReason = "reply_too_large"  // the reply does not fit the client's maximum message size
	reasonNotPXE        ignoreReason = "not_pxe"          // proxy mode or port 4011, and no PXE options
	reasonModeOff       ignoreReason = "mode_off"         // port 67 in mode off
	reasonUnknownSubnet ignoreReason = "unknown_subnet"   // a relay or interface on no configured subnet
	reasonWrongSubnet   ignoreReason = "wrong_subnet"     // the reserved address is not on the client's subnet
	reasonPoolExhausted ignoreReason = "pool_exhausted"   // the discovery range has no free address
	reasonNoHTTPBoot    ignoreReason = "http_boot_off"    // an HTTP boot client, no HTTP boot URL configured
)

var (
	requestTypes  = []RequestType{RequestDiscover, RequestRequest, RequestInform, RequestRelease, RequestDecline, "other"}
	replyTypes    = []ReplyType{ReplyOffer, ReplyAck, ReplyNak}
	ports         = []string{"67", "4011"}
	ignoreReasons = []ignoreReason{
		reasonNotRequest, reasonNoType, reasonUnsupported, reasonNoHWAddr, reasonOtherServer,
		reasonUnknownMAC, reasonInventory, reasonUnknownArch, reasonReplyTooLarge, reasonNotPXE,
		reasonModeOff, reasonUnknownSubnet, reasonWrongSubnet, reasonPoolExhausted, reasonNoHTTPBoot,
	}
)

// maxRivalLabels bounds the server label values of
// ramboot_dhcp_rival_offers_total: server identifiers come from packets, so
// beyond this many distinct servers the rest are counted as "other".
const maxRivalLabels = 16

// rivalOther is the server label for rivals beyond maxRivalLabels.
const rivalOther = "other"

// Metrics holds the server's Prometheus metrics. A nil *Metrics counts
// nothing. Create it with NewMetrics; a Server and a RivalDetector may
// share one, and so may several Serve calls.
type Metrics struct {
	requests    [2][]prometheus.Counter // by port index and requestTypes index
	replies     [2][]prometheus.Counter // by port index and replyTypes index
	ignored     map[ignoreReason]prometheus.Counter
	malformed   prometheus.Counter
	rivalOffers *prometheus.CounterVec
	otherOffers prometheus.Counter
	replyTime   prometheus.Histogram
	fallbacks   prometheus.Counter
	drops       udpsock.DropCounter
	discovery   atomic.Pointer[Discovery]

	mu     sync.Mutex
	rivals map[string]bool // server label values in use
}

// NewMetrics creates the DHCP server's metrics and registers them with reg
// (nil registers nothing):
//
//   - ramboot_dhcp_requests_total{port,type}: decoded requests by server
//     port (67, 4011) and message type (discover, request, inform,
//     release, decline, other);
//   - ramboot_dhcp_replies_total{port,type}: replies sent (offer, ack,
//     nak);
//   - ramboot_dhcp_ignored_total{reason}: requests answered with nothing,
//     by reason (unknown_mac, other_server, unknown_arch, inventory_error,
//     not_bootrequest, no_message_type, unsupported_type, no_hwaddr,
//     reply_too_large, not_pxe, mode_off, unknown_subnet, wrong_subnet,
//     pool_exhausted, http_boot_off);
//   - ramboot_dhcp_reply_seconds: time from a request's decoding to its
//     reply leaving the socket;
//   - ramboot_dhcp_malformed_total: packets that did not decode as DHCPv4;
//   - ramboot_dhcp_socket_drops_total: datagrams the kernel dropped at the
//     server sockets because their receive queue was full;
//   - ramboot_dhcp_unicast_fallback_total: replies to clients that asked
//     for unicast that went out as broadcasts (no neighbour entry could be
//     set);
//   - ramboot_dhcp_discovery_leases, ramboot_dhcp_discovered_machines,
//     ramboot_dhcp_discovery_dropped_total: the Discovery's addresses lent
//     now, machines recorded, and machines not recorded because the list
//     was full;
//   - ramboot_dhcp_rival_offers_total{server}: offers another DHCP server
//     made on the link to a MAC the inventory knows (RivalDetector), by
//     that server's identifier; at most 16 server values, then "other";
//   - ramboot_dhcp_other_offers_total: offers other servers made on the
//     link to MACs the inventory does not know (not ramboot's business).
//
// Every label value of the first three starts at zero. NewMetrics panics if
// reg already holds these metrics, as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_dhcp_requests_total",
		Help: "DHCPv4 requests decoded, by server port and message type.",
	}, []string{"port", "type"})
	replies := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_dhcp_replies_total",
		Help: "DHCPv4 replies sent, by server port and message type.",
	}, []string{"port", "type"})
	ignored := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_dhcp_ignored_total",
		Help: "DHCPv4 requests that got no reply, by reason.",
	}, []string{"reason"})
	m := &Metrics{
		ignored: map[ignoreReason]prometheus.Counter{},
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_dhcp_malformed_total",
			Help: "Packets received on the DHCP ports that did not decode as DHCPv4.",
		}),
		replyTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ramboot_dhcp_reply_seconds",
			Help:    "Time from a DHCP request's decoding to its reply leaving the socket.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 14), // 25 us .. 200 ms
		}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_dhcp_unicast_fallback_total",
			Help: "DHCP replies to clients that asked for unicast that were broadcast instead (no neighbour entry could be set).",
		}),
	}
	for i, p := range ports {
		for _, t := range requestTypes {
			m.requests[i] = append(m.requests[i], requests.WithLabelValues(p, string(t)))
		}
		for _, t := range replyTypes {
			m.replies[i] = append(m.replies[i], replies.WithLabelValues(p, string(t)))
		}
	}
	for _, r := range ignoreReasons {
		m.ignored[r] = ignored.WithLabelValues(string(r))
	}
	m.rivalOffers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_dhcp_rival_offers_total",
		Help: "DHCP offers another server made on the link to a node ramboot serves, by that server's identifier (a rival DHCP server).",
	}, []string{"server"})
	m.otherOffers = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ramboot_dhcp_other_offers_total",
		Help: "DHCP offers other servers made on the link to MACs ramboot does not serve.",
	})
	drops := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ramboot_dhcp_socket_drops_total",
		Help: "Datagrams the kernel dropped at the DHCP server sockets because their receive queue was full (SO_MEMINFO drops).",
	}, func() float64 { return float64(m.drops.Total()) })
	stat := func(i int) float64 {
		d := m.discovery.Load()
		if d == nil {
			return 0
		}
		l, n, dropped := d.Stats()
		return float64([]int{l, n, dropped}[i])
	}
	leases := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ramboot_dhcp_discovery_leases",
		Help: "Discovery addresses lent to unknown clients now (bound, unexpired).",
	}, func() float64 { return stat(0) })
	machines := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ramboot_dhcp_discovered_machines",
		Help: "Unknown clients recorded for adoption.",
	}, func() float64 { return stat(1) })
	dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ramboot_dhcp_discovery_dropped_total",
		Help: "Unknown clients not recorded because the discovered list was full.",
	}, func() float64 { return stat(2) })
	if reg != nil {
		reg.MustRegister(requests, replies, ignored, m.malformed, m.replyTime, m.fallbacks,
			m.rivalOffers, m.otherOffers, drops, leases, machines, dropped)
	}
	return m
}

// observe counts one handled request.
func (m *Metrics) observe(ev Event) {
	if m == nil {
		return
	}
	i := slices.Index(requestTypes, ev.Request)
	if i < 0 {
		i = len(requestTypes) - 1 // other
	}
	m.requests[portIndex(ev.Port)][i].Inc()
	if ev.reason != "" {
		m.ignored[ev.reason].Inc()
	}
}

// replied counts one reply sent, dur after its request was decoded.
func (m *Metrics) replied(ev Event, dur time.Duration) {
	if m == nil || ev.Reply == "" {
		return
	}
	if i := slices.Index(replyTypes, ev.Reply); i >= 0 {
		m.replies[portIndex(ev.Port)][i].Inc()
	}
	m.replyTime.Observe(dur.Seconds())
}

// portIndex is the index of a server port in ports.
func portIndex(port int) int {
	if port == PXEPort {
		return 1
	}
	return 0
}

// unicastFallback counts one unicast reply sent as a broadcast.
func (m *Metrics) unicastFallback() {
	if m != nil {
		m.fallbacks.Inc()
	}
}

// trackDiscovery makes the discovery gauges read d.
func (m *Metrics) trackDiscovery(d *Discovery) {
	if m != nil && d != nil {
		m.discovery.Store(d)
	}
}

// malformedPacket counts one packet that did not decode.
func (m *Metrics) malformedPacket() {
	if m == nil {
		return
	}
	m.malformed.Inc()
}

// trackDrops counts the drops of the server socket conn until the returned
// function is called.
func (m *Metrics) trackDrops(conn syscall.Conn) (untrack func()) {
	if m == nil {
		return func() {}
	}
	return m.drops.Track(conn)
}

// rivalOffer counts one offer from the rival server identified by server.
func (m *Metrics) rivalOffer(server string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	if !m.rivals[server] {
		if len(m.rivals) >= maxRivalLabels {
			server = rivalOther
		} else {
			if m.rivals == nil {
				m.rivals = map[string]bool{}
			}
			m.rivals[server] = true
		}
	}
	m.mu.Unlock()
	m.rivalOffers.WithLabelValues(server).Inc()
}

// otherOffer counts one offer from another server to a MAC not ours.
func (m *Metrics) otherOffer() {
	if m != nil {
		m.otherOffers.Inc()
	}
}
