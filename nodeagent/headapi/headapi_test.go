package headapi_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
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
