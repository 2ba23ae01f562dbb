package state

import (
	"errors"
	"path/filepath"
	"strings"
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
	if err := db.Record("n1", Event{Step: StepDHCPOffer}, true); err != nil {
		t.Fatal(err)
	}
	nonce, err := db.NewBootNonce("n1")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := db.NewToken("n1", nonce)
	if err != nil {
		t.Fatal(err)
	}
	rep := Report{State: "ready", Kernel: "6.1.0", UptimeSeconds: 30, Registration: Registration{
		Init: "systemd", InitSeconds: 6.5, HandoverSeconds: 9.25, RootMode: "tmpfs", RootUsedBytes: 600 << 20, RootSizeBytes: 1 << 30,
		Steps: []Step{{Name: "mounts", UptimeSeconds: 6.6}}, Warnings: []string{"clock: the head did not answer"},
	}}
	if err := db.Register("n1", tok, rep, Agent{Remote: "10.0.0.11:700", PrivilegedPort: true}); err != nil {
		t.Fatal(err)
	}
	return db, tok
}

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

	if err := db.Heartbeat("n1", "wrong", Agent{}); !errors.Is(err, ErrBadToken) {
		t.Errorf("heartbeat with a wrong token: %v", err)
	}
	if err := db.Heartbeat("nx", tok, Agent{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("heartbeat of an unknown node: %v", err)
	}
	for range 3 {
		if err := db.Heartbeat("n1", tok, Agent{UptimeSeconds: 40, SystemState: "running"}); err != nil {
			t.Fatal(err)
		}
	}
	n, _ = db.Get("n1")
	if n.Agent.Heartbeats != 3 || n.Agent.SystemState != "running" || !n.Agent.LastSeen.Equal(now) {
		t.Errorf("agent %+v", n.Agent)
	}
	// systemd finished starting: kept once, with an event.
	for range 2 {
		if err := db.Heartbeat("n1", tok, Agent{UptimeSeconds: 41, SystemState: "running", ReadySeconds: 35.5}); err != nil {
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
	if err := db.Heartbeat("n1", tok, Agent{UptimeSeconds: 60}); err != nil {
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
	if err := db.Shutdown("n1", tok, "poweroff", 75); err != nil {
		t.Fatal(err)
	}
	n, _ = db.Get("n1")
	if n.Status.State != StateOff || n.Agent != nil {
		t.Errorf("after shutdown: %s, agent %+v", n.Status.State, n.Agent)
	}
	if e := lastEvent(t, db); e.Step != StepShutdown || e.Detail != "poweroff, node uptime 75s" {
		t.Errorf("shutdown event %+v", e)
	}
	if err := db.Heartbeat("n1", tok, Agent{}); !errors.Is(err, ErrNotRegistered) {
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
	if err := db.Heartbeat("n1", tok, Agent{UptimeSeconds: 40}); err != nil {
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
	if err := db.Heartbeat("n1", tok, Agent{UptimeSeconds: 50}); err != nil {
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
	db.db.Close() // every write fails from now on
	if _, err := db.MarkDown(time.Now().Add(time.Hour), time.Now(), time.Second); err == nil {
		t.Fatal("MarkDown with a closed database: no error")
	}
	n, _ := db.Get("n1")
	if n.Status.State != StateBooted || lastEvent(t, db).Step != StepReady {
		t.Errorf("memory shows %s / %s that the disk does not hold", n.Status.State, lastEvent(t, db).Step)
	}
	if err := db.Shutdown("n1", tok, "reboot", 1); err == nil {
		t.Fatal("Shutdown with a closed database: no error")
	}
	if n, _ := db.Get("n1"); n.Status.State != StateBooted || n.Agent == nil {
		t.Errorf("after a failed shutdown write: %s, agent %v", n.Status.State, n.Agent)
	}
}
