package initproc_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/initproc"
)

// The mount test runs the test binary again in a private mount namespace
// (helperEnv names the root to mount under), so nothing it mounts is seen
// outside.
const helperEnv = "INITPROC_TEST_MOUNT_ROOT"

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	if root := os.Getenv(helperEnv); root != "" {
		if err := mountHelper(root); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mountHelper runs in a new mount namespace: it mounts KernelFS under root
// twice, checks the result and that the second run mounted nothing more,
// then makes /dev/null its standard streams with OpenConsole.
func mountHelper(root string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := initproc.MountAll(root, initproc.KernelFS()); err != nil {
		return err
	}
	before, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if err := initproc.MountAll(root, initproc.KernelFS()); err != nil {
		return fmt.Errorf("second MountAll: %w", err)
	}
	after, _ := os.ReadFile("/proc/self/mountinfo")
	if n, m := bytes.Count(before, []byte("\n")), bytes.Count(after, []byte("\n")); n != m {
		return fmt.Errorf("second MountAll stacked mounts: %d mounts, then %d", n, m)
	}
	want := map[string]int64{
		"proc": unix.PROC_SUPER_MAGIC, "sys": unix.SYSFS_MAGIC, "dev": unix.TMPFS_MAGIC,
		"dev/pts": unix.DEVPTS_SUPER_MAGIC, "dev/shm": unix.TMPFS_MAGIC, "run": unix.TMPFS_MAGIC,
	}
	for dir, magic := range want {
		p := filepath.Join(root, dir)
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			return err
		}
		if st.Type != magic {
			return fmt.Errorf("%s: file system type %#x, want %#x", p, st.Type, magic)
		}
		if mp, err := initproc.IsMountPoint(p); err != nil || !mp {
			return fmt.Errorf("%s is not a mount point (%v)", p, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "run")); err != nil || fi.Mode().Perm() != 0o755 {
		return fmt.Errorf("run: mode %v (%v), want 0755", fi.Mode(), err)
	}
	if !bytes.Contains(after, []byte(filepath.Join(root, "run")+" ")) {
		return fmt.Errorf("run missing from mountinfo")
	}
	if _, err := os.Stat(filepath.Join(root, "proc", "self", "stat")); err != nil {
		return fmt.Errorf("proc not usable: %w", err)
	}
	if err := initproc.OpenConsole("/dev/null"); err != nil {
		return err
	}
	for fd := range 3 {
		l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil || l != "/dev/null" {
			return fmt.Errorf("fd %d -> %q (%v), want /dev/null", fd, l, err)
		}
	}
	return nil
}

func TestMountAll(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts file systems in a mount namespace")
	}
	root := filepath.Join(t.TempDir(), "root") // missing: MountAll creates the mount points
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mount helper: %v\n%s", err, out)
	}
	// Nothing leaked into this mount namespace.
	if mp, err := initproc.IsMountPoint(filepath.Join(root, "proc")); err != nil || mp {
		t.Errorf("proc under the test root is mounted outside the helper's namespace (%v)", err)
	}
}

func TestMountAllError(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "proc"), nil, 0o644) // a file where the mount point should be
	err := initproc.MountAll(root, []initproc.Mount{{Source: "proc", Target: "/proc", FSType: "proc"}})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(root, "proc")) {
		t.Errorf("MountAll over a file: %v, want an error naming the target", err)
	}
}

func TestIsMountPoint(t *testing.T) {
	for path, want := range map[string]bool{"/": true, "/proc": true, t.TempDir(): false} {
		if got, err := initproc.IsMountPoint(path); err != nil || got != want {
			t.Errorf("IsMountPoint(%s) = %v, %v; want %v", path, got, err, want)
		}
	}
}

// zombies returns the pids of this process's children that have exited
// and not been reaped.
func zombies(t *testing.T) []string {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var z []string
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == fmt.Sprint(os.Getpid()) {
			z = append(z, p)
		}
	}
	return z
}

func TestSupervisorReaps(t *testing.T) {
	sup := &initproc.Supervisor{Subreaper: true}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// Children nobody waits for, and a grandchild orphaned to us.
	for _, script := range []string{"exit 0", "exit 3", "kill -9 $$", "sleep 0.2 & exit 0"} {
		if _, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", script}, &syscall.ProcAttr{}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	time.Sleep(400 * time.Millisecond) // the orphan's sleep
	for z := zombies(t); len(z) > 0; z = zombies(t) {
		if time.Now().After(deadline) {
			t.Fatalf("zombies left: %v", z)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var ws unix.WaitStatus
	if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); err != unix.ECHILD {
		t.Errorf("wait4 after reaping = %d, %v; want ECHILD", pid, err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSupervisorShutdown(t *testing.T) {
	if os.Getpid() == 1 {
		t.Skip("would end every process")
	}
	reboots := make(chan int, 16)
	var console syncBuffer
	sup := &initproc.Supervisor{Console: &console, Reboot: func(cmd int) error { reboots <- cmd; return nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- sup.Run(ctx) }()

	// SIGUSR2 is ignored by Go until Run has called signal.Notify: send it
	// until it is handled.
	var cmd int
	deadline := time.After(5 * time.Second)
wait:
	for {
		unix.Kill(os.Getpid(), unix.SIGUSR2)
		select {
		case cmd = <-reboots:
			break wait
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatal("SIGUSR2 not handled")
		}
	}
	if cmd != unix.LINUX_REBOOT_CMD_POWER_OFF {
		t.Errorf("SIGUSR2: reboot(%#x), want POWER_OFF", cmd)
	}
	// Drain the SIGUSR2s sent while waiting.
drain:
	for {
		select {
		case c := <-reboots:
			if c != unix.LINUX_REBOOT_CMD_POWER_OFF {
				t.Errorf("SIGUSR2: reboot(%#x), want POWER_OFF", c)
			}
		case <-time.After(300 * time.Millisecond):
			break drain
		}
	}
	// SIGHUP would end a Go program that does not handle it; the
	// supervisor ignores it (if it did not, this test binary would die).
	unix.Kill(os.Getpid(), unix.SIGHUP)
	for sig, want := range map[unix.Signal]int{unix.SIGTERM: unix.LINUX_REBOOT_CMD_RESTART, unix.SIGUSR1: unix.LINUX_REBOOT_CMD_HALT} {
		unix.Kill(os.Getpid(), sig)
		select {
		case got := <-reboots:
			if got != want {
				t.Errorf("%v: reboot(%#x), want %#x", sig, got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%v not handled", sig)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out := console.String(); !strings.Contains(out, "ramboot-agent: SIGUSR2: powering off\n") || !strings.Contains(out, "ramboot-agent: SIGTERM: rebooting\n") {
		t.Errorf("console = %q", out)
	}
	select {
	case c := <-reboots:
		t.Errorf("unexpected reboot(%#x): SIGHUP must be ignored", c)
	default:
	}
}
