// Package headapi is the node agent's client of the head's node API: the
// routes of overlay.Config's head that a node calls with its per-boot
// token (register, heartbeat, shutdown, runtime overlay) and the head's
// clock. Requests leave from a privileged source port where the process
// may bind one, and the token is only ever put in the Authorization
// header, never in a URL, an error or a log.
//
//	c := &headapi.Client{Config: cfg}
//	sched, err := c.Register(ctx, report)      // the node is booted
//	sched, err = c.Heartbeat(ctx, heartbeat)    // every sched.Interval()
//	var se *headapi.StatusError
//	if errors.As(err, &se) && se.Code == http.StatusConflict { /* register again */ }
//
// Retrying is the caller's: [Backoff] gives exponential waits with full
// jitter, so that thousands of nodes that lost the head at once come back
// spread over the whole wait instead of in step.
package headapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
)

// DefaultAttemptTimeout bounds one request when Client.AttemptTimeout is
// zero.
const DefaultAttemptTimeout = 10 * time.Second

// maxAnswer bounds an answer's body; a runtime overlay is the largest.
const maxAnswer = 16 << 20

// Client calls the head's node API for one node. Set its fields before
// the first call; it is safe for concurrent use.
type Client struct {
	// Config names the head (HeadURL), the node and its token.
	Config overlay.Config
	// HTTPClient makes the requests. Nil means a shared client whose
	// Transport is NewTransport: a privileged source port, no proxy.
	HTTPClient *http.Client
	// AttemptTimeout bounds each request. Zero means
	// DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// UserAgent is sent as User-Agent. Empty means "ramboot-agent".
	UserAgent string
}

// StatusError is an answer from the head other than 2xx.
type StatusError struct {
	// Route is the route called, e.g. overlay.HeartbeatPath.
	Route string
	// Code is the HTTP status code.
	Code int
	// Message is the head's error message ({"error": ...}) or the start of
	// the body.
	Message string
}

// Error returns the route, status and message.
func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("head answered %s with %d: %s", e.Route, e.Code, msg)
}

// Temporary reports whether a later attempt may succeed: 5xx, 408, 429.
func (e *StatusError) Temporary() bool {
	return e.Code >= 500 || e.Code == http.StatusRequestTimeout || e.Code == http.StatusTooManyRequests
}

var defaultClient = &http.Client{Transport: NewTransport()}

// Register posts the node's boot report; the node is booted (or failed,
// per r.State) from the head's answer on.
func (c *Client) Register(ctx context.Context, r overlay.Report) (overlay.Schedule, error) {
	var s overlay.Schedule
	err := c.do(ctx, http.MethodPost, overlay.RegisterPath, true, r, &s)
	return s, err
}

// Heartbeat posts a heartbeat and returns the head's schedule.
func (c *Client) Heartbeat(ctx context.Context, h overlay.Heartbeat) (overlay.Schedule, error) {
	var s overlay.Schedule
	err := c.do(ctx, http.MethodPost, overlay.HeartbeatPath, true, h, &s)
	return s, err
}

// Shutdown tells the head the node is going down.
func (c *Client) Shutdown(ctx context.Context, s overlay.Shutdown) error {
	return c.do(ctx, http.MethodPost, overlay.ShutdownPath, true, s, nil)
}

// Overlay fetches the node's overlay as the head renders it now.
func (c *Client) Overlay(ctx context.Context) (overlay.RuntimeOverlay, error) {
	var o overlay.RuntimeOverlay
	err := c.do(ctx, http.MethodGet, overlay.OverlayPath, true, nil, &o)
	return o, err
}

// Time returns the head's clock, corrected by half the request's round
// trip, and the round trip.
func (c *Client) Time(ctx context.Context) (time.Time, time.Duration, error) {
	var t overlay.HeadTime
	start := time.Now()
	if err := c.do(ctx, http.MethodGet, overlay.TimePath, false, nil, &t); err != nil {
		return time.Time{}, 0, err
	}
	rtt := time.Since(start)
	return t.Time.Add(rtt / 2), rtt, nil
}

// do makes one request to route with in as its JSON body (if not nil) and
// decodes a 2xx answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, route string, auth bool, in, out any) error {
	timeout := c.AttemptTimeout
	if timeout <= 0 {
		timeout = DefaultAttemptTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s body: %w", route, err)
		}
		body = bytes.NewReader(b)
	}
	url := c.Config.URL(route)
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, route, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+c.Config.Token)
	}
	ua := c.UserAgent
	if ua == "" {
		ua = "ramboot-agent"
	}
	req.Header.Set("User-Agent", ua)
	hc := c.HTTPClient
	if hc == nil {
		hc = defaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", method, url, err)
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Route: route, Code: resp.StatusCode}
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			se.Message = e.Error
		} else {
			se.Message = strings.TrimSpace(string(b[:min(len(b), 256)]))
		}
		return se
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode the answer: %w", method, url, err)
		}
	}
	return nil
}
