// Package netnstest gives pxe's privileged tests network namespaces of
// their own: New creates one (skipping the test unless it runs as root with
// iproute2's ip) and deletes it when the test ends, even on failure; Do runs
// code on an OS thread inside it, so the sockets that code opens live there.
//
//	ns := netnstest.New(t, "rb-dhcp")
//	netnstest.IP(t, "-n", ns.Name, "link", "add", "a", "type", "veth", "peer", "name", "b")
//	err := ns.Do(func() error { return srv.ListenAndServe(ctx, "a") })
package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

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
