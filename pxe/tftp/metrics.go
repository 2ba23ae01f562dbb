package tftp

import "github.com/prometheus/client_golang/prometheus"

// Metrics holds the server's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	transfers  *prometheus.CounterVec
	bytes      prometheus.Counter
	probes     prometheus.Counter
	badPackets prometheus.Counter
	inFlight   prometheus.Gauge
	duration   prometheus.Histogram
}

// NewMetrics creates the server's metrics and registers them with reg (if
// reg is not nil); it panics if one is already registered there:
//
//   - ramboot_tftp_transfers_total{result="ok|error|refused"}: requests by
//     outcome; refused are names outside the catalogue, path traversal and
//     write requests, error includes client aborts and timeouts
//   - ramboot_tftp_bytes_total: file bytes sent
//   - ramboot_tftp_option_probes_total: transfers the client aborted after
//     option negotiation, before any data (the tsize probe of UEFI firmware);
//     also counted as result="error"
//   - ramboot_tftp_malformed_total: datagrams on the server port that are
//     not valid requests
//   - ramboot_tftp_transfers_in_flight: transfers being sent now
//   - ramboot_tftp_transfer_duration_seconds: duration of successful
//     transfers
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_tftp_transfers_total",
			Help: "TFTP requests by result: ok, error (failed, timed out or aborted by the client) or refused (not in the catalogue, path traversal, write request).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_tftp_bytes_total",
			Help: "File bytes sent over TFTP.",
		}),
		probes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_tftp_option_probes_total",
			Help: "TFTP transfers the client aborted after option negotiation, before any data (UEFI tsize probe); also counted as result=error.",
		}),
		badPackets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_tftp_malformed_total",
			Help: "Datagrams on the TFTP server port that were not valid requests.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ramboot_tftp_transfers_in_flight",
			Help: "TFTP transfers being sent now.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ramboot_tftp_transfer_duration_seconds",
			Help:    "Duration of successful TFTP transfers.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 9), // 10 ms .. 15 s
		}),
	}
	for _, r := range []result{resultOK, resultError, resultRefused} {
		m.transfers.WithLabelValues(string(r))
	}
	if reg != nil {
		reg.MustRegister(m.transfers, m.bytes, m.probes, m.badPackets, m.inFlight, m.duration)
	}
	return m
}

func (m *Metrics) finished(res result, ev Event, probe bool) {
	if m == nil {
		return
	}
	m.transfers.WithLabelValues(string(res)).Inc()
	m.bytes.Add(float64(ev.Bytes))
	if probe {
		m.probes.Inc()
	}
	if res == resultOK {
		m.duration.Observe(ev.Dur.Seconds())
	}
}

func (m *Metrics) started() {
	if m != nil {
		m.inFlight.Inc()
	}
}

func (m *Metrics) ended() {
	if m != nil {
		m.inFlight.Dec()
	}
}

func (m *Metrics) malformed() {
	if m != nil {
		m.badPackets.Inc()
	}
}
