package ra

import "github.com/prometheus/client_golang/prometheus"

// Metrics holds the server's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	sentTotal      *prometheus.CounterVec
	solicitsTotal  prometheus.Counter
	malformedTotal prometheus.Counter
	failuresTotal  prometheus.Counter
}

// NewMetrics creates the server's metrics and registers them with reg (if
// reg is not nil); it panics if one is already registered there:
//
//   - ramboot_ra_sent_total{reason="periodic|solicited"}: advertisements sent
//   - ramboot_ra_solicitations_total: valid Router Solicitations received
//   - ramboot_ra_malformed_total: Router Solicitations dropped as malformed
//   - ramboot_ra_send_failures_total: advertisements that could not be sent,
//     typically because the link has no usable link-local address yet
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sentTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_ra_sent_total",
			Help: "IPv6 Router Advertisements sent, by reason: periodic or solicited.",
		}, []string{"reason"}),
		solicitsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_ra_solicitations_total",
			Help: "Valid IPv6 Router Solicitations received.",
		}),
		malformedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_ra_malformed_total",
			Help: "IPv6 Router Solicitations dropped as malformed.",
		}),
		failuresTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_ra_send_failures_total",
			Help: "IPv6 Router Advertisements that could not be sent (e.g. no usable link-local address yet).",
		}),
	}
	for _, r := range []reason{reasonPeriodic, reasonSolicited} {
		m.sentTotal.WithLabelValues(string(r))
	}
	if reg != nil {
		reg.MustRegister(m.sentTotal, m.solicitsTotal, m.malformedTotal, m.failuresTotal)
	}
	return m
}

func (m *Metrics) sent(r reason) {
	if m != nil {
		m.sentTotal.WithLabelValues(string(r)).Inc()
	}
}

func (m *Metrics) solicited() {
	if m != nil {
		m.solicitsTotal.Inc()
	}
}

func (m *Metrics) malformed() {
	if m != nil {
		m.malformedTotal.Inc()
	}
}

func (m *Metrics) failed() {
	if m != nil {
		m.failuresTotal.Inc()
	}
}
