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
	"math"
	"net/http"
	"net/netip"
	"strings"
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
	// MaxReportBody bounds a node's report body (413 beyond).
	MaxReportBody = 64 << 10
	// MaxReportError bounds the error text kept from a failed node's
	// report; longer text is cut, not refused, so the reason still shows.
	MaxReportError = 2048
	// MaxReportKernel bounds the kernel release in a report.
	MaxReportKernel = 128
	// MaxReportSteps bounds the boot steps in a report.
	MaxReportSteps = 32
	// MaxStepName bounds a step's name in a report.
	MaxStepName = 64
	// reportReadTimeout bounds how long reading a report's body may take.
	reportReadTimeout = 10 * time.Second
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
	case errors.Is(err, state.ErrExists), errors.Is(err, state.ErrConflict):
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

// Node serves the routes booted nodes call.
type Node struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images is the image store, to resolve what a node reports it runs;
	// required.
	Images *images.Store
	// Plan returns a node's boot plan (the policy seam), for the image it
	// was assigned; required.
	Plan func(node string) (plan.Plan, error)
	// Logger logs reports at Info; nil = discard.
	Logger *slog.Logger
	// Metrics, when set, counts reports by result.
	Metrics *Metrics
}

// Metrics are the node API's Prometheus metrics.
type Metrics struct {
	reports  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// Report results, the values of the result label.
const (
	ReportApplied      = "applied"       // recorded: the boot is booted or failed
	ReportRepeated     = "repeated"      // the same report again: accepted, not applied again
	ReportConflict     = "conflict"      // a different report for a boot that has one, or a stale boot
	ReportBadToken     = "bad_token"     // no, a wrong or a revoked token
	ReportWrongAddress = "wrong_address" // not from the node's reserved address
	ReportInvalid      = "invalid"       // a malformed or oversized body or field
	ReportError        = "error"         // the head could not record it (a full disk)
)

// NewMetrics registers the node API's metrics with reg:
// ramboot_node_reports_total{result}.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{reports: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_node_reports_total",
		Help: "Node reports by result: applied, repeated, conflict, bad_token, wrong_address, invalid, error.",
	}, []string{"result"})}
	for _, r := range []string{ReportApplied, ReportRepeated, ReportConflict, ReportBadToken, ReportWrongAddress, ReportInvalid, ReportError} {
		m.reports.WithLabelValues(r)
	}
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ramboot_boot_duration_seconds",
		Help:    "Boots by how long they took, from their first step (DHCP or script) to the agent's report, by result (ready, failed).",
		Buckets: []float64{5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200},
	}, []string{"result"})
	m.duration.WithLabelValues(string(overlay.StateReady))
	m.duration.WithLabelValues(string(overlay.StateFailed))
	reg.MustRegister(m.reports, m.duration)
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
//	POST /api/v1/nodes/{name}/report   the agent's report (overlay.Report),
//	                                   with "Authorization: Bearer TOKEN"
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+overlay.ReportPath, n.report)
	return mux
}

// checkReport checks every field of a report against its bound and
// returns it made safe to store and print.
func checkReport(rep overlay.Report) (overlay.Report, error) {
	var errs []error
	if rep.State != overlay.StateReady && rep.State != overlay.StateFailed {
		errs = append(errs, fmt.Errorf("state %q: not ready or failed", state.Clip(string(rep.State), 32)))
	}
	rep.Error = state.Clip(state.Printable(rep.Error), MaxReportError)
	if len(rep.Kernel) > MaxReportKernel {
		errs = append(errs, fmt.Errorf("kernel: %d bytes, more than %d", len(rep.Kernel), MaxReportKernel))
	}
	rep.Kernel = state.Printable(rep.Kernel)
	if rep.ContentDigest != "" {
		if _, err := images.ParseDigest(rep.ContentDigest); err != nil {
			errs = append(errs, fmt.Errorf("contentDigest: %w", err))
		}
	}
	if rep.MemTotalBytes < 0 {
		errs = append(errs, fmt.Errorf("memTotalBytes: %d is negative", rep.MemTotalBytes))
	}
	if rep.UptimeSeconds < 0 || math.IsInf(rep.UptimeSeconds, 0) || math.IsNaN(rep.UptimeSeconds) {
		errs = append(errs, fmt.Errorf("uptimeSeconds: %v is not a duration", rep.UptimeSeconds))
	}
	if len(rep.Steps) > MaxReportSteps {
		errs = append(errs, fmt.Errorf("steps: %d, more than %d", len(rep.Steps), MaxReportSteps))
	}
	for i, st := range rep.Steps {
		if len(st.Name) == 0 || len(st.Name) > MaxStepName || state.Printable(st.Name) != st.Name {
			errs = append(errs, fmt.Errorf("steps[%d].name: must be 1-%d printable bytes", i, MaxStepName))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return rep, badRequest{err}
	}
	return rep, nil
}

func (n *Node) report(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("node")
	l := logger(n.Logger)
	refuse := func(result string, err error) {
		n.count(result)
		l.Debug("report refused", "node", name, "ip", r.RemoteAddr, "result", result, "err", err)
		writeError(w, err)
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		refuse(ReportBadToken, fmt.Errorf("report from node %s: missing bearer token: %w", name, state.ErrBadToken))
		return
	}
	from, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		refuse(ReportInvalid, fmt.Errorf("report from node %s: remote address %q: %w", name, r.RemoteAddr, err))
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(reportReadTimeout))
	r.Body = http.MaxBytesReader(w, r.Body, MaxReportBody)
	var rep overlay.Report
	if err := decode(r, &rep); err != nil {
		refuse(ReportInvalid, fmt.Errorf("report from node %s: %w", name, err))
		return
	}
	if rep, err = checkReport(rep); err != nil {
		refuse(ReportInvalid, fmt.Errorf("report from node %s: %w", name, err))
		return
	}
	p, err := n.Plan(name)
	if err != nil {
		refuse(ReportInvalid, err)
		return
	}
	imgName, imgDigest := n.resolve(p.Image, rep.ContentDigest)
	applied, err := n.DB.SetReport(name, token, from.Addr(), state.Report{
		State:         string(rep.State),
		Error:         rep.Error,
		ImageName:     imgName,
		ImageDigest:   imgDigest,
		ContentDigest: rep.ContentDigest,
		Kernel:        rep.Kernel,
		MemTotalBytes: rep.MemTotalBytes,
		UptimeSeconds: rep.UptimeSeconds,
	})
	switch {
	case errors.Is(err, state.ErrBadToken):
		refuse(ReportBadToken, err)
		return
	case errors.Is(err, state.ErrWrongAddress):
		refuse(ReportWrongAddress, err)
		return
	case errors.Is(err, state.ErrConflict):
		n.count(ReportConflict)
		l.Warn("conflicting report refused", "node", name, "ip", from.Addr(), "err", err)
		writeError(w, err)
		return
	case err != nil:
		n.count(ReportError)
		l.Error("report not recorded", "node", name, "err", err)
		writeError(w, err)
		return
	case !applied:
		n.count(ReportRepeated)
		l.Info("repeated report accepted, not applied again", "node", name, "ip", from.Addr())
	case rep.State == overlay.StateReady:
		n.count(ReportApplied)
		n.observe(name, rep.State)
		l.Info("node booted", "node", name, "ip", from.Addr(), "image", imgName, "digest", imgDigest, "kernel", rep.Kernel, "uptime", rep.UptimeSeconds)
	default:
		n.count(ReportApplied)
		n.observe(name, rep.State)
		l.Warn("node boot failed", "node", name, "ip", from.Addr(), "err", rep.Error)
	}
	w.WriteHeader(http.StatusNoContent)
}

// resolve maps the content digest a node reports to the image it runs:
// the node's assigned image when the content matches it, else any image
// with that content; the digest is empty when no image matches.
func (n *Node) resolve(assigned, content string) (name, digest string) {
	refs, err := n.Images.List()
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
