package provisioner_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/config"
)

// inNetnsEnv names the namespace a test re-executed itself in.
const inNetnsEnv = "RAMBOOT_TEST_NETNS"

// runInNetns runs the calling test again, alone, in a network namespace
// of its own (ip netns exec), so that every socket of the daemons it starts
// lives there, and fails if that run fails. It returns true in the parent,
// which must then return; false in the child, which runs the test body. It
// skips unless root with ip(8). The namespace is deleted at the end, and
// the child is killed by its pid if it outlives the deadline.
func runInNetns(t *testing.T) (parent bool) {
	t.Helper()
	if os.Getenv(inNetnsEnv) != "" {
		return false
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
	ns := fmt.Sprintf("rb-link-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), inNetnsEnv+"="+ns)
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test in namespace %s: %v", ns, err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("test in namespace %s did not pass", ns)
	}
	return true
}

// TestSecondDaemonOnLinkFails is issue 12's item 6 with the whole daemon:
// a second `ramboot serve` on the interface of a running one, with another
// state directory and another HTTP port, must fail to start with an error
// that says another DHCP server serves the interface (before, it started
// and both answered DHCP: two OFFERs per DISCOVER). With DHCP off, the
// TFTP port stops it the same way.
func TestSecondDaemonOnLinkFails(t *testing.T) {
	if runInNetns(t) {
		return
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("link", "set", "lo", "up")
	ip("link", "add", "eth1", "type", "veth", "peer", "name", "node1")
	ip("addr", "add", "10.219.0.1/24", "dev", "eth1")
	ip("link", "set", "eth1", "up")
	ip("link", "set", "node1", "up")

	dir := t.TempDir()
	agent := filepath.Join(dir, "ramboot-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	daemon := func(name string, extra ...string) (*provisioner.Daemon, chan provisioner.Head) {
		t.Helper()
		cfg, err := config.Parse(name+".yaml", []byte(strings.Join(append([]string{
			"interface: eth1",
			"state_dir: " + filepath.Join(dir, name),
			"http: {port: " + strconv.Itoa(freePort(t)) + "}",
			"tftp: {root: " + dir + "}",
			"agent: {binary: " + agent + "}",
		}, extra...), "\n")))
		if err != nil {
			t.Fatal(err)
		}
		ready := make(chan provisioner.Head, 1)
		return &provisioner.Daemon{Config: cfg, Ready: func(h provisioner.Head) { ready <- h }}, ready
	}

	first, _ := daemon("first")
	startDaemon(t, first.Config)

	self, _ := os.ReadFile("/proc/self/comm")
	holder := fmt.Sprintf("(pid %d (%s))", os.Getpid(), strings.TrimSpace(string(self)))
	for _, tc := range []struct {
		name  string
		extra []string
		want  string
	}{
		{"dhcp", nil, "listen dhcp on eth1: another DHCP server is already serving eth1 " + holder},
		{"tftp", []string{"dhcp: {enabled: false}"}, "listen tftp 10.219.0.1:69: another TFTP server is already serving this address " + holder},
	} {
		t.Run(tc.name, func(t *testing.T) {
			second, ready := daemon("second-"+tc.name, tc.extra...)
			sctx, scancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer scancel()
			err := second.Run(sctx)
			select {
			case h := <-ready:
				t.Errorf("second daemon became ready on %s", h.BaseURL)
			default:
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("second daemon: %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}
