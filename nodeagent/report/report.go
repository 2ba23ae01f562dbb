// Package report sends the node agent's boot report to the head: an HTTP
// POST of an overlay.Report with the node's bearer token, retried with
// capped exponential backoff until the head answers 2xx, answers 4xx
// (permanent), or the context ends.
//
//	c := &report.Client{URL: cfg.ReportURL(), Token: cfg.Token}
//	err := c.Send(ctx, overlay.Report{State: overlay.StateReady, ...})
//	var se *report.StatusError
//	if errors.As(err, &se) { /* the head refused the report: se.Code */ }
package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
)

// Defaults of the Client fields.
const (
	DefaultMinBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
	DefaultAttemptTimeout = 10 * time.Second
)

// Client posts reports to one URL. Its zero value needs only URL and
// Token; it is safe for concurrent use.
type Client struct {
	// URL is the report endpoint, overlay.Config.ReportURL().
	URL string
	// Token is sent as "Authorization: Bearer <Token>".
	Token string
	// HTTPClient makes the requests. Nil means a client that ignores
	// proxy environment variables; its Timeout should be zero, as
	// AttemptTimeout bounds each attempt.
	HTTPClient *http.Client
	// MinBackoff is the wait after the first failed attempt; it doubles
	// after every further failure up to MaxBackoff. Each wait is
	// randomised to between half and all of it, so that a rack of nodes
	// does not retry in step. Zero means DefaultMinBackoff.
	MinBackoff time.Duration
	// MaxBackoff caps the wait between attempts. Zero means
	// DefaultMaxBackoff.
	MaxBackoff time.Duration
	// AttemptTimeout bounds one attempt. Zero means DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// Logger receives a Warn record per failed attempt. Nil discards.
	Logger *slog.Logger
}

// StatusError is a non-2xx answer from the head.
type StatusError struct {
	// Code is the HTTP status code.
	Code int
	// Body is the start of the response body, trimmed.
	Body string
}

// Error returns the status and the start of the body.
func (e *StatusError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("head answered %d %s", e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("head answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Body)
}

// Temporary reports whether a later attempt may succeed: 5xx, 408 and 429.
func (e *StatusError) Temporary() bool {
	return e.Code >= 500 || e.Code == http.StatusRequestTimeout || e.Code == http.StatusTooManyRequests
}

var defaultHTTPClient = &http.Client{Transport: &http.Transport{
	Proxy:               nil,
	MaxIdleConnsPerHost: 1,
	IdleConnTimeout:     30 * time.Second,
	TLSHandshakeTimeout: 10 * time.Second,
}}

// Send posts r as JSON to c.URL until the head accepts it (2xx). It retries
// network errors and temporary answers (see StatusError.Temporary); any
// other answer is returned at once as a *StatusError. When ctx ends first,
// the error wraps ctx.Err() and the error of the last attempt that ended
// before it.
func (c *Client) Send(ctx context.Context, r overlay.Report) error {
	body, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	backoff := orDefault(c.MinBackoff, DefaultMinBackoff)
	maxBackoff := orDefault(c.MaxBackoff, DefaultMaxBackoff)
	var last error // the last attempt that ended on its own
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := c.attempt(ctx, body)
		if err == nil {
			return nil
		}
		var se *StatusError
		if errors.As(err, &se) && !se.Temporary() {
			return fmt.Errorf("post report to %s: %w", c.URL, err)
		}
		if ctx.Err() != nil {
			if last == nil {
				last = err
			}
			return fmt.Errorf("post report to %s: %w (last attempt: %w)", c.URL, ctx.Err(), last)
		}
		last = err
		wait := backoff/2 + rand.N(backoff/2+1)
		log.Warn("report failed, will retry", "attempt", attempt, "err", err, "dur", time.Since(start), "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("post report to %s: %w (last attempt: %w)", c.URL, ctx.Err(), last)
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// attempt makes one POST.
func (c *Client) attempt(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, orDefault(c.AttemptTimeout, DefaultAttemptTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("User-Agent", "ramboot-agent")
	hc := c.HTTPClient
	if hc == nil {
		hc = defaultHTTPClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	if resp.StatusCode/100 == 2 {
		return nil
	}
	return &StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(snippet))}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
