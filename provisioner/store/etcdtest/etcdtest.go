// Package etcdtest runs a real etcd cluster for tests: each member is an
// etcd process (Debian's etcd-server package, or any etcd on $PATH or in
// $RAMBOOT_ETCD), started by pid with its data in the test's temporary
// directory, on loopback or inside a network namespace the test made, and
// killed when the test ends.
//
//	c := etcdtest.Start(t, etcdtest.Options{Members: 3})
//	st, err := store.OpenEtcd(ctx, store.EtcdOptions{Endpoints: c.Endpoints()})
//	c.Kill(1) // kill -9 one member; c.Restart(1) brings it back
package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary returns the etcd executable: $RAMBOOT_ETCD, or etcd on $PATH;
// "" when there is none.
func Binary() string {
	if p := os.Getenv("RAMBOOT_ETCD"); p != "" {
		return p
	}
	p, err := exec.LookPath("etcd")
	if err != nil {
		return ""
	}
	return p
}

// Options configure Start.
type Options struct {
	// Members is the cluster's size; default 1.
	Members int
	// IPs are the members' addresses, one per member; default 127.0.0.1
	// for every member (with distinct ports).
	IPs []string
	// Netns are the network namespaces the members run in, one per
	// member; default none (the test's own).
	Netns []string
	// MaxTxnOps sets --max-txn-ops; 0 leaves etcd's default (128).
	MaxTxnOps int
	// Args are extra etcd flags for every member.
	Args []string
	// TLS, when set, makes the members serve clients over TLS only
	// (https:// endpoints) with this certificate and key (PEM files),
	// requiring client certificates signed by CAFile.
	TLS *TLS
}

// TLS is the members' client-side TLS: their certificate and key, and the
// CA their clients' certificates must be signed by. ClientCert and
// ClientKey are a client's, for the health checks.
type TLS struct {
	CertFile, KeyFile, CAFile string
	ClientCert, ClientKey     string
}

// Member is one etcd process.
type Member struct {
	Name       string
	ClientURL  string
	PeerURL    string
	Dir        string
	Netns      string
	LogFile    string
	cmd        *exec.Cmd
	exited     chan struct{}
	clientPort int
	peerPort   int
}

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	opts    Options
	Members []*Member
	initial string
	mu      sync.Mutex
}

// Start starts the cluster and waits until every member answers; it
// skips the test when no etcd binary is installed. Everything is stopped
// and removed when the test ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Skip("no etcd binary (apt-get install etcd-server, or set RAMBOOT_ETCD)")
	}
	if o.Members <= 0 {
		o.Members = 1
	}
	c := &Cluster{t: t, bin: bin, opts: o}
	dir := t.TempDir()
	var initial []string
	for i := range o.Members {
		ip := "127.0.0.1"
		if i < len(o.IPs) {
			ip = o.IPs[i]
		}
		m := &Member{Name: fmt.Sprintf("m%d", i), Dir: filepath.Join(dir, fmt.Sprintf("m%d", i))}
		if i < len(o.Netns) {
			m.Netns = o.Netns[i]
		}
		if ip == "127.0.0.1" {
			m.clientPort, m.peerPort = freePort(t), freePort(t)
		} else {
			m.clientPort, m.peerPort = 2379, 2380
		}
		scheme := "http://"
		if o.TLS != nil {
			scheme = "https://"
		}
		m.ClientURL = scheme + net.JoinHostPort(ip, strconv.Itoa(m.clientPort))
		m.PeerURL = "http://" + net.JoinHostPort(ip, strconv.Itoa(m.peerPort))
		m.LogFile = filepath.Join(dir, m.Name+".log")
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	c.initial = strings.Join(initial, ",")
	t.Cleanup(c.StopAll)
	for i := range c.Members {
		c.start(i, "new")
	}
	c.WaitHealthy(60 * time.Second)
	return c
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *Cluster) start(i int, state string) {
	c.t.Helper()
	m := c.Members[i]
	args := []string{
		"--name", m.Name, "--data-dir", m.Dir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", c.initial, "--initial-cluster-state", state,
		"--initial-cluster-token", "ramboot-test",
		"--heartbeat-interval", "100", "--election-timeout", "1000",
		"--log-level", "warn",
	}
	if c.opts.MaxTxnOps > 0 {
		args = append(args, "--max-txn-ops", strconv.Itoa(c.opts.MaxTxnOps))
	}
	if t := c.opts.TLS; t != nil {
		args = append(args, "--cert-file", t.CertFile, "--key-file", t.KeyFile, "--trusted-ca-file", t.CAFile, "--client-cert-auth")
	}
	args = append(args, c.opts.Args...)
	name, argv := c.bin, args
	if m.Netns != "" {
		name, argv = "ip", append([]string{"netns", "exec", m.Netns, c.bin}, args...)
	}
	log, err := os.OpenFile(m.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(name, argv...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		c.t.Fatalf("start etcd member %s: %v", m.Name, err)
	}
	log.Close()
	m.cmd, m.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(m.exited) }()
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Kill kills member i (SIGKILL) and waits for it to exit.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.Members[i]
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
}

// Restart starts member i again on its data directory.
func (c *Cluster) Restart(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.start(i, "existing")
}

// Pid returns member i's process id, 0 when it is not running.
func (c *Cluster) Pid(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m := c.Members[i]; m.cmd != nil {
		return m.cmd.Process.Pid
	}
	return 0
}

// StopAll kills every member.
func (c *Cluster) StopAll() {
	for i := range c.Members {
		c.Kill(i)
	}
}

// WaitHealthy waits until every running member reports healthy
// (/health), or fails the test with the members' logs.
func (c *Cluster) WaitHealthy(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for i, m := range c.Members {
		if c.Pid(i) == 0 {
			continue
		}
		for !c.healthy(m) {
			if time.Now().After(deadline) {
				c.t.Fatalf("etcd member %s not healthy within %s; log:\n%s", m.Name, timeout, c.Log(i))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (c *Cluster) healthy(m *Member) bool {
	if m.Netns != "" {
		// The test's namespace may have no route to the member: ask from
		// inside its own.
		out, err := exec.Command("ip", "netns", "exec", m.Netns, "curl", "-fsS", "-m", "2", m.ClientURL+"/health").Output()
		return err == nil && bytes.Contains(out, []byte(`"health":"true"`))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.ClientURL+"/health", nil)
	client := http.DefaultClient
	if t := c.opts.TLS; t != nil {
		tc, err := clientTLS(t)
		if err != nil {
			c.t.Fatal(err)
		}
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode == 200 && bytes.Contains(b.Bytes(), []byte(`"health":"true"`))
}

// Log returns member i's log so far.
func (c *Cluster) Log(i int) string {
	b, _ := os.ReadFile(c.Members[i].LogFile)
	return string(b)
}

func clientTLS(t *TLS) (*tls.Config, error) {
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(t.ClientCert, t.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
