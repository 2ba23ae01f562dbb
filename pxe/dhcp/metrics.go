package dhcp

import "github.com/prometheus/client_golang/prometheus"

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

// Metrics holds the server's Prometheus counters. A nil *Metrics counts
// nothing. Create it with NewMetrics.
type Metrics struct {
	requests  *prometheus.CounterVec
	replies   *prometheus.CounterVec
	ignored   *prometheus.CounterVec
	malformed prometheus.Counter
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
//   - ramboot_dhcp_malformed_total: packets that did not decode as DHCPv4.
//
// Every label value starts at zero. NewMetrics panics if reg already holds
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
		reg.MustRegister(m.requests, m.replies, m.ignored, m.malformed)
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
