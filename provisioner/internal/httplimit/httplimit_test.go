package httplimit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// serve runs s on 127.0.0.1:0 with small kernel send buffers, so that a
// client that stops reading blocks the server after a few KiB rather than
// after the several MiB the kernel would buffer on its own.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if s.Metrics == nil {
		s.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, smallBuffers{ln}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return ln.Addr().String()
}

type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		_ = c.(*net.TCPConn).SetWriteBuffer(32 << 10)
	}
	return c, err
}

// dial connects from src (any 127/8 address) with a small receive buffer.
func dial(t *testing.T, addr, src string) net.Conn {
	t.Helper()
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
			if err != nil {
				return err
			}
			return serr
		},
	}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// files serves /file (an *os.File: the sendfile path) and /bytes (a
// bytes.Reader: the generic path) of size bytes, and /small.
func files(t *testing.T, size int) http.Handler {
	t.Helper()
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	p := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /file", func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(p)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "blob", time.Time{}, f)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(data))
	})
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

func get(t *testing.T, c net.Conn, path string) *bufio.Reader {
	t.Helper()
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	return bufio.NewReaderSize(c, 4096)
}

// waitClosed reads until the server closes c and returns how long it took
// and how many bytes came.
func waitClosed(t *testing.T, c net.Conn, r io.Reader, limit time.Duration) (time.Duration, int64) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	n, err := io.Copy(io.Discard, r)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server did not close the connection within %s", limit)
	}
	return time.Since(start), n
}

func counter(t *testing.T, s *Server, kind string) float64 {
	t.Helper()
	return testutil.ToFloat64(s.Metrics.timeouts.WithLabelValues(kind))
}

// TestIdleKeepAliveClosed: a keep-alive connection left idle is closed
// after IdleTimeout, and counted.
func TestIdleKeepAliveClosed(t *testing.T) {
	s := &Server{Handler: files(t, 1024), IdleTimeout: 300 * time.Millisecond, ReadHeaderTimeout: 5 * time.Second}
	addr := serve(t, s)
	c := dial(t, addr, "127.0.0.1")
	r := get(t, c, "/small")
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	took, _ := waitClosed(t, c, r, 10*time.Second)
	if took < 250*time.Millisecond {
		t.Errorf("closed after %s, before the idle timeout", took)
	}
	if counter(t, s, TimeoutIdle) != 1 {
		t.Errorf("idle timeouts counted: %v", counter(t, s, TimeoutIdle))
	}
}

// TestHeaderTimeout: a client that sends half a request and stops is cut
// off after ReadHeaderTimeout.
func TestHeaderTimeout(t *testing.T) {
	s := &Server{Handler: files(t, 1024), ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: time.Minute}
	addr := serve(t, s)
	c := dial(t, addr, "127.0.0.1")
	if _, err := io.WriteString(c, "GET /small HTTP/1.1\r\nHost: te"); err != nil {
		t.Fatal(err)
	}
	took, _ := waitClosed(t, c, c, 10*time.Second)
	if took < 250*time.Millisecond {
		t.Errorf("closed after %s", took)
	}
	if counter(t, s, TimeoutHeader) != 1 {
		t.Errorf("header timeouts counted: %v", counter(t, s, TimeoutHeader))
	}
}

// TestStoppedReaderCut: a client that reads a little of a large download
// and stops is cut off within two SendTimeouts, on the sendfile path and
// the generic one.
func TestStoppedReaderCut(t *testing.T) {
	const size = 16 << 20
	for _, path := range []string{"/file", "/bytes"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			s := &Server{Handler: files(t, size), SendTimeout: 400 * time.Millisecond, ReadHeaderTimeout: 5 * time.Second}
			addr := serve(t, s)
			c := dial(t, addr, "127.0.0.1")
			r := get(t, c, path)
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.CopyN(io.Discard, resp.Body, 64<<10); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second) // a reader that stopped: longer than 2 × SendTimeout
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil && n+64<<10 >= size {
				t.Fatalf("the whole download arrived: the stopped reader was not cut off")
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the connection stayed open")
			}
			t.Logf("got %d of %d bytes after the stall, then %v", n+64<<10, size, err)
			if counter(t, s, TimeoutSend) != 1 {
				t.Errorf("send timeouts counted: %v", counter(t, s, TimeoutSend))
			}
		})
	}
}

// slowRead reads body in chunks of chunk bytes with a pause after each
// and returns the bytes read, the time it took and the error.
func slowRead(body io.Reader, chunk int, pause time.Duration) (int64, time.Duration, error) {
	start := time.Now()
	buf := make([]byte, chunk)
	var total int64
	for {
		n, err := io.ReadFull(body, buf)
		total += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, time.Since(start), nil
		}
		if err != nil {
			return total, time.Since(start), err
		}
		time.Sleep(pause)
	}
}

// TestSlowReaderFinishes: a reader much slower than the network but above
// the minimum rate gets the whole file, though the download takes many
// SendTimeouts; a reader below the minimum rate is cut off.
func TestSlowReaderFinishes(t *testing.T) {
	const size = 2 << 20
	for _, path := range []string{"/file", "/bytes"} {
		t.Run(strings.TrimPrefix(path, "/"), func(t *testing.T) {
			s := &Server{Handler: files(t, size), SendTimeout: 300 * time.Millisecond, MinSendRate: 64 << 10, ReadHeaderTimeout: 5 * time.Second}
			addr := serve(t, s)
			c := dial(t, addr, "127.0.0.1")
			resp, err := http.ReadResponse(get(t, c, path), nil)
			if err != nil {
				t.Fatal(err)
			}
			// About 1 MiB/s: 16 KiB every 15 ms.
			n, took, err := slowRead(resp.Body, 16<<10, 15*time.Millisecond)
			if err != nil || n != size {
				t.Fatalf("slow reader got %d of %d bytes in %s: %v", n, size, took, err)
			}
			if took < 3*s.SendTimeout {
				t.Errorf("the download took only %s: not slow enough to prove anything", took)
			}
			if counter(t, s, TimeoutSend) != 0 {
				t.Errorf("send timeouts counted: %v", counter(t, s, TimeoutSend))
			}
			if sf := s.sendfiles.Load(); (path == "/file") != (sf > 0) {
				t.Errorf("%s: %d copies on the sendfile path", path, sf)
			}
		})
	}
	// The same reader, about 160 KiB/s (16 KiB every 100 ms), is cut off
	// by a minimum rate above its pace and kept by one below it.
	for _, tc := range []struct {
		rate int64
		cut  bool
	}{{256 << 10, true}, {32 << 10, false}} {
		t.Run(fmt.Sprintf("160KiB/s reader, min %dKiB/s", tc.rate>>10), func(t *testing.T) {
			const size = 512 << 10
			s := &Server{Handler: files(t, size), SendTimeout: 500 * time.Millisecond, MinSendRate: tc.rate, ReadHeaderTimeout: 5 * time.Second}
			addr := serve(t, s)
			c := dial(t, addr, "127.0.0.1")
			resp, err := http.ReadResponse(get(t, c, "/file"), nil)
			if err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, took, err := slowRead(resp.Body, 16<<10, 100*time.Millisecond)
			t.Logf("read %d of %d bytes in %s: %v", n, size, took, err)
			if cut := n < size; cut != tc.cut {
				t.Fatalf("cut %v, want %v", cut, tc.cut)
			}
			if want := map[bool]float64{true: 1, false: 0}[tc.cut]; counter(t, s, TimeoutSend) != want {
				t.Errorf("send timeouts counted: %v, want %v", counter(t, s, TimeoutSend), want)
			}
		})
	}
}

// TestConnectionCaps: connections over the per-client cap are closed at
// accept and counted; other clients are still served, and a closed
// connection frees its place.
func TestConnectionCaps(t *testing.T) {
	s := &Server{Handler: files(t, 1024), MaxConnsPerClient: 2, MaxConns: 3, IdleTimeout: time.Minute, ReadHeaderTimeout: 5 * time.Second}
	addr := serve(t, s)
	okGET := func(c net.Conn) bool {
		r := get(t, c, "/small")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	a1, a2 := dial(t, addr, "127.0.0.1"), dial(t, addr, "127.0.0.1")
	if !okGET(a1) || !okGET(a2) {
		t.Fatal("first two connections not served")
	}
	a3 := dial(t, addr, "127.0.0.1")
	if okGET(a3) {
		t.Fatal("a third connection from the same address was served")
	}
	b1 := dial(t, addr, "127.0.0.2")
	if !okGET(b1) {
		t.Fatal("another client was refused")
	}
	b2 := dial(t, addr, "127.0.0.2")
	if okGET(b2) {
		t.Fatal("a fourth connection in all was served (cap 3)")
	}
	a1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if okGET(dial(t, addr, "127.0.0.1")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection did not free its place")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := testutil.ToFloat64(s.Metrics.refused.WithLabelValues(RefusedPerClient)); v != 1 {
		t.Errorf("per-client refusals counted: %v", v)
	}
	if v := testutil.ToFloat64(s.Metrics.refused.WithLabelValues(RefusedTotal)); v < 1 {
		t.Errorf("total refusals counted: %v", v)
	}
}
