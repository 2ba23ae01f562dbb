// Package headapi is the node agent's client of the head's node API: the
// routes of overlay.Config's head that a node calls with its per-boot
// token (register, heartbeat, shutdown, runtime overlay, container images,
// job events), image downloads and the head's clock: one client for the
// agent daemon and the workload it serves. Requests leave from a
// privileged source port where the process may bind one, and the token is
// only ever put in the Authorization header, never in a URL, an error or a
// log.
//
//	c := headapi.NewClient(cfg, "ramboot-agent/v1", netip.Addr{})
//	sched, err := c.Register(ctx, report)      // the node is booted
//	sched, err = c.Heartbeat(ctx, heartbeat)    // every sched.Interval()
//	var se *headapi.StatusError
//	if errors.As(err, &se) && se.Code == http.StatusConflict { /* register again */ }
//
// Retrying is the caller's: [Backoff] gives exponential waits with full
// jitter, so that thousands of nodes that lost the head at once come back
// spread over the whole wait instead of in step. Falling over is the
// client's: when the head does not answer at all, each call tries the
// peer heads the configuration names (overlay.Config.Peers), and the
// first that answers becomes the client's head.
package headapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
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
	// Config names the head (HeadURL), the node and its token. Set it
	// before the first call; SetConfig replaces it later.
	Config overlay.Config
	// HTTPClient makes the requests. Nil means a shared client whose
	// Transport is NewTransport: a privileged source port, no proxy.
	HTTPClient *http.Client
	// AttemptTimeout bounds each request. Zero means
	// DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// UserAgent is sent as User-Agent. Empty means "ramboot-agent".
	UserAgent string
	// OnFailOver, when set, is told when the client moves to a peer head
	// (overlay.Config.Peers) because its head (from) did not answer
	// (why); to is its head from then on.
	OnFailOver func(from, to string, why error)

	dialer *Dialer // NewClient's, for Privileged

	mu  sync.Mutex
	cfg *overlay.Config // SetConfig's
}

// NewClient returns a client of the head named in cfg whose requests leave
// from a privileged source port where the process may bind one (see
// Dialer), and from local when it is valid (else from the address the
// kernel picks).
func NewClient(cfg overlay.Config, userAgent string, local netip.Addr) *Client {
	d := &Dialer{Local: local}
	t := NewTransport()
	t.DialContext = d.DialContext
	return &Client{Config: cfg, HTTPClient: &http.Client{Transport: t}, UserAgent: userAgent, dialer: d}
}

// Privileged reports whether the last connection of a client made by
// NewClient left from a privileged port.
func (c *Client) Privileged() bool { return c.dialer != nil && c.dialer.Privileged() }

// NodeConfig returns the node configuration the client uses now.
func (c *Client) NodeConfig() overlay.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg != nil {
		return *c.cfg
	}
	return c.Config
}

// SetConfig makes cfg the node configuration of the requests from now on
// (a refreshed overlay: a new head URL, say); safe while requests run.
func (c *Client) SetConfig(cfg overlay.Config) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = &cfg
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
// decodes a 2xx answer into out (if not nil). When the head does not
// answer (no connection, or none within AttemptTimeout) and the
// configuration names peers, the request goes to each of them in turn;
// the first that answers, whatever its answer, is the head from then on
// (failOver). An answer, a refusal (4xx) or an error (5xx) included, is
// never taken as a reason to try another head: the head is there, and
// would say the same of the node's token as any other.
func (c *Client) do(ctx context.Context, method, route string, auth bool, in, out any) error {
	var b []byte
	if in != nil {
		var err error
		if b, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode %s body: %w", route, err)
		}
	}
	var (
		resp *answer
		url  string
	)
	err := c.onHeads(ctx, func(cfg overlay.Config) (err error) {
		resp, url, err = c.attempt(ctx, cfg, method, route, auth, b)
		return err
	})
	if err != nil {
		return err
	}
	return c.answer(resp, method, url, route, out)
}

// onHeads calls try with the configuration turned to each head it names
// (Heads: the head, then the peers), in turn, until one answers (try
// returns nil) or ctx ends, and makes a peer that answered the client's
// head (failOver). It returns every head's error when none answered.
func (c *Client) onHeads(ctx context.Context, try func(cfg overlay.Config) error) error {
	cfg := c.NodeConfig()
	var errs []error
	for i, head := range cfg.Heads() {
		err := try(cfg.OnHead(head))
		if err == nil {
			if i > 0 {
				c.failOver(cfg, head, errors.Join(errs...))
			}
			return nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// attempt sends one request to the head cfg names first; an error means
// that head did not answer. The answer's body is read whole, within the
// attempt's time.
func (c *Client) attempt(ctx context.Context, cfg overlay.Config, method, route string, auth bool, b []byte) (*answer, string, error) {
	timeout := c.AttemptTimeout
	if timeout <= 0 {
		timeout = DefaultAttemptTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if b != nil {
		body = bytes.NewReader(b)
	}
	url := cfg.URL(route)
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, url, fmt.Errorf("%s %s: %w", method, route, err)
	}
	if b != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, url, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, url, fmt.Errorf("%s %s: read the answer: %w", method, url, err)
	}
	return &answer{code: resp.StatusCode, body: data}, url, nil
}

// answer is a head's answer, read whole.
type answer struct {
	code int
	body []byte
}

// answer decodes a 2xx answer into out (if not nil), or returns the
// StatusError of another.
func (c *Client) answer(a *answer, method, url, route string, out any) error {
	if a.code/100 != 2 {
		se := &StatusError{Route: route, Code: a.code}
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(a.body, &e) == nil && e.Error != "" {
			se.Message = e.Error
		} else {
			se.Message = strings.TrimSpace(string(a.body[:min(len(a.body), 256)]))
		}
		return se
	}
	if out != nil {
		if err := json.Unmarshal(a.body, out); err != nil {
			return fmt.Errorf("%s %s: decode the answer: %w", method, url, err)
		}
	}
	return nil
}

// failOver makes head, a peer that answered when the head of was did not
// (why), the client's head from now on, unless the configuration was
// replaced meanwhile (SetConfig), and tells OnFailOver.
func (c *Client) failOver(was overlay.Config, head string, why error) {
	c.mu.Lock()
	cur := c.Config
	if c.cfg != nil {
		cur = *c.cfg
	}
	moved := cur.HeadURL == was.HeadURL
	if moved {
		next := cur.OnHead(head)
		c.cfg = &next
	}
	c.mu.Unlock()
	if moved && c.OnFailOver != nil {
		c.OnFailOver(was.HeadURL, head, why)
	}
}

// send sends req with the client's User-Agent through its HTTP client.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	ua := c.UserAgent
	if ua == "" {
		ua = "ramboot-agent"
	}
	req.Header.Set("User-Agent", ua)
	hc := c.HTTPClient
	if hc == nil {
		hc = defaultClient
	}
	return hc.Do(req)
}
