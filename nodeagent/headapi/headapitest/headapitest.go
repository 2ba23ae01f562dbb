// Package headapitest runs a stand-in for the head's node API on
// 127.0.0.1 for the agent's tests. It checks what the head checks (route,
// bearer token, JSON bodies decoded strictly), answers with a schedule the
// test sets, records what it accepts, and can be stopped and started again
// on the same address to play a head restart.
//
//	head := headapitest.New(t, "s3cret")
//	head.SetSchedule(overlay.Schedule{IntervalSeconds: 0.05, DownAfterSeconds: 1})
//	cfg.HeadURL = head.URL
//	... // run the agent
//	regs, beats := head.Registrations(), head.Heartbeats()
//	head.Stop(); head.Start() // the head "restarts"
package headapitest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
)

// Request is one accepted request.
type Request struct {
	// Node is the node name from the route.
	Node string
	// Remote is the client's address (ip:port).
	Remote string
	// Time is when the head accepted it.
	Time time.Time
}

// Registration is an accepted POST of RegisterPath.
type Registration struct {
	Request
	// Report is the body.
	Report overlay.Report
}

// Heartbeat is an accepted POST of HeartbeatPath.
type Heartbeat struct {
	Request
	// Heartbeat is the body.
	Heartbeat overlay.Heartbeat
}

// Shutdown is an accepted POST of ShutdownPath.
type Shutdown struct {
	Request
	// Shutdown is the body.
	Shutdown overlay.Shutdown
}

// Head is a running stand-in.
type Head struct {
	// URL is the base URL, usable as overlay.Config.HeadURL.
	URL string

	t     testing.TB
	token string
	addr  string

	mu       sync.Mutex
	srv      *http.Server
	done     chan struct{}
	sched    overlay.Schedule
	over     overlay.RuntimeOverlay
	fail     func(route string) int
	regs     []Registration
	beats    []Heartbeat
	downs    []Shutdown
	overlays int
	requests int
}

// New starts a head on 127.0.0.1:0 that accepts the bearer token. It is
// stopped when the test ends.
func New(t testing.TB, token string) *Head {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return NewOn(t, ln, token)
}

// NewOn is New on a listener the caller made (in another network
// namespace, say). Start after Stop listens again on the same address in
// the caller's namespace, so use it only with New's listeners there.
func NewOn(t testing.TB, ln net.Listener, token string) *Head {
	h := &Head{t: t, token: token, addr: ln.Addr().String(), sched: overlay.Schedule{IntervalSeconds: 1, DownAfterSeconds: 10}}
	h.URL = "http://" + h.addr
	h.serve(ln)
	t.Cleanup(h.Stop)
	return h
}

func (h *Head) serve(ln net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+overlay.RegisterPath, h.register)
	mux.HandleFunc("POST "+overlay.HeartbeatPath, h.heartbeat)
	mux.HandleFunc("POST "+overlay.ShutdownPath, h.shutdown)
	mux.HandleFunc("GET "+overlay.OverlayPath, h.overlay)
	mux.HandleFunc("GET "+overlay.TimePath, func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.requests++
		h.mu.Unlock()
		writeJSON(w, http.StatusOK, overlay.HeadTime{Time: time.Now()})
	})
	srv := &http.Server{Handler: mux}
	done := make(chan struct{})
	h.mu.Lock()
	h.srv, h.done = srv, done
	h.mu.Unlock()
	go func() { defer close(done); _ = srv.Serve(ln) }()
}

// Stop closes the head and every connection to it, as a killed process
// would.
func (h *Head) Stop() {
	h.mu.Lock()
	srv, done := h.srv, h.done
	h.srv = nil
	h.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

// Start listens again on the head's address after Stop.
func (h *Head) Start() {
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ln, err = net.Listen("tcp", h.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		h.t.Fatalf("restart head on %s: %v", h.addr, err)
	}
	h.serve(ln)
}

// SetSchedule sets the schedule the head answers with (HeadTime is set
// at each answer).
func (h *Head) SetSchedule(s overlay.Schedule) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sched = s
}

// SetOverlay sets the runtime overlay the head serves; its Generation is
// also announced in the schedule.
func (h *Head) SetOverlay(o overlay.RuntimeOverlay) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.over = o
	h.sched.OverlayGeneration = o.Generation
}

// SetFail makes the head answer a route with the status fail returns for
// it (0 means answer normally).
func (h *Head) SetFail(fail func(route string) int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail = fail
}

// Registrations returns the accepted registrations, in order.
func (h *Head) Registrations() []Registration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Registration(nil), h.regs...)
}

// Heartbeats returns the accepted heartbeats, in order.
func (h *Head) Heartbeats() []Heartbeat {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Heartbeat(nil), h.beats...)
}

// Shutdowns returns the accepted shutdown reports, in order.
func (h *Head) Shutdowns() []Shutdown {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Shutdown(nil), h.downs...)
}

// OverlayFetches returns how many runtime overlays the head served.
func (h *Head) OverlayFetches() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.overlays
}

// Requests returns how many requests reached the head.
func (h *Head) Requests() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests
}

// check authenticates r and decodes its body into v (if not nil); it
// answers and returns false when r is refused.
func (h *Head) check(w http.ResponseWriter, r *http.Request, route string, v any) (Request, bool) {
	h.mu.Lock()
	h.requests++
	fail := h.fail
	h.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+h.token {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "bad token"})
		return Request{}, false
	}
	if v != nil {
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "want application/json, got " + ct})
			return Request{}, false
		}
		var buf bytes.Buffer
		buf.ReadFrom(http.MaxBytesReader(w, r.Body, 64<<10))
		dec := json.NewDecoder(&buf)
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "decode body: " + err.Error()})
			return Request{}, false
		}
	}
	if fail != nil {
		if code := fail(route); code != 0 {
			writeJSON(w, code, map[string]string{"error": fmt.Sprintf("stand-in head told to fail %s", route)})
			return Request{}, false
		}
	}
	node := r.PathValue("node")
	if node == "" || strings.Contains(node, "/") {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no node"})
		return Request{}, false
	}
	return Request{Node: node, Remote: r.RemoteAddr, Time: time.Now()}, true
}

func (h *Head) schedule() overlay.Schedule {
	s := h.sched
	s.HeadTime = time.Now()
	return s
}

func (h *Head) register(w http.ResponseWriter, r *http.Request) {
	var rep overlay.Report
	req, ok := h.check(w, r, overlay.RegisterPath, &rep)
	if !ok {
		return
	}
	h.mu.Lock()
	h.regs = append(h.regs, Registration{Request: req, Report: rep})
	s := h.schedule()
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, s)
}

func (h *Head) heartbeat(w http.ResponseWriter, r *http.Request) {
	var hb overlay.Heartbeat
	req, ok := h.check(w, r, overlay.HeartbeatPath, &hb)
	if !ok {
		return
	}
	h.mu.Lock()
	if len(h.regs) == 0 {
		h.mu.Unlock()
		writeJSON(w, http.StatusConflict, map[string]string{"error": "not registered"})
		return
	}
	h.beats = append(h.beats, Heartbeat{Request: req, Heartbeat: hb})
	s := h.schedule()
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, s)
}

func (h *Head) shutdown(w http.ResponseWriter, r *http.Request) {
	var sd overlay.Shutdown
	req, ok := h.check(w, r, overlay.ShutdownPath, &sd)
	if !ok {
		return
	}
	h.mu.Lock()
	h.downs = append(h.downs, Shutdown{Request: req, Shutdown: sd})
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (h *Head) overlay(w http.ResponseWriter, r *http.Request) {
	if _, ok := h.check(w, r, overlay.OverlayPath, nil); !ok {
		return
	}
	h.mu.Lock()
	h.overlays++
	o := h.over
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, o)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
