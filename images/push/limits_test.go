package push_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push"
	"github.com/ramboot/ramboot/images/push/pushtest"
)

// metric returns the value of the sample of metric name whose labels
// include every label=value pair of labels ("" = no label), 0 if none.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue sample
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

// eventually waits up to 10 s for ok.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialFrom logs in from the local address ip with the Go SSH client.
func dialFrom(t *testing.T, srv *pushtest.Server, ip string) (*ssh.Client, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", srv.Addr)
	if err != nil {
		return nil, err
	}
	sc, chans, reqs, err := ssh.NewClientConn(c, srv.Addr, srv.ClientConfig())
	if err != nil {
		c.Close()
		return nil, err
	}
	cl := ssh.NewClient(sc, chans, reqs)
	t.Cleanup(func() { cl.Close() })
	return cl, nil
}

// openSSHFrom runs OpenSSH's sftp from the local address ip.
func openSSHFrom(srv *pushtest.Server, ip, batch string) (string, error) {
	args := append([]string{"-o", "BindAddress=" + ip, "-o", "ConnectTimeout=10"}, openSSHArgs(srv)...)
	cmd := exec.Command("sftp", args...)
	cmd.Stdin = strings.NewReader(batch + "\n")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestConnectionLimits: a client address past sftp.max_conns_per_client,
// and any past sftp.max_conns, is turned away at once, OpenSSH's sftp
// among them; a slot freed lets the next one in.
func TestConnectionLimits(t *testing.T) {
	if _, err := exec.LookPath("sftp"); err != nil {
		t.Skip("sftp (openssh-client) not installed")
	}
	reg := prometheus.NewRegistry()
	srv := pushtest.NewServerWith(t, newStore(t), func(s *push.Server) {
		s.MaxConns, s.MaxConnsPerClient, s.Metrics = 2, 1, push.NewMetrics(reg)
	})
	a, err := dialFrom(t, srv, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := openSSHFrom(srv, "127.0.0.1", "ls /refs"); err == nil {
		t.Errorf("a second connection from 127.0.0.1 (max_conns_per_client 1) got in:\n%s", out)
	}
	if _, err := dialFrom(t, srv, "127.0.0.2"); err != nil {
		t.Fatalf("the first connection from 127.0.0.2: %v", err)
	}
	if out, err := openSSHFrom(srv, "127.0.0.3", "ls /refs"); err == nil {
		t.Errorf("a third connection (max_conns 2) got in:\n%s", out)
	}
	if got := metric(t, reg, "ramboot_sftp_open_connections"); got != 2 {
		t.Errorf("open connections %v, want 2", got)
	}
	if p, l := metric(t, reg, "ramboot_sftp_connections_total", "result", "limit_per_client"), metric(t, reg, "ramboot_sftp_connections_total", "result", "limit"); p != 1 || l != 1 {
		t.Errorf("refused per client %v, in total %v; want 1 and 1", p, l)
	}
	a.Close()
	eventually(t, "a freed slot", func() bool { return metric(t, reg, "ramboot_sftp_open_connections") == 1 })
	if out, err := openSSHFrom(srv, "127.0.0.1", "ls /refs"); err != nil {
		t.Errorf("OpenSSH after a slot was freed: %v\n%s", err, out)
	}
}

// TestLoginTimeout: a client that connects and never logs in (it sends
// not even its version) is cut off after sftp.login_timeout.
func TestLoginTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := pushtest.NewServerWith(t, newStore(t), func(s *push.Server) {
		s.HandshakeTimeout, s.Metrics = 300*time.Millisecond, push.NewMetrics(reg)
	})
	c, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	banner, err := bufio.NewReader(c).ReadString('\n')
	if !strings.HasPrefix(banner, "SSH-2.0-ramboot") {
		t.Fatalf("banner %q, %v", banner, err)
	}
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept a silent client 10 s")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("cut off after %s, before the login timeout", d)
	}
	eventually(t, "the login_timeout count", func() bool {
		return metric(t, reg, "ramboot_sftp_connections_total", "result", "login_timeout") == 1
	})
}

// TestIdleTimeout: OpenSSH's sftp logs in and then sends nothing: the
// server closes the connection after sftp.idle_timeout, and counts it.
func TestIdleTimeout(t *testing.T) {
	if _, err := exec.LookPath("sftp"); err != nil {
		t.Skip("sftp (openssh-client) not installed")
	}
	reg := prometheus.NewRegistry()
	srv := pushtest.NewServerWith(t, newStore(t), func(s *push.Server) {
		s.IdleTimeout, s.Metrics = 500*time.Millisecond, push.NewMetrics(reg)
	})
	cmd := exec.Command("sftp", openSSHArgs(srv)...)
	stdin, err := cmd.StdinPipe() // never written: the client sits idle
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	eventually(t, "the login", func() bool { return metric(t, reg, "ramboot_sftp_connections_total", "result", "accepted") == 1 })
	eventually(t, "the idle close", func() bool { return metric(t, reg, "ramboot_sftp_idle_closed_total") == 1 })
	// sftp waits for its next command: give it none; its ssh has seen the
	// server close the connection.
	stdin.Close()
	cmd.Wait()
	if !strings.Contains(out.String(), "closed by remote host") {
		t.Errorf("sftp's output: %q", out.String())
	}
	if got := metric(t, reg, "ramboot_sftp_open_connections"); got != 0 {
		t.Errorf("%v connections still open", got)
	}
}

// TestUploadTooLarge: a blob past sftp.max_upload is refused on the write
// that crosses the cap, with the key in the message, from our client and
// from OpenSSH's; nothing is stored or left staged.
func TestUploadTooLarge(t *testing.T) {
	local, head := newStore(t), newStore(t)
	m, _ := addImage(t, local, "img", 2<<20)
	reg := prometheus.NewRegistry()
	srv := pushtest.NewServerWith(t, head, func(s *push.Server) {
		s.MaxUploadBytes, s.Metrics = 1<<20, push.NewMetrics(reg)
	})
	_, err := dial(t, srv).Push(context.Background(), local, "img", "", nil)
	if err == nil || !strings.Contains(err.Error(), "sftp.max_upload") {
		t.Fatalf("push of a 2 MiB blob past a 1 MiB cap: %v", err)
	}
	if _, err := exec.LookPath("sftp"); err == nil {
		blob := filepath.Join(local.Dir, "blobs", "sha256", m.Rootfs.Digest.Hex())
		if out, err := openSSHErr(srv, "put "+blob+" "+push.BlobPath(m.Rootfs.Digest)); err == nil {
			t.Errorf("OpenSSH put past the cap succeeded:\n%s", out)
		}
	}
	if head.HasBlob(m.Rootfs) {
		t.Error("the blob was stored")
	}
	eventually(t, "the staging area emptied", func() bool { return len(tmpFiles(t, head)) == 0 })
	if got := metric(t, reg, "ramboot_sftp_uploads_total", "result", "too_large"); got < 1 {
		t.Errorf("too_large uploads %v", got)
	}
}

// TestUploadReserve pushes into a store on a 32 MiB tmpfs that must keep
// 20 MiB free: a 4 MiB image goes in, an 8 MiB one is refused before the
// write that would cross the reserve (the file system never gets below
// it), with the key in the message; the first image stays.
func TestUploadReserve(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=32m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	local := newStore(t)
	addImage(t, local, "small", 4<<20)
	big, _ := addImage(t, local, "big", 8<<20)
	head := &images.Store{Dir: filepath.Join(mnt, "store")}
	const reserve = 20 << 20
	reg := prometheus.NewRegistry()
	srv := pushtest.NewServerWith(t, head, func(s *push.Server) {
		s.MinFreeBytes, s.Metrics = reserve, push.NewMetrics(reg)
	})
	c := dial(t, srv)
	if _, err := c.Push(context.Background(), local, "small", "", nil); err != nil {
		t.Fatalf("push within the reserve: %v", err)
	}
	// Watch the free space while the big one is refused.
	stop := make(chan struct{})
	lowest := make(chan int64, 1)
	go func() {
		low := int64(1 << 62)
		for {
			var st unix.Statfs_t
			if unix.Statfs(mnt, &st) == nil {
				low = min(low, int64(st.Bavail)*st.Bsize)
			}
			select {
			case <-stop:
				lowest <- low
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	_, err := c.Push(context.Background(), local, "big", "", nil)
	close(stop)
	low := <-lowest
	if err == nil || !strings.Contains(err.Error(), "sftp.min_free") {
		t.Fatalf("push past the reserve: %v", err)
	}
	if low < reserve {
		t.Errorf("free space went down to %d, below the %d reserve", low, reserve)
	}
	if head.HasBlob(big.Rootfs) {
		t.Error("the big blob was stored")
	}
	if _, _, err := head.Resolve("small"); err != nil {
		t.Errorf("the first image: %v", err)
	}
	eventually(t, "the staging area emptied", func() bool { return len(tmpFiles(t, head)) == 0 })
	if got := metric(t, reg, "ramboot_sftp_uploads_total", "result", "no_space"); got < 1 {
		t.Errorf("no_space uploads %v", got)
	}
}
