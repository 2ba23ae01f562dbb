package container

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// Client calls the container routes of the agent daemon.
type Client struct {
	// API is the local API client.
	API *localapi.Client
}

// Run starts a container.
func (c *Client) Run(ctx context.Context, req RunRequest) (Container, error) {
	var ct Container
	err := c.API.Do(ctx, http.MethodPost, "/v1/containers", req, &ct)
	return ct, err
}

// List lists the caller's containers (root: all).
func (c *Client) List(ctx context.Context) ([]Container, error) {
	var cs []Container
	err := c.API.Do(ctx, http.MethodGet, "/v1/containers", nil, &cs)
	return cs, err
}

// Wait waits for the container to exit.
func (c *Client) Wait(ctx context.Context, id string) (Container, error) {
	var ct Container
	err := c.API.Do(ctx, http.MethodPost, "/v1/containers/"+url.PathEscape(id)+"/wait", nil, &ct)
	return ct, err
}

// Stop stops the container, with SIGKILL after grace (0: the agent's
// default).
func (c *Client) Stop(ctx context.Context, id string, grace time.Duration) (Container, error) {
	var ct Container
	p := "/v1/containers/" + url.PathEscape(id) + "/stop"
	if grace > 0 {
		p += "?grace=" + grace.String()
	}
	err := c.API.Do(ctx, http.MethodPost, p, nil, &ct)
	return ct, err
}

// Remove removes the container; force kills it if it runs.
func (c *Client) Remove(ctx context.Context, id string, force bool) error {
	p := "/v1/containers/" + url.PathEscape(id)
	if force {
		p += "?force=1"
	}
	return c.API.Do(ctx, http.MethodDelete, p, nil, nil)
}

// Logs copies the container's output to stdout and stderr; with follow,
// until it exits. It returns the exit status when the stream carried one
// (-1 otherwise).
func (c *Client) Logs(ctx context.Context, id string, follow bool, stdout, stderr io.Writer) (int, error) {
	p := "/v1/containers/" + url.PathEscape(id) + "/logs"
	if follow {
		p += "?follow=1"
	}
	return c.stream(ctx, http.MethodGet, p, nil, stdout, stderr)
}

// Exec runs a command in the container and returns its exit status.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest, stdout, stderr io.Writer) (int, error) {
	return c.stream(ctx, http.MethodPost, "/v1/containers/"+url.PathEscape(id)+"/exec", req, stdout, stderr)
}

func (c *Client) stream(ctx context.Context, method, path string, in any, stdout, stderr io.Writer) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return -1, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return -1, err
	}
	resp, err := c.API.HTTP.Do(req)
	if err != nil {
		return -1, fmt.Errorf("call the agent daemon at %s (is `ramboot-agent daemon` running?): %w", c.API.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := &localapi.Error{Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return -1, e
	}
	var h [8]byte
	for {
		if _, err := io.ReadFull(resp.Body, h[:]); err != nil {
			if err == io.EOF {
				return -1, nil
			}
			return -1, fmt.Errorf("read %s: %w", path, err)
		}
		n := binary.BigEndian.Uint32(h[4:])
		if n > 16<<20 {
			return -1, fmt.Errorf("read %s: frame of %d bytes", path, n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, p); err != nil {
			return -1, fmt.Errorf("read %s: %w", path, err)
		}
		switch h[0] {
		case FrameStdout:
			stdout.Write(p)
		case FrameStderr:
			stderr.Write(p)
		case FrameExit:
			code, err := strconv.Atoi(string(p))
			if err != nil {
				return -1, fmt.Errorf("read %s: exit status %q", path, p)
			}
			return code, nil
		case FrameError:
			return -1, fmt.Errorf("%s", p)
		}
	}
}
