package initproc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/initproc"
)

// roleEnv makes the test binary play a part in TestDaemonChildStatuses:
// "pid1" (a Supervisor that starts the daemon and makes orphans) or
// "daemon" (a process that runs children with os/exec and checks their
// statuses).
const roleEnv = "INITPROC_TEST_ROLE"

// daemonOK is the daemon role's exit status when every child's status was
// right: PID 1 must see exactly this.
const daemonOK = 42

func runRole(role string) int {
	switch role {
	case "pid1":
		return pid1Role()
	case "daemon":
		return daemonRole()
	}
	fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
	return 2
}

// pid1Role runs a Supervisor (a child subreaper when it is not PID 1),
// starts the daemon role through Supervisor.Start while orphans keep
// exiting into its lap, and exits 0 if the daemon's own status reached it
// through Child.Done intact.
func pid1Role() int {
	sup := &initproc.Supervisor{Subreaper: true, Reboot: func(int) error { return errors.New("no reboot in a test") }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Orphans: each sh exits at once and leaves a sleep behind, which is
	// reparented to this process and reaped by the supervisor.
	stop := make(chan struct{})
	orphans := make(chan int)
	go func() {
		n := 0
		defer func() { orphans <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := sup.Start("/bin/sh", []string{"sh", "-c", "sleep 0.01 & exit 5"}, &syscall.ProcAttr{})
			if err != nil {
				fmt.Fprintln(os.Stderr, "pid1: start orphan maker:", err)
				return
			}
			if ws := <-c.Done(); ws.ExitStatus() != 5 {
				fmt.Fprintf(os.Stderr, "pid1: orphan maker status %d, want 5\n", ws.ExitStatus())
				return
			}
			n++
		}
	}()
	exe, _ := os.Executable()
	// ForkExec passes the environment as it is, and the first of two
	// values wins: replace the role, do not append another.
	env := []string{roleEnv + "=daemon"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, roleEnv+"=") {
			env = append(env, kv)
		}
	}
	d, err := sup.Start(exe, []string{exe, "-test.run=^$"}, &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pid1:", err)
		return 1
	}
	var ws unix.WaitStatus
	select {
	case ws = <-d.Done():
	case <-time.After(2 * time.Minute):
		fmt.Fprintln(os.Stderr, "pid1: daemon did not exit within 2 minutes")
		return 1
	}
	close(stop)
	if n := <-orphans; n == 0 {
		fmt.Fprintln(os.Stderr, "pid1: made no orphans while the daemon ran")
		return 1
	}
	if ws.Signaled() || ws.ExitStatus() != daemonOK {
		fmt.Fprintf(os.Stderr, "pid1: daemon status %v (exit %d), want exit %d\n", ws, ws.ExitStatus(), daemonOK)
		return 1
	}
	return 0
}

// daemonRole runs 100 children with os/exec, as the agent daemon runs
// runc or prolog helpers, each with a known exit status or signal, and
// exits daemonOK if Wait returned every one of them.
func daemonRole() int {
	for i := range 100 {
		want := i%7 + 1
		script := fmt.Sprintf("exit %d", want)
		if i%10 == 9 {
			script, want = "kill -9 $$", -1
		}
		err := exec.Command("/bin/sh", "-c", script).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			fmt.Fprintf(os.Stderr, "daemon: child %d: %v, want an exit status\n", i, err)
			return 1
		}
		if got := ee.ExitCode(); got != want {
			fmt.Fprintf(os.Stderr, "daemon: child %d: exit code %d, want %d\n", i, got, want)
			return 1
		}
	}
	// The container manager makes the daemon a child subreaper: a
	// container's first process, orphaned when the runtime exits, comes
	// to the daemon, never to PID 1's reaper, and the daemon gets its
	// status.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "daemon: become a subreaper:", err)
		return 1
	}
	for i := range 20 {
		want := 10 + i%5
		out, err := exec.Command("/bin/sh", "-c", fmt.Sprintf("sh -c 'sleep 0.05; exit %d' </dev/null >/dev/null 2>&1 & echo $!", want)).Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "daemon: orphan %d: %v\n", i, err)
			return 1
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil || ws.ExitStatus() != want {
			fmt.Fprintf(os.Stderr, "daemon: orphan %d (pid %d): %v, status %d, want %d (taken by PID 1?)\n", i, pid, err, ws.ExitStatus(), want)
			return 1
		}
	}
	return daemonOK
}

// TestDaemonChildStatuses is the PID 1 contract of the agent: PID 1 reaps
// every orphan (wait4(-1)), yet a child the daemon starts with os/exec
// gets its real exit status, and PID 1 gets the daemon's own status. As
// root the supervisor runs as PID 1 of a new PID namespace; otherwise as
// a child subreaper, which receives orphans the same way.
func TestDaemonChildStatuses(t *testing.T) {
	for _, pidns := range []bool{false, true} {
		name := "subreaper"
		if pidns {
			name = "pid-namespace"
		}
		t.Run(name, func(t *testing.T) {
			if pidns && os.Geteuid() != 0 {
				t.Skip("needs root: a new PID namespace")
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), roleEnv+"=pid1")
			if pidns {
				cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
			}
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
		})
	}
}

func TestKeepRestarts(t *testing.T) {
	var console syncBuffer
	sup := &initproc.Supervisor{Console: &console, Subreaper: true}
	runCtx, stopRun := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(runCtx) }()
	defer func() { stopRun(); <-done }()

	count := t.TempDir() + "/count"
	ctx, cancel := context.WithCancel(context.Background())
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		sup.Keep(ctx, initproc.Service{
			Name: "counter", Path: "/bin/sh",
			Args:       []string{"sh", "-c", "echo x >> " + count + "; exit 3"},
			RestartMin: 10 * time.Millisecond, RestartMax: 20 * time.Millisecond,
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(count)
		if bytes.Count(b, []byte("x")) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service not restarted 3 times in 10s; console:\n%s", console.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-kept
	if !strings.Contains(console.String(), "ramboot-agent: counter (pid ") || !strings.Contains(console.String(), ") exited with status 3; restarting in ") {
		t.Errorf("console = %q", console.String())
	}

	// A long-running service is stopped with SIGTERM when ctx ends.
	ctx, cancel = context.WithCancel(context.Background())
	kept = make(chan struct{})
	go func() {
		defer close(kept)
		sup.Keep(ctx, initproc.Service{Name: "sleeper", Path: "/bin/sleep", Args: []string{"sleep", "600"}})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-kept:
	case <-time.After(10 * time.Second):
		t.Fatal("Keep did not return 10s after its context ended")
	}
}
