package headapi_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/headapi/headapitest"
)

const token = "tok-0123456789abcdef"

func client(head *headapitest.Head, tok string) *headapi.Client {
	return &headapi.Client{Config: overlay.Config{Node: "n001", HeadURL: head.URL + "/", Token: tok}}
}

func TestRoutes(t *testing.T) {
	head := headapitest.New(t, token)
	head.SetOverlay(overlay.RuntimeOverlay{Generation: "g2", Files: []overlay.File{{Path: "etc/motd", Mode: 0o644, Data: []byte("hi\n")}}})
	c := client(head, token)
	ctx := context.Background()

	s, err := c.Register(ctx, overlay.Report{State: overlay.StateReady, Kernel: "6.1", CPUs: 4, Init: "systemd"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Interval() != time.Second || s.OverlayGeneration != "g2" || time.Since(s.HeadTime) > time.Minute {
		t.Errorf("schedule %+v", s)
	}
	if _, err := c.Heartbeat(ctx, overlay.Heartbeat{UptimeSeconds: 3, SystemState: "running"}); err != nil {
		t.Fatal(err)
	}
	o, err := c.Overlay(ctx)
	if err != nil || o.Generation != "g2" || len(o.Files) != 1 || string(o.Files[0].Data) != "hi\n" {
		t.Fatalf("Overlay = %+v, %v", o, err)
	}
	if err := c.Shutdown(ctx, overlay.Shutdown{Action: overlay.ActionPoweroff, UptimeSeconds: 9}); err != nil {
		t.Fatal(err)
	}
	ht, rtt, err := c.Time(ctx)
	if err != nil || time.Since(ht).Abs() > time.Second || rtt <= 0 {
		t.Errorf("Time = %v, %v, %v", ht, rtt, err)
	}
	regs, beats, downs := head.Registrations(), head.Heartbeats(), head.Shutdowns()
	if len(regs) != 1 || regs[0].Node != "n001" || regs[0].Report.CPUs != 4 || len(beats) != 1 || beats[0].Heartbeat.SystemState != "running" ||
		len(downs) != 1 || downs[0].Shutdown.Action != overlay.ActionPoweroff {
		t.Errorf("head got %+v %+v %+v", regs, beats, downs)
	}
}

func TestStatusError(t *testing.T) {
	head := headapitest.New(t, token)
	_, err := client(head, "wrong-"+token).Heartbeat(context.Background(), overlay.Heartbeat{})
	var se *headapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized || se.Temporary() || se.Route != overlay.HeartbeatPath {
		t.Fatalf("wrong token: %v", err)
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("error %q shows the token", err)
	}
	// Not registered yet: 409, which tells the daemon to register.
	_, err = client(head, token).Heartbeat(context.Background(), overlay.Heartbeat{})
	if !errors.As(err, &se) || se.Code != http.StatusConflict || se.Message != "not registered" {
		t.Errorf("heartbeat before register: %v", err)
	}
	head.SetFail(func(string) int { return http.StatusServiceUnavailable })
	_, err = client(head, token).Register(context.Background(), overlay.Report{State: overlay.StateReady})
	if !errors.As(err, &se) || !se.Temporary() {
		t.Errorf("503: %v", err)
	}
	head.Stop()
	_, err = client(head, token).Register(context.Background(), overlay.Report{State: overlay.StateReady})
	if err == nil || errors.As(err, &se) || strings.Contains(err.Error(), token) {
		t.Errorf("head down: %v", err)
	}
}

// TestPrivilegedPort: as root the requests leave from a port below 1024,
// which is what the head may check; otherwise from an ephemeral port.
func TestPrivilegedPort(t *testing.T) {
	head := headapitest.New(t, token)
	d := &headapi.Dialer{}
	c := client(head, token)
	c.HTTPClient = &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	for i := range 3 {
		if _, err := c.Register(context.Background(), overlay.Report{State: overlay.StateReady}); err != nil {
			t.Fatalf("register %d: %v", i, err)
		}
		c.HTTPClient.CloseIdleConnections() // a new connection, a new port
	}
	for _, r := range head.Registrations() {
		_, p, _ := net.SplitHostPort(r.Remote)
		port, _ := strconv.Atoi(p)
		privileged := port >= headapi.PrivilegedPortMin && port <= headapi.PrivilegedPortMax
		if root := os.Geteuid() == 0; privileged != root {
			t.Errorf("request from port %d as uid %d", port, os.Geteuid())
		}
	}
	if d.Privileged() != (os.Geteuid() == 0) {
		t.Errorf("Privileged() = %v as uid %d", d.Privileged(), os.Geteuid())
	}
}

func TestBackoff(t *testing.T) {
	// Full jitter: every wait is in [0, ceiling], the ceilings double up
	// to Max, and Reset starts over.
	var ceilings []int64
	b := &headapi.Backoff{Min: time.Second, Max: 10 * time.Second, Rand: func(n int64) int64 { ceilings = append(ceilings, n-1); return n - 1 }}
	for range 6 {
		b.Next()
	}
	want := []int64{1e9, 2e9, 4e9, 8e9, 10e9, 10e9}
	for i := range want {
		if ceilings[i] != want[i] {
			t.Fatalf("ceilings %v, want %v", ceilings, want)
		}
	}
	if b.Failures() != 6 {
		t.Errorf("Failures = %d", b.Failures())
	}
	b.Reset()
	b.Next()
	if ceilings[6] != 1e9 {
		t.Errorf("after Reset the ceiling is %d", ceilings[6])
	}

	// Spread: 10,000 nodes retrying after a head restart at attempt 5 (a
	// 16 s ceiling) come back spread over it, not in step.
	var buckets [16]int
	for range 10000 {
		b := &headapi.Backoff{Min: time.Second, Max: time.Minute}
		for range 4 {
			b.Next()
		}
		buckets[int(b.Next()/time.Second)%16]++
	}
	for i, n := range buckets {
		if n < 10000/16/2 || n > 10000/16*2 {
			t.Errorf("second %d of the 16 s window got %d of 10000 retries: not spread", i, n)
		}
	}
}

// deadHead returns the URL of a port nothing listens on any more
// (connection refused) and of one that accepts but never answers.
func deadHeads(t *testing.T) (refused, silent string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused = "http://" + l.Addr().String()
	l.Close()
	s, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	go func() {
		for {
			c, err := s.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	return refused, "http://" + s.Addr().String()
}

// TestFailOverToPeer: a head that refuses connections or never answers
// is passed over for the next peer the configuration names; the peer that
// answered is the client's head from then on (the next call goes there
// first), and OnFailOver says so once.
func TestFailOverToPeer(t *testing.T) {
	refused, silent := deadHeads(t)
	peer := headapitest.New(t, token)
	c := &headapi.Client{Config: overlay.Config{Node: "n001", HeadURL: refused, Peers: []string{silent, peer.URL}, Token: token},
		AttemptTimeout: 300 * time.Millisecond}
	var moves []string
	c.OnFailOver = func(from, to string, why error) { moves = append(moves, from+" -> "+to+": "+why.Error()) }
	ctx := context.Background()
	if _, err := c.Register(ctx, overlay.Report{State: overlay.StateReady, Kernel: "6.1"}); err != nil {
		t.Fatalf("register with the heads down but one: %v", err)
	}
	if len(peer.Registrations()) != 1 {
		t.Fatalf("the peer got %d registrations", len(peer.Registrations()))
	}
	cfg := c.NodeConfig()
	if cfg.HeadURL != peer.URL || !slices.Equal(cfg.Peers, []string{refused, silent}) {
		t.Errorf("after the fall-over: head %s, peers %v", cfg.HeadURL, cfg.Peers)
	}
	if len(moves) != 1 || !strings.Contains(moves[0], "refused") || !strings.Contains(moves[0], "deadline") {
		t.Errorf("OnFailOver calls: %q", moves)
	}
	start := time.Now()
	if _, err := c.Heartbeat(ctx, overlay.Heartbeat{UptimeSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 250*time.Millisecond || len(peer.Heartbeats()) != 1 || len(moves) != 1 {
		t.Errorf("the heartbeat after the fall-over took %s (it must go to the peer first), %d moves", d, len(moves))
	}
	// Every head down: the errors of each, and the client stays on the one
	// it had.
	c2 := &headapi.Client{Config: overlay.Config{Node: "n001", HeadURL: refused, Peers: []string{silent}, Token: token}, AttemptTimeout: 200 * time.Millisecond}
	_, err := c2.Heartbeat(ctx, overlay.Heartbeat{})
	if err == nil || !strings.Contains(err.Error(), refused) || !strings.Contains(err.Error(), silent) || c2.NodeConfig().HeadURL != refused {
		t.Errorf("every head down: %v, head %s", err, c2.NodeConfig().HeadURL)
	}
}

// TestNoFailOverOnAnswer: a head that answers, a refusal (401) included,
// is the answer: the peer is not asked.
func TestNoFailOverOnAnswer(t *testing.T) {
	head := headapitest.New(t, "another-token")
	peer := headapitest.New(t, token)
	c := &headapi.Client{Config: overlay.Config{Node: "n001", HeadURL: head.URL, Peers: []string{peer.URL}, Token: token}}
	c.OnFailOver = func(from, to string, _ error) { t.Errorf("fell over from %s to %s on an answer", from, to) }
	_, err := c.Register(context.Background(), overlay.Report{State: overlay.StateReady})
	var se *headapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("register with a refusing head: %v", err)
	}
	if len(peer.Registrations()) != 0 || c.NodeConfig().HeadURL != head.URL {
		t.Errorf("the peer was asked (%d registrations), head now %s", len(peer.Registrations()), c.NodeConfig().HeadURL)
	}
}
