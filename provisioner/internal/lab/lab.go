// Package lab runs real network boots on one machine, for the end-to-end
// tests and `make demo`: it builds the ramboot binaries, prepares a test
// image (busybox-static plus the virtio network modules of Debian's kernel
// package, fetched with `apt-get download`), creates a network namespace
// with a bridge, runs `ramboot serve` inside it and boots QEMU (software
// emulation) on a tap on that bridge.
//
// Nothing is connected to the host's network: the bridge, the taps, the
// daemon and QEMU all live in the namespace, and every process the lab
// starts is stopped by pid when it is closed, even after a failure.
//
//	l, err := lab.New(ctx, lab.Options{Log: os.Stderr})
//	defer l.Close()
//	err = l.Serve(ctx)
//	err = l.BuildImage(ctx, "default")
//	err = l.AddNode(ctx, "n1", mac, "10.77.0.10", "")
//	vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.BIOS, MAC: mac})
//	n, err := l.WaitBooted(ctx, "n1", 5*time.Minute)
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/state"
)

// Options configure a lab.
type Options struct {
	// CacheDir keeps the downloaded kernel package between runs; default
	// $RAMBOOT_LAB_CACHE or /var/cache/ramboot-lab.
	CacheDir string
	// WorkDir holds binaries, state, logs; default a new temporary directory,
	// removed by Close unless Keep is set.
	WorkDir string
	// Keep leaves WorkDir in place after Close (logs for a person to read).
	Keep bool
	// Subnet is the /24 prefix of the lab link, e.g. "10.77.0"; the head is
	// .1. Default "10.77.0". It exists only inside the namespace.
	Subnet string
	// Log receives progress lines; nil = discard.
	Log io.Writer
}

// Lab is one namespace with a head daemon in it.
type Lab struct {
	opt     Options
	work    string
	ns      string
	bridge  string
	HeadIP  string // the head's address on the lab bridge
	Ramboot string // path of the built ramboot binary
	Agent   string // path of the built ramboot-agent binary
	State   string // the daemon's state directory

	procs   []*Proc
	nsUp    bool
	extraNS []string // other hosts' namespaces (the site's DHCP server)
	serve   *Proc    // the running `ramboot serve`
}

// Proc is a process the lab started in a namespace; done closes when it
// has been reaped.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// New checks the machine, builds the binaries and creates the namespace.
func New(ctx context.Context, opt Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (network namespaces, taps, QEMU)")
	}
	if opt.CacheDir == "" {
		opt.CacheDir = os.Getenv("RAMBOOT_LAB_CACHE")
	}
	if opt.CacheDir == "" {
		opt.CacheDir = "/var/cache/ramboot-lab"
	}
	if opt.Subnet == "" {
		opt.Subnet = "10.77.0"
	}
	if opt.Log == nil {
		opt.Log = io.Discard
	}
	for _, bin := range []string{"ip", "qemu-system-x86_64", "apt-get", "dpkg-deb", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("find %s (run `make deps`): %w", bin, err)
		}
	}
	work := opt.WorkDir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "ramboot-lab-"); err != nil {
			return nil, fmt.Errorf("create work directory: %w", err)
		}
	}
	l := &Lab{
		opt:    opt,
		work:   work,
		ns:     fmt.Sprintf("rblab%d", os.Getpid()),
		bridge: "rbbr0",
		HeadIP: opt.Subnet + ".1",
		State:  filepath.Join(work, "state"),
	}
	sweepStale(ctx, opt.Log)
	if err := l.build(ctx); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.netnsUp(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Lab) logf(format string, args ...any) {
	fmt.Fprintf(l.opt.Log, "lab: "+format+"\n", args...)
}

// WorkDir returns the directory with the lab's binaries, state and logs.
func (l *Lab) WorkDir() string { return l.work }

// Namespace returns the network namespace's name.
func (l *Lab) Namespace() string { return l.ns }

// run runs a command and returns its combined output in the error.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// build compiles ramboot and ramboot-agent (static) into the work dir.
func (l *Lab) build(ctx context.Context) error {
	bin := filepath.Join(l.work, "bin")
	l.logf("building ramboot and ramboot-agent into %s", bin)
	var err error
	l.Ramboot, l.Agent, err = BuildBinaries(ctx, bin)
	return err
}

// sweepStale deletes lab namespaces left by lab processes that died
// without cleaning up (a test binary killed at its timeout, say): their
// names end in the pid of a process that no longer exists.
func sweepStale(ctx context.Context, log io.Writer) {
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "rblab") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(f[0], "rblab%d", &pid); err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // its lab is still running
		}
		killAll(ctx, f[0])
		if _, err := run(ctx, "ip", "netns", "del", f[0]); err == nil {
			fmt.Fprintf(log, "lab: deleted stale namespace %s of dead process %d\n", f[0], pid)
		}
	}
}

// killAll kills, by pid, every process still inside namespace ns.
func killAll(ctx context.Context, ns string) {
	out, err := run(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return
	}
	for _, p := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(p, &pid); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// netnsUp creates the namespace and its bridge with the head's address.
func (l *Lab) netnsUp(ctx context.Context) error {
	l.logf("creating network namespace %s with bridge %s %s/24 (not connected to the host)", l.ns, l.bridge, l.HeadIP)
	if _, err := run(ctx, "ip", "netns", "add", l.ns); err != nil {
		return err
	}
	l.nsUp = true
	for _, args := range [][]string{
		{"-n", l.ns, "link", "set", "lo", "up"},
		{"-n", l.ns, "link", "add", l.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0"},
		{"-n", l.ns, "addr", "add", l.HeadIP + "/24", "dev", l.bridge},
		{"-n", l.ns, "link", "set", l.bridge, "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// start runs a command inside the namespace in the background, with its
// output appended to logFile. The lab stops it on Close.
func (l *Lab) start(logFile string, name string, args ...string) (*Proc, error) {
	return l.startIn(l.ns, logFile, name, args...)
}

// startIn is start in namespace ns.
func (l *Lab) startIn(ns, logFile string, name string, args ...string) (*Proc, error) {
	p, err := startIn(ns, logFile, name, args...)
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, p)
	return p, nil
}

// startIn runs a command inside namespace ns in the background, with its
// output appended to logFile; it is killed if this process dies.
func startIn(ns, logFile string, name string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	// `ip netns exec` execs the command after joining the namespace, so the
	// pid is the command's own.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stop ends the process: SIGTERM, then SIGKILL after 10 s.
func (p *Proc) Stop() { p.stop(10 * time.Second) }

// stop sends SIGTERM, then SIGKILL after a grace period, and waits until
// the process is reaped.
func (p *Proc) stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Close stops every process the lab started (by pid), kills anything else
// left in the namespace, deletes the namespace and, unless Keep, the work
// directory. It is safe to call more than once.
func (l *Lab) Close() error {
	for i := len(l.procs) - 1; i >= 0; i-- {
		l.procs[i].stop(5 * time.Second)
	}
	l.procs = nil
	var errs []error
	for _, ns := range l.extraNS {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		killAll(ctx, ns)
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	l.extraNS = nil
	if l.nsUp {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		killAll(ctx, l.ns)
		if _, err := run(ctx, "ip", "netns", "del", l.ns); err != nil {
			errs = append(errs, err)
		} else {
			l.nsUp = false
			l.logf("namespace %s deleted", l.ns)
		}
	}
	if !l.opt.Keep && l.work != "" && l.opt.WorkDir == "" {
		if err := os.RemoveAll(l.work); err != nil {
			errs = append(errs, err)
		}
		l.work = ""
	}
	return errors.Join(errs...)
}

// Serve starts `ramboot serve --interface BRIDGE` in the namespace on the
// embedded default configuration (plus extra flags) and waits until its
// admin API answers.
func (l *Lab) Serve(ctx context.Context, extra ...string) error {
	logFile := filepath.Join(l.work, "ramboot-serve.log")
	p, err := l.serveIn(ctx, l.ns, l.bridge, l.State, logFile, extra...)
	if err != nil {
		return err
	}
	l.serve = p
	return nil
}

// serveIn starts `ramboot serve` in namespace ns on interface iface and
// state directory stateDir, and waits until its admin API answers.
func (l *Lab) serveIn(ctx context.Context, ns, iface, stateDir, logFile string, extra ...string) (*Proc, error) {
	args := append([]string{"serve", "--interface", iface, "--state-dir", stateDir, "--log-level", "debug"}, extra...)
	p, err := l.startIn(ns, logFile, l.Ramboot, args...)
	if err != nil {
		return nil, err
	}
	l.logf("ramboot serve running in %s (pid %d), log %s", ns, p.cmd.Process.Pid, logFile)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := l.cliAt(ctx, stateDir, "node", "list"); err == nil {
			return p, nil
		}
		if p.Exited() || time.Now().After(deadline) {
			b, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("ramboot serve did not come up in %s; log:\n%s", ns, b)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WriteConfig writes a `ramboot serve` configuration file into the work
// directory and returns its path, for Serve(ctx, "--config", path).
func (l *Lab) WriteConfig(name, yaml string) (string, error) {
	p := filepath.Join(l.work, name)
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		return "", fmt.Errorf("write config: %w", err)
	}
	return p, nil
}

// KillServe kills `ramboot serve` with SIGKILL, as a crash or an admin's
// kill -9 would, and waits until it is gone. Serve starts it again.
func (l *Lab) KillServe() error {
	p := l.serve
	if p == nil || p.Exited() {
		return errors.New("ramboot serve is not running")
	}
	if err := p.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill ramboot serve: %w", err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("ramboot serve (pid %d) still running 10s after SIGKILL", p.cmd.Process.Pid)
	}
	l.logf("ramboot serve (pid %d) killed with SIGKILL", p.cmd.Process.Pid)
	l.serve = nil
	return nil
}

// CLI runs the ramboot CLI against the lab's state directory and returns
// its standard output. (The admin API is a unix socket: no namespace
// needed.)
func (l *Lab) CLI(ctx context.Context, args ...string) ([]byte, error) {
	return l.cliAt(ctx, l.State, args...)
}

// cliAt runs the ramboot CLI against the daemon of state directory dir.
func (l *Lab) cliAt(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, l.Ramboot, append(args, "--state-dir", dir)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("ramboot %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.Bytes(), nil
}

// AddNode adds a node through the CLI, with extra flags of `node add`.
func (l *Lab) AddNode(ctx context.Context, name, mac, ip, image string, extra ...string) error {
	args := append([]string{"node", "add", name, "--mac", mac, "--ip", ip}, extra...)
	if image != "" {
		args = append(args, "--image", image)
	}
	_, err := l.CLI(ctx, args...)
	return err
}

// Node returns `ramboot node show NAME -o json`.
func (l *Lab) Node(ctx context.Context, name string) (api.NodeStatus, error) {
	return l.nodeAt(ctx, l.State, name)
}

// nodeAt is Node on the daemon of state directory dir.
func (l *Lab) nodeAt(ctx context.Context, dir, name string) (api.NodeStatus, error) {
	out, err := l.cliAt(ctx, dir, "node", "show", name, "-o", "json")
	if err != nil {
		return api.NodeStatus{}, err
	}
	var n api.NodeStatus
	if err := json.Unmarshal(out, &n); err != nil {
		return api.NodeStatus{}, fmt.Errorf("decode node show: %w", err)
	}
	return n, nil
}

// WaitBooted polls `ramboot node show` until the node is booted or failed,
// the VM exits, or the deadline passes.
func (l *Lab) WaitBooted(ctx context.Context, name string, vm *VM, timeout time.Duration) (api.NodeStatus, error) {
	return l.waitBooted(ctx, l.State, name, vm, timeout)
}

// waitBooted is WaitBooted on the daemon of state directory dir.
func (l *Lab) waitBooted(ctx context.Context, dir, name string, vm *VM, timeout time.Duration) (api.NodeStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := l.nodeAt(ctx, dir, name)
		if err == nil && (n.Status.State == string(state.StateBooted) || n.Status.State == string(state.StateFailed)) {
			return n, nil
		}
		if vm != nil && vm.Exited() {
			return n, fmt.Errorf("QEMU exited before node %s booted; serial log %s", name, vm.SerialLog)
		}
		if vm != nil {
			// The agent cannot report a failure it meets before the network
			// is up; its console line says it, so stop waiting.
			if m := agentFailed.Find(vm.Serial()); m != nil {
				return n, fmt.Errorf("node %s: the agent failed on the console: %s", name, bytes.TrimSpace(m))
			}
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("node %s not booted after %s (state %q); serial log %s", name, timeout, n.Status.State, vmLog(vm))
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

var agentFailed = regexp.MustCompile(`ramboot-agent: [^\n]* failed: [^\n]*`)

func vmLog(vm *VM) string {
	if vm == nil {
		return "-"
	}
	return vm.SerialLog
}
