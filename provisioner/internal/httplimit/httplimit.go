// Package httplimit serves HTTP with bounds on what a client can hold: a
// deadline for request headers, an idle timeout for keep-alive
// connections, a cap on open connections per client address and in total,
// and a minimum transfer rate for downloads.
//
// The transfer rate is judged by what the client acknowledges, not by the
// server's writes: while the server has data waiting to be sent, the
// client must acknowledge at least MinSendRate × SendTimeout bytes in
// every SendTimeout (any byte at all when MinSendRate is 0), or the
// connection is cut. A slow node that keeps reading is never cut off; a
// client that stops reading is, within two SendTimeouts. Files keep the
// kernel's sendfile path.
//
//	s := &httplimit.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
//		IdleTimeout: time.Minute, SendTimeout: 30 * time.Second, MaxConnsPerClient: 16}
//	err := s.Serve(ctx, ln) // until ctx ends
package httplimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// DefaultShutdownGrace is how long Serve lets requests in flight finish
// once its context ends.
const DefaultShutdownGrace = 5 * time.Second

// Server is an http.Server with client limits. Set its fields, then call
// Serve once.
type Server struct {
	// Handler serves the requests; required.
	Handler http.Handler
	// ReadHeaderTimeout bounds reading a request's headers; 0 = none.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle that long; 0 = none.
	IdleTimeout time.Duration
	// SendTimeout is the window in which a client with data waiting must
	// acknowledge MinSendRate × SendTimeout bytes; 0 = no cut.
	SendTimeout time.Duration
	// MinSendRate is in bytes per second; 0 means any progress at all.
	MinSendRate int64
	// MaxConnsPerClient caps open connections from one address; 0 = none.
	MaxConnsPerClient int
	// MaxConns caps open connections in total; 0 = none.
	MaxConns int
	// ShutdownGrace is how long requests in flight may finish after the
	// context ends; 0 means DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Logger gets one rate-limited line when connections are refused or
	// cut, and net/http's own errors at Debug; nil = discard.
	Logger *slog.Logger
	// Metrics, when set, counts connections, refusals and timeouts.
	Metrics *Metrics

	mu      sync.Mutex
	open    int
	perIP   map[netip.Addr]int
	lastLog time.Time
	unlog   int // refusals and cuts not logged since the last line

	sendfiles atomic.Int64 // copies that kept the sendfile path (tests)
}

// Metrics are the HTTP limits' Prometheus metrics.
type Metrics struct {
	open     prometheus.Gauge
	refused  *prometheus.CounterVec
	timeouts *prometheus.CounterVec
}

// Refusal reasons and timeout kinds, the values of the metrics' labels.
const (
	RefusedPerClient = "per_client" // the client address had MaxConnsPerClient open
	RefusedTotal     = "total"      // MaxConns were open

	TimeoutHeader = "header" // request headers not read within ReadHeaderTimeout
	TimeoutIdle   = "idle"   // keep-alive connection idle for IdleTimeout
	TimeoutBody   = "body"   // a handler's read deadline (a request body) passed
	TimeoutSend   = "send"   // a download below the minimum rate, cut
)

// NewMetrics registers the metrics with reg: ramboot_http_connections_open,
// ramboot_http_connections_refused_total{reason} and
// ramboot_http_timeouts_total{kind}.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ramboot_http_connections_open",
			Help: "Open connections on the public HTTP listener.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_http_connections_refused_total",
			Help: "Connections closed at accept: per_client (the address had http.max_conns_per_client open) or total (http.max_conns).",
		}, []string{"reason"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_http_timeouts_total",
			Help: "Connections that timed out: header, idle, body, or send (a download below http.min_send_rate, cut).",
		}, []string{"kind"}),
	}
	for _, r := range []string{RefusedPerClient, RefusedTotal} {
		m.refused.WithLabelValues(r)
	}
	for _, k := range []string{TimeoutHeader, TimeoutIdle, TimeoutBody, TimeoutSend} {
		m.timeouts.WithLabelValues(k)
	}
	reg.MustRegister(m.open, m.refused, m.timeouts)
	return m
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve serves on ln until ctx ends, then shuts down (requests in flight
// get ShutdownGrace) and returns nil; it returns the error that stopped it
// otherwise.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler,
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		ErrorLog:          log.New(&slogWriter{s.log()}, "", 0),
		ConnState: func(nc net.Conn, st http.ConnState) {
			if c, ok := nc.(*conn); ok {
				c.setState(st)
			}
		},
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		grace := s.ShutdownGrace
		if grace <= 0 {
			grace = DefaultShutdownGrace
		}
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if hs.Shutdown(sctx) != nil {
			hs.Close() // transfers still running after the grace are cut
		}
	}()
	err := hs.Serve(&listener{Listener: ln, s: s})
	close(done)
	<-stopped
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// slogWriter sends net/http's log lines to slog at Debug.
type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	w.l.Debug(string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && p[len(p)-1] == '\n' {
		p = p[:len(p)-1]
	}
	return p
}

// note logs one line for a refused or cut connection at most every 10 s,
// with how many were not logged since the last line (suppressed).
func (s *Server) note(msg string, attrs ...any) {
	s.mu.Lock()
	if time.Since(s.lastLog) < 10*time.Second {
		s.unlog++
		s.mu.Unlock()
		return
	}
	n := s.unlog
	s.unlog, s.lastLog = 0, time.Now()
	s.mu.Unlock()
	s.log().Warn(msg, append(attrs, "suppressed", n)...)
}

// listener refuses connections over the caps and wraps the others.
type listener struct {
	net.Listener
	s *Server
}

func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// Accept returns the next connection within the caps; the others are
// closed at once and counted.
func (l *listener) Accept() (net.Conn, error) {
	s := l.s
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := addrIP(nc.RemoteAddr())
		reason := ""
		s.mu.Lock()
		switch {
		case s.MaxConns > 0 && s.open >= s.MaxConns:
			reason = RefusedTotal
		case s.MaxConnsPerClient > 0 && ip.IsValid() && s.perIP[ip] >= s.MaxConnsPerClient:
			reason = RefusedPerClient
		default:
			s.open++
			if ip.IsValid() {
				if s.perIP == nil {
					s.perIP = map[netip.Addr]int{}
				}
				s.perIP[ip]++
			}
		}
		s.mu.Unlock()
		if reason != "" {
			nc.Close()
			if s.Metrics != nil {
				s.Metrics.refused.WithLabelValues(reason).Inc()
			}
			s.note("http connections refused", "reason", reason, "ip", ip)
			continue
		}
		if s.Metrics != nil {
			s.Metrics.open.Inc()
		}
		return &conn{Conn: nc, s: s, ip: ip}, nil
	}
}

// conn counts itself open until closed, tells header and idle timeouts
// apart for the metrics, and cuts downloads that stop moving.
type conn struct {
	net.Conn
	s      *Server
	ip     netip.Addr
	closed sync.Once

	state     atomic.Int32 // http.ConnState
	readSince atomic.Int64 // bytes read since the connection went idle
	timedOut  atomic.Bool  // the read deadline passed, and was counted
	aborting  atomic.Bool  // net/http set a past deadline to stop its own read

	// Used by the writer (net/http writes from one goroutine at a time).
	sent      int64 // bytes handed to the kernel
	winAcked  int64 // bytes acknowledged when the window started
	winStart  time.Time
	cutReason error
}

func (c *conn) setState(st http.ConnState) {
	c.state.Store(int32(st))
	if st == http.StateIdle {
		c.readSince.Store(0)
	}
}

// Close closes the connection and releases its place under the caps.
func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		s := c.s
		s.mu.Lock()
		s.open--
		if c.ip.IsValid() {
			if s.perIP[c.ip]--; s.perIP[c.ip] <= 0 {
				delete(s.perIP, c.ip)
			}
		}
		s.mu.Unlock()
		if s.Metrics != nil {
			s.Metrics.open.Dec()
		}
	})
	return err
}

// CloseWrite half-closes a TCP connection, as net/http does before it
// closes one with a request body left unread.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// SetReadDeadline notes whether net/http is stopping its own background
// read (a deadline in the past) rather than timing the client out.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.aborting.Store(!t.IsZero() && t.Before(time.Now()))
	c.timedOut.Store(false)
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines; see SetReadDeadline.
func (c *conn) SetDeadline(t time.Time) error {
	c.aborting.Store(!t.IsZero() && t.Before(time.Now()))
	c.timedOut.Store(false)
	return c.Conn.SetDeadline(t)
}

// Read counts the server's read timeouts by kind.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.readSince.Add(int64(n))
	// net/http may read again after a deadline passed: count each
	// deadline once.
	if err != nil && isTimeout(err) && c.s.Metrics != nil && !c.aborting.Load() && c.timedOut.CompareAndSwap(false, true) {
		kind := TimeoutHeader
		switch http.ConnState(c.state.Load()) {
		case http.StateIdle:
			if c.readSince.Load() == 0 {
				kind = TimeoutIdle
			}
		case http.StateActive:
			kind = TimeoutBody
		}
		c.s.Metrics.timeouts.WithLabelValues(kind).Inc()
	}
	return n, err
}

// outq returns the bytes in the socket's send queue (sent, not yet
// acknowledged), or -1 when it cannot tell.
func (c *conn) outq() int64 {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	q := int64(-1)
	_ = rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			q = int64(v)
		}
	})
	return q
}

// acked returns the bytes the client has acknowledged so far, or what was
// handed to the kernel when the socket cannot tell.
func (c *conn) acked() int64 {
	if q := c.outq(); q >= 0 {
		return c.sent - q
	}
	return c.sent
}

// window starts a send window: a new write deadline, and the count of
// acknowledged bytes to judge the window by.
func (c *conn) window() {
	c.winStart = time.Now()
	c.winAcked = c.acked()
	_ = c.Conn.SetWriteDeadline(c.winStart.Add(c.s.SendTimeout))
}

// progressed reports, at the end of a window whose deadline passed,
// whether the client acknowledged enough in it; if so, a new window starts.
func (c *conn) progressed() bool {
	need := max(1, int64(float64(c.s.MinSendRate)*time.Since(c.winStart).Seconds()))
	if c.acked()-c.winAcked >= need {
		c.window()
		return true
	}
	return false
}

// cut ends a connection whose client stopped reading.
func (c *conn) cut(err error) error {
	if c.cutReason == nil {
		c.cutReason = fmt.Errorf("client acknowledged less than %d bytes/s for %s: %w", c.s.MinSendRate, c.s.SendTimeout, err)
		if c.s.Metrics != nil {
			c.s.Metrics.timeouts.WithLabelValues(TimeoutSend).Inc()
		}
		c.s.note("stalled downloads cut", "ip", c.ip, "bytes", c.sent)
		c.Conn.Close()
	}
	return c.cutReason
}

// Write writes p, cutting the connection when the client stops reading.
func (c *conn) Write(p []byte) (int, error) {
	if c.s.SendTimeout <= 0 {
		return c.Conn.Write(p)
	}
	if c.cutReason != nil {
		return 0, c.cutReason
	}
	done := 0
	c.window()
	for {
		n, err := c.Conn.Write(p[done:])
		done += n
		c.sent += int64(n)
		if err == nil || !isTimeout(err) {
			return done, err
		}
		if !c.progressed() {
			return done, c.cut(err)
		}
	}
}

// ReadFrom copies r to the connection. A file (or a part of one) keeps the
// kernel's sendfile path, resumed after each window from the file's own
// offset, which the kernel advanced by exactly what it sent; other readers
// go through Write.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := c.Conn.(io.ReaderFrom)
	if ok && c.s.SendTimeout <= 0 {
		return rf.ReadFrom(r)
	}
	if !ok || !resumable(r) {
		return io.Copy(writerOnly{c}, r)
	}
	if c.cutReason != nil {
		return 0, c.cutReason
	}
	c.s.sendfiles.Add(1)
	var total int64
	c.window()
	for {
		n, err := rf.ReadFrom(r)
		total += n
		c.sent += n
		if err == nil || !isTimeout(err) {
			return total, err
		}
		if !c.progressed() {
			return total, c.cut(err)
		}
	}
}

// resumable reports whether a copy from r that stopped at a deadline can
// go on where it stopped: a file, whole or behind a LimitedReader, which
// sendfile reads from (and advances) the file's own offset.
func resumable(r io.Reader) bool {
	if lr, ok := r.(*io.LimitedReader); ok {
		r = lr.R
	}
	_, ok := r.(*os.File)
	return ok
}

// writerOnly hides conn's ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }
