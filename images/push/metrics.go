package push

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the SFTP server's Prometheus metrics. A nil *Metrics counts
// nothing.
type Metrics struct {
	conns     *prometheus.CounterVec
	blobs     *prometheus.CounterVec
	bytesIn   prometheus.Counter
	bytesOut  prometheus.Counter
	committed prometheus.Counter
}

// NewMetrics registers the SFTP metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_sftp_connections_total", Help: "SFTP connections, by result of the SSH login (accepted, refused).",
		}, []string{"result"}),
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_sftp_uploads_total", Help: "Blob uploads closed, by result (stored, rejected: wrong digest, interrupted: connection lost).",
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
	reg.MustRegister(m.conns, m.blobs, m.bytesIn, m.bytesOut, m.committed)
	return m
}

func (m *Metrics) conn(result string) {
	if m != nil {
		m.conns.WithLabelValues(result).Inc()
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
