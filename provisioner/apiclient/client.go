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
	"strconv"
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
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode response to %s %s: %w", method, path, err)
	}
	return nil
}

// send makes a request and returns a 2xx response, whose body the caller
// closes, or the API's error.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ramboot"+path, body)
	if err != nil {
		return nil, fmt.Errorf("build request %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the ramboot daemon on %s (is `ramboot serve` running, and are you root?): %w", c.socket, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
		}
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%s: %w", e.Error, ErrNotFound)
		}
		return nil, errors.New(e.Error)
	}
	return resp, nil
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

// ListBoots returns the boots a node keeps, newest (the current one) first.
func (c *Client) ListBoots(ctx context.Context, name string) ([]state.Boot, error) {
	var bs []state.Boot
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name)+"/boots", nil, &bs)
	return bs, err
}

// GetBoot returns boot id of a node, if it is still kept.
func (c *Client) GetBoot(ctx context.Context, name string, id int) (state.Boot, error) {
	var b state.Boot
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name)+"/boots/"+strconv.Itoa(id), nil, &b)
	return b, err
}

// Backup writes a consistent copy of the daemon's state database to w and
// returns its size. The copy is whole only if the error is nil.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := c.send(ctx, http.MethodGet, "/api/v1/state/backup", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("read state backup: %w", err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("read state backup: %d of %d bytes", n, resp.ContentLength)
	}
	return n, nil
}
