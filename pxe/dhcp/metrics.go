package dhcp

import (
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// Label values of ramboot_dhcp_ignored_total{reason}.
const (
	reasonNotRequest    = "not_bootrequest"  // op is not BOOTREQUEST
	reasonNoType        = "no_message_type"  // BOOTP, no option 53
	reasonUnsupported   = "unsupported_type" // a message type a server does not answer
	reasonNoHWAddr      = "no_hwaddr"        // chaddr is empty
	reasonOtherServer   = "other_server"     // option 54 names another server
	reasonUnknownMAC    = "unknown_mac"      // Inventory returned ErrUnknown
	reasonInventory     = "inventory_error"  // Inventory failed or returned an invalid reservation
	reasonUnknownArch   = "unknown_arch"     // no boot file for a PXE client's architecture
	reasonReplyTooLarge = "reply_too_large"  // the reply does not fit the client's maximum message size
)

var (
	requestTypes  = []string{"discover", "request", "inform", "release", "decline", "other"}
	replyTypes    = []string{"offer", "ack", "nak"}
	ignoreReasons = []string{
		reasonNotRequest, reasonNoType, reasonUnsupported, reasonNoHWAddr, reasonOtherServer,
		reasonUnknownMAC, reasonInventory, reasonUnknownArch, reasonReplyTooLarge,
	}
)

// maxRivalLabels bounds the server label values of
// ramboot_dhcp_rival_offers_total: server identifiers come from packets, so
// beyond this many distinct servers the rest are counted as "other".
const maxRivalLabels = 16

// rivalOther is the server label for rivals beyond maxRivalLabels.
const rivalOther = "other"

// Metrics holds the server's Prometheus counters. A nil *Metrics counts
// nothing. Create it with NewMetrics; a Server and a RivalDetector may
// share one.
type Metrics struct {
	requests    *prometheus.CounterVec
	replies     *prometheus.CounterVec
	ignored     *prometheus.CounterVec
	malformed   prometheus.Counter
	rivalOffers *prometheus.CounterVec
	otherOffers prometheus.Counter
	drops       udpsock.DropCounter

	mu     sync.Mutex
	rivals map[string]bool // server label values in use
}

// NewMetrics creates the DHCP server's counters and registers them with reg
// (nil registers nothing):
//
//   - ramboot_dhcp_requests_total{type}: decoded requests by message type
//     (discover, request, inform, release, decline, other);
//   - ramboot_dhcp_replies_total{type}: replies sent (offer, ack, nak);
//   - ramboot_dhcp_ignored_total{reason}: requests answered with nothing,
//     by reason (unknown_mac, other_server, unknown_arch, inventory_error,
//     not_bootrequest, no_message_type, unsupported_type, no_hwaddr,
//     reply_too_large);
//   - ramboot_dhcp_malformed_total: packets that did not decode as DHCPv4;
//   - ramboot_dhcp_socket_drops_total: datagrams the kernel dropped at the
//     server socket because its receive queue was full;
//   - ramboot_dhcp_rival_offers_total{server}: offers another DHCP server
//     made on the link to a MAC the inventory knows (RivalDetector), by
//     that server's identifier; at most 16 server values, then "other";
//   - ramboot_dhcp_other_offers_total: offers other servers made on the
//     link to MACs the inventory does not know (not ramboot's business).
//
// Every label value of the first three starts at zero. NewMetrics panics if reg already holds
// these metrics, as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_dhcp_requests_total",
			Help: "DHCPv4 requests decoded, by message type.",
		}, []string{"type"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_dhcp_replies_total",
			Help: "DHCPv4 replies sent, by message type.",
		}, []string{"type"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_dhcp_ignored_total",
			Help: "DHCPv4 requests that got no reply, by reason.",
		}, []string{"reason"}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_dhcp_malformed_total",
			Help: "Packets received on the DHCP port that did not decode as DHCPv4.",
		}),
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
		Help: "Datagrams the kernel dropped at the DHCP server socket because its receive queue was full (SO_MEMINFO drops).",
	}, func() float64 { return float64(m.drops.Total()) })
	for _, t := range requestTypes {
		m.requests.WithLabelValues(t)
	}
	for _, t := range replyTypes {
		m.replies.WithLabelValues(t)
	}
	for _, r := range ignoreReasons {
		m.ignored.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.replies, m.ignored, m.malformed, m.rivalOffers, m.otherOffers, drops)
	}
	return m
}

// observe counts one handled request.
func (m *Metrics) observe(ev Event) {
	if m == nil {
		return
	}
	switch ev.Request {
	case "discover", "request", "inform", "release", "decline":
		m.requests.WithLabelValues(ev.Request).Inc()
	default:
		m.requests.WithLabelValues("other").Inc()
	}
	if ev.Reply != "" {
		m.replies.WithLabelValues(ev.Reply).Inc()
	}
	if ev.reason != "" {
		m.ignored.WithLabelValues(ev.reason).Inc()
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
