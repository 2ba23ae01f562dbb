package storm

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"
)

// bufSize is the read buffer of a download that is hashed or kept: large
// reads keep the generator's CPU per byte low.
const bufSize = 256 << 10

// spliceChunk is how much of a body is moved between two extensions of
// the stall deadline on the zero-copy path.
const spliceChunk = 4 << 20

// ipxeWindow is iPXE's TCP receive window (TCP_MAX_WINDOW_SIZE in its
// tcp.h: 256 KiB). Every simulated node's connections get a receive
// buffer that advertises it: the head meets the windows real nodes
// offer, and a thousand nodes that the generator drains late cannot
// exhaust the host's TCP memory (tcp_mem), which would drop packets and
// stall connections in retransmission timeouts that no real node sees.
const ipxeWindow = 256 << 10

// devNull is where bodies nobody looks at go, through splice(2): the
// generator shares the machine with the head, and a copy of every byte
// into its own memory would cost more CPU than the head spends sending.
var devNull = sync.OnceValues(func() (*os.File, error) { return os.OpenFile(os.DevNull, os.O_WRONLY, 0) })

// stallError is a read that waited longer than the stall timeout.
type stallError struct{ d time.Duration }

func (e stallError) Error() string   { return fmt.Sprintf("nothing received for %s", e.d) }
func (e stallError) Timeout() bool   { return true }
func (e stallError) Temporary() bool { return false }

// nodeHTTP is a node's HTTP client, shaped like iPXE's: HTTP/1.1 GETs one
// after the other on one kept-alive connection per server (iPXE pools its
// connections), from the node's address, with iPXE's receive window, no
// compression, no proxy, and a download cut when nothing arrives for
// stall. It is not safe for concurrent use: a node fetches one file at a
// time.
type nodeHTTP struct {
	local netip.Addr
	stall time.Duration

	host    string // host:port of conn
	conn    *net.TCPConn
	br      *bufio.Reader
	unwatch func() bool // stops the watch of the context conn was dialled with
}

func newNodeHTTP(local netip.Addr, stall time.Duration) *nodeHTTP {
	return &nodeHTTP{local: local, stall: stall}
}

// Close closes the kept connection.
func (c *nodeHTTP) Close() {
	if c.conn != nil {
		c.unwatch()
		c.conn.Close()
		c.conn, c.br, c.host, c.unwatch = nil, nil, "", nil
	}
}

func (c *nodeHTTP) dial(ctx context.Context, host string) error {
	c.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: c.local.AsSlice()}, Timeout: c.stall, KeepAlive: -1,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, ipxeWindow)
			})
			if err != nil {
				return err
			}
			return serr
		}}
	nc, err := d.DialContext(ctx, "tcp4", host)
	if err != nil {
		return err
	}
	conn := nc.(*net.TCPConn)
	c.conn, c.host = conn, host
	c.br = bufio.NewReaderSize(stallReader{ctx, conn, c.stall}, 64<<10)
	// The end of ctx (the storm's deadline, an interrupt) ends a read or
	// write in progress at once.
	c.unwatch = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return nil
}

// stallReader fails a read that waits longer than d, or once ctx ended.
type stallReader struct {
	ctx  context.Context
	conn *net.TCPConn
	d    time.Duration
}

func (s stallReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(s.d))
	n, err := s.conn.Read(p)
	return n, stalled(err, s.d)
}

func stalled(err error, d time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return stallError{d}
	}
	return err
}

// response sends a GET of u and reads the answer's head, on the kept
// connection if there is one (once more on a new one when the kept one
// was closed by the server meanwhile).
func (c *nodeHTTP) response(ctx context.Context, u *url.URL) (*http.Response, error) {
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	req := &http.Request{Method: http.MethodGet, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"User-Agent": {"iPXE/1.0.0+ (ramboot storm)"}}, Host: u.Host}
	for attempt := 0; ; attempt++ {
		reused := c.conn != nil && c.host == host
		if !reused {
			if err := c.dial(ctx, host); err != nil {
				return nil, err
			}
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(c.stall))
		err := req.Write(c.conn)
		var resp *http.Response
		if err == nil {
			resp, err = http.ReadResponse(c.br, req)
		}
		if err == nil {
			return resp, nil
		}
		c.Close()
		// A kept connection the server closed while idle fails before any
		// answer: try a new one, once, as every HTTP client does.
		if !reused || attempt > 0 || ctx.Err() != nil || errors.As(err, new(stallError)) {
			return nil, err
		}
	}
}

// get downloads u; the body must match its Content-Length and, as o says,
// its digest. Bodies neither hashed nor kept are moved to /dev/null by
// the kernel (splice), never copied into the generator.
func (c *nodeHTTP) get(ctx context.Context, bufs *sync.Pool, rawURL string, o getOpts) (getResult, error) {
	var res getResult
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" {
		return res, phaseErr(PhaseScript, "url", fmt.Errorf("GET %q: only http URLs", rawURL))
	}
	resp, err := c.response(ctx, u)
	if err != nil {
		return res, httpErr(ctx, err)
	}
	ok := false
	defer func() {
		if !ok || resp.Close {
			c.Close()
		}
	}()
	if resp.StatusCode != http.StatusOK {
		if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)); err == nil {
			ok = true
		}
		return res, phaseErr(PhaseScript, fmt.Sprintf("http-%d", resp.StatusCode), fmt.Errorf("GET %s: %s", rawURL, resp.Status))
	}
	res.etagDigest = etagDigest(resp.Header.Get("ETag"))
	want := o.want
	if want == "" {
		want = res.etagDigest
	}
	var h hash.Hash
	if o.verify && want != "" {
		h = sha256.New()
	}
	if h == nil && o.keep == nil && resp.ContentLength > 0 && len(resp.TransferEncoding) == 0 {
		res.size, err = c.discard(ctx, resp.ContentLength)
	} else {
		res.size, err = readBody(resp.Body, bufs, h, o, rawURL)
	}
	if err != nil {
		var pe *PhaseError
		if errors.As(err, &pe) {
			return res, err
		}
		return res, httpErr(ctx, err)
	}
	if resp.ContentLength >= 0 && res.size != resp.ContentLength {
		return res, phaseErr(PhaseScript, "short", fmt.Errorf("GET %s: %d bytes, Content-Length %d", rawURL, res.size, resp.ContentLength))
	}
	if h != nil {
		if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != want {
			return res, phaseErr(PhaseScript, "digest", fmt.Errorf("GET %s: body is %s, want %s", rawURL, got, want))
		}
	}
	ok = true
	return res, nil
}

// discard drops n body bytes: what the reader buffered, then the rest
// straight from the socket to /dev/null.
func (c *nodeHTTP) discard(ctx context.Context, n int64) (int64, error) {
	done, err := io.CopyN(io.Discard, c.br, min(int64(c.br.Buffered()), n))
	if err != nil {
		return done, err
	}
	null, err := devNull()
	if err != nil {
		return done, err
	}
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(c.stall))
		k, err := io.CopyN(null, c.conn, min(n-done, spliceChunk))
		done += k
		if err == io.EOF {
			return done, io.ErrUnexpectedEOF
		}
		if err != nil {
			return done, stalled(err, c.stall)
		}
	}
	return done, nil
}

// readBody reads body through a pooled buffer into h and o.keep.
func readBody(body io.Reader, bufs *sync.Pool, h hash.Hash, o getOpts, rawURL string) (int64, error) {
	var buf *[]byte
	if b, ok := bufs.Get().(*[]byte); ok {
		buf = b
	} else {
		b := make([]byte, bufSize)
		buf = &b
	}
	defer bufs.Put(buf)
	var size int64
	for {
		k, err := body.Read(*buf)
		if k > 0 {
			b := (*buf)[:k]
			size += int64(k)
			if h != nil {
				h.Write(b)
			}
			if o.keep != nil {
				if o.limit > 0 && size > o.limit {
					return size, phaseErr(PhaseScript, "too-large", fmt.Errorf("GET %s: more than %d bytes", rawURL, o.limit))
				}
				o.keep(b)
			}
		}
		if err == io.EOF {
			return size, nil
		}
		if err != nil {
			return size, err
		}
	}
}
