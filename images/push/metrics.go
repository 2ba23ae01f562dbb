package push

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the SFTP server's Prometheus metrics. A nil *Metrics counts
// nothing.
type Metrics struct {
	conns     *prometheus.CounterVec
	openConns prometheus.Gauge
	idles     prometheus.Counter
	blobs     *prometheus.CounterVec
	bytesIn   prometheus.Counter
	bytesOut  prometheus.Counter
	committed prometheus.Counter
}

// NewMetrics registers the SFTP metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_sftp_connections_total", Help: "SFTP connections, by result: accepted, refused (the SSH login failed), login_timeout (no login within sftp.login_timeout), limit and limit_per_client (closed at once: sftp.max_conns or sftp.max_conns_per_client open).",
		}, []string{"result"}),
		openConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ramboot_sftp_open_connections", Help: "SFTP connections open now.",
		}),
		idles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_sftp_idle_closed_total", Help: "SFTP connections closed after sftp.idle_timeout without a byte from the client.",
		}),
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_sftp_uploads_total", Help: "Blob uploads closed, by result (stored; rejected: wrong digest; interrupted: connection lost; too_large: past sftp.max_upload; no_space: it would leave less than sftp.min_free in the store's file system).",
		}, []string{"result"}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_sftp_received_bytes_total", Help: "Bytes received in SFTP uploads.",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_sftp_sent_bytes_total", Help: "Blob bytes sent to SFTP clients (pulls).",
		}),
		committed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_sftp_images_committed_total", Help: "Manifests committed by pushes.",
		}),
	}
	reg.MustRegister(m.conns, m.openConns, m.idles, m.blobs, m.bytesIn, m.bytesOut, m.committed)
	return m
}

func (m *Metrics) conn(result string) {
	if m != nil {
		m.conns.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) open(d int) {
	if m != nil {
		m.openConns.Add(float64(d))
	}
}

func (m *Metrics) idle() {
	if m != nil {
		m.idles.Inc()
	}
}

func (m *Metrics) blob(result string) {
	if m != nil {
		m.blobs.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) received(n int) {
	if m != nil {
		m.bytesIn.Add(float64(n))
	}
}

func (m *Metrics) sent(n int) {
	if m != nil {
		m.bytesOut.Add(float64(n))
	}
}

func (m *Metrics) commit() {
	if m != nil {
		m.committed.Inc()
	}
}
