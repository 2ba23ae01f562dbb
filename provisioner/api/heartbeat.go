package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// maxAgentBody bounds the agent daemon's request bodies: a registration
// with its boot steps is a few KiB.
const maxAgentBody = 64 << 10

// errWrongAddress means a node route was called from another address than
// the node's reserved one.
var errWrongAddress = errors.New("not the node's reserved address")

// OverlaySource renders a node's overlay as the head would serve it now.
type OverlaySource interface {
	RuntimeOverlay(node string) (overlay.RuntimeOverlay, error)
}

// Agents serves the routes the node agent daemon calls: registration,
// heartbeats, shutdown, the runtime overlay (all with the node's token,
// only from its reserved address) and the head's clock.
type Agents struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images resolves the content digest a node reports; required.
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
	// Metrics, when set, counts requests.
	Metrics *AgentMetrics
}

// AgentMetrics are the agent routes' Prometheus metrics.
type AgentMetrics struct {
	requests *prometheus.CounterVec
}

// NewAgentMetrics registers ramboot_agent_requests_total{route,code} with
// reg.
func NewAgentMetrics(reg prometheus.Registerer) *AgentMetrics {
	m := &AgentMetrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ramboot_agent_requests_total",
		Help: "Requests of node agent daemons by route and status code.",
	}, []string{"route", "code"})}
	reg.MustRegister(m.requests)
	return m
}

// Register adds the agent routes to mux:
//
//	POST /api/v1/nodes/{node}/register   overlay.Report  -> overlay.Schedule
//	POST /api/v1/nodes/{node}/heartbeat  overlay.Heartbeat -> overlay.Schedule
//	POST /api/v1/nodes/{node}/shutdown   overlay.Shutdown -> 204
//	GET  /api/v1/nodes/{node}/overlay    -> overlay.RuntimeOverlay
//	GET  /api/v1/time                    -> overlay.HeadTime
func (a *Agents) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+overlay.RegisterPath, a.counted("register", a.register))
	mux.HandleFunc("POST "+overlay.HeartbeatPath, a.counted("heartbeat", a.heartbeat))
	mux.HandleFunc("POST "+overlay.ShutdownPath, a.counted("shutdown", a.shutdown))
	mux.HandleFunc("GET "+overlay.OverlayPath, a.counted("overlay", a.overlay))
	mux.HandleFunc("GET "+overlay.TimePath, a.counted("time", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, overlay.HeadTime{Time: time.Now()})
	}))
}

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (a *Agents) counted(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sr := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(sr, r)
		if a.Metrics != nil {
			a.Metrics.requests.WithLabelValues(route, strconv.Itoa(sr.code)).Inc()
		}
	}
}

// caller is an authenticated agent request.
type caller struct {
	node       state.NodeStatus
	token      string
	remote     string
	privileged bool
}

// authenticate checks that r comes from the node's reserved address (and
// a privileged port when required) with a bearer token, and decodes its
// body into v (if not nil). The token itself is checked by the state
// database. It answers r and returns false when r is refused.
func (a *Agents) authenticate(w http.ResponseWriter, r *http.Request, v any) (caller, bool) {
	name := r.PathValue("node")
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		writeError(w, fmt.Errorf("node %s: missing bearer token: %w", name, state.ErrBadToken))
		return caller{}, false
	}
	n, err := a.DB.Get(name)
	if err != nil {
		writeError(w, err)
		return caller{}, false
	}
	host, port, err := net.SplitHostPort(r.RemoteAddr)
	ip, perr := netip.ParseAddr(host)
	if err != nil || perr != nil || ip.Unmap() != n.IP {
		writeJSON(w, http.StatusForbidden, Error{Error: fmt.Sprintf("node %s: request from %s: %v", name, host, errWrongAddress)})
		return caller{}, false
	}
	p, _ := strconv.Atoi(port)
	privileged := p > 0 && p < 1024
	if a.RequirePrivilegedPort && !privileged {
		writeJSON(w, http.StatusForbidden, Error{Error: fmt.Sprintf("node %s: request from port %d: agent requests must come from a port below 1024 (agent.require_privileged_port)", name, p)})
		return caller{}, false
	}
	if v != nil {
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAgentBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeJSON(w, http.StatusRequestEntityTooLarge, Error{Error: fmt.Sprintf("node %s: body over %d bytes", name, maxAgentBody)})
				return caller{}, false
			}
			writeError(w, badRequest{fmt.Errorf("node %s: decode request body: %w", name, err)})
			return caller{}, false
		}
	}
	return caller{node: n, token: token, remote: r.RemoteAddr, privileged: privileged}, true
}

// schedule answers a registration or heartbeat.
func (a *Agents) schedule(w http.ResponseWriter, node string) {
	s := overlay.Schedule{IntervalSeconds: a.Interval.Seconds(), DownAfterSeconds: a.DownAfter.Seconds(), HeadTime: time.Now()}
	if o, err := a.Overlays.RuntimeOverlay(node); err == nil {
		s.OverlayGeneration = o.Generation
	} else {
		logger(a.Logger).Warn("render overlay for the heartbeat", "node", node, "err", err)
	}
	writeJSON(w, http.StatusOK, s)
}

func (a *Agents) register(w http.ResponseWriter, r *http.Request) {
	var rep overlay.Report
	c, ok := a.authenticate(w, r, &rep)
	if !ok {
		return
	}
	if rep.State != overlay.StateReady && rep.State != overlay.StateFailed {
		writeError(w, badRequest{fmt.Errorf("registration of node %s: unknown state %q", c.node.Name, rep.State)})
		return
	}
	assigned := c.node.Image
	if assigned == "" {
		assigned = a.DefaultImage
	}
	imgName, imgDigest := resolveImage(a.Images, assigned, rep.ContentDigest)
	sr := state.Report{
		State: string(rep.State), Error: rep.Error, ImageName: imgName, ImageDigest: imgDigest,
		ContentDigest: rep.ContentDigest, Kernel: rep.Kernel, MemTotalBytes: rep.MemTotalBytes, UptimeSeconds: rep.UptimeSeconds,
		Registration: state.Registration{
			Warnings: rep.Warnings, CPUs: rep.CPUs, Init: rep.Init, AgentVersion: rep.AgentVersion,
		},
	}
	for _, s := range rep.Steps {
		sr.Steps = append(sr.Steps, state.Step{Name: s.Name, UptimeSeconds: s.UptimeSeconds})
	}
	if rep.Root != nil {
		sr.RootMode, sr.RootSizeBytes, sr.RootUsedBytes = rep.Root.Mode, rep.Root.SizeBytes, rep.Root.UsedBytes
	}
	if b := rep.Boot; b != nil {
		sr.KernelStart, sr.InitSeconds, sr.HandoverSeconds, sr.ReadySeconds = b.KernelStart, b.InitSeconds, b.HandoverSeconds, b.ReadySeconds
	}
	live := state.Agent{Remote: c.remote, PrivilegedPort: c.privileged, UptimeSeconds: rep.UptimeSeconds, OverlayGeneration: rep.OverlayGeneration, ReadySeconds: sr.ReadySeconds}
	if rep.Root != nil {
		live.RootUsedBytes, live.RootSizeBytes = rep.Root.UsedBytes, rep.Root.SizeBytes
	}
	if err := a.DB.Register(c.node.Name, c.token, sr, live); err != nil {
		writeError(w, err)
		return
	}
	l := logger(a.Logger)
	if rep.State == overlay.StateReady {
		l.Info("node booted", "node", c.node.Name, "ip", c.node.IP, "image", imgName, "digest", imgDigest, "kernel", rep.Kernel, "init", rep.Init, "uptime", rep.UptimeSeconds)
	} else {
		l.Warn("node boot failed", "node", c.node.Name, "ip", c.node.IP, "init", rep.Init, "err", rep.Error)
	}
	a.schedule(w, c.node.Name)
}

func (a *Agents) heartbeat(w http.ResponseWriter, r *http.Request) {
	var hb overlay.Heartbeat
	c, ok := a.authenticate(w, r, &hb)
	if !ok {
		return
	}
	live := state.Agent{
		Remote: c.remote, PrivilegedPort: c.privileged, UptimeSeconds: hb.UptimeSeconds, Load1: hb.Load1,
		MemAvailableBytes: hb.MemAvailableBytes, SystemState: hb.SystemState, ReadySeconds: hb.ReadySeconds,
		OverlayGeneration: hb.OverlayGeneration, AgentRSSBytes: hb.AgentRSSBytes,
	}
	if hb.Root != nil {
		live.RootUsedBytes, live.RootSizeBytes = hb.Root.UsedBytes, hb.Root.SizeBytes
	}
	wasDown := c.node.Status.State == state.StateDown
	if err := a.DB.Heartbeat(c.node.Name, c.token, live); err != nil {
		if errors.Is(err, state.ErrNotRegistered) {
			writeJSON(w, http.StatusConflict, Error{Error: err.Error()})
			return
		}
		writeError(w, err)
		return
	}
	if wasDown {
		logger(a.Logger).Info("node up again", "node", c.node.Name, "ip", c.node.IP, "uptime", hb.UptimeSeconds)
	}
	a.schedule(w, c.node.Name)
}

func (a *Agents) shutdown(w http.ResponseWriter, r *http.Request) {
	var sd overlay.Shutdown
	c, ok := a.authenticate(w, r, &sd)
	if !ok {
		return
	}
	switch sd.Action {
	case overlay.ActionPoweroff, overlay.ActionReboot, overlay.ActionHalt, overlay.ActionStop:
	default:
		writeError(w, badRequest{fmt.Errorf("shutdown of node %s: unknown action %q", c.node.Name, sd.Action)})
		return
	}
	if err := a.DB.Shutdown(c.node.Name, c.token, string(sd.Action), sd.UptimeSeconds); err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("node going down", "node", c.node.Name, "ip", c.node.IP, "action", sd.Action, "uptime", sd.UptimeSeconds)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agents) overlay(w http.ResponseWriter, r *http.Request) {
	c, ok := a.authenticate(w, r, nil)
	if !ok {
		return
	}
	// The token authenticates reads too: check it as a heartbeat would,
	// without recording one.
	if err := a.DB.CheckToken(c.node.Name, c.token); err != nil {
		writeError(w, err)
		return
	}
	o, err := a.Overlays.RuntimeOverlay(c.node.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, o)
}
