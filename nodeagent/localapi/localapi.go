// Package localapi is the node agent daemon's local API: HTTP with JSON
// bodies on a unix socket on the node, where every request carries the
// credentials of the process that connected (SO_PEERCRED), so that each
// handler decides who may do what: `ramboot-agent status` and the scheduler
// hooks need root, a user may start containers only inside a job the prolog
// registered for that user.
//
// The daemon serves it; the agent's own subcommands are its clients:
//
//	mux := http.NewServeMux()
//	mux.Handle("GET /v1/status", localapi.RequireRoot(statusHandler))
//	srv := &localapi.Server{Handler: mux, Logger: log}
//	err := srv.ListenAndServe(ctx, localapi.DefaultSocket) // until ctx ends
//
//	c := localapi.NewClient(localapi.DefaultSocket)
//	var st Status
//	err = c.Do(ctx, http.MethodGet, "/v1/status", nil, &st)
//
// Inside a handler, [CallerFrom] returns the caller's credentials. Errors
// are JSON objects {"error": "..."}; [WriteError] writes one and the client
// returns it as an [*Error] carrying the status code.
package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/ramboot/agent.sock"

// DefaultMode is the socket's mode: every local user may connect, and each
// handler authorizes the caller by its credentials.
const DefaultMode fs.FileMode = 0o666

// maxBody bounds request bodies read by Decode.
const maxBody = 1 << 20

// Cred identifies the process at the other end of a connection, as the
// kernel recorded it when that process connected.
type Cred struct {
	// PID is the caller's process id.
	PID int `json:"pid"`
	// UID is the caller's user id.
	UID int `json:"uid"`
	// GID is the caller's group id.
	GID int `json:"gid"`
}

// Root reports whether the caller is the super-user.
func (c Cred) Root() bool { return c.UID == 0 }

type credKey struct{}

// CallerFrom returns the credentials of the process that made the request
// whose context is ctx. ok is false outside a Server (for example in a
// handler called directly by a test without WithCaller).
func CallerFrom(ctx context.Context) (c Cred, ok bool) {
	c, ok = ctx.Value(credKey{}).(Cred)
	return c, ok
}

// WithCaller returns a context carrying c as the caller's credentials, for
// tests of handlers and for in-process callers.
func WithCaller(ctx context.Context, c Cred) context.Context {
	return context.WithValue(ctx, credKey{}, c)
}

// RequireRoot lets only root callers reach h; others get 403.
func RequireRoot(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := CallerFrom(r.Context())
		if !ok || !c.Root() {
			WriteError(w, http.StatusForbidden, fmt.Errorf("%s %s: only root may do this (caller uid %d)", r.Method, r.URL.Path, c.UID))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Server serves a Handler on a unix socket. Set its fields before Serve and
// do not change them afterwards.
type Server struct {
	// Handler serves every request; required. CallerFrom(r.Context())
	// gives each request's caller.
	Handler http.Handler
	// Logger receives server errors at Debug; nil discards.
	Logger *slog.Logger
}

// Listen creates the unix socket at path with mode (0 means DefaultMode),
// creating its directory (0755) if needed. A stale socket left by a daemon
// that died is replaced; a live one is an error.
func Listen(path string, mode fs.FileMode) (net.Listener, error) {
	if mode == 0 {
		mode = DefaultMode
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen %s: another agent daemon is serving it", path)
	}
	_ = os.Remove(path) // stale
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return ln, nil
}

// ListenAndServe listens on path with DefaultMode and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context, path string) error {
	ln, err := Listen(path, 0)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve answers requests on ln (a unix socket listener) until ctx ends,
// then shuts down (in-flight requests get 5 s) and returns nil. A request
// whose caller's credentials cannot be read is refused.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Handler == nil {
		ln.Close()
		return errors.New("serve local api: Handler is nil")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if cred, err := PeerCred(c); err == nil {
				return WithCaller(ctx, cred)
			} else {
				log.Debug("read peer credentials", "err", err)
			}
			return ctx
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	if ctx.Err() != nil {
		<-done
		return nil
	}
	_ = srv.Close()
	return fmt.Errorf("serve local api: %w", err)
}

// PeerCred returns the credentials of the process at the other end of a
// unix socket connection.
func PeerCred(c net.Conn) (Cred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Cred{}, fmt.Errorf("peer credentials: %T is not a unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var u *unix.Ucred
	var uerr error
	if err := raw.Control(func(fd uintptr) {
		u, uerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if uerr != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", uerr)
	}
	return Cred{PID: int(u.Pid), UID: int(u.Uid), GID: int(u.Gid)}, nil
}

// Error is an error response from the local API.
type Error struct {
	// Status is the HTTP status code.
	Status int `json:"-"`
	// Message says what went wrong.
	Message string `json:"error"`
}

// Error returns the message.
func (e *Error) Error() string { return e.Message }

// WriteError writes err as a JSON error response with status code.
func WriteError(w http.ResponseWriter, code int, err error) {
	WriteJSON(w, code, &Error{Message: err.Error()})
}

// WriteJSON writes v as an indented JSON response with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing to do
}

// Decode reads a JSON request body into v; unknown fields and bodies over
// 1 MiB are errors.
func Decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode request body: %w", err)
	}
	return nil
}

// Client calls the local API on a unix socket.
type Client struct {
	// Socket is the socket path.
	Socket string
	// HTTP is the client used; NewClient sets one that dials Socket.
	HTTP *http.Client
}

// NewClient returns a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	return &Client{Socket: socket, HTTP: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Do sends a request with in (if not nil) as its JSON body and decodes a
// 2xx response into out (if not nil). An error response is returned as an
// *Error; a daemon that does not run is an error naming the socket.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("call the agent daemon at %s (is `ramboot-agent daemon` running?): %w", c.Socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return nil
}
