package container

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/imagecache"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/ociruntime"
)

// StreamType is the Content-Type of the logs and exec streams: frames of
// an 8-byte header (stream, three zero bytes, big-endian payload length)
// and the payload.
const StreamType = "application/vnd.ramboot.stream"

// Frame streams.
const (
	FrameStdout = 1 // the container's standard output
	FrameStderr = 2 // its standard error
	FrameExit   = 3 // the exit status, in decimal; the last frame
	FrameError  = 4 // the agent could not go on; the last frame
)

// Routes adds the container routes to mux:
//
//	POST   /v1/containers               run (RunRequest) -> 201 Container
//	GET    /v1/containers               list -> []Container
//	GET    /v1/containers/{id}          one -> Container
//	POST   /v1/containers/{id}/wait     wait for its exit -> Container
//	POST   /v1/containers/{id}/stop     SIGTERM, SIGKILL after ?grace= -> Container
//	DELETE /v1/containers/{id}          remove (?force=1 kills it) -> 204
//	GET    /v1/containers/{id}/logs     its output (?follow=1 until it exits), a stream
//	POST   /v1/containers/{id}/exec     run a command in it (ExecRequest), a stream
//
// Every route takes the caller from the local API's peer credentials:
// users see and touch only their own containers, root all.
func (m *Manager) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/containers", m.handleRun)
	mux.HandleFunc("GET /v1/containers", func(w http.ResponseWriter, r *http.Request) {
		c, ok := localapi.CallerFrom(r.Context())
		if !ok {
			localapi.WriteError(w, http.StatusForbidden, errors.New("unknown caller"))
			return
		}
		localapi.WriteJSON(w, http.StatusOK, m.List(c))
	})
	mux.HandleFunc("GET /v1/containers/{id}", m.withCaller(func(w http.ResponseWriter, r *http.Request, c localapi.Cred) {
		ct, err := m.Get(c, r.PathValue("id"))
		reply(w, http.StatusOK, ct, err)
	}))
	mux.HandleFunc("POST /v1/containers/{id}/wait", m.withCaller(func(w http.ResponseWriter, r *http.Request, c localapi.Cred) {
		ct, err := m.Wait(r.Context(), c, r.PathValue("id"))
		reply(w, http.StatusOK, ct, err)
	}))
	mux.HandleFunc("POST /v1/containers/{id}/stop", m.withCaller(func(w http.ResponseWriter, r *http.Request, c localapi.Cred) {
		var grace time.Duration
		if g := r.URL.Query().Get("grace"); g != "" {
			var err error
			if grace, err = time.ParseDuration(g); err != nil {
				reply(w, 0, nil, fmt.Errorf("grace %q: %w", g, ErrInvalid))
				return
			}
		}
		ct, err := m.Stop(r.Context(), c, r.PathValue("id"), grace)
		reply(w, http.StatusOK, ct, err)
	}))
	mux.HandleFunc("DELETE /v1/containers/{id}", m.withCaller(func(w http.ResponseWriter, r *http.Request, c localapi.Cred) {
		err := m.Remove(r.Context(), c, r.PathValue("id"), r.URL.Query().Get("force") == "1")
		reply(w, http.StatusNoContent, nil, err)
	}))
	mux.HandleFunc("GET /v1/containers/{id}/logs", m.withCaller(m.handleLogs))
	mux.HandleFunc("POST /v1/containers/{id}/exec", m.withCaller(m.handleExec))
}

func (m *Manager) withCaller(h func(http.ResponseWriter, *http.Request, localapi.Cred)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, ok := localapi.CallerFrom(r.Context())
		if !ok {
			localapi.WriteError(w, http.StatusForbidden, errors.New("unknown caller"))
			return
		}
		h(w, r, c)
	}
}

// StatusOf maps an error of this package (or of the image cache) to an
// HTTP status.
func StatusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, imagecache.ErrUnknownImage):
		return http.StatusNotFound
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func reply(w http.ResponseWriter, code int, v any, err error) {
	if err != nil {
		localapi.WriteError(w, StatusOf(err), err)
		return
	}
	if v == nil {
		w.WriteHeader(code)
		return
	}
	localapi.WriteJSON(w, code, v)
}

func (m *Manager) handleRun(w http.ResponseWriter, r *http.Request) {
	c, ok := localapi.CallerFrom(r.Context())
	if !ok {
		localapi.WriteError(w, http.StatusForbidden, errors.New("unknown caller"))
		return
	}
	var req RunRequest
	if err := localapi.Decode(r, &req); err != nil {
		localapi.WriteError(w, http.StatusBadRequest, err)
		return
	}
	// A client that goes away does not leave a half-made container: the
	// start runs to its end, and the container is there to remove.
	ct, err := m.Run(context.WithoutCancel(r.Context()), c, req)
	reply(w, http.StatusCreated, ct, err)
}

// frameWriter writes frames to an HTTP response, flushing each.
type frameWriter struct {
	mu sync.Mutex
	w  http.ResponseWriter
}

func (f *frameWriter) frame(stream byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var h [8]byte
	h[0] = stream
	binary.BigEndian.PutUint32(h[4:], uint32(len(p)))
	if _, err := f.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := f.w.Write(p); err != nil {
		return err
	}
	http.NewResponseController(f.w).Flush()
	return nil
}

type streamWriter struct {
	f      *frameWriter
	stream byte
}

func (s streamWriter) Write(p []byte) (int, error) {
	if err := s.f.frame(s.stream, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func startStream(w http.ResponseWriter) *frameWriter {
	w.Header().Set("Content-Type", StreamType)
	w.WriteHeader(http.StatusOK)
	return &frameWriter{w: w}
}

func (m *Manager) handleLogs(w http.ResponseWriter, r *http.Request, c localapi.Cred) {
	x, err := m.find(c, r.PathValue("id"))
	if err != nil {
		reply(w, 0, nil, err)
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	bundle := x.c.Bundle
	files := make([]*os.File, 2)
	for i, s := range []string{"stdout", "stderr"} {
		f, err := os.Open(logPath(bundle, s))
		if err != nil {
			reply(w, 0, nil, fmt.Errorf("container %s has no log: %w", x.c.Name, ErrInvalid))
			return
		}
		defer f.Close()
		files[i] = f
	}
	var changed <-chan struct{}
	if follow {
		ch, stop, err := watchDir(filepath.Dir(logPath(bundle, "stdout")))
		if err != nil {
			reply(w, 0, nil, err)
			return
		}
		defer stop()
		changed = ch
	}
	fw := startStream(w)
	buf := make([]byte, 64<<10)
	drain := func() error {
		for i, f := range files {
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if werr := fw.frame(byte(i+1), buf[:n]); werr != nil {
						return werr
					}
				}
				if err == io.EOF || n == 0 {
					break
				}
				if err != nil {
					return err
				}
			}
		}
		return nil
	}
	for {
		if err := drain(); err != nil {
			return
		}
		exited := false
		select {
		case <-x.exited:
			exited = true
		default:
		}
		if exited || !follow {
			if exited {
				if drain() == nil {
					fw.frame(FrameExit, []byte(strconv.Itoa(m.snapshot(x).ExitCode)))
				}
			}
			return
		}
		select {
		case <-changed:
		case <-x.exited:
		case <-r.Context().Done():
			return
		}
	}
}

// watchDir returns a channel that receives when a file in dir is written.
func watchDir(dir string) (<-chan struct{}, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("inotify %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	ch := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { f.Close(); <-done }, nil
}

func (m *Manager) handleExec(w http.ResponseWriter, r *http.Request, c localapi.Cred) {
	x, err := m.find(c, r.PathValue("id"))
	if err != nil {
		reply(w, 0, nil, err)
		return
	}
	var req ExecRequest
	if err := localapi.Decode(r, &req); err != nil {
		localapi.WriteError(w, http.StatusBadRequest, err)
		return
	}
	if len(req.Args) == 0 {
		reply(w, 0, nil, fmt.Errorf("exec: no command: %w", ErrInvalid))
		return
	}
	ct := m.snapshot(x)
	if ct.State != StateRunning {
		reply(w, 0, nil, fmt.Errorf("container %s is not running: %w", ct.Name, ErrInvalid))
		return
	}
	b, err := os.ReadFile(filepath.Join(ct.Bundle, "config.json"))
	if err != nil {
		reply(w, 0, nil, err)
		return
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		reply(w, 0, nil, err)
		return
	}
	p := *spec.Process
	p.Args = req.Args
	p.Env = append(append([]string(nil), p.Env...), req.Env...)
	fw := startStream(w)
	err = m.cfg.Runtime.Exec(r.Context(), ct.ID, &p, ct.Bundle, ociruntime.IO{
		Stdout: streamWriter{fw, FrameStdout}, Stderr: streamWriter{fw, FrameStderr},
	})
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if code < 0 {
			code = 128 + int(ee.Sys().(interface{ Signal() os.Signal }).Signal().(unix.Signal))
		}
	case err != nil:
		fw.frame(FrameError, []byte(err.Error()))
		return
	}
	fw.frame(FrameExit, []byte(strconv.Itoa(code)))
}
