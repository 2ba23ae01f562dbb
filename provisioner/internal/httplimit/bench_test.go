package httplimit

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkDownload compares a 64 MiB file download over loopback from a
// plain net/http server and from a Server with every limit on: the send
// window's bookkeeping must not cost the sendfile path its speed.
func BenchmarkDownload(b *testing.B) {
	const size = 64 << 20
	p := filepath.Join(b.TempDir(), "blob")
	if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
		b.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(p)
		if err != nil {
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "blob", time.Time{}, f)
	})
	run := func(b *testing.B, serve func(ln net.Listener)) {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go serve(ln)
		c := &http.Client{Transport: &http.Transport{}}
		url := "http://" + ln.Addr().String() + "/blob"
		b.SetBytes(size)
		b.ResetTimer()
		for b.Loop() {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != size {
				b.Fatalf("%d bytes, %v", n, err)
			}
			resp.Body.Close()
		}
		b.StopTimer()
		ln.Close()
	}
	b.Run("net-http", func(b *testing.B) {
		run(b, func(ln net.Listener) { _ = (&http.Server{Handler: h}).Serve(ln) })
	})
	b.Run("httplimit-no-send-timeout", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := &Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxConnsPerClient: 16, MaxConns: 4096}
		run(b, func(ln net.Listener) { _ = s.Serve(ctx, ln) })
	})
	b.Run("httplimit", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := &Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, SendTimeout: 30 * time.Second,
			MinSendRate: 1024, MaxConnsPerClient: 16, MaxConns: 4096}
		run(b, func(ln net.Listener) { _ = s.Serve(ctx, ln) })
	})
}
