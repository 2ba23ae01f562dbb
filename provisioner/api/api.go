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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/images"
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

// AddNodeRequest is the body of POST /api/v1/nodes.
type AddNodeRequest struct {
	// Name is the node's name.
	Name string `json:"name"`
	// MAC is the provisioning interface's MAC.
	MAC string `json:"mac"`
	// IP is the node's reserved IPv4 address.
	IP string `json:"ip"`
	// Image is the image to boot; empty = the default image.
	Image string `json:"image,omitempty"`
	// RootMode is the node's root mode, "tmpfs" or "compressed"; empty =
	// the configuration's boot.root.mode.
	RootMode string `json:"rootMode,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	// Error says what went wrong.
	Error string `json:"error"`
}

// Admin serves the admin routes. Put it only on a listener that only the
// administrator can reach (the root-only unix socket).
type Admin struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images is the image store; required.
	Images *images.Store
	// Subnet, when valid, is the provisioning subnet node addresses must be in.
	Subnet netip.Prefix
	// DefaultImage is the image of nodes that have none (boot.default_image).
	DefaultImage string
	// Logger logs inventory changes at Info; nil = discard.
	Logger *slog.Logger
}

// Handler returns the admin routes:
//
//	GET    /api/v1/nodes          list nodes with their status
//	POST   /api/v1/nodes          add a node (AddNodeRequest)
//	GET    /api/v1/nodes/{name}   one node with its status and timeline
//	DELETE /api/v1/nodes/{name}   remove a node
//	GET    /api/v1/nodes/{name}/boots        the boots kept, newest first
//	GET    /api/v1/nodes/{name}/boots/{boot} one boot, by number
//	GET    /api/v1/state/backup   a consistent copy of the state database
//
// and the image routes of imageRoutes (images.go).
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/nodes", a.listNodes)
	mux.HandleFunc("POST /api/v1/nodes", a.addNode)
	mux.HandleFunc("GET /api/v1/nodes/{name}", a.getNode)
	mux.HandleFunc("DELETE /api/v1/nodes/{name}", a.deleteNode)
	mux.HandleFunc("GET /api/v1/nodes/{name}/boots", a.listBoots)
	mux.HandleFunc("GET /api/v1/nodes/{name}/boots/{boot}", a.getBoot)
	mux.HandleFunc("GET /api/v1/state/backup", a.backup)
	a.imageRoutes(mux)
	return mux
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
	case errors.As(err, new(badRequest)):
		code = http.StatusBadRequest
	}
	writeJSON(w, code, Error{Error: err.Error()})
}

type badRequest struct{ error }

func (b badRequest) Unwrap() error { return b.error }

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return fmt.Errorf("decode request body: %w", err)
		}
		return badRequest{fmt.Errorf("decode request body: %w", err)}
	}
	return nil
}

func (a *Admin) listNodes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.DB.List())
}

func (a *Admin) getNode(w http.ResponseWriter, r *http.Request) {
	n, err := a.DB.Get(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (a *Admin) addNode(w http.ResponseWriter, r *http.Request) {
	var req AddNodeRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	ip, err := netip.ParseAddr(req.IP)
	if err != nil || !ip.Is4() {
		writeError(w, badRequest{fmt.Errorf("node %s: ip %q: not an IPv4 address", req.Name, req.IP)})
		return
	}
	if a.Subnet.IsValid() && !a.Subnet.Contains(ip) {
		writeError(w, badRequest{fmt.Errorf("node %s: ip %s is not in the provisioning subnet %s", req.Name, ip, a.Subnet.Masked())})
		return
	}
	if a.Subnet.IsValid() && (ip == a.Subnet.Addr() || ip == a.Subnet.Masked().Addr()) {
		writeError(w, badRequest{fmt.Errorf("node %s: ip %s is the head's or the subnet's address", req.Name, ip)})
		return
	}
	if req.Image != "" {
		if _, err := images.ParseReference(req.Image); err != nil {
			writeError(w, badRequest{err})
			return
		}
	}
	n := state.Node{Name: req.Name, MAC: req.MAC, IP: ip, Image: req.Image, RootMode: req.RootMode}
	if err := a.DB.AddNode(n); err != nil {
		if !errors.Is(err, state.ErrExists) {
			err = badRequest{err}
		}
		writeError(w, err)
		return
	}
	got, err := a.DB.Get(req.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("node added", "node", got.Name, "mac", got.MAC, "ip", got.IP, "image", got.Image, "root_mode", got.RootMode)
	writeJSON(w, http.StatusCreated, got)
}

func (a *Admin) deleteNode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := a.DB.DeleteNode(name); err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("node deleted", "node", name)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Admin) listBoots(w http.ResponseWriter, r *http.Request) {
	bs, err := a.DB.Boots(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, bs)
}

func (a *Admin) getBoot(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(r.PathValue("boot"))
	if err != nil || id < 1 {
		writeError(w, badRequest{fmt.Errorf("boot %q: not a boot number (1, 2, ...)", r.PathValue("boot"))})
		return
	}
	b, err := a.DB.BootByID(r.PathValue("name"), id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// backup streams a consistent copy of the database (one read transaction),
// with its size in Content-Length: a copy cut short does not verify.
func (a *Admin) backup(w http.ResponseWriter, r *http.Request) {
	n, err := a.DB.WriteSnapshot(w, func(size int64) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	})
	if err != nil && n == 0 {
		writeError(w, err)
		return
	}
	if err != nil {
		logger(a.Logger).Warn("state backup cut short", "bytes", n, "err", err)
		return
	}
	logger(a.Logger).Info("state backup sent", "bytes", n)
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
	// DefaultImage is the image of nodes that have none.
	DefaultImage string
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
	reg.MustRegister(m.reports, m.requests)
	return m
}

func (n *Node) count(result string) {
	if n.Metrics != nil {
		n.Metrics.reports.WithLabelValues(result).Inc()
	}
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
