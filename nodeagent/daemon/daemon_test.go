package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/daemon"
	"github.com/ramboot/ramboot/nodeagent/headapi/headapitest"
	"github.com/ramboot/ramboot/nodeagent/internal/bootrec"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

const token = "tok-secret-0123456789"

// node is a node's root in a temporary directory: the overlay's node
// configuration, the boot record init left, and stand-ins for /proc.
type node struct {
	root   string
	socket string
	cfg    overlay.Config
	log    syncBuffer
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

func newNode(t *testing.T, head *headapitest.Head) *node {
	t.Helper()
	dir, err := os.MkdirTemp("", "daemon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &node{root: filepath.Join(dir, "root"), socket: filepath.Join(dir, "agent.sock")}
	n.cfg = overlay.Config{
		Node: "n001", HeadURL: head.URL, Token: token,
		Interface:         overlay.Interface{MAC: "52:54:00:12:34:56", Address: "10.77.0.10/24", DNS: []string{"10.77.0.1"}},
		Image:             overlay.ImageRef{Name: "debian12", Digest: "sha256:m"},
		OverlayGeneration: "g1",
	}
	js, _ := json.Marshal(n.cfg)
	n.write(t, overlay.ConfigPath, string(js))
	n.write(t, overlay.ImageIDPath, "sha256:c0ffee\n")
	n.write(t, "proc/uptime", "42.50 3.00\n")
	n.write(t, "proc/meminfo", "MemTotal:        2048000 kB\nMemFree:          911228 kB\nMemAvailable:    1500000 kB\n")
	n.write(t, "proc/loadavg", "0.25 0.10 0.05 1/80 1234\n")
	n.write(t, "sys/devices/system/cpu/online", "0-3,6\n")
	rec := bootrec.Record{
		State: overlay.StateFailed, Error: "modules: find module foo: module not found",
		Steps: []overlay.Step{{Name: "mounts", UptimeSeconds: 3}, {Name: "network", UptimeSeconds: 4}},
		Boot:  overlay.BootTimes{InitSeconds: 2.5, HandoverSeconds: 4.5},
		Root:  overlay.RootUsage{Mode: "tmpfs", SizeBytes: 1 << 30},
		Init:  "ramboot-agent",
	}
	if err := bootrec.Write(n.root, rec); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) write(t *testing.T, path, data string) {
	t.Helper()
	p := filepath.Join(n.root, path)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run starts d on n until the test ends (or stop is called) and returns
// stop, which waits for Run to return.
func (n *node) run(t *testing.T, d *daemon.Daemon) (stop func()) {
	t.Helper()
	d.Root, d.Socket, d.Version = n.root, n.socket, "v-test"
	d.Logger = slog.New(slog.NewTextHandler(&n.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if d.BackoffMin == 0 {
		d.BackoffMin, d.BackoffMax = 10*time.Millisecond, 40*time.Millisecond
	}
	if d.Notify == nil {
		d.Notify = func(string) error { return nil }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("Run did not return 20s after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 15s", what)
		}
	}
}

func fastHead(t *testing.T) *headapitest.Head {
	head := headapitest.New(t, token)
	head.SetSchedule(overlay.Schedule{IntervalSeconds: 0.02, DownAfterSeconds: 1, OverlayGeneration: "g1"})
	return head
}

func TestRegisterAndHeartbeat(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	var states []string
	var mu sync.Mutex
	d := &daemon.Daemon{Notify: func(s string) error { mu.Lock(); states = append(states, s); mu.Unlock(); return nil }}
	stop := n.run(t, d)
	waitFor(t, "3 heartbeats", func() bool { return len(head.Heartbeats()) >= 3 })

	regs := head.Registrations()
	if len(regs) != 1 {
		t.Fatalf("%d registrations, want 1", len(regs))
	}
	r := regs[0].Report
	if r.State != overlay.StateFailed || r.Error == "" || r.ContentDigest != "sha256:c0ffee" || r.CPUs != 5 ||
		r.MemTotalBytes != 2048000*1024 || r.UptimeSeconds != 42.5 || r.Init != "ramboot-agent" || r.AgentVersion != "v-test" ||
		len(r.Steps) != 2 || r.Boot == nil || r.Boot.InitSeconds != 2.5 || r.Boot.ReadySeconds != 42.5 ||
		r.Root == nil || r.Root.Mode != "tmpfs" || r.Root.SizeBytes <= 0 || r.OverlayGeneration != "g1" || r.Kernel == "" {
		t.Errorf("registration %+v (boot %+v, root %+v)", r, r.Boot, r.Root)
	}
	hb := head.Heartbeats()[0].Heartbeat
	if hb.UptimeSeconds != 42.5 || hb.Load1 != 0.25 || hb.MemAvailableBytes != 1500000*1024 || hb.Root == nil || hb.OverlayGeneration != "g1" || hb.AgentRSSBytes < 1<<20 {
		t.Errorf("heartbeat %+v", hb)
	}

	// The local API: status for root, refused to others.
	c := localapi.NewClient(n.socket)
	var st daemon.Status
	err := c.Do(context.Background(), http.MethodGet, "/v1/status", nil, &st)
	if os.Geteuid() == 0 {
		if err != nil || !st.Registered || !st.Connected || st.Node != "n001" || st.Heartbeats < 3 || st.IntervalSeconds != 0.02 || st.Boot.Init != "ramboot-agent" {
			t.Errorf("status %+v, %v", st, err)
		}
	} else if e, ok := err.(*localapi.Error); !ok || e.Status != http.StatusForbidden {
		t.Errorf("status as uid %d: %v, want 403", os.Geteuid(), err)
	}
	stop()
	if downs := head.Shutdowns(); len(downs) != 1 || downs[0].Shutdown.Action != overlay.ActionStop {
		t.Errorf("shutdowns %+v, want one stop", downs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(states) != 2 || !strings.HasPrefix(states[0], "READY=1") || states[1] != "STOPPING=1" {
		t.Errorf("sd_notify states %q", states)
	}
	if strings.Contains(n.log.String(), token) {
		t.Errorf("the log shows the token:\n%s", n.log.String())
	}
}

// TestHeadRestart: the head goes away (killed) and comes back on the same
// address; heartbeats resume without a new registration, and nothing in
// the log shows the token.
func TestHeadRestart(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	n.run(t, &daemon.Daemon{})
	waitFor(t, "a heartbeat", func() bool { return len(head.Heartbeats()) >= 1 })
	head.Stop()
	time.Sleep(200 * time.Millisecond) // several failed attempts
	before := len(head.Heartbeats())
	head.Start()
	waitFor(t, "heartbeats after the restart", func() bool { return len(head.Heartbeats()) >= before+3 })
	if regs := head.Registrations(); len(regs) != 1 {
		t.Errorf("%d registrations, want 1: a head restart needs no new one", len(regs))
	}
	if !strings.Contains(n.log.String(), "head unreachable, retrying") || !strings.Contains(n.log.String(), "head reachable again") {
		t.Errorf("log:\n%s", n.log.String())
	}
	if strings.Contains(n.log.String(), token) {
		t.Errorf("the log shows the token:\n%s", n.log.String())
	}
}

// TestHeadDiesPeerTakesOver: the overlay names peer heads (several heads
// on one store); the node's head dies (stopped, for good) and the daemon
// heartbeats to the peer, without a reboot, and says so in its log and
// its status.
func TestHeadDiesPeerTakesOver(t *testing.T) {
	head, peer := fastHead(t), fastHead(t)
	n := newNode(t, head)
	n.cfg.Peers = []string{peer.URL}
	js, _ := json.Marshal(n.cfg)
	n.write(t, overlay.ConfigPath, string(js))
	d := &daemon.Daemon{}
	n.run(t, d)
	waitFor(t, "a heartbeat", func() bool { return len(head.Heartbeats()) >= 1 })
	if peer.Requests() != 0 {
		t.Errorf("the peer was called while the head answered")
	}
	head.Stop()
	waitFor(t, "heartbeats to the peer", func() bool { return len(peer.Heartbeats()) >= 3 })
	if st := d.Status(); st.Head != peer.URL {
		t.Errorf("status names head %s, want the peer %s", st.Head, peer.URL)
	}
	if !strings.Contains(n.log.String(), "moved to a peer head") || strings.Contains(n.log.String(), token) {
		t.Errorf("log:\n%s", n.log.String())
	}
}

// TestRegisterAgain: a head that does not know the boot any more (409)
// gets a new registration.
func TestRegisterAgain(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	var mu sync.Mutex
	conflicts := 2
	head.SetFail(func(route string) int {
		mu.Lock()
		defer mu.Unlock()
		if route == overlay.HeartbeatPath && conflicts > 0 {
			conflicts--
			return http.StatusConflict
		}
		return 0
	})
	n.run(t, &daemon.Daemon{})
	waitFor(t, "heartbeats after registering again", func() bool { return len(head.Heartbeats()) >= 2 })
	if regs := head.Registrations(); len(regs) != 3 {
		t.Errorf("%d registrations, want 3 (one per 409)", len(regs))
	}
}

// TestWorkloadInHeartbeats: what Summary gives goes with every heartbeat,
// and Connected says whether the daemon is registered and heard from the
// head (the prolog's check).
func TestWorkloadInHeartbeats(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	head.Stop() // not reachable yet
	d := &daemon.Daemon{Summary: func() *overlay.Workload {
		return &overlay.Workload{Jobs: []overlay.WorkloadJob{{ID: "42", User: "alice", UID: 1000}},
			Containers: []overlay.WorkloadContainer{{ID: "c1", Name: "web", Image: "busybox", Job: "42", State: "running"}}}
	}}
	n.run(t, d)
	waitFor(t, "a failed registration", func() bool { return d.Status().Failures > 0 })
	if err := d.Connected(); err == nil || !strings.Contains(err.Error(), "not") {
		t.Errorf("Connected before any answer: %v", err)
	}
	head.Start()
	waitFor(t, "2 heartbeats", func() bool { return len(head.Heartbeats()) >= 2 })
	if err := d.Connected(); err != nil {
		t.Errorf("Connected while heartbeating: %v", err)
	}
	hb := head.Heartbeats()[1].Heartbeat
	if w := hb.Workload; w == nil || len(w.Jobs) != 1 || w.Jobs[0].ID != "42" || len(w.Containers) != 1 || w.Containers[0].Name != "web" {
		t.Errorf("heartbeat workload %+v", hb.Workload)
	}
}

func TestOverlayRefresh(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	n.write(t, "etc/motd", "old\n")
	var hostnames []string
	var mu sync.Mutex
	n.run(t, &daemon.Daemon{SetHostname: func(h string) error { mu.Lock(); hostnames = append(hostnames, h); mu.Unlock(); return nil }})
	waitFor(t, "a heartbeat", func() bool { return len(head.Heartbeats()) >= 1 })
	if head.OverlayFetches() != 0 {
		t.Fatal("overlay fetched while the generation had not changed")
	}
	cfg := n.cfg
	cfg.Token, cfg.OverlayGeneration = "", ""
	cfg.Hostname = "n001.cluster"
	cfg.Interface.DNS = []string{"10.77.0.53"}
	head.SetOverlay(overlay.RuntimeOverlay{Generation: "g2", Config: cfg, Files: []overlay.File{
		{Path: "etc/motd", Mode: 0o644, Data: []byte("new\n")},
		{Path: "root/.ssh/authorized_keys", Mode: 0o600, Data: []byte("ssh-ed25519 AAAA admin\n")},
	}})
	waitFor(t, "a heartbeat with generation g2", func() bool {
		hb := head.Heartbeats()
		return hb[len(hb)-1].Heartbeat.OverlayGeneration == "g2"
	})
	if head.OverlayFetches() != 1 {
		t.Errorf("%d overlay fetches, want 1", head.OverlayFetches())
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(n.root, p)); return string(b) }
	if got := read("etc/motd"); got != "new\n" {
		t.Errorf("etc/motd = %q", got)
	}
	if fi, err := os.Stat(filepath.Join(n.root, "root/.ssh/authorized_keys")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("authorized_keys: %v, %v", fi, err)
	}
	got, err := overlay.ParseConfig([]byte(read(overlay.ConfigPath)))
	if err != nil || got.Token != token || got.OverlayGeneration != "g2" || got.Hostname != "n001.cluster" {
		t.Errorf("node.json after the refresh: %+v, %v", got, err)
	}
	if fi, _ := os.Stat(filepath.Join(n.root, overlay.ConfigPath)); fi.Mode().Perm() != 0o600 {
		t.Errorf("node.json mode %v", fi.Mode())
	}
	mu.Lock()
	if len(hostnames) != 1 || hostnames[0] != "n001.cluster" {
		t.Errorf("host names set: %v", hostnames)
	}
	mu.Unlock()
	if got := read("etc/resolv.conf"); !strings.Contains(got, "nameserver 10.77.0.53") {
		t.Errorf("resolv.conf = %q", got)
	}
	if got := read("etc/hosts"); !strings.Contains(got, "10.77.0.10\tn001.cluster n001") {
		t.Errorf("hosts = %q", got)
	}
	// Nothing half-written is left beside the targets.
	left, _ := filepath.Glob(filepath.Join(n.root, "etc", ".*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A bad overlay is refused whole: nothing is written.
	head.SetOverlay(overlay.RuntimeOverlay{Generation: "g3", Config: cfg, Files: []overlay.File{
		{Path: "etc/motd", Mode: 0o644, Data: []byte("bad\n")},
		{Path: "../escape", Mode: 0o644, Data: []byte("x")},
	}})
	waitFor(t, "a failed refresh", func() bool { return head.OverlayFetches() >= 2 })
	time.Sleep(50 * time.Millisecond)
	if got := read("etc/motd"); got != "new\n" {
		t.Errorf("etc/motd after a refused overlay = %q", got)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(n.root), "escape")); err == nil {
		t.Error("a file was written outside the root")
	}
}

type fakeSystem struct {
	ready  chan struct{}
	action overlay.ShutdownAction
}

func (f *fakeSystem) State(ctx context.Context) string {
	select {
	case <-f.ready:
		return "running"
	default:
		return "starting"
	}
}

func (f *fakeSystem) WaitReady(ctx context.Context) error {
	select {
	case <-f.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeSystem) ShutdownAction(ctx context.Context) overlay.ShutdownAction { return f.action }

// TestSystemd: the daemon reports the init system's state, the uptime at
// which start-up finished (with a heartbeat at once), and the shutdown
// that systemd is carrying out.
func TestSystemd(t *testing.T) {
	head := headapitest.New(t, token)
	head.SetSchedule(overlay.Schedule{IntervalSeconds: 3600, DownAfterSeconds: 7200})
	n := newNode(t, head)
	sys := &fakeSystem{ready: make(chan struct{}), action: overlay.ActionReboot}
	stop := n.run(t, &daemon.Daemon{System: sys})
	waitFor(t, "the registration", func() bool { return len(head.Registrations()) == 1 })
	if r := head.Registrations()[0].Report; r.Boot.ReadySeconds != 0 {
		t.Errorf("ready at %v before systemd finished", r.Boot.ReadySeconds)
	}
	close(sys.ready)
	// The interval is an hour: this heartbeat is the one readiness asks for.
	waitFor(t, "a heartbeat", func() bool { return len(head.Heartbeats()) == 1 })
	if hb := head.Heartbeats()[0].Heartbeat; hb.SystemState != "running" || hb.ReadySeconds != 42.5 {
		t.Errorf("heartbeat %+v", hb)
	}
	stop()
	if downs := head.Shutdowns(); len(downs) != 1 || downs[0].Shutdown.Action != overlay.ActionReboot {
		t.Errorf("shutdowns %+v", downs)
	}
}

// TestShutdownMarker: the agent's PID 1 says it powers the node off.
func TestShutdownMarker(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	stop := n.run(t, &daemon.Daemon{})
	waitFor(t, "the registration", func() bool { return len(head.Registrations()) == 1 })
	n.write(t, daemon.ShutdownMarker, "poweroff\n")
	stop()
	if downs := head.Shutdowns(); len(downs) != 1 || downs[0].Shutdown.Action != overlay.ActionPoweroff {
		t.Errorf("shutdowns %+v", downs)
	}
}

func TestRoutesAndNotify(t *testing.T) {
	head := fastHead(t)
	n := newNode(t, head)
	// A real $NOTIFY_SOCKET, as systemd gives a Type=notify service.
	ns := filepath.Join(filepath.Dir(n.socket), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", ns)
	ping := daemon.RegistrarFunc(func(mux *http.ServeMux) {
		mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
			c, _ := localapi.CallerFrom(r.Context())
			localapi.WriteJSON(w, http.StatusOK, map[string]int{"uid": c.UID})
		})
	})
	d := &daemon.Daemon{Routes: []daemon.Registrar{ping}}
	d.Root, d.Socket = n.root, n.socket
	d.BackoffMin, d.BackoffMax = 10*time.Millisecond, 40*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	buf := make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, err := conn.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:k]), "READY=1") {
		t.Fatalf("notify socket got %q, %v", buf[:k], err)
	}
	var got map[string]int
	if err := localapi.NewClient(n.socket).Do(context.Background(), http.MethodGet, "/v1/ping", nil, &got); err != nil || got["uid"] != os.Geteuid() {
		t.Errorf("ping = %v, %v", got, err)
	}
}

// TestNoConfig: without a node configuration the daemon does not start.
func TestNoConfig(t *testing.T) {
	root := t.TempDir()
	err := (&daemon.Daemon{Root: root, Socket: filepath.Join(root, "s")}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "read node config") {
		t.Errorf("Run without node.json: %v", err)
	}
}
