package push_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push"
	"github.com/ramboot/ramboot/images/push/pushtest"
)

// BenchmarkPushVsOpenSSH pushes a 256 MiB image (random, so nothing
// compresses) to a push.Server on 127.0.0.1 and, alternating in every
// iteration, uploads the same root file system with OpenSSH's sftp to
// OpenSSH's sshd (internal-sftp, run as nobody) on 127.0.0.1, each with
// its default ciphers. It reports the ratio of the total times (below 1:
// ramboot faster). It needs root, the sftp client, and RAMBOOT_SSHD naming
// an sshd binary (images/push/testdata/bench-vs-openssh.sh prepares one);
// RAMBOOT_BENCH_MIB changes the size.
func BenchmarkPushVsOpenSSH(b *testing.B) {
	sshd := os.Getenv("RAMBOOT_SSHD")
	if sshd == "" || os.Geteuid() != 0 {
		b.Skip("set RAMBOOT_SSHD to an sshd binary and run as root")
	}
	if _, err := exec.LookPath("sftp"); err != nil {
		b.Skip("sftp not installed")
	}
	size := 256
	fmt.Sscan(os.Getenv("RAMBOOT_BENCH_MIB"), &size)
	local := &images.Store{Dir: filepath.Join(b.TempDir(), "local")}
	m, _ := addImageTB(b, local, "bench", size<<20)
	srv := pushtest.NewServer(b, &images.Store{Dir: filepath.Join(b.TempDir(), "head")})

	// OpenSSH's server, as nobody, with the same client key.
	dir, err := os.MkdirTemp("", "rb-sshd-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	dest := filepath.Join(dir, "dest")
	os.Mkdir(dest, 0o755)
	pushtest.NewKey(b, dir, "host_key")
	auth := filepath.Join(dir, "authorized_keys")
	os.WriteFile(auth, ssh.MarshalAuthorizedKey(srv.ClientKey.PublicKey()), 0o644)
	for _, p := range []string{dest, filepath.Join(dir, "host_key"), auth} {
		os.Chown(p, 65534, 65534)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfg, []byte(strings.Join([]string{
		fmt.Sprintf("Port %d", port), "ListenAddress 127.0.0.1", "HostKey " + filepath.Join(dir, "host_key"),
		"PidFile none", "UsePAM yes", "StrictModes no", "AuthorizedKeysFile " + auth,
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "Subsystem sftp internal-sftp", "",
	}, "\n")), 0o644)
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var sshdLog strings.Builder
	cmd.Stderr = &sshdLog
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("sshd did not listen: %s", sshdLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	rootfs := filepath.Join(local.Dir, "blobs", "sha256", m.Rootfs.Digest.Hex())
	sftpArgs := []string{"-q", "-b", "-", "-i", srv.ClientKeyFile, "-P", fmt.Sprint(port),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "nobody@127.0.0.1"}

	var rb, std time.Duration
	for i := 0; b.Loop(); i++ {
		srv.Store = &images.Store{Dir: filepath.Join(b.TempDir(), fmt.Sprint("head", i))}
		start := time.Now()
		c, err := push.Dial(context.Background(), srv.Addr, srv.ClientConfig())
		if err != nil {
			b.Fatal(err)
		}
		res, err := c.Push(context.Background(), local, "bench", "", nil)
		c.Close()
		if err != nil || res.Blobs != 2 {
			b.Fatalf("push %+v: %v", res, err)
		}
		rb += time.Since(start)

		start = time.Now()
		sc := exec.Command("sftp", sftpArgs...)
		sc.Stdin = strings.NewReader("put " + rootfs + " " + filepath.Join(dest, "rootfs") + "\n")
		if out, err := sc.CombinedOutput(); err != nil {
			b.Fatalf("sftp: %v\n%s\nsshd: %s", err, out, sshdLog.String())
		}
		std += time.Since(start)
		os.Remove(filepath.Join(dest, "rootfs"))
		os.RemoveAll(srv.Store.Dir)
	}
	n := float64(b.N)
	b.ReportMetric(rb.Seconds()/n, "ramboot-s")
	b.ReportMetric(std.Seconds()/n, "openssh-s")
	b.ReportMetric(rb.Seconds()/std.Seconds(), "time-ratio")
	b.ReportMetric(float64(size)/(rb.Seconds()/n), "ramboot-MiB/s")
	b.ReportMetric(float64(size)/(std.Seconds()/n), "openssh-MiB/s")
}
