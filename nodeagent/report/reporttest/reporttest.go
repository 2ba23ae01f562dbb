// Package reporttest runs a stand-in for the head's node report API on
// 127.0.0.1 for tests: it checks the bearer token, the route and the JSON
// body the way the head does, can be told to fail the first requests, and
// records every report it accepts.
//
//	head := reporttest.NewHead(t, "secret", http.StatusServiceUnavailable)
//	cfg.HeadURL = head.URL
//	... // the first POST gets 503, the next is accepted
//	got := head.Reports()
package reporttest

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/ramboot/ramboot/images/overlay"
)

// Received is one report the head accepted.
type Received struct {
	// Node is the node name from the request path.
	Node string
	// Report is the decoded body.
	Report overlay.Report
}

// Head is a running stand-in for the head's report API.
type Head struct {
	// URL is the base URL, usable as overlay.Config.HeadURL.
	URL string

	token    string
	mu       sync.Mutex
	statuses []int
	requests int
	reports  []Received
}

// NewHead starts a head on 127.0.0.1:0 that accepts reports with
// "Authorization: Bearer <token>". It answers the first requests with the
// given statuses, in order, before it accepts any (answering 204). The
// server is closed when the test ends.
func NewHead(t testing.TB, token string, statuses ...int) *Head {
	h := &Head{token: token, statuses: statuses}
	srv := httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(srv.Close)
	h.URL = srv.URL
	return h
}

// NewHeadOn is NewHead on a listener the caller made, e.g. one in another
// network namespace. The head closes ln when the test ends.
func NewHeadOn(t testing.TB, ln net.Listener, token string, statuses ...int) *Head {
	h := &Head{token: token, statuses: statuses}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(h.serve))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	h.URL = srv.URL
	return h
}

func (h *Head) serve(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests++
	node, ok := strings.CutPrefix(r.URL.Path, "/api/v1/nodes/")
	node, ok2 := strings.CutSuffix(node, "/report")
	switch {
	case r.Method != http.MethodPost || !ok || !ok2 || node == "" || strings.Contains(node, "/"):
		http.Error(w, "no such route", http.StatusNotFound)
		return
	case r.Header.Get("Authorization") != "Bearer "+h.token:
		http.Error(w, "bad token", http.StatusUnauthorized)
		return
	case r.Header.Get("Content-Type") != "application/json":
		http.Error(w, "want application/json", http.StatusUnsupportedMediaType)
		return
	}
	var buf bytes.Buffer
	buf.ReadFrom(r.Body)
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	var rep overlay.Report
	if err := dec.Decode(&rep); err != nil {
		http.Error(w, "bad report: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(h.statuses) > 0 {
		code := h.statuses[0]
		h.statuses = h.statuses[1:]
		http.Error(w, http.StatusText(code), code)
		return
	}
	h.reports = append(h.reports, Received{Node: node, Report: rep})
	w.WriteHeader(http.StatusNoContent)
}

// Requests returns how many requests the head has seen.
func (h *Head) Requests() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.requests
}

// Reports returns the reports the head accepted, in order.
func (h *Head) Reports() []Received {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Received(nil), h.reports...)
}
