// Package netnstest gives pxe's privileged tests network namespaces of
// their own: New creates one (skipping the test unless it runs as root with
// iproute2's ip) and deletes it when the test ends, even on failure; Do runs
// code on an OS thread inside it, so the sockets that code opens live there;
// Start runs a real program (a rival dnsmasq) inside it until the test ends.
//
//	ns := netnstest.New(t, "rb-dhcp")
//	netnstest.IP(t, "-n", ns.Name, "link", "add", "a", "type", "veth", "peer", "name", "b")
//	err := ns.Do(func() error { return srv.ListenAndServe(ctx, "a") })
//	ns.Start(t, "dnsmasq", "-k", "--interface=b", ...)
package netnstest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

var counter atomic.Int32

// NS is a network namespace owned by one test.
type NS struct {
	// Name is the namespace's name, as `ip netns` knows it.
	Name string
}

// New creates a namespace named PREFIX-PID-N, with lo up, and deletes it in
// t's cleanup. It skips the test unless it runs as root and ip(8) exists.
func New(t testing.TB, prefix string) NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
	n := NS{Name: fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), counter.Add(1))}
	IP(t, "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", n.Name, err, out)
		}
	})
	IP(t, "-n", n.Name, "link", "set", "lo", "up")
	return n
}

// IP runs ip(8) with args and fails the test if it fails.
func IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// Do runs fn on an OS thread switched into the namespace and returns its
// error. The thread stays locked and dies with its goroutine, so no other
// goroutine ever runs in the namespace by accident; sockets fn opens stay in
// the namespace and other goroutines may use them.
func (n NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", n.Name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Process is a program Start runs inside a namespace.
type Process struct {
	// Cmd is the running command (ip netns exec, which execs the program,
	// so Cmd.Process.Pid is the program's pid).
	Cmd *exec.Cmd

	mu  sync.Mutex
	out bytes.Buffer
}

// Output returns what the program has written to stdout and stderr so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *Process) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Start runs name with args inside the namespace (ip netns exec). It skips
// the test if name is not installed and fails it if the program cannot
// start. When the test ends, the program is stopped by its pid (SIGTERM,
// then SIGKILL after 5 s) and waited for, before the namespace is deleted;
// its output is logged if the test failed.
func (n NS) Start(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s", name)
	}
	p := &Process{}
	p.Cmd = exec.Command("ip", append([]string{"netns", "exec", n.Name, path}, args...)...)
	p.Cmd.Stdout, p.Cmd.Stderr = p, p
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, n.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = p.Cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = p.Cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s in %s:\n%s", name, n.Name, p.Output())
		}
	})
	return p
}
