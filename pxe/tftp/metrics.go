package tftp

import (
	"time"

	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// Metrics holds the server's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	transfers  *prometheus.CounterVec
	bytes      prometheus.Counter
	probes     prometheus.Counter
	badPackets prometheus.Counter
	inFlight   prometheus.Gauge
	duration   prometheus.Histogram
	queued     prometheus.Histogram
	overLimit  *prometheus.CounterVec
	drops      udpsock.DropCounter
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
//   - ramboot_tftp_queue_wait_seconds: how long read requests over
//     MaxTransfers waited for a slot (served, or refused past QueueWait)
//   - ramboot_tftp_over_limit_total{limit="total|client"}: read requests
//     refused because MaxTransfers (total) or MaxTransfersPerClient
//     (client) transfers were in flight; not in transfers_total
//   - ramboot_tftp_socket_drops_total: datagrams the kernel dropped at the
//     server socket (port 69) because its receive queue was full
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
	m.queued = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ramboot_tftp_queue_wait_seconds",
		Help:    "How long read requests over tftp.max_transfers waited for a slot (served or, past the wait, refused).",
		Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4},
	})
	m.overLimit = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_tftp_over_limit_total",
		Help: "TFTP read requests refused because the transfers in flight were at the limit: total (tftp.max_transfers) or from the client's address (tftp.max_transfers_per_client).",
	}, []string{"limit"})
	drops := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ramboot_tftp_socket_drops_total",
		Help: "Datagrams the kernel dropped at the TFTP server socket because its receive queue was full (SO_MEMINFO drops).",
	}, func() float64 { return float64(m.drops.Total()) })
	for _, r := range []result{resultOK, resultError, resultRefused} {
		m.transfers.WithLabelValues(string(r))
	}
	for _, l := range []limit{limitTotal, limitClient} {
		m.overLimit.WithLabelValues(string(l))
	}
	if reg != nil {
		reg.MustRegister(m.transfers, m.bytes, m.probes, m.badPackets, m.inFlight, m.duration, m.queued, m.overLimit, drops)
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

func (m *Metrics) queuedFor(d time.Duration) {
	if m != nil {
		m.queued.Observe(d.Seconds())
	}
}

func (m *Metrics) refusedOverLimit(l limit) {
	if m != nil {
		m.overLimit.WithLabelValues(string(l)).Inc()
	}
}

// trackDrops counts the drops of the server socket conn until the returned
// function is called.
func (m *Metrics) trackDrops(conn syscall.Conn) (untrack func()) {
	if m == nil {
		return func() {}
	}
	return m.drops.Track(conn)
}
