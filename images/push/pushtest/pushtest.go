// Package pushtest runs a push.Server on 127.0.0.1:0 for tests, with a
// fresh host key and one authorized client key, as httptest does for HTTP:
//
//	srv := pushtest.NewServer(t, headStore)
//	c, err := push.Dial(ctx, srv.Addr, srv.ClientConfig())
package pushtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push"
)

// Server is a running push.Server.
type Server struct {
	*push.Server
	// Addr is "127.0.0.1:port".
	Addr string
	// Port is the port.
	Port int
	// ClientKey is the authorized client key; ClientKeyFile holds it in
	// OpenSSH format (mode 0600), for ssh and sftp's -i.
	ClientKey     ssh.Signer
	ClientKeyFile string
	// KnownHostsFile lists the server's host key for 127.0.0.1:Port.
	KnownHostsFile string
	// Dir holds the key files.
	Dir string
}

// NewServer starts a server for st; it stops when the test ends.
func NewServer(t testing.TB, st *images.Store) *Server {
	t.Helper()
	return NewServerWith(t, st, nil)
}

// NewServerWith is NewServer with configure, if not nil, called on the
// push.Server before it starts (to set its bounds, metrics, logger).
func NewServerWith(t testing.TB, st *images.Store, configure func(*push.Server)) *Server {
	t.Helper()
	dir := t.TempDir()
	host, err := push.LoadOrCreateHostKey(filepath.Join(dir, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	signer, file := NewKey(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Server:        &push.Server{Store: st, HostKey: host, AuthorizedKeysFile: authorized},
		Addr:          ln.Addr().String(),
		Port:          ln.Addr().(*net.TCPAddr).Port,
		ClientKey:     signer,
		ClientKeyFile: file,
		Dir:           dir,
	}
	if configure != nil {
		configure(s.Server)
	}
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	line := "[127.0.0.1]:" + strconv.Itoa(s.Port) + " " + string(ssh.MarshalAuthorizedKey(host.PublicKey()))
	if err := os.WriteFile(s.KnownHostsFile, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("push server: %v", err)
		}
	})
	return s
}

// ClientConfig returns a client configuration with the authorized key
// that checks the server's host key.
func (s *Server) ClientConfig() *ssh.ClientConfig {
	cfg, err := push.ClientConfig(push.ClientOptions{IdentityFiles: []string{s.ClientKeyFile}, KnownHostsFile: s.KnownHostsFile})
	if err != nil {
		panic(err)
	}
	return cfg
}

// NewKey generates an Ed25519 key and writes it to dir/name in OpenSSH
// format (mode 0600).
func NewKey(t testing.TB, dir, name string) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, name)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}
