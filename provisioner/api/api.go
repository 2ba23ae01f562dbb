// Package api is the head's versioned JSON API (/api/v1): the admin routes
// the ramboot CLI uses over the daemon's unix socket, and the node routes
// that booted nodes call with their per-boot token.
//
//	admin := &api.Admin{DB: db, Images: store}
//	unixMux.Handle("/api/", admin.Handler())
//	node := &api.Node{DB: db, Images: store}
//	tcpMux.Handle("/api/", node.Handler())
//
// Errors are JSON objects {"error": "..."} with a 4xx or 5xx status.
package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"maps"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

// Bounds of what a client may send.
const (
	// maxBody bounds every admin request body.
	maxBody = 1 << 20
	// MaxAgentBody bounds every body a node's agent sends (413 beyond).
	MaxAgentBody = 64 << 10
	// MaxHeartbeatBody bounds a heartbeat's body: room for the bounded
	// list of jobs and containers (overlay.MaxWorkloadJobs,
	// MaxWorkloadContainers) with every text field full.
	MaxHeartbeatBody = 192 << 10
	// MaxReportError bounds the error text kept from a failed node's
	// registration; longer text is cut, not refused, so the reason still
	// shows.
	MaxReportError = 2048
	// MaxReportKernel bounds the kernel release in a registration.
	MaxReportKernel = 128
	// MaxReportSteps bounds the boot steps in a registration.
	MaxReportSteps = 32
	// MaxReportWarnings bounds the warnings in a registration.
	MaxReportWarnings = 16
	// MaxWarning bounds one warning; longer ones are cut.
	MaxWarning = 256
	// MaxStepName bounds a step's name in a registration.
	MaxStepName = 64
	// MaxWord bounds the short words agents send: the init's name, the
	// agent's version, the root mode, the system state, an overlay
	// generation, a job id or user.
	MaxWord = 64
	// MaxImageRef bounds an image reference a node asks the head to
	// resolve.
	MaxImageRef = 256
	// agentReadTimeout bounds how long reading an agent's body may take.
	agentReadTimeout = 10 * time.Second
)

// Error is the body of every error response.
type Error struct {
	// Error says what went wrong.
	Error string `json:"error"`
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

// writeCompact writes v as JSON without indentation: for answers that
// list thousands of objects.
func writeCompact(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	bw := bufio.NewWriterSize(w, 64<<10)
	_ = json.NewEncoder(bw).Encode(v) // the client went away; nothing to do
	_ = bw.Flush()
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, state.ErrNotFound), errors.Is(err, images.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, state.ErrExists), errors.Is(err, state.ErrConflict), errors.Is(err, state.ErrNotRegistered):
		code = http.StatusConflict
	case errors.Is(err, state.ErrBadToken):
		code = http.StatusUnauthorized
	case errors.Is(err, state.ErrWrongAddress):
		code = http.StatusForbidden
	case errors.As(err, new(*http.MaxBytesError)):
		code = http.StatusRequestEntityTooLarge
	case errors.As(err, new(badRequest)), errors.Is(err, ErrInvalid):
		code = http.StatusBadRequest
	}
	writeJSON(w, code, Error{Error: err.Error()})
}

// ErrInvalid, wrapped by an error a handler's helper returns, makes it a
// 400: the request's fault (a template that fails for the node).
var ErrInvalid = errors.New("invalid")

type badRequest struct{ error }

func (b badRequest) Unwrap() error { return b.error }

func decode(r *http.Request, v any) error { return decodeLimit(r, v, maxBody) }

func decodeLimit(r *http.Request, v any, limit int64) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return fmt.Errorf("decode request body: %w", err)
		}
		return badRequest{fmt.Errorf("decode request body: %w", err)}
	}
	return nil
}

// Node serves the routes booted nodes' agents call (heartbeat.go,
// nodeworkload.go): each with the node's current token, only from the
// node's reserved address (see state.DB.Authenticate), with its body and
// every field bounded.
type Node struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images is the image store, to resolve what a node reports it runs
	// and the images its containers ask for; required.
	Images *images.Store
	// Plan returns a node's boot plan (the policy seam): the image it was
	// assigned, for its registration; required.
	Plan func(node string) (plan.Plan, error)
	// Overlays renders nodes' overlays; required.
	Overlays OverlaySource
	// Interval is the heartbeat interval the head asks for; required.
	Interval time.Duration
	// DownAfter is how long the head waits without a heartbeat before it
	// marks a node down; required.
	DownAfter time.Duration
	// RequirePrivilegedPort refuses requests from source ports >= 1024.
	RequirePrivilegedPort bool
	// Logger logs registrations and shutdowns at Info; nil = discard.
	Logger *slog.Logger
	// Metrics, when set, counts requests and registrations.
	Metrics *Metrics
}

// Metrics are the node API's Prometheus metrics.
type Metrics struct {
	reports  *prometheus.CounterVec
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// Registration results, the values of ramboot_node_reports_total's
// result label.
const (
	ReportApplied      = "applied"       // recorded: the boot is booted or failed
	ReportRepeated     = "repeated"      // a registration again in the same boot: not applied again
	ReportConflict     = "conflict"      // contradicts the boot's registration, or a stale boot's token
	ReportBadToken     = "bad_token"     // no, a wrong or a revoked token
	ReportWrongAddress = "wrong_address" // not from the node's reserved address
	ReportInvalid      = "invalid"       // a malformed or oversized body or field
	ReportError        = "error"         // the head could not record it (a full disk)
)

// NewMetrics registers the node API's metrics with reg:
// ramboot_node_reports_total{result} (registrations) and
// ramboot_agent_requests_total{route,code}.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_node_reports_total",
			Help: "Agent registrations (a boot's report) by result: applied, repeated, conflict, bad_token, wrong_address, invalid, error.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_agent_requests_total",
			Help: "Requests of node agents by route and status code.",
		}, []string{"route", "code"}),
	}
	for _, r := range []string{ReportApplied, ReportRepeated, ReportConflict, ReportBadToken, ReportWrongAddress, ReportInvalid, ReportError} {
		m.reports.WithLabelValues(r)
	}
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ramboot_boot_duration_seconds",
		Help:    "Boots by how long they took, from their first step (DHCP or script) to the agent's registration, by result (ready, failed).",
		Buckets: []float64{5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200},
	}, []string{"result"})
	m.duration.WithLabelValues(string(overlay.StateReady))
	m.duration.WithLabelValues(string(overlay.StateFailed))
	reg.MustRegister(m.reports, m.requests, m.duration)
	return m
}

func (n *Node) count(result string) {
	if n.Metrics != nil {
		n.Metrics.reports.WithLabelValues(result).Inc()
	}
}

// observe records the duration of node name's boot that just reported.
func (n *Node) observe(name string, result overlay.State) {
	if n.Metrics == nil {
		return
	}
	ns, err := n.DB.Get(name)
	if err != nil || ns.Status.Report == nil || ns.Status.Started.IsZero() {
		return
	}
	n.Metrics.duration.WithLabelValues(string(result)).Observe(ns.Status.Report.Received.Sub(ns.Status.Started).Seconds())
}

// Handler returns the node routes:
//
//	POST /api/v1/nodes/{node}/register     overlay.Report -> overlay.Schedule
//	POST /api/v1/nodes/{node}/heartbeat    overlay.Heartbeat -> overlay.Schedule
//	POST /api/v1/nodes/{node}/shutdown     overlay.Shutdown -> 204
//	GET  /api/v1/nodes/{node}/overlay      -> overlay.RuntimeOverlay
//	GET  /api/v1/nodes/{node}/images/{ref} -> overlay.NodeImage
//	POST /api/v1/nodes/{node}/jobs         overlay.JobEvent -> 204
//	GET  /api/v1/time                      -> overlay.HeadTime
//
// All but the time take "Authorization: Bearer TOKEN".
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	n.agentRoutes(mux)
	n.workloadRoutes(mux) // nodeworkload.go
	return mux
}

// resolveImage maps the content digest a node reports to the image it
// runs: the node's assigned image when the content matches it, else any
// image with that content; the digest is empty when no image matches.
func resolveImage(store *images.Store, assigned, content string) (name, digest string) {
	refs, err := store.List()
	if err != nil || content == "" {
		return assigned, ""
	}
	want := assigned
	if r, err := images.ParseReference(assigned); err == nil {
		want = r.String()
	}
	for _, ref := range refs {
		if string(ref.Manifest.ContentDigest) != content {
			continue
		}
		switch {
		case ref.Reference() == want:
			name, digest = assigned, string(ref.Digest) // as the node's entry spells it
		case name == "":
			name, digest = ref.Reference(), string(ref.Digest)
		}
	}
	if name == "" {
		return assigned, ""
	}
	return name, digest
}

func mapsKeys[M ~map[K]V, K comparable, V any](m M) iter.Seq[K] { return maps.Keys(m) }
