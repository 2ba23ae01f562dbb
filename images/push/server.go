// Package push moves images between stores over SFTP: a Server that
// exposes a store to `ramboot image push` and `image pull` (the head runs
// it in `ramboot serve`), and a Client that pushes and pulls.
//
//	srv := &push.Server{Store: st, HostKey: key, AuthorizedKeysFile: "/var/lib/ramboot/authorized_keys"}
//	err := srv.ListenAndServe(ctx, ":2222")
//
//	c, err := push.Dial(ctx, "head:2222", clientConfig)
//	defer c.Close()
//	res, err := c.Push(ctx, localStore, "compute:v3", "compute:v3", nil)
//	fmt.Println(res.BytesSent) // 0 when the head already has the image
//
// # The protocol
//
// SFTP (github.com/pkg/sftp's RequestServer) on SSH with public-key
// authentication only, against an authorized_keys file read at every
// login. The server has no file system behind it: its handlers answer a
// fixed namespace, so no path can leave it:
//
//	/blobs/sha256/<hex>      read: a blob; write: upload a blob
//	/refs/<name>:<tag>       read: the manifest digest the reference points to, and "\n"
//	/manifests/<name>:<tag>  read: the manifest's bytes; write: commit a manifest under the reference
//
// An uploaded blob goes to a file of its own in the store's tmp/ (the
// staging area) and becomes a blob only when the client closes it and its
// content has the digest its name says; a manifest is committed only when
// it is in canonical form and every blob it names is stored. Nothing else
// is ever visible: an interrupted upload (the connection drops, the client
// is killed) is discarded, a corrupted one is rejected with an error, and
// two concurrent uploads of one blob each verify their own copy. A client
// pushes the blobs the server lacks (a stat tells), then the manifest,
// unless the reference already points to it: pushing an image the server
// has transfers nothing.
package push

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/images"
)

// DefaultPort is the port `ramboot serve` listens on for SFTP: not 22, so
// the head's own sshd keeps it.
const DefaultPort = 2222

// Defaults of the Server's bounds.
const (
	DefaultMaxConns          = 64
	DefaultMaxConnsPerClient = 8
	DefaultHandshakeTimeout  = 30 * time.Second
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultMinFreeBytes      = 1 << 30
)

// Server serves a store over SFTP. Set its fields, then call Serve or
// ListenAndServe once.
type Server struct {
	// Store is the store served; required.
	Store *images.Store
	// HostKey is the server's SSH host key; required (see
	// LoadOrCreateHostKey).
	HostKey ssh.Signer
	// AuthorizedKeysFile lists the public keys that may log in, in
	// OpenSSH's authorized_keys format (options are ignored). It is read
	// at every login, so edits apply at once; a missing file lets no one
	// in. Required.
	AuthorizedKeysFile string
	// Committed, if set, is called after a pushed manifest is committed.
	Committed func(ref string, d images.Digest)
	// Logger logs logins at Info (user, key fingerprint, address),
	// commits at Info, rejected uploads at Warn; nil = discard.
	Logger *slog.Logger
	// Metrics, if set, counts connections, blobs and bytes.
	Metrics *Metrics
	// HandshakeTimeout bounds the SSH handshake, the login included: a
	// client that has not logged in by then is disconnected. Default
	// DefaultHandshakeTimeout (30 s).
	HandshakeTimeout time.Duration
	// IdleTimeout disconnects a logged-in client that sends nothing for
	// that long. Default DefaultIdleTimeout (5 min); negative: never.
	IdleTimeout time.Duration
	// MaxConns caps open connections in total, MaxConnsPerClient those
	// from one IP address; a connection past either is closed at once,
	// before the handshake. Defaults DefaultMaxConns (64) and
	// DefaultMaxConnsPerClient (8).
	MaxConns, MaxConnsPerClient int
	// MaxUploadBytes caps the size of one uploaded blob; 0 = no cap.
	MaxUploadBytes int64
	// MinFreeBytes is the free space uploads must leave in the store's
	// file system: a write that would take it below is refused before it
	// is written, and the upload is discarded. Default DefaultMinFreeBytes
	// (1 GiB); negative: no reserve.
	MinFreeBytes int64

	// space serializes the free-space check of concurrent writes, and
	// pending counts the bytes granted to writes not yet in the file
	// system (an SFTP client keeps many writes in flight, of one upload
	// and of several): statfs does not see them yet.
	space   sync.Mutex
	pending int64
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// ListenAndServe listens on addr (e.g. ":2222") and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen sftp: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve accepts SSH connections on ln until ctx ends, then closes ln and
// every connection, waits for their goroutines and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Store == nil || s.HostKey == nil || s.AuthorizedKeysFile == "" {
		ln.Close()
		return errors.New("serve sftp: Store, HostKey and AuthorizedKeysFile are required")
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: s.checkKey,
		ServerVersion:     "SSH-2.0-ramboot",
	}
	cfg.AddHostKey(s.HostKey)

	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	perIP := map[string]int{}
	maxConns, maxPerIP := orDefault(s.MaxConns, DefaultMaxConns), orDefault(s.MaxConnsPerClient, DefaultMaxConnsPerClient)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	var err error
	backoff := 5 * time.Millisecond
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				err = nil
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(backoff)
				backoff = min(2*backoff, time.Second)
				continue
			}
			err = fmt.Errorf("serve sftp: %w", err)
			break
		}
		backoff = 5 * time.Millisecond
		ip := remoteIP(c)
		mu.Lock()
		over := ""
		switch {
		case len(conns) >= maxConns:
			over = "limit"
		case perIP[ip] >= maxPerIP:
			over = "limit_per_client"
		default:
			conns[c] = true
			perIP[ip]++
		}
		open := len(conns)
		mu.Unlock()
		if over != "" {
			c.Close()
			s.Metrics.conn(over)
			s.log().Warn("sftp connection refused: too many connections", "ip", ip, "limit", over, "open", open)
			continue
		}
		s.Metrics.open(1)
		wg.Go(func() {
			s.serveConn(ctx, c, cfg)
			mu.Lock()
			delete(conns, c)
			if perIP[ip]--; perIP[ip] == 0 {
				delete(perIP, ip)
			}
			mu.Unlock()
			s.Metrics.open(-1)
		})
	}
	ln.Close()
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return err
}

// remoteIP is the address c comes from, without its port.
func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

// idleConn is a connection whose reads, once armed (after the login),
// time out after idle without data: every read pushes the deadline on.
type idleConn struct {
	net.Conn
	idle     time.Duration
	armed    atomic.Bool
	timedOut atomic.Bool
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.armed.Load() {
		c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	n, err := c.Conn.Read(p)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.timedOut.Store(true)
	}
	return n, err
}

func (s *Server) serveConn(ctx context.Context, c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	ic := &idleConn{Conn: c, idle: orDefault(s.IdleTimeout, DefaultIdleTimeout)}
	c.SetDeadline(time.Now().Add(orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)))
	sc, chans, reqs, err := ssh.NewServerConn(ic, cfg)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.Metrics.conn("login_timeout")
			s.log().Warn("sftp login timed out", "ip", c.RemoteAddr().String(), "dur", orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout))
			return
		}
		s.Metrics.conn("refused")
		s.log().Warn("sftp login refused", "ip", c.RemoteAddr().String(), "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	ic.armed.Store(ic.idle > 0)
	s.Metrics.conn("accepted")
	log := s.log().With("ip", c.RemoteAddr().String(), "user", sc.User(), "key", sc.Permissions.Extensions["pubkey-fp"])
	log.Info("sftp login")
	defer func() {
		sc.Close()
		if ic.timedOut.Load() {
			s.Metrics.idle()
			log.Warn("sftp connection closed: idle", "dur", ic.idle)
		}
	}()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only session channels")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Go(func() { s.serveSession(ctx, ch, creqs, log) })
	}
}

// serveSession runs the sftp subsystem on one session channel; any other
// request (a shell, a command) is refused.
func (s *Server) serveSession(ctx context.Context, ch ssh.Channel, reqs <-chan *ssh.Request, log *slog.Logger) {
	defer ch.Close()
	started := false
	for req := range reqs {
		ok := !started && req.Type == "subsystem" && len(req.Payload) >= 4 && string(req.Payload[4:]) == "sftp"
		req.Reply(ok, nil)
		if !ok {
			continue
		}
		started = true
		h := &handlers{srv: s, log: log}
		rs := sftp.NewRequestServer(ch, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}, sftp.WithRSMaxTxPacket(maxPacket))
		go func() {
			for r := range reqs {
				r.Reply(false, nil)
			}
		}()
		stop := context.AfterFunc(ctx, func() { rs.Close() })
		rs.Serve()
		stop()
		return
	}
}
