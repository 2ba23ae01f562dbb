package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/report/reporttest"
)

// TestPID1 boots the real static binary as PID 1 of new PID, mount and UTS
// namespaces, chrooted into a RAM-root-like directory, in a network
// namespace of its own where a veth end carries the node's MAC and the
// other end a stand-in head. It checks the console, the report, the host
// name and the network, that SIGHUP is survived, and that SIGUSR2 (busybox
// poweroff) ends the PID namespace. Needs root, ip, unshare and chroot.
func TestPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces, mounts")
	}
	if testing.Short() {
		t.Skip("builds the agent and boots it: not in -short")
	}
	for _, tool := range []string{"ip", "unshare", "chroot", "nsenter", "mount", "mknod"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	work := t.TempDir()
	root := filepath.Join(work, "root")
	bin := filepath.Join(root, "init")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}

	// The node's network namespace: node0 (the NIC) <-> head0 (the head).
	ns := fmt.Sprintf("ramboot-pid1-%d", os.Getpid())
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "add", "node0", "address", "52:54:00:12:34:56", "type", "veth", "peer", "name", "head0")
	ip("-n", ns, "addr", "add", "10.77.0.1/24", "dev", "head0")
	ip("-n", ns, "link", "set", "head0", "up")
	ln := listenIn(t, ns, "10.77.0.1:0")
	head := reporttest.NewHeadOn(t, ln, "tok-pid1")

	modules := []string{}
	if _, err := os.Stat("/sys/module/kernel"); err == nil {
		modules = append(modules, "kernel") // "built in": listed in /sys/module
	}
	cfg := overlay.Config{
		Node: "n001", HeadURL: head.URL, Token: "tok-pid1",
		Interface: overlay.Interface{MAC: "52:54:00:12:34:56", Address: "10.77.0.10/24", Gateway: "10.77.0.1", DNS: []string{"10.77.0.1"}},
		Modules:   modules,
		Image:     overlay.ImageRef{Name: "test"},
	}
	js, _ := json.Marshal(cfg)
	for path, data := range map[string]string{overlay.ConfigPath: string(js), overlay.ImageIDPath: "sha256:c0ffee\n"} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, path)), 0o755)
		if err := os.WriteFile(filepath.Join(root, path), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(root, "dev"), 0o755)
	console := filepath.Join(work, "console.log")
	os.WriteFile(console, nil, 0o644)

	// sh is PID 1 of the new PID namespace until it execs chroot, which
	// execs /init. /dev is a tmpfs (so the agent leaves it alone) whose
	// console is a file outside the root.
	script := fmt.Sprintf(`mount -t tmpfs tmpfs %[1]s/dev && : > %[1]s/dev/console &&
		mount --bind %[2]s %[1]s/dev/console && mknod %[1]s/dev/null c 1 3 && exec chroot %[1]s /init`, root, console)
	var out bytes.Buffer
	cmd := exec.Command("ip", "netns", "exec", ns, "unshare", "--fork", "--pid", "--mount", "--uts", "--kill-child", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when unshare has exited
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill() // unshare --kill-child takes the agent with it
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Errorf("unshare (pid %d) did not exit after SIGKILL", cmd.Process.Pid)
			}
		}
	})
	read := func() string { b, _ := os.ReadFile(console); return string(b) }
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(d); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s after %v; console:\n%s\noutput:\n%s", what, d, read(), out.String())
			}
		}
	}
	waitFor("ready line", 60*time.Second, func() bool { return strings.Contains(read(), "ramboot-agent: n001 ready\n") })

	want := "ramboot-agent: file systems mounted\nramboot-agent: node n001, image test\nramboot-agent: host name n001\n"
	if got := read(); !strings.HasPrefix(got, want) || !strings.Contains(got, "ramboot-agent: node0 10.77.0.10/24 up\n") {
		t.Errorf("console:\n%s", got)
	}
	reps := head.Reports()
	if len(reps) != 1 || reps[0].Report.State != overlay.StateReady || reps[0].Report.ContentDigest != "sha256:c0ffee" ||
		reps[0].Report.MemTotalBytes <= 0 || reps[0].Report.UptimeSeconds <= 0 || len(reps[0].Report.Steps) != 5 {
		t.Errorf("head got %+v", reps)
	}

	agent := childOf(t, cmd.Process.Pid)
	if h, err := exec.Command("nsenter", "-t", strconv.Itoa(agent), "-u", "hostname").Output(); err != nil || strings.TrimSpace(string(h)) != "n001" {
		t.Errorf("host name in the node's UTS namespace: %q, %v", h, err)
	}
	if r, err := exec.Command("nsenter", "-t", strconv.Itoa(agent), "-n", "ip", "route", "show", "default").Output(); err != nil || !strings.Contains(string(r), "via 10.77.0.1 dev node0") {
		t.Errorf("default route: %q, %v", r, err)
	}

	syscall.Kill(agent, syscall.SIGHUP)
	waitFor("log of the ignored SIGHUP", 10*time.Second, func() bool { return strings.Contains(read(), "signal ignored") })
	syscall.Kill(agent, syscall.SIGUSR2)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("still running 20s after SIGUSR2; console:\n%s", read())
	}
	if !strings.Contains(read(), "ramboot-agent: SIGUSR2: powering off\n") {
		t.Errorf("console:\n%s", read())
	}
}

// listenIn returns a TCP listener in the named network namespace.
func listenIn(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, and
		// its namespace switch with it.
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("listen in %s: %v", ns, r.err)
	}
	return r.ln
}

// childOf returns the only child of pid (unshare's forked child: the
// agent), waiting for it briefly.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(b)); len(f) == 1 {
			if c, err := strconv.Atoi(f[0]); err == nil {
				return c
			}
		}
	}
	t.Fatalf("no child of %d", pid)
	return 0
}
