package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// bench is the two namespaces, the MAC list and the servers' files.
type bench struct {
	o        options
	work     string
	srvNS    string
	cliNS    string
	macFile  string
	macs     [][6]byte
	self     string // this program, for serve-pxe
	ramboot  string // built ramboot binary
	keaConf  string
	nsUp     []string
	relay    *net.UDPConn
	loadProc load
}

func newBench(ctx context.Context, o options) (*bench, error) {
	work, err := os.MkdirTemp("", "dhcpbench-")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, work: work, srvNS: fmt.Sprintf("dbs%d", os.Getpid()), cliNS: fmt.Sprintf("dbc%d", os.Getpid())}
	if b.self, err = os.Executable(); err != nil {
		return nil, err
	}
	if err := b.setup(ctx); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// setup creates the namespaces, the MAC list and the servers' files.
func (b *bench) setup(ctx context.Context) error {
	for _, ns := range []string{b.srvNS, b.cliNS} {
		if err := ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		b.nsUp = append(b.nsUp, ns)
	}
	for _, args := range [][]string{
		{"-n", b.srvNS, "link", "set", "lo", "up"},
		{"-n", b.cliNS, "link", "set", "lo", "up"},
		{"-n", b.srvNS, "link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns", b.cliNS},
		{"-n", b.srvNS, "addr", "add", serverIP.String() + "/16", "dev", "s0"},
		{"-n", b.cliNS, "addr", "add", clientIP.String() + "/16", "dev", "c0"},
		{"-n", b.srvNS, "link", "set", "s0", "up"},
		{"-n", b.cliNS, "link", "set", "c0", "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	// The MAC list: 02:00:00:NN:NN:NN, reserved at nodeIP(i).
	var list strings.Builder
	for i := range b.o.nodes {
		m := [6]byte{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		b.macs = append(b.macs, m)
		fmt.Fprintln(&list, net.HardwareAddr(m[:]))
	}
	b.macFile = filepath.Join(b.work, "macs.txt")
	if err := os.WriteFile(b.macFile, []byte(list.String()), 0o644); err != nil {
		return err
	}
	if err := b.writeKeaConfig(); err != nil {
		return err
	}
	// The built-in load generator's relay socket lives in the client
	// namespace.
	if err := inNS(b.cliNS, func() (err error) { b.relay, err = listenRelay(clientIP); return err }); err != nil {
		return err
	}
	b.loadProc = load{relay: clientIP, server: netip.AddrPortFrom(serverIP, 67), macs: b.macs, dropAfter: time.Second}
	return nil
}

// close stops everything and deletes the namespaces and, unless -keep,
// the work directory.
func (b *bench) close() error {
	if b.relay != nil {
		b.relay.Close()
	}
	var errs []error
	for _, ns := range b.nsUp {
		killNS(ns)
		if err := exec.Command("ip", "netns", "del", ns).Run(); err != nil {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", ns, err))
		}
	}
	if !b.o.keep {
		os.RemoveAll(b.work)
	} else {
		fmt.Fprintln(os.Stderr, "dhcpbench: files kept in", b.work)
	}
	return errors.Join(errs...)
}

// measure starts server name, loads it at rate for the run's length and
// stops it.
func (b *bench) measure(ctx context.Context, name string, rate int) (result, error) {
	srv, err := b.start(ctx, name)
	if err != nil {
		return result{}, err
	}
	defer srv.stop()
	if err := b.waitReady(ctx, srv); err != nil {
		return result{}, err
	}
	if err := waitQuiet(ctx, srv); err != nil {
		return result{}, err
	}
	cpu0, err := cpuTicks(srv.pid())
	if err != nil {
		return result{}, err
	}
	if b.o.perf != "" {
		// The server's profile over the measured run (perf's own CPU is
		// not the server's: utime+stime stay its own).
		out := filepath.Join(b.o.perf, fmt.Sprintf("%s-%d-%d.data", name, rate, srv.pid()))
		perf := exec.CommandContext(ctx, "perf", "record", "-q", "-F", "499", "-g", "-p", strconv.Itoa(srv.pid()), "-o", out,
			"--", "sleep", strconv.Itoa(int(b.o.dur.Seconds())))
		if err := perf.Start(); err != nil {
			return result{}, fmt.Errorf("perf: %w", err)
		}
		defer perf.Wait()
	}
	var lr loadResult
	switch b.o.loadKind {
	case "perfdhcp":
		lr, err = b.perfdhcp(ctx, rate)
	default:
		lr, err = b.loadProc.run(ctx, b.relay, rate, b.o.dur)
	}
	if err != nil {
		return result{}, err
	}
	cpu1, err := cpuTicks(srv.pid())
	if err != nil {
		return result{}, fmt.Errorf("%s exited during the run: %w; log:\n%s", name, err, srv.log())
	}
	avg, _ := os.ReadFile("/proc/loadavg")
	cpu := float64(cpu1-cpu0) / clockTicks
	return result{Server: name, Rate: rate, Load: lr, CPUSeconds: cpu, CPUPercent: 100 * cpu / b.o.dur.Seconds(),
		LoadAvg: strings.Join(strings.Fields(string(avg))[:3], " ")}, nil
}

// waitReady runs single exchanges until the server answers (30 s).
func (b *bench) waitReady(ctx context.Context, srv *server) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := b.loadProc.run(ctx, b.relay, 20, 100*time.Millisecond)
		if err == nil && r.Completed > 0 {
			return nil
		}
		if srv.exited() {
			return fmt.Errorf("%s exited; log:\n%s", srv.name, srv.log())
		}
		if ctx.Err() != nil { // interrupted: the load fails at once, do not spin
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within 60 s (%v); log:\n%s", srv.name, err, srv.log())
		}
	}
}

// Quiet is what waitQuiet waits for: the server's CPU over a second below
// quietPercent of a core, at most quietLimit.
const (
	quietPercent = 5
	quietLimit   = 180 * time.Second
)

// waitQuiet waits until srv finished the work it does when it starts
// (ramboot: its overlay prepare of every node, which makes their SSH host
// keys the first time; Kea: loading its reservations), so that the run
// measures the CPU the DHCP load costs and not the start-up.
func waitQuiet(ctx context.Context, srv *server) error {
	deadline := time.Now().Add(quietLimit)
	prev, err := cpuTicks(srv.pid())
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		cur, err := cpuTicks(srv.pid())
		if err != nil {
			return fmt.Errorf("%s exited while starting: %w; log:\n%s", srv.name, err, srv.log())
		}
		if 100*float64(cur-prev)/clockTicks < quietPercent {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still busy (%.0f %% of a core) %s after it answered", srv.name, 100*float64(cur-prev)/clockTicks, quietLimit)
		}
		prev = cur
	}
}

// server is one running server process.
type server struct {
	name    string
	cmd     *exec.Cmd
	logFile string
	done    chan struct{}
	cleanup func()
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *server) log() string {
	b, _ := os.ReadFile(s.logFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop sends SIGTERM, then SIGKILL after 10 s, by pid.
func (s *server) stop() {
	if !s.exited() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	}
	if s.cleanup != nil {
		s.cleanup()
	}
}

// start runs server name in the server namespace.
func (b *bench) start(ctx context.Context, name string) (*server, error) {
	var args []string
	var env []string
	var cleanup func()
	switch name {
	case "kea":
		run := filepath.Join(b.work, "kea-run")
		os.MkdirAll(run, 0o755)
		args = []string{"kea-dhcp4", "-c", b.keaConf}
		env = []string{"KEA_PIDFILE_DIR=" + run, "KEA_LOCKFILE_DIR=" + run}
	case "pxe":
		args = []string{b.self, "serve-pxe", "-iface", "s0", "-macs", b.macFile}
	case "ramboot":
		a, c, err := b.rambootServe(ctx)
		if err != nil {
			return nil, err
		}
		args, cleanup = a, c
	default:
		return nil, fmt.Errorf("unknown server %q (want ramboot, kea or pxe)", name)
	}
	if _, err := exec.LookPath(args[0]); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	logFile := filepath.Join(b.work, name+".log")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", b.srvNS}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, logFile: logFile, done: make(chan struct{}), cleanup: cleanup}
	go func() { cmd.Wait(); close(s.done) }()
	return s, nil
}

// writeKeaConfig writes Kea's configuration with the same reservations.
func (b *bench) writeKeaConfig() error {
	type res struct {
		HW string `json:"hw-address"`
		IP string `json:"ip-address"`
	}
	rs := make([]res, len(b.macs))
	for i, m := range b.macs {
		rs[i] = res{net.HardwareAddr(m[:]).String(), nodeIP(i).String()}
	}
	threads, _ := strconv.Atoi(b.o.keaThreads)
	mt := map[string]any{"enable-multi-threading": threads > 0}
	if threads > 0 {
		mt["thread-pool-size"] = threads
		mt["packet-queue-size"] = 64
	}
	conf := map[string]any{"Dhcp4": map[string]any{
		"interfaces-config": map[string]any{"interfaces": []string{"s0"}, "dhcp-socket-type": "udp"},
		// Leases in memory only: what ramboot does, and Kea's fastest.
		"lease-database":               map[string]any{"type": "memfile", "persist": false, "lfc-interval": 0},
		"valid-lifetime":               604800,
		"multi-threading":              mt,
		"host-reservation-identifiers": []string{"hw-address"},
		"subnet4": []any{map[string]any{
			"id": 1, "subnet": subnet.String(), "reservations": rs,
			"option-data": []any{map[string]any{"name": "routers", "data": gatewayIP.String()}},
		}},
		"loggers": []any{map[string]any{"name": "kea-dhcp4", "severity": "WARN",
			"output_options": []any{map[string]any{"output": "stderr"}}}},
	}}
	j, err := json.MarshalIndent(conf, "", " ")
	if err != nil {
		return err
	}
	b.keaConf = filepath.Join(b.work, "kea-dhcp4.conf")
	return os.WriteFile(b.keaConf, j, 0o644)
}

// perfdhcp runs Kea's perfdhcp in the client namespace as a relay at
// clientIP and reads its final report.
func (b *bench) perfdhcp(ctx context.Context, rate int) (loadResult, error) {
	secs := int(b.o.dur.Seconds())
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", b.cliNS, "perfdhcp", "-4", "-l", clientIP.String(),
		"-r", strconv.Itoa(rate), "-p", strconv.Itoa(secs), "-R", strconv.Itoa(b.o.nodes), "-M", b.macFile,
		"-d", "1", serverIP.String()).CombinedOutput()
	// perfdhcp exits 3 when packets were dropped: still a result.
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
		return loadResult{}, fmt.Errorf("perfdhcp: %w: %s", err, out)
	}
	return parsePerfdhcp(out, b.o.dur)
}

// parsePerfdhcp reads perfdhcp's final report: the rate, and the sent,
// received and dropped packets and average delay of both exchanges.
func parsePerfdhcp(out []byte, dur time.Duration) (loadResult, error) {
	var r loadResult
	var sent, recv, drops [2]int64
	var delay [2]float64
	section := -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "Rate:"):
			fmt.Sscanf(line, "Rate: %f", &r.Rate)
		case strings.Contains(line, "DISCOVER-OFFER"):
			section = 0
		case strings.Contains(line, "REQUEST-ACK"):
			section = 1
		case section >= 0 && strings.HasPrefix(line, "sent packets:"):
			fmt.Sscanf(line, "sent packets: %d", &sent[section])
		case section >= 0 && strings.HasPrefix(line, "received packets:"):
			fmt.Sscanf(line, "received packets: %d", &recv[section])
		case section >= 0 && strings.HasPrefix(line, "drops:"):
			fmt.Sscanf(line, "drops: %d", &drops[section])
		case section >= 0 && strings.HasPrefix(line, "avg delay:"):
			fmt.Sscanf(line, "avg delay: %f", &delay[section])
		}
	}
	if sent[0] == 0 {
		return r, fmt.Errorf("perfdhcp report without DISCOVER statistics:\n%s", out)
	}
	r.Discovers, r.Offers, r.Requests, r.Acks = sent[0], recv[0], sent[1], recv[1]
	r.Drops = drops[0] + drops[1]
	r.DropRatio = float64(r.Drops) / float64(sent[0]+sent[1])
	r.AvgOffer = time.Duration(delay[0] * float64(time.Millisecond))
	r.AvgAck = time.Duration(delay[1] * float64(time.Millisecond))
	r.Completed = recv[1]
	r.CompletedRate = float64(recv[1]) / dur.Seconds()
	return r, nil
}

// clockTicks is USER_HZ: /proc's CPU times are in these.
const clockTicks = 100

// cpuTicks returns utime+stime of pid, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields count from after ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// inNS runs fn on an OS thread in namespace ns; sockets it opens stay
// there.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// ip runs ip(8).
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// killNS kills, by pid, every process left in namespace ns.
func killNS(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, p := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
