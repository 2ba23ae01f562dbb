// Package apiclient is the Go client of the head's admin API, as the
// ramboot CLI uses it over the daemon's unix socket.
//
//	c := apiclient.New(filepath.Join(stateDir, "ramboot.sock"))
//	nodes, err := c.ListNodes(ctx)
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
)

// Errors the API's answers wrap, for callers that branch (the CLI's exit
// statuses).
var (
	// ErrNotFound is a 404: no such node, profile, boot or image.
	ErrNotFound = errors.New("not found")
	// ErrInvalid is a 400 or 413: the head refused the input; nothing
	// changed.
	ErrInvalid = errors.New("invalid")
	// ErrConflict is a 409: a name, MAC or address already taken.
	ErrConflict = errors.New("conflict")
	// ErrUnreachable means no daemon answered.
	ErrUnreachable = errors.New("unreachable")
	// ErrUnauthorized is a 401 or 403 from the TCP API: a missing, wrong
	// or read-only token.
	ErrUnauthorized = errors.New("unauthorized")
)

// Client talks to one daemon. The zero value is not usable; call New or
// NewTCP.
type Client struct {
	where string // the socket or URL, for errors
	base  string
	token string
	hc    *http.Client
	err   error // set by Broken
}

// New returns a client for the admin API on the unix socket at path.
func New(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{where: socket, base: "http://ramboot", hc: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}
}

// NewTCP returns a client for the admin API at base (https://head:8443),
// sending the bearer token read from tokenFile, and verifying the server
// with the CA certificate in caFile ("" = the system's roots).
func NewTCP(base, tokenFile, caFile string) (*Client, error) {
	c := &Client{where: base, base: strings.TrimRight(base, "/")}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read CA certificate %s: no PEM certificate in it", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	c.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 5 * time.Minute}
	return c, nil
}

// Broken returns a client whose every call fails with err (a client that
// could not be made).
func Broken(err error) *Client { return &Client{err: err} }

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
	if c.err != nil {
		return nil, c.err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("build request %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &apiError{msg: fmt.Sprintf("reach the ramboot daemon on %s (is `ramboot serve` running, and are you root?): %v", c.where, err), kind: ErrUnreachable}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e api.Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(b))
		}
		ae := &apiError{msg: e.Error, status: resp.StatusCode}
		switch resp.StatusCode {
		case http.StatusNotFound:
			ae.kind = ErrNotFound
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			ae.kind = ErrInvalid
		case http.StatusConflict:
			ae.kind = ErrConflict
		case http.StatusUnauthorized, http.StatusForbidden:
			ae.kind = ErrUnauthorized
		}
		return nil, ae
	}
	return resp, nil
}

// apiError is an answer of the API: its message (the head's own words)
// and the sentinel it wraps.
type apiError struct {
	msg    string
	status int
	kind   error
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.kind }

// AddNodes adds the nodes req names (a host list) and returns them as
// stored.
func (c *Client) AddNodes(ctx context.Context, req api.AddNodesRequest) ([]api.NodeStatus, error) {
	var ns []api.NodeStatus
	err := c.do(ctx, http.MethodPost, "/api/v1/nodes", req, &ns)
	return ns, err
}

func namesQuery(names string) string {
	if names == "" {
		return ""
	}
	return "?names=" + url.QueryEscape(names)
}

// ListNodes returns the nodes a host list names (every node for "") with
// their status.
func (c *Client) ListNodes(ctx context.Context, names string) ([]api.NodeStatus, error) {
	var ns []api.NodeStatus
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes"+namesQuery(names), nil, &ns)
	return ns, err
}

// ListRows returns the listing lines of the nodes a host list names
// (every node for ""): what a table needs, a tenth of ListNodes's size.
func (c *Client) ListRows(ctx context.Context, names string) ([]api.NodeRow, error) {
	var rows []api.NodeRow
	q := namesQuery(names)
	if q == "" {
		q = "?view=rows"
	} else {
		q += "&view=rows"
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes"+q, nil, &rows)
	return rows, err
}

// GetNode returns one node with its status, boot timeline and plan.
func (c *Client) GetNode(ctx context.Context, name string) (api.NodeStatus, error) {
	var n api.NodeStatus
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, &n)
	return n, err
}

// SetNodes changes the nodes a host list names and returns, per node, the
// fields that changed (before and after).
func (c *Client) SetNodes(ctx context.Context, names string, req api.SetRequest) ([]api.NodeChange, error) {
	var out []api.NodeChange
	err := c.do(ctx, http.MethodPatch, "/api/v1/nodes"+namesQuery(names), req, &out)
	return out, err
}

// DeleteNodes removes the nodes a host list names, in one transaction.
func (c *Client) DeleteNodes(ctx context.Context, names string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/nodes"+namesQuery(names), nil, nil)
}

// ListProfiles returns every profile.
func (c *Client) ListProfiles(ctx context.Context) ([]api.Profile, error) {
	var ps []api.Profile
	err := c.do(ctx, http.MethodGet, "/api/v1/profiles", nil, &ps)
	return ps, err
}

// GetProfile returns one profile.
func (c *Client) GetProfile(ctx context.Context, name string) (api.Profile, error) {
	var p api.Profile
	err := c.do(ctx, http.MethodGet, "/api/v1/profiles/"+url.PathEscape(name), nil, &p)
	return p, err
}

// AddProfile adds a profile.
func (c *Client) AddProfile(ctx context.Context, p api.Profile) (api.Profile, error) {
	var out api.Profile
	err := c.do(ctx, http.MethodPost, "/api/v1/profiles", p, &out)
	return out, err
}

// PutProfile replaces a profile and returns what changed.
func (c *Client) PutProfile(ctx context.Context, p api.Profile, dryRun bool) (api.NodeChange, error) {
	var out api.NodeChange
	q := ""
	if dryRun {
		q = "?dryRun=true"
	}
	err := c.do(ctx, http.MethodPut, "/api/v1/profiles/"+url.PathEscape(p.Name)+q, p, &out)
	return out, err
}

// DeleteProfile removes a profile no node or profile uses.
func (c *Client) DeleteProfile(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/profiles/"+url.PathEscape(name), nil, nil)
}

// Apply makes the inventory what req says, in one transaction.
func (c *Client) Apply(ctx context.Context, req api.ApplyRequest) (api.ApplyResult, error) {
	var out api.ApplyResult
	err := c.do(ctx, http.MethodPost, "/api/v1/apply", req, &out)
	return out, err
}

// Export returns the inventory as a cluster file.
func (c *Client) Export(ctx context.Context) (api.Cluster, error) {
	var out api.Cluster
	err := c.do(ctx, http.MethodGet, "/api/v1/export", nil, &out)
	return out, err
}

// Status returns the nodes counted by state, with the stragglers.
func (c *Client) Status(ctx context.Context) (api.Summary, error) {
	var out api.Summary
	err := c.do(ctx, http.MethodGet, "/api/v1/status", nil, &out)
	return out, err
}

// RenderOverlay returns a node's overlay as its next boot would get it,
// and the content of the file at path when path is set.
func (c *Client) RenderOverlay(ctx context.Context, node, path string) (api.OverlayResult, error) {
	var out api.OverlayResult
	q := ""
	if path != "" {
		q = "?path=" + url.QueryEscape(path)
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(node)+"/overlay"+q, nil, &out)
	return out, err
}

// ListImages returns the head's images.
func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var is []api.Image
	err := c.do(ctx, http.MethodGet, "/api/v1/images", nil, &is)
	return is, err
}

// ListBoots returns the boots a node keeps, newest (the current one) first.
func (c *Client) ListBoots(ctx context.Context, name string) ([]api.Boot, error) {
	var bs []api.Boot
	err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name)+"/boots", nil, &bs)
	return bs, err
}

// GetBoot returns boot id of a node, if it is still kept.
func (c *Client) GetBoot(ctx context.Context, name string, id int) (api.Boot, error) {
	var b api.Boot
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

// ListDiscovered returns the machines the DHCP server saw that the
// inventory does not know.
func (c *Client) ListDiscovered(ctx context.Context) ([]api.Discovered, error) {
	var ms []api.Discovered
	err := c.do(ctx, http.MethodGet, "/api/v1/discovered", nil, &ms)
	return ms, err
}

// Adopt adds a discovered machine as a node.
func (c *Client) Adopt(ctx context.Context, req api.AdoptRequest) (api.NodeStatus, error) {
	var n api.NodeStatus
	err := c.do(ctx, http.MethodPost, "/api/v1/discovered/adopt", req, &n)
	return n, err
}

// ForgetDiscovered drops a discovered machine (by MAC, client id or key).
func (c *Client) ForgetDiscovered(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/discovered/"+url.PathEscape(id), nil, nil)
}

// BootEvents returns the recent DHCP and TFTP events of the client with a
// MAC or client id.
func (c *Client) BootEvents(ctx context.Context, client string) (api.BootEvents, error) {
	var out api.BootEvents
	err := c.do(ctx, http.MethodGet, "/api/v1/boot/events?client="+url.QueryEscape(client), nil, &out)
	return out, err
}
