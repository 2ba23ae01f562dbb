package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The CLI tests run the real ramboot binary, built once by TestMain,
// against a real daemon (`ramboot serve` on lo with the services that need
// a link off and free ports), as an admin would.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ramboot-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ramboot")
	cmd := exec.Command("go", "build", "-o", binary, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build ramboot: %v\n%s", err, out)
		os.Exit(1)
	}
	if err := os.WriteFile(filepath.Join(dir, "ramboot-agent"), []byte("agent"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one run of the binary.
type result struct {
	out, err string
	code     int
}

// rb runs `ramboot ARGS --state-dir dir`.
func rb(t testing.TB, dir string, args ...string) result {
	t.Helper()
	return rbIn(t, dir, nil, args...)
}

// rbIn is rb with stdin.
func rbIn(t testing.TB, dir string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, append(args, "--state-dir", dir)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	r := result{out: out.String(), err: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run ramboot %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// ok fails the test unless the run succeeded, and returns its output.
func (r result) ok(t testing.TB) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d: %s%s", r.code, r.err, r.out)
	}
	return r.out
}

// fails checks the exit status and that stderr says want.
func (r result) fails(t testing.TB, code int, want ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d: %s%s", r.code, code, r.err, r.out)
	}
	for _, w := range want {
		if !strings.Contains(r.err, w) {
			t.Errorf("stderr lacks %q:\n%s", w, r.err)
		}
	}
}

// testConfig is a daemon on lo (127.0.0.1/8 is the provisioning subnet)
// with 10.1.0.0/24 and 10.2.0.0/16 configured besides, DHCP, TFTP and RA
// off, HTTP on a free port.
const testConfig = `interface: lo
dhcp: {enabled: false}
tftp: {enabled: false}
ra: {enabled: false}
http: {port: 0}
sftp: {address: 127.0.0.1, port: 0}
boot: {default_image: default, kernel_args: "console=ttyS0", modules: [virtio_net]}
subnets:
  - {prefix: 10.1.0.0/24, gateway: 10.1.0.254, dns: [10.1.0.254]}
  - {prefix: 10.1.0.0/16}
  - {prefix: 10.2.0.0/16, mtu: 2044}
`

// served is a running `ramboot serve`.
type served struct {
	log, config string
	pid         int
}

// daemon starts `ramboot serve` on state directory dir (made if absent)
// with extra configuration, waits until it answers, and stops it (by
// pid) when the test ends.
func daemon(t testing.TB, dir string, extra string) *served {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "ramboot.yaml")
	conf := testConfig + "agent: {binary: " + filepath.Join(filepath.Dir(binary), "ramboot-agent") + "}\n" + extra
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "serve.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "--config", cfg, "--state-dir", dir, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Error("ramboot serve did not stop within 15s of SIGTERM")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r := rb(t, dir, "status"); r.code == 0 {
			return &served{log: logPath, config: cfg, pid: cmd.Process.Pid}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("ramboot serve exited: %v\n%s", waitErr, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("ramboot serve not answering after 30s:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
