package report_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/report"
	"github.com/ramboot/ramboot/nodeagent/report/reporttest"
)

var sample = overlay.Report{
	State:         overlay.StateReady,
	ContentDigest: "sha256:abc",
	Kernel:        "6.1.0-56-amd64",
	MemTotalBytes: 1 << 30,
	UptimeSeconds: 12.5,
	Steps:         []overlay.Step{{Name: "mounts", UptimeSeconds: 3.1}, {Name: "network", UptimeSeconds: 4.2}},
}

func client(url, token string) *report.Client {
	return &report.Client{URL: url, Token: token, MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond}
}

func TestSend(t *testing.T) {
	tests := []struct {
		name     string
		statuses []int
		token    string
		wantReqs int
		wantCode int // 0: accepted
	}{
		{name: "accepted", wantReqs: 1},
		{name: "retry-503", statuses: []int{503, 503, 502}, wantReqs: 4},
		{name: "retry-429", statuses: []int{429}, wantReqs: 2},
		{name: "bad-token", token: "wrong", wantReqs: 1, wantCode: 401},
		{name: "403-permanent", statuses: []int{403, 503}, wantReqs: 1, wantCode: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			head := reporttest.NewHead(t, "s3cret", tt.statuses...)
			token := "s3cret"
			if tt.token != "" {
				token = tt.token
			}
			cfg := overlay.Config{Node: "n001", HeadURL: head.URL + "/"}
			// A permanent answer must end Send at once; the deadline only
			// makes a retrying Send fail fast instead of hanging.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := client(cfg.ReportURL(), token).Send(ctx, sample)
			if got := head.Requests(); got != tt.wantReqs {
				t.Errorf("head saw %d requests, want %d", got, tt.wantReqs)
			}
			if tt.wantCode != 0 {
				var se *report.StatusError
				if !errors.As(err, &se) || se.Code != tt.wantCode {
					t.Fatalf("Send error = %v, want status %d", err, tt.wantCode)
				}
				if !strings.Contains(err.Error(), cfg.ReportURL()) {
					t.Errorf("error %q does not name the URL", err)
				}
				if len(head.Reports()) != 0 {
					t.Error("refused report recorded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := head.Reports()
			if len(got) != 1 || got[0].Node != "n001" {
				t.Fatalf("head got %+v", got)
			}
			r := got[0].Report
			if r.State != sample.State || r.ContentDigest != sample.ContentDigest || r.Kernel != sample.Kernel ||
				r.MemTotalBytes != sample.MemTotalBytes || r.UptimeSeconds != sample.UptimeSeconds || len(r.Steps) != 2 || r.Steps[1] != sample.Steps[1] {
				t.Errorf("head got %+v, want %+v", r, sample)
			}
		})
	}
}

func TestSendCancel(t *testing.T) {
	// Always 503: only the context ends the retries.
	statuses := make([]int, 1000)
	for i := range statuses {
		statuses[i] = 503
	}
	head := reporttest.NewHead(t, "t", statuses...)
	c := client(head.URL+"/api/v1/nodes/n1/report", "t")
	c.MinBackoff, c.MaxBackoff = 20*time.Millisecond, 20*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Send(ctx, sample)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send error = %v, want deadline exceeded", err)
	}
	var se *report.StatusError
	if !errors.As(err, &se) || se.Code != 503 {
		t.Errorf("error %v does not carry the last answer (503)", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send returned %v after the deadline", d)
	}
	if n := head.Requests(); n < 3 || n > 60 {
		t.Errorf("head saw %d requests in 500ms with 10-20ms waits", n)
	}
}

func TestSendNetworkError(t *testing.T) {
	// A listener that closes every connection: the client sees network
	// errors and retries until the context ends.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 100)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err = client("http://"+ln.Addr().String()+"/api/v1/nodes/n1/report", "t").Send(ctx, sample)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send error = %v, want deadline exceeded", err)
	}
	if len(accepted) < 2 {
		t.Errorf("%d connections, want retries", len(accepted))
	}
}

func TestAttemptTimeout(t *testing.T) {
	block := make(chan struct{})
	var mu sync.Mutex
	reqs := 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs++
		mu.Unlock()
		<-block
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	defer close(block)
	c := client("http://"+ln.Addr().String()+"/r", "t")
	c.AttemptTimeout = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Send(ctx, sample)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send error = %v", err)
	}
	if !strings.Contains(err.Error(), "last attempt") {
		t.Errorf("error %q has no last attempt", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send took %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if reqs < 3 {
		t.Errorf("%d attempts in 400ms with a 50ms attempt timeout", reqs)
	}
}
