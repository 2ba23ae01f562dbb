package state

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// registered returns a database with node n1 booted: its agent daemon
// registered with the token it returns.
func registered(t *testing.T, path string) (*DB, string) {
	t.Helper()
	db := open(t, path)
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	tok := boot(t, db, "n1")
	rep := Report{State: "ready", Kernel: "6.1.0", UptimeSeconds: 30, Registration: Registration{
		Init: "systemd", InitSeconds: 6.5, HandoverSeconds: 9.25, RootMode: "tmpfs", RootUsedBytes: 600 << 20, RootSizeBytes: 1 << 30,
		Steps: []AgentStep{{Name: "mounts", UptimeSeconds: 6.6}}, Warnings: []string{"clock: the head did not answer"},
	}}
	if _, err := db.Register("n1", tok, from, rep, Agent{Remote: "10.0.0.11:700", PrivilegedPort: true}); err != nil {
		t.Fatal(err)
	}
	return db, tok
}

// from is node n1's reserved address, where its agent's requests come from.
var from = netip.MustParseAddr("10.0.0.11")

func lastEventOf(n NodeStatus) Event { return n.Status.Timeline[len(n.Status.Timeline)-1] }

func lastEvent(t *testing.T, db *DB) Event {
	t.Helper()
	n, err := db.Get("n1")
	if err != nil {
		t.Fatal(err)
	}
	return n.Status.Timeline[len(n.Status.Timeline)-1]
}

func TestHeartbeatLifecycle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db, tok := registered(t, path)
	now := time.Now()
	db.now = func() time.Time { return now }

	n, _ := db.Get("n1")
	if n.Status.State != StateBooted || n.Agent == nil || !n.Agent.PrivilegedPort || n.Status.Report.Init != "systemd" || len(n.Status.Report.Steps) != 1 {
		t.Fatalf("after registration: %+v, agent %+v", n.Status, n.Agent)
	}
	if e := lastEvent(t, db); e.Step != StepReady || !strings.Contains(e.Detail, "PID 1 systemd, init at 6.5s, handed over at 9.2s") ||
		!strings.Contains(e.Detail, "root tmpfs 600 MiB of 1024 MiB; clock: the head did not answer") {
		t.Errorf("registration event %+v", e)
	}

	if err := db.Heartbeat("n1", "wrong", from, Agent{}); !errors.Is(err, ErrBadToken) {
		t.Errorf("heartbeat with a wrong token: %v", err)
	}
	if err := db.Heartbeat("nx", tok, from, Agent{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("heartbeat of an unknown node: %v", err)
	}
	for range 3 {
		if err := db.Heartbeat("n1", tok, from, Agent{UptimeSeconds: 40, SystemState: "running"}); err != nil {
			t.Fatal(err)
		}
	}
	n, _ = db.Get("n1")
	if n.Agent.Heartbeats != 3 || n.Agent.SystemState != "running" || !n.Agent.LastSeen.Equal(now) {
		t.Errorf("agent %+v", n.Agent)
	}
	// systemd finished starting: kept once, with an event.
	for range 2 {
		if err := db.Heartbeat("n1", tok, from, Agent{UptimeSeconds: 41, SystemState: "running", ReadySeconds: 35.5}); err != nil {
			t.Fatal(err)
		}
	}
	n, _ = db.Get("n1")
	if e := lastEvent(t, db); n.Status.Report.ReadySeconds != 35.5 || e.Step != StepSystem || e.Detail != "running, ready at 35.5s node uptime" {
		t.Errorf("ready at %v, last event %+v", n.Status.Report.ReadySeconds, e)
	}
	if c := len(n.Status.Timeline); n.Status.Timeline[c-2].Step == StepSystem {
		t.Errorf("system event recorded twice: %+v", n.Status.Timeline)
	}

	// Quiet for less than the timeout: still up; for more: down.
	if down, err := db.MarkDown(now.Add(10*time.Second), now.Add(-time.Hour), 10*time.Second); err != nil || len(down) != 0 {
		t.Errorf("MarkDown within the timeout = %v, %v", down, err)
	}
	down, err := db.MarkDown(now.Add(11*time.Second), now.Add(-time.Hour), 10*time.Second)
	if err != nil || len(down) != 1 || down[0] != "n1" {
		t.Fatalf("MarkDown = %v, %v", down, err)
	}
	if e := lastEvent(t, db); e.Step != StepDown || !strings.Contains(e.Detail, "no heartbeat for 11s") {
		t.Errorf("down event %+v", e)
	}
	if down, _ := db.MarkDown(now.Add(time.Hour), now, time.Second); len(down) != 0 {
		t.Errorf("a down node marked down again: %v", down)
	}

	// It comes back.
	db.now = func() time.Time { return now.Add(20 * time.Second) }
	if err := db.Heartbeat("n1", tok, from, Agent{UptimeSeconds: 60}); err != nil {
		t.Fatal(err)
	}
	n, _ = db.Get("n1")
	if n.Status.State != StateBooted {
		t.Errorf("state after heartbeats resumed: %s", n.Status.State)
	}
	if e := lastEvent(t, db); e.Step != StepUp || !strings.Contains(e.Detail, "heartbeats again after 20s without") {
		t.Errorf("up event %+v", e)
	}

	// A clean power-off.
	if err := db.Shutdown("n1", tok, from, "poweroff", 75); err != nil {
		t.Fatal(err)
	}
	n, _ = db.Get("n1")
	if n.Status.State != StateOff || n.Agent != nil {
		t.Errorf("after shutdown: %s, agent %+v", n.Status.State, n.Agent)
	}
	if e := lastEvent(t, db); e.Step != StepShutdown || e.Detail != "poweroff, node uptime 75s" {
		t.Errorf("shutdown event %+v", e)
	}
	if err := db.Heartbeat("n1", tok, from, Agent{}); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("heartbeat after shutdown: %v, want ErrNotRegistered", err)
	}
	if down, _ := db.MarkDown(now.Add(time.Hour), now, time.Second); len(down) != 0 {
		t.Errorf("an off node marked down: %v", down)
	}
}

// TestHeadRestart: what a heartbeat told the head is gone after a restart,
// the state is not; a node that does not come back within the timeout of
// the restart is marked down, one that does is not.
func TestHeartbeatAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db, tok := registered(t, path)
	if err := db.Heartbeat("n1", tok, from, Agent{UptimeSeconds: 40}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = open(t, path)
	n, _ := db.Get("n1")
	if n.Status.State != StateBooted || n.Agent != nil || n.Status.Report == nil || n.Status.Report.RootMode != "tmpfs" {
		t.Fatalf("after reopen: %+v, agent %+v", n.Status, n.Agent)
	}
	start := time.Now()
	if down, _ := db.MarkDown(start.Add(5*time.Second), start, 10*time.Second); len(down) != 0 {
		t.Errorf("marked down before the timeout after the restart: %v", down)
	}
	if err := db.Heartbeat("n1", tok, from, Agent{UptimeSeconds: 50}); err != nil {
		t.Fatalf("heartbeat after the restart: %v", err)
	}
	if down, _ := db.MarkDown(time.Now().Add(5*time.Second), start, 10*time.Second); len(down) != 0 {
		t.Errorf("marked down while heartbeating: %v", down)
	}
	if down, _ := db.MarkDown(time.Now().Add(11*time.Second), start, 10*time.Second); len(down) != 1 {
		t.Errorf("not marked down after the timeout: %v", down)
	}
}

// TestHeartbeatMemoryFollowsDisk: a transition the disk refused is not
// visible in memory.
func TestHeartbeatMemoryFollowsDisk(t *testing.T) {
	db, tok := registered(t, filepath.Join(t.TempDir(), "s.db"))
	db.bolt.DB().Close() // every write fails from now on
	if _, err := db.MarkDown(time.Now().Add(time.Hour), time.Now(), time.Second); err == nil {
		t.Fatal("MarkDown with a closed database: no error")
	}
	n, _ := db.Get("n1")
	if n.Status.State != StateBooted || lastEvent(t, db).Step != StepReady {
		t.Errorf("memory shows %s / %s that the disk does not hold", n.Status.State, lastEvent(t, db).Step)
	}
	if err := db.Shutdown("n1", tok, from, "reboot", 1); err == nil {
		t.Fatal("Shutdown with a closed database: no error")
	}
	if n, _ := db.Get("n1"); n.Status.State != StateBooted || n.Agent == nil {
		t.Errorf("after a failed shutdown write: %s, agent %v", n.Status.State, n.Agent)
	}
}

// TestAgentRequestRules: every agent request (registration, heartbeat,
// shutdown, Authenticate) needs the node's reserved address and its
// current token, minted in its current boot; a new script revokes it at
// once, and a new boot makes it stale.
func TestAgentRequestRules(t *testing.T) {
	db, tok := registered(t, filepath.Join(t.TempDir(), "s.db"))
	other := netip.MustParseAddr("10.0.0.12")
	calls := map[string]func(token string, from netip.Addr) error{
		"register": func(token string, from netip.Addr) error {
			_, err := db.Register("n1", token, from, Report{State: "ready"}, Agent{})
			return err
		},
		"heartbeat": func(token string, from netip.Addr) error { return db.Heartbeat("n1", token, from, Agent{}) },
		"authenticate": func(token string, from netip.Addr) error {
			_, err := db.Authenticate("n1", token, from)
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			if err := call(tok, other); !errors.Is(err, ErrWrongAddress) {
				t.Errorf("from another address: %v, want ErrWrongAddress", err)
			}
			if err := call("", from); !errors.Is(err, ErrBadToken) {
				t.Errorf("no token: %v, want ErrBadToken", err)
			}
			if err := call(NewToken(), from); !errors.Is(err, ErrBadToken) {
				t.Errorf("another token: %v, want ErrBadToken", err)
			}
			if err := call(tok, netip.MustParseAddr("::ffff:10.0.0.11")); err != nil {
				t.Errorf("the current token from the reserved address (v4-mapped): %v", err)
			}
		})
	}
	if err := db.Shutdown("n1", tok, other, "poweroff", 1); !errors.Is(err, ErrWrongAddress) {
		t.Errorf("shutdown from another address: %v", err)
	}
	if n, _ := db.Get("n1"); n.Status.State != StateBooted {
		t.Fatalf("refused requests moved the node: %s", n.Status.State)
	}

	// A DHCP offer to firmware starts boot 2: boot 1's token is stale.
	if err := db.Record("n1", Event{Step: StepDHCPOffer}, true); err != nil {
		t.Fatal(err)
	}
	for name, call := range calls {
		if err := call(tok, from); !errors.Is(err, ErrConflict) {
			t.Errorf("%s with the previous boot's token: %v, want ErrConflict", name, err)
		}
	}
	if err := db.Shutdown("n1", tok, from, "poweroff", 1); !errors.Is(err, ErrConflict) {
		t.Errorf("shutdown with the previous boot's token: %v, want ErrConflict", err)
	}
	// A new script revokes the token at once.
	if _, err := db.NewBootNonce("n1", Event{Step: StepScript}); err != nil {
		t.Fatal(err)
	}
	for name, call := range calls {
		if err := call(tok, from); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s with a revoked token: %v, want ErrBadToken", name, err)
		}
	}
	b1, err := db.BootByID("n1", 1)
	if err != nil || b1.State != StateBooted || b1.Report == nil || b1.Report.Init != "systemd" {
		t.Fatalf("boot 1 in the history: %+v, %v", b1, err)
	}
}

// TestRegisterAgain: a second registration in the same boot keeps the
// first one's report, writes nothing while the node is up, brings it back
// from off, and is a conflict when it contradicts the report.
func TestRegisterAgain(t *testing.T) {
	db, tok := registered(t, filepath.Join(t.TempDir(), "s.db"))
	before, _ := db.Get("n1")
	ok, err := db.Register("n1", tok, from, Report{State: "ready", Kernel: "6.1.0", UptimeSeconds: 90}, Agent{UptimeSeconds: 90})
	if err != nil || ok {
		t.Fatalf("registration again: applied %v, %v; want accepted, not applied", ok, err)
	}
	n, _ := db.Get("n1")
	if len(n.Status.Timeline) != len(before.Status.Timeline) || n.Status.Report.UptimeSeconds != 30 || n.Agent.UptimeSeconds != 90 {
		t.Fatalf("after registering again: report %+v, agent %+v, %d events", n.Status.Report, n.Agent, len(n.Status.Timeline))
	}
	if _, err := db.Register("n1", tok, from, Report{State: "failed", Error: "later"}, Agent{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("failed after ready: %v, want ErrConflict", err)
	}
	// The daemon stopped (systemctl stop), then started again.
	if err := db.Shutdown("n1", tok, from, "stop", 100); err != nil {
		t.Fatal(err)
	}
	if err := db.Heartbeat("n1", tok, from, Agent{}); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("heartbeat while off: %v, want ErrNotRegistered", err)
	}
	if _, err := db.Register("n1", tok, from, Report{State: "ready", Kernel: "6.1.0", UptimeSeconds: 120}, Agent{}); err != nil {
		t.Fatal(err)
	}
	n, _ = db.Get("n1")
	if e := lastEvent(t, db); n.Status.State != StateBooted || e.Step != StepUp || !strings.Contains(e.Detail, "registered again") {
		t.Fatalf("after registering again while off: %s, %+v", n.Status.State, e)
	}
	if err := db.Heartbeat("n1", tok, from, Agent{}); err != nil {
		t.Fatalf("heartbeat after registering again: %v", err)
	}
}

// TestHeartbeatFullDisk: with the state directory full, a heartbeat that
// would bring a down node back fails and changes nothing in memory (the
// node stays down, the live view is not replaced); a plain heartbeat
// needs no write and still works.
func TestHeartbeatFullDisk(t *testing.T) {
	dir := mountTmpfs(t, "2m")
	db, err := OpenWith(filepath.Join(dir, "ramboot.db"), Options{mmapSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	for _, n := range []Node{node("n1", "52:54:00:aa:00:01", "10.0.0.11"), node("n2", "52:54:00:aa:00:02", "10.0.0.12")} {
		if err := db.AddNode(n); err != nil {
			t.Fatal(err)
		}
	}
	tok1, tok2 := boot(t, db, "n1"), boot(t, db, "n2")
	for name, tok := range map[string]string{"n1": tok1, "n2": tok2} {
		ip := netip.MustParseAddr(map[string]string{"n1": "10.0.0.11", "n2": "10.0.0.12"}[name])
		if _, err := db.Register(name, tok, ip, Report{State: "ready", Kernel: "6.1"}, Agent{UptimeSeconds: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if down, err := db.MarkDown(time.Now().Add(time.Hour), time.Now(), time.Minute); err != nil || len(down) != 2 {
		t.Fatalf("MarkDown = %v, %v", down, err)
	}
	if err := db.Heartbeat("n2", tok2, netip.MustParseAddr("10.0.0.12"), Agent{UptimeSeconds: 5}); err != nil {
		t.Fatal(err) // n2 is up again: the one that stays up below
	}

	rtx, err := db.bolt.DB().Begin(false) // keeps bbolt from reusing freed pages
	if err != nil {
		t.Fatal(err)
	}
	filler := fill(t, dir)
	var failed bool
	var prev NodeStatus
	for i := range 200 {
		prev, _ = db.Get("n1")
		if err := db.Heartbeat("n1", tok1, from, Agent{UptimeSeconds: float64(100 + i)}); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("heartbeat on a full disk: %v", err)
			}
			failed = true
			break
		}
		// It got through: mark it down again and retry with less room.
		if _, err := db.MarkDown(time.Now().Add(time.Hour), time.Now(), time.Minute); err != nil {
			t.Fatalf("the disk filled up on MarkDown first: %v", err)
		}
	}
	if !failed {
		t.Fatal("no write failed on a full file system")
	}
	n1, _ := db.Get("n1")
	if n1.Status.State != StateDown || lastEventOf(n1).Step != StepDown || !reflect.DeepEqual(n1.Agent, prev.Agent) {
		t.Errorf("after a failed write: %s, last %s, agent %+v, want down with agent %+v", n1.Status.State, lastEventOf(n1).Step, n1.Agent, prev.Agent)
	}
	before, _ := db.Get("n2")
	if err := db.Heartbeat("n2", tok2, netip.MustParseAddr("10.0.0.12"), Agent{UptimeSeconds: 6}); err != nil {
		t.Fatalf("a heartbeat that needs no write, on a full disk: %v", err)
	}
	if after, _ := db.Get("n2"); after.Agent.Heartbeats != before.Agent.Heartbeats+1 || after.Agent.UptimeSeconds != 6 {
		t.Errorf("live view not updated: %+v", after.Agent)
	}
	rtx.Rollback()
	os.Remove(filler)
}
