package tftp

import (
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// Metrics holds the server's Prometheus metrics. A nil *Metrics records
// nothing.
type Metrics struct {
	transfers  *prometheus.CounterVec
	bytes      *prometheus.CounterVec
	blockSize  prometheus.Histogram
	retrans    *prometheus.CounterVec
	rate       prometheus.Histogram
	probes     prometheus.Counter
	badPackets prometheus.Counter
	inFlight   prometheus.Gauge
	duration   *prometheus.HistogramVec
	queued     prometheus.Histogram
	overLimit  *prometheus.CounterVec
	drops      udpsock.DropCounter
}

// NewMetrics creates the server's metrics and registers them with reg (if
// reg is not nil); it panics if one is already registered there:
//
//   - ramboot_tftp_transfers_total{result="ok|error|refused",file}:
//     requests by outcome and file (a catalogue name, or "other" for
//     names outside it); refused are names outside the catalogue, path
//     traversal and write requests, error includes client aborts and
//     timeouts
//   - ramboot_tftp_bytes_total{file}: file bytes sent
//   - ramboot_tftp_retransmits_total{file}: DATA and option packets sent
//     again because the client's acknowledgement did not come in time
//   - ramboot_tftp_transfer_block_size_bytes: block size of each transfer
//     that sent data (the negotiated blksize, else 512)
//   - ramboot_tftp_transfer_rate_bytes_per_second: throughput of each
//     successful transfer of at least 64 KiB
//   - ramboot_tftp_option_probes_total: transfers the client aborted after
//     option negotiation, before any data (the tsize probe of UEFI firmware);
//     also counted as result="error"
//   - ramboot_tftp_malformed_total: datagrams on the server port that are
//     not valid requests
//   - ramboot_tftp_transfers_in_flight: transfers being sent now
//   - ramboot_tftp_transfer_duration_seconds{file}: duration of successful
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
			Help: "TFTP requests by result (ok, error: failed, timed out or aborted by the client, refused: not in the catalogue, path traversal, write request) and file (other: not in the catalogue).",
		}, []string{"result", "file"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_tftp_bytes_total",
			Help: "File bytes sent over TFTP, by file.",
		}, []string{"file"}),
		retrans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_tftp_retransmits_total",
			Help: "TFTP packets sent again because the client's acknowledgement did not come in time, by file.",
		}, []string{"file"}),
		blockSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ramboot_tftp_transfer_block_size_bytes",
			Help:    "Block size of each TFTP transfer that sent data (negotiated blksize, else 512).",
			Buckets: []float64{512, 1024, 1408, 1428, 1448, 1468, 4096, 8192, 16384, 65464},
		}),
		rate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ramboot_tftp_transfer_rate_bytes_per_second",
			Help:    "Throughput of each successful TFTP transfer of at least 64 KiB.",
			Buckets: prometheus.ExponentialBuckets(64<<10, 2, 12), // 64 KiB/s .. 128 MiB/s
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
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ramboot_tftp_transfer_duration_seconds",
			Help:    "Duration of successful TFTP transfers, by file.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 9), // 10 ms .. 15 s
		}, []string{"file"}),
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
		m.transfers.WithLabelValues(string(r), otherFile)
	}
	for _, l := range []limit{limitTotal, limitClient} {
		m.overLimit.WithLabelValues(string(l))
	}
	if reg != nil {
		reg.MustRegister(m.transfers, m.bytes, m.retrans, m.blockSize, m.rate, m.probes, m.badPackets, m.inFlight, m.duration, m.queued, m.overLimit, drops)
	}
	return m
}

func (m *Metrics) queuedFor(d time.Duration) {
	if m != nil {
		m.queued.Observe(d.Seconds())
	}
}

// otherFile is the file label of requests for names outside the
// catalogue.
const otherFile = "other"

// finished counts one ended request; file is its catalogue name, or
// otherFile.
func (m *Metrics) finished(res result, ev Event, file string, probe bool) {
	if m == nil {
		return
	}
	m.transfers.WithLabelValues(string(res), file).Inc()
	if probe {
		m.probes.Inc()
	}
	if res == resultRefused {
		return
	}
	m.bytes.WithLabelValues(file).Add(float64(ev.Bytes))
	m.retrans.WithLabelValues(file).Add(float64(ev.Retransmits))
	if ev.Bytes > 0 {
		m.blockSize.Observe(float64(ev.BlockSize))
	}
	if res == resultOK {
		m.duration.WithLabelValues(file).Observe(ev.Dur.Seconds())
		if ev.Bytes >= 64<<10 && ev.Dur > 0 {
			m.rate.Observe(float64(ev.Bytes) / ev.Dur.Seconds())
		}
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
