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
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/images"
)

// DefaultPort is the port `ramboot serve` listens on for SFTP: not 22, so
// the head's own sshd keeps it.
const DefaultPort = 2222

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
	// HandshakeTimeout bounds the SSH handshake. Default 30 s.
	HandshakeTimeout time.Duration
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
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			s.serveConn(ctx, c, cfg)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
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

func (s *Server) serveConn(ctx context.Context, c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	c.SetDeadline(time.Now().Add(timeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		s.Metrics.conn("refused")
		s.log().Warn("sftp login refused", "ip", c.RemoteAddr().String(), "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	s.Metrics.conn("accepted")
	log := s.log().With("ip", c.RemoteAddr().String(), "user", sc.User(), "key", sc.Permissions.Extensions["pubkey-fp"])
	log.Info("sftp login")
	defer sc.Close()
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
