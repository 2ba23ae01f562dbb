// Package apiclient is the Go client of the head's admin API, as the
// ramboot CLI uses it over the daemon's unix socket.
//
//	c := apiclient.New(filepath.Join(stateDir, "ramboot.sock"))
//	nodes, err := c.ListNodes(ctx)
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/state"
)

// ErrNotFound is returned for a 404 from the API.
var ErrNotFound = errors.New("not found")

// Client talks to one daemon. The zero value is not usable; call New.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client for the admin API on the unix socket at path.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ramboot"+path, body)
	if err != nil {
		return fmt.Errorf("build request %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reach the ramboot daemon on %s (is `ramboot serve` running, and are you root?): %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%s: %w", e.Error, ErrNotFound)
		}
		return errors.New(e.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode response to %s %s: %w", method, path, err)
	}
	return nil
}

// AddNode adds a node and returns it as stored.
func (c *Client) AddNode(ctx context.Context, req api.AddNodeRequest) (state.NodeStatus, error) {
	var n state.NodeStatus
	err := c.do(ctx, http.MethodPost, "/api/v1/nodes", req, &n)
	return n, err
}

// ListNodes returns every node with its status.
func (c *Client) ListNodes(ctx context.Context) ([]state.NodeStatus, error) {
	var ns []state.NodeStatus
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes", nil, &ns)
	return ns, err
}

// GetNode returns one node with its status and boot timeline.
func (c *Client) GetNode(ctx context.Context, name string) (state.NodeStatus, error) {
	var n state.NodeStatus
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, &n)
	return n, err
}

// DeleteNode removes a node.
func (c *Client) DeleteNode(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/nodes/"+url.PathEscape(name), nil, nil)
}

// ListImages returns the head's images.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var is []api.Image
	err := c.do(ctx, http.MethodGet, "/api/v1/images", nil, &is)
	return is, err
}
