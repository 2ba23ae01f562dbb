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
	"github.com/ramboot/ramboot/nodeagent/headapi/headapitest"
)

// TestPID1 boots the real static binary as PID 1 of new PID, mount and UTS
// namespaces, chrooted into a ramfs (the kernel's rootfs stand-in) with
// busybox's sh, in a network namespace of its own where a veth end carries
// the node's MAC and the other end a stand-in head. The image has no
// /sbin/init, so the agent moves the root into a capped tmpfs, stays PID 1,
// runs the daemon (which registers and heartbeats from a privileged port)
// and a console shell; SIGHUP is survived, and SIGUSR2 (busybox poweroff)
// makes the daemon report the power-off and ends the PID namespace. Needs
// root, ip, unshare, chroot, nsenter.
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
	stage := filepath.Join(work, "stage") // the image, the agent and the overlay
	root := filepath.Join(work, "root")   // where the "kernel" unpacks them
	os.MkdirAll(root, 0o755)
	build := exec.Command("go", "build", "-o", filepath.Join(stage, "init"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	shell := false
	if bb, err := exec.LookPath("busybox"); err == nil {
		if out, _ := exec.Command("ldd", bb).CombinedOutput(); strings.Contains(string(out), "not a dynamic") {
			os.MkdirAll(filepath.Join(stage, "bin"), 0o755)
			if out, err := exec.Command("cp", bb, filepath.Join(stage, "bin", "busybox")).CombinedOutput(); err != nil {
				t.Fatalf("cp busybox: %v\n%s", err, out)
			}
			os.Symlink("busybox", filepath.Join(stage, "bin", "sh"))
			shell = true
		}
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
	head := headapitest.NewOn(t, ln, "tok-pid1")
	head.SetSchedule(overlay.Schedule{IntervalSeconds: 0.2, DownAfterSeconds: 2})

	cfg := overlay.Config{
		Node: "n001", HeadURL: head.URL, Token: "tok-pid1",
		Interface:    overlay.Interface{MAC: "52:54:00:12:34:56", Address: "10.77.0.10/24", Gateway: "10.77.0.1", DNS: []string{"10.77.0.1"}},
		Image:        overlay.ImageRef{Name: "test"},
		Root:         overlay.Root{Size: "64m"},
		ConsoleShell: true,
	}
	js, _ := json.Marshal(cfg)
	for path, data := range map[string]string{overlay.ConfigPath: string(js), overlay.ImageIDPath: "sha256:c0ffee\n"} {
		os.MkdirAll(filepath.Dir(filepath.Join(stage, path)), 0o755)
		if err := os.WriteFile(filepath.Join(stage, path), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"dev", "proc", "usr/sbin"} {
		os.MkdirAll(filepath.Join(stage, d), 0o755)
	}
	console := filepath.Join(work, "console.log")
	os.WriteFile(console, nil, 0o644)
	// The kernel command line the agent reads: keep the host's clock.
	cmdline := filepath.Join(work, "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyS0 ramboot.clock=keep\n"), 0o444)

	// sh is PID 1 of the new PID namespace until it execs chroot, which
	// execs /init. The root is a ramfs, as the kernel's rootfs can be; /dev
	// is a tmpfs (so the agent leaves it alone) whose console is a file
	// outside the root; /proc is mounted with the command line above.
	script := fmt.Sprintf(`set -e; mount -t ramfs -o mode=0755 ramfs %[1]s && cp -a %[2]s/. %[1]s/ &&
		mount -t tmpfs tmpfs %[1]s/dev && : > %[1]s/dev/console && mount --bind %[3]s %[1]s/dev/console &&
		mknod %[1]s/dev/null c 1 3 && mount -t proc proc %[1]s/proc && mount --bind %[4]s %[1]s/proc/cmdline &&
		exec chroot %[1]s /init`, root, stage, console, cmdline)
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
	waitFor("heartbeats", 60*time.Second, func() bool { return len(head.Heartbeats()) >= 2 })

	for _, want := range []string{
		"ramboot-agent: file systems mounted\nramboot-agent: node n001, image test\nramboot-agent: root: tmpfs, image ",
		" under a cap of 64 MiB (moved off the initramfs in ",
		"ramboot-agent: host name n001\n",
		"ramboot-agent: node0 10.77.0.10/24 up\n",
		"ramboot-agent: clock kept (ramboot.clock=keep)",
		"ramboot-agent: no init to hand over to (/sbin/init: no such file or directory)",
		"): staying PID 1, running the agent daemon\n",
	} {
		if !strings.Contains(read(), want) {
			t.Errorf("console lacks %q:\n%s", want, read())
		}
	}
	if shell && !strings.Contains(read(), "ramboot-agent: root shell on the console (/bin/sh; boot.console_shell)\n") {
		t.Errorf("console lacks the shell line:\n%s", read())
	}
	regs := head.Registrations()
	if len(regs) != 1 {
		t.Fatalf("%d registrations", len(regs))
	}
	r := regs[0].Report
	var steps []string
	for _, s := range r.Steps {
		steps = append(steps, s.Name)
	}
	if r.State != overlay.StateReady || r.ContentDigest != "sha256:c0ffee" || r.Init != "ramboot-agent" || r.Root == nil || r.Root.Mode != "tmpfs" ||
		r.Root.SizeBytes != 64<<20 || r.MemTotalBytes <= 0 || r.CPUs <= 0 || r.Boot == nil || r.Boot.HandoverSeconds < r.Boot.InitSeconds ||
		strings.Join(steps, " ") != "mounts config root hostname modules network clock" {
		t.Errorf("registration %+v (root %+v, boot %+v)", r, r.Root, r.Boot)
	}
	_, port, _ := net.SplitHostPort(regs[0].Remote)
	if p, _ := strconv.Atoi(port); p >= 1024 {
		t.Errorf("the daemon registered from port %d, not a privileged one", p)
	}

	agent := childOf(t, cmd.Process.Pid)
	nsenter := func(args ...string) string {
		out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(agent)}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("nsenter %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if h := nsenter("-u", "hostname"); h != "n001" {
		t.Errorf("host name in the node's UTS namespace: %q", h)
	}
	if r := nsenter("-n", "ip", "route", "show", "default"); !strings.Contains(r, "via 10.77.0.1 dev node0") {
		t.Errorf("default route: %q", r)
	}
	// The agent's root is now a 64 MiB tmpfs holding the image; the ramfs
	// under it gave its files up.
	var sf syscall.Statfs_t
	if err := syscall.Statfs(fmt.Sprintf("/proc/%d/root/", agent), &sf); err != nil || sf.Type != 0x01021994 || sf.Blocks*uint64(sf.Bsize) != 64<<20 {
		t.Errorf("the agent's root: type %#x, %d bytes (%v); want a 64 MiB tmpfs", sf.Type, sf.Blocks*uint64(sf.Bsize), err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/init", agent)); err != nil {
		t.Errorf("no /init in the new root: %v", err)
	}

	// Resident memory of the agent as PID 1 and of its daemon, for
	// docs/benchmarks.md.
	rss := func(pid string) string {
		b, _ := os.ReadFile("/proc/" + pid + "/status")
		var name, vm string
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				vm = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "Name:"); ok {
				name = strings.TrimSpace(v)
			}
		}
		return name + " " + vm
	}
	line := "PID 1 " + rss(strconv.Itoa(agent))
	// Each thread lists the children it forked.
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", agent))
	for _, task := range tasks {
		kids, _ := os.ReadFile(task)
		for _, k := range strings.Fields(string(kids)) {
			line += "; child " + rss(k)
		}
	}
	t.Logf("resident memory: %s", line)

	// `ramboot-agent status` inside the node (its mounts, its root) talks
	// to the daemon over the local socket.
	st := nsenter("-m", "-r", "-n", "/usr/sbin/ramboot-agent", "status", "-o", "json")
	var status struct {
		Node       string `json:"node"`
		Registered bool   `json:"registered"`
		Boot       struct {
			Init     string   `json:"init"`
			Warnings []string `json:"warnings"`
		} `json:"boot"`
	}
	if err := json.Unmarshal([]byte(st), &status); err != nil || status.Node != "n001" || !status.Registered || status.Boot.Init != "ramboot-agent" ||
		len(status.Boot.Warnings) != 1 || !strings.HasPrefix(status.Boot.Warnings[0], "no init to hand over to") {
		t.Errorf("ramboot-agent status -o json: %v\n%s", err, st)
	}
	if table := nsenter("-m", "-r", "-n", "/usr/sbin/ramboot-agent", "status"); !strings.Contains(table, "PID 1:        ramboot-agent") {
		t.Errorf("ramboot-agent status:\n%s", table)
	}

	syscall.Kill(agent, syscall.SIGHUP)
	waitFor("log of the ignored SIGHUP", 10*time.Second, func() bool { return strings.Contains(read(), "signal ignored") })
	syscall.Kill(agent, syscall.SIGUSR2)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGUSR2; console:\n%s", read())
	}
	if !strings.Contains(read(), "ramboot-agent: SIGUSR2: powering off\n") {
		t.Errorf("console:\n%s", read())
	}
	if downs := head.Shutdowns(); len(downs) != 1 || downs[0].Shutdown.Action != overlay.ActionPoweroff {
		t.Errorf("shutdowns %+v, want one poweroff", downs)
	}
	t.Logf("console:\n%s", read())
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
