package state

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/store"
)

func open(t *testing.T, path string) *DB {
	t.Helper()
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func node(name, mac, ip string) Node {
	return Node{Name: name, Interfaces: []inventory.Interface{{MAC: mac, IP: netip.MustParseAddr(ip)}}}
}

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func ev(step Step) Event                 { return Event{Step: step} }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func steps(b Boot) (out []Step)          { return stepsOf(b.Timeline) }
func stepsOf(es []Event) (out []Step) {
	for _, e := range es {
		out = append(out, e.Step)
	}
	return out
}

// boot runs node name through one whole boot up to its overlay and
// returns the token the overlay carried.
func boot(t *testing.T, db *DB, name string) string {
	t.Helper()
	for _, s := range []struct {
		step    Step
		newBoot bool
	}{{StepDHCPOffer, true}, {StepDHCPAck, false}, {StepDHCPOffer, false}, {StepDHCPAck, false}} {
		if err := db.Record(name, ev(s.step), s.newBoot); err != nil {
			t.Fatal(err)
		}
	}
	nonce, err := db.NewBootNonce(name, ev(StepScript))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.CheckNonce(name, nonce); err != nil {
		t.Fatal(err)
	}
	tok := NewToken()
	if err := db.ConsumeNonce(name, nonce, tok, ev(StepOverlay)); err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAddNode(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:AA:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		n    Node
		is   error
	}{
		{"dup name", node("n1", "52:54:00:aa:00:02", "10.0.0.12"), ErrExists},
		{"dup mac", node("n2", "52:54:00:aa:00:01", "10.0.0.12"), ErrExists},
		{"dup ip", node("n2", "52:54:00:aa:00:02", "10.0.0.11"), ErrExists},
		{"bad name", node("N_2", "52:54:00:aa:00:02", "10.0.0.12"), nil},
		{"bad mac", node("n2", "52:54:00:aa", "10.0.0.12"), nil},
		{"ipv6", Node{Name: "n2", MAC: "52:54:00:aa:00:02", IP: netip.MustParseAddr("fd00::2")}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := db.AddNode(tc.n)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
		})
	}
	n, err := db.ByMAC(net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0, 1})
	if err != nil || n.Name != "n1" || n.Interfaces[0].MAC != "52:54:00:aa:00:01" || n.Status.State != StateNew || n.Status.ID != 0 {
		t.Fatalf("ByMAC: %+v %v", n, err)
	}
	if _, err := db.ByIP(netip.MustParseAddr("10.0.0.99")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ByIP unknown: %v", err)
	}
}

// TestBootFlow walks one boot: timeline, nonce, token, report; and checks
// that everything survives a reopen.
func TestBootFlow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db := open(t, path)
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	tok := boot(t, db, "n1")
	n, _ := db.Get("n1")
	if n.Status.Boots != 1 || n.Status.ID != 1 || n.Status.State != StateBooting {
		t.Fatalf("iPXE's DHCP after firmware's must stay in one boot: %+v", n.Status)
	}
	if want := []Step{StepDHCPOffer, StepDHCPAck, StepDHCPOffer, StepDHCPAck, StepScript, StepOverlay}; !slices.Equal(steps(n.Status.Boot), want) {
		t.Fatalf("timeline %v, want %v", steps(n.Status.Boot), want)
	}
	if _, err := db.Register("n1", "not-the-token", addr("10.0.0.11"), Report{State: "ready"}, Agent{}); !errors.Is(err, ErrBadToken) {
		t.Fatalf("bad token accepted: %v", err)
	}
	// Reopen: the token hash and timeline are durable.
	db.Close()
	db = open(t, path)
	if ok, err := db.Register("n1", tok, addr("10.0.0.11"), Report{State: "ready", Kernel: "6.1", ImageDigest: "sha256:ab"}, Agent{}); err != nil || !ok {
		t.Fatalf("report after reopen: %v %v", ok, err)
	}
	n, _ = db.Get("n1")
	if n.Status.State != StateBooted || n.Status.Report == nil || n.Status.Report.ImageDigest != "sha256:ab" {
		t.Fatalf("after report: %+v", n.Status)
	}
	if last := n.Status.Timeline[len(n.Status.Timeline)-1]; last.Step != StepReady {
		t.Fatalf("last step %q", last.Step)
	}
	// The next DHCP offer, even from iPXE, starts boot 2 with a fresh
	// timeline; boot 1 stays in the history.
	if err := db.Record("n1", ev(StepDHCPOffer), false); err != nil {
		t.Fatal(err)
	}
	n, _ = db.Get("n1")
	if n.Status.Boots != 2 || n.Status.ID != 2 || len(n.Status.Timeline) != 1 || n.Status.State != StateBooting || !slices.Equal(n.Status.History, []int{1}) {
		t.Fatalf("second boot: %+v", n.Status)
	}
}

func TestTimelineBounded(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	long := make([]byte, 10*MaxDetail)
	for i := range long {
		long[i] = 'x'
	}
	for range MaxEvents + 3 {
		if err := db.Record("n1", Event{Step: StepDHCPAck, Detail: string(long)}, false); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := db.Get("n1")
	if len(n.Status.Timeline) != MaxEvents {
		t.Fatalf("timeline has %d events, bound is %d", len(n.Status.Timeline), MaxEvents)
	}
	if d := n.Status.Timeline[0].Detail; len(d) > MaxDetail {
		t.Fatalf("detail of %d bytes kept, bound is %d", len(d), MaxDetail)
	}
}

func TestDeleteAndSecondOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db := open(t, path)
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	boot(t, db, "n1")
	boot(t, db, "n1")
	start := time.Now()
	if _, err := Open(path); !errors.Is(err, ErrInUse) {
		t.Fatalf("a second Open of a held database: %v, want ErrInUse", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("second Open took %s", d)
	}
	if err := db.DeleteNode("n1"); err != nil {
		t.Fatal(err)
	}
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatalf("MAC and IP of a deleted node must be free: %v", err)
	}
	if bs, err := db.Boots("n1"); err != nil || len(bs) != 1 || bs[0].ID != 0 {
		t.Fatalf("a node added again under a deleted node's name inherits its boots: %+v %v", bs, err)
	}
	if err := db.DeleteNode("n2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete unknown: %v", err)
	}
}

// TestHistory: a node keeps its last History boots, each readable with its
// own timeline and report, and nothing older.
func TestHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db, err := OpenWith(path, Options{History: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		tok := boot(t, db, "n1")
		if _, err := db.Register("n1", tok, addr("10.0.0.11"), Report{State: "ready", Kernel: "k" + string(rune('0'+i))}, Agent{}); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := db.Get("n1")
	if n.Status.ID != 5 || !slices.Equal(n.Status.History, []int{4, 3}) {
		t.Fatalf("status %+v, want boot 5 with history [4 3]", n.Status)
	}
	bs, err := db.Boots("n1")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int
	for _, b := range bs {
		ids = append(ids, b.ID)
		if b.State != StateBooted || b.Report == nil || b.Report.Kernel != "k"+string(rune('0'+b.ID)) {
			t.Errorf("boot %d: state %s report %+v", b.ID, b.State, b.Report)
		}
	}
	if !slices.Equal(ids, []int{5, 4, 3}) {
		t.Fatalf("boots %v, want [5 4 3]", ids)
	}
	b3, err := db.BootByID("n1", 3)
	if err != nil || b3.ID != 3 || len(b3.Timeline) != 7 {
		t.Fatalf("boot 3: %+v %v", b3, err)
	}
	if _, err := db.BootByID("n1", 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("boot 2 should be gone: %v", err)
	}
	sum, err := func() (Summary, error) { db.Close(); return Verify(path) }()
	if err != nil || sum.Nodes != 1 || sum.Boots != 2 {
		t.Fatalf("Verify: %+v %v, want 1 node, 2 earlier boots on disk", sum, err)
	}
}

// TestSpoofedDiscoverKeepsHistory: a DHCP offer for a booted node's MAC
// (a spoofed DISCOVER) starts a new boot record, but the booted boot, its
// timeline and its report stay, and the running node's token is not
// revoked by DHCP.
func TestSpoofedDiscoverKeepsHistory(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	tok := boot(t, db, "n1")
	if _, err := db.Register("n1", tok, addr("10.0.0.11"), Report{State: "ready", Kernel: "6.1"}, Agent{}); err != nil {
		t.Fatal(err)
	}
	before, _ := db.Get("n1")
	if err := db.Record("n1", Event{Step: StepDHCPOffer, Detail: "firmware bios"}, true); err != nil {
		t.Fatal(err)
	}
	b1, err := db.BootByID("n1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if b1.State != StateBooted || b1.Report == nil || !slices.Equal(steps(b1), steps(before.Status.Boot)) {
		t.Fatalf("boot 1 after a spoofed DISCOVER: %+v, want it as it was: %+v", b1, before.Status.Boot)
	}
	n, _ := db.Get("n1")
	if n.Status.ID != 2 || !slices.Equal(n.Status.History, []int{1}) {
		t.Fatalf("status %+v", n.Status)
	}
	// The running node's token is of boot 1: not revoked, but it cannot
	// report boot 2 booted.
	if _, err := db.Register("n1", tok, addr("10.0.0.11"), Report{State: "ready", Kernel: "6.1"}, Agent{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("report with boot 1's token for boot 2: %v, want ErrConflict", err)
	}
}

// TestReportRules: reports only from the reserved address with the
// current token; a repeated report is not applied again, a different one
// is refused; the state only moves forward within a boot.
func TestReportRules(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	tok := boot(t, db, "n1")
	rep := Report{State: "ready", Kernel: "6.1", UptimeSeconds: 4}
	if _, err := db.Register("n1", tok, addr("10.0.0.12"), rep, Agent{}); !errors.Is(err, ErrWrongAddress) {
		t.Fatalf("report from another address: %v", err)
	}
	if ok, err := db.Register("n1", tok, addr("::ffff:10.0.0.11"), rep, Agent{}); err != nil || !ok {
		t.Fatalf("report: %v %v", ok, err)
	}
	n1, _ := db.Get("n1")
	if ok, err := db.Register("n1", tok, addr("10.0.0.11"), rep, Agent{}); err != nil || ok {
		t.Fatalf("repeated report: applied %v, %v; want accepted, not applied", ok, err)
	}
	if _, err := db.Register("n1", tok, addr("10.0.0.11"), Report{State: "failed", Error: "later"}, Agent{}); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second, different report: %v, want ErrConflict", err)
	}
	// Late events are recorded but do not move a booted boot back.
	if err := db.Record("n1", ev(StepKernel), false); err != nil {
		t.Fatal(err)
	}
	n2, _ := db.Get("n1")
	if n2.Status.State != StateBooted || len(n2.Status.Timeline) != len(n1.Status.Timeline)+1 || !n2.Status.Report.Received.Equal(n1.Status.Report.Received) {
		t.Fatalf("after replay and a late event: %+v", n2.Status)
	}
	// A new script revokes the token at once.
	if _, err := db.NewBootNonce("n1", ev(StepScript)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Register("n1", tok, addr("10.0.0.11"), rep, Agent{}); !errors.Is(err, ErrBadToken) {
		t.Fatalf("token after a new script: %v, want ErrBadToken", err)
	}
}

// TestNonceSingleUse: the first consume spends the nonce; a new boot voids
// an unspent one.
func TestNonceSingleUse(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	if err := db.Record("n1", ev(StepDHCPOffer), true); err != nil {
		t.Fatal(err)
	}
	nonce, err := db.NewBootNonce("n1", ev(StepScript))
	if err != nil {
		t.Fatal(err)
	}
	first, second := NewToken(), NewToken()
	if err := db.ConsumeNonce("n1", nonce, first, ev(StepOverlay)); err != nil {
		t.Fatal(err)
	}
	if err := db.CheckNonce("n1", nonce); !errors.Is(err, ErrBadToken) {
		t.Fatalf("spent nonce checks: %v", err)
	}
	if err := db.ConsumeNonce("n1", nonce, second, ev(StepOverlay)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("nonce consumed twice: %v", err)
	}
	if _, err := db.Register("n1", second, addr("10.0.0.11"), Report{State: "ready"}, Agent{}); !errors.Is(err, ErrBadToken) {
		t.Fatalf("the second overlay's token works: %v", err)
	}
	if _, err := db.Register("n1", first, addr("10.0.0.11"), Report{State: "ready"}, Agent{}); err != nil {
		t.Fatalf("the first overlay's token: %v", err)
	}
	nonce, _ = db.NewBootNonce("n1", ev(StepScript))
	if err := db.Record("n1", ev(StepDHCPOffer), true); err != nil {
		t.Fatal(err)
	}
	if err := db.CheckNonce("n1", nonce); !errors.Is(err, ErrBadToken) {
		t.Fatalf("nonce of the previous boot still valid: %v", err)
	}
}

// TestTokenInFlight: a node that uses its token the moment it has its
// overlay, before the head committed the token, is not refused: the
// request waits for the commit. A token whose overlay was not sent whole
// is refused once that is known, and one of no overlay at once.
func TestTokenInFlight(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	if err := db.Record("n1", ev(StepDHCPOffer), true); err != nil {
		t.Fatal(err)
	}
	nonce, err := db.NewBootNonce("n1", ev(StepScript))
	if err != nil {
		t.Fatal(err)
	}
	tok := NewToken()
	release := db.ExpectToken("n1", tok)
	if _, err := db.Authenticate("n1", NewToken(), addr("10.0.0.11")); !errors.Is(err, ErrBadToken) {
		t.Fatalf("another token while one is in flight: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := db.Authenticate("n1", tok, addr("10.0.0.11"))
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("the token in flight was answered before its commit: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := db.ConsumeNonce("n1", nonce, tok, ev(StepOverlay)); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-got; err != nil {
		t.Fatalf("the token in flight, once committed: %v", err)
	}

	// An overlay cut short: its token never becomes the node's.
	nonce, err = db.NewBootNonce("n1", ev(StepScript))
	if err != nil {
		t.Fatal(err)
	}
	cut := NewToken()
	release = db.ExpectToken("n1", cut)
	go func() {
		_, err := db.Authenticate("n1", cut, addr("10.0.0.11"))
		got <- err
	}()
	release()
	if err := <-got; !errors.Is(err, ErrBadToken) {
		t.Fatalf("the token of an overlay cut short: %v", err)
	}
	if err := db.CheckNonce("n1", nonce); err != nil {
		t.Fatalf("the nonce of an overlay cut short is spent: %v", err)
	}
}

func TestMarkStalled(t *testing.T) {
	c := newClock()
	db, err := OpenWith(filepath.Join(t.TempDir(), "s.db"), Options{Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i, n := range []Node{node("n1", "52:54:00:aa:00:01", "10.0.0.11"), node("n2", "52:54:00:aa:00:02", "10.0.0.12"), node("n3", "52:54:00:aa:00:03", "10.0.0.13")} {
		if err := db.AddNode(n); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if err := db.Record(n.Name, ev(StepDHCPOffer), true); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.advance(4 * time.Minute)
	if err := db.Record("n2", ev(StepKernel), false); err != nil { // n2 makes progress
		t.Fatal(err)
	}
	c.advance(2 * time.Minute)
	busy := func(n Node) bool { return false }
	marked, err := db.MarkStalled(5*time.Minute, busy)
	if err != nil || !slices.Equal(marked, []string{"n1"}) {
		t.Fatalf("marked %v %v, want [n1] (n2 progressed, n3 never booted)", marked, err)
	}
	n1, _ := db.Get("n1")
	if n1.Status.State != StateStalled || n1.Status.Timeline[len(n1.Status.Timeline)-1].Step != StepStalled {
		t.Fatalf("n1 %+v", n1.Status)
	}
	if marked, _ := db.MarkStalled(5*time.Minute, busy); len(marked) != 0 {
		t.Fatalf("marked again: %v", marked)
	}
	c.advance(10 * time.Minute)
	if marked, _ := db.MarkStalled(5*time.Minute, func(n Node) bool { return n.Name == "n2" }); len(marked) != 0 {
		t.Fatalf("a node still downloading was marked: %v", marked)
	}
	// Progress after a stall (iPXE retried) makes it booting again.
	if err := db.Record("n1", ev(StepImage), false); err != nil {
		t.Fatal(err)
	}
	if n, _ := db.Get("n1"); n.Status.State != StateBooting {
		t.Fatalf("after progress: %s", n.Status.State)
	}
}

func TestMachine(t *testing.T) {
	ready, failed := &Report{State: "ready"}, &Report{State: "failed"}
	cases := []struct {
		from State
		rep  *Report
		step Step
		want State
	}{
		{StateBooting, nil, StepKernel, StateBooting},
		{StateBooting, nil, StepReady, StateBooted},
		{StateBooting, nil, StepFailed, StateFailed},
		{StateBooting, nil, StepStalled, StateStalled},
		{StateStalled, nil, StepImage, StateBooting},
		{StateStalled, nil, StepReady, StateBooted},
		{StateBooted, ready, StepFailed, StateBooted},
		{StateBooted, ready, StepStalled, StateBooted},
		{StateFailed, failed, StepReady, StateFailed},
		{StateNew, nil, StepReady, StateNew},
		// After the registration: down, off and back.
		{StateBooted, ready, StepDown, StateDown},
		{StateFailed, failed, StepDown, StateDown},
		{StateBooted, ready, StepShutdown, StateOff},
		{StateDown, ready, StepShutdown, StateOff},
		{StateDown, ready, StepUp, StateBooted},
		{StateDown, failed, StepUp, StateFailed},
		{StateOff, ready, StepUp, StateBooted},
		{StateOff, failed, StepUp, StateFailed},
		{StateOff, ready, StepDown, StateOff},
		{StateDown, ready, StepKernel, StateDown},
		{StateBooting, nil, StepDown, StateBooting},
		{StateBooting, nil, StepShutdown, StateBooting},
		{StateBooting, nil, StepUp, StateBooting},
		{StateStalled, nil, StepDown, StateStalled},
		{StateBooted, ready, StepJobProlog, StateBooted},
		{StateDown, ready, StepJobEpilog, StateDown},
	}
	for _, tc := range cases {
		b := &Boot{State: tc.from, Report: tc.rep}
		if got := next(b, tc.step); got != tc.want {
			t.Errorf("%s + %s = %s, want %s", tc.from, tc.step, got, tc.want)
		}
		if got := next(b, tc.step); got != tc.from && !tc.from.CanMove(got) {
			t.Errorf("%s + %s = %s: not a move of the table", tc.from, tc.step, got)
		}
	}
}

func TestPrintable(t *testing.T) {
	if got := Printable("ok\x1b[2Jbad\nline\xff"); got != "ok?[2Jbad line?" {
		t.Fatalf("Printable = %q", got)
	}
}

// TestFollowsStore: memory follows the store's watch, so a change another
// writer commits to the store (another head, with a shared store) is
// served without a restart, and a status write racing it retries on the
// newer record instead of overwriting it.
func TestFollowsStore(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	nb := []byte(`{"name":"n9","mac":"52:54:00:aa:00:09","ip":"10.0.0.19","created":"2026-01-01T00:00:00Z"}`)
	sb := []byte(`{"status":{"boot":0,"state":"new","timeline":null,"boots":0}}`)
	if _, err := db.st.Txn(t.Context(), nil, []store.Op{store.Put(nodeKey("n9"), nb), store.Put(statusKey("n9"), sb)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n, err := db.ByMAC(net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0, 9}); err == nil && n.Name == "n9" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a node committed to the store is not served within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := db.Record("n9", ev(StepDHCPOffer), true); err != nil {
		t.Fatal(err)
	}
	if n, _ := db.Get("n9"); n.Status.ID != 1 || n.Status.State != StateBooting {
		t.Fatalf("status after a recorded offer: %+v", n.Status)
	}
}

// TestPostBatches: boot events posted from many goroutines are committed
// in groups (far fewer transactions than events), in order per node, and
// a waiting change (a nonce) is committed with the group it joined.
func TestPostBatches(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	const nodes, events = 20, 30
	for i := range nodes {
		if err := db.AddNode(node(fmt.Sprintf("n%d", i), fmt.Sprintf("52:54:00:aa:01:%02x", i), fmt.Sprintf("10.0.1.%d", 10+i))); err != nil {
			t.Fatal(err)
		}
	}
	before := db.WriterStats()
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			name := fmt.Sprintf("n%d", i)
			db.Post(name, ev(StepDHCPOffer), true)
			for k := range events - 1 {
				db.Post(name, Event{Step: StepKernel, Detail: fmt.Sprint(k)}, false)
			}
		})
	}
	wg.Wait()
	if _, err := db.NewBootNonce("n0", ev(StepScript)); err != nil {
		t.Fatal(err)
	}
	db.Flush()
	for i := range nodes {
		n, _ := db.Get(fmt.Sprintf("n%d", i))
		tl := n.Status.Timeline
		if n.Status.ID != 1 || len(tl) < events {
			t.Fatalf("n%d: boot %d with %d events, want boot 1 with %d", i, n.Status.ID, len(tl), events)
		}
		for k := 1; k < events; k++ {
			if tl[k].Detail != fmt.Sprint(k-1) {
				t.Fatalf("n%d: event %d is %q: out of order", i, k, tl[k].Detail)
			}
		}
	}
	after := db.WriterStats()
	committed, batches := after.Changes-before.Changes, after.Batches-before.Batches
	t.Logf("%d changes in %d transactions", committed, batches)
	if committed < nodes*events || batches >= committed/2 {
		t.Errorf("%d changes in %d transactions: not batched", committed, batches)
	}
}

// TestPostStreamGrouped: under a steady stream of posted boot events (a
// DHCP load) the writer commits at most one group per groupGap rather
// than one per handful of events, and a change someone waits for is not
// held back by the gathering: a nonce is made while the stream goes on.
func TestPostStreamGrouped(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	const nodes = 50
	for i := range nodes {
		if err := db.AddNode(node(fmt.Sprintf("n%d", i), fmt.Sprintf("52:54:00:aa:02:%02x", i), fmt.Sprintf("10.0.2.%d", 10+i))); err != nil {
			t.Fatal(err)
		}
	}
	db.Flush()
	before := db.WriterStats()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for k := range 10 {
				db.Post(fmt.Sprintf("n%d", (i*10+k)%nodes), Event{Step: StepTFTP, Detail: fmt.Sprint(i)}, false)
			}
			time.Sleep(time.Millisecond) // under 10,000 events a second
		}
	})
	start := time.Now()
	var waited []time.Duration
	for range 5 {
		time.Sleep(60 * time.Millisecond)
		t0 := time.Now()
		if _, err := db.NewBootNonce("n1", ev(StepScript)); err != nil {
			t.Fatal(err)
		}
		waited = append(waited, time.Since(t0))
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	db.Flush()
	after := db.WriterStats()
	changes, batches := after.Changes-before.Changes, after.Batches-before.Batches
	t.Logf("%d changes in %d transactions over %v; the nonces waited %v", changes, batches, elapsed.Round(time.Millisecond), waited)
	// At most 100 groups a second (groupGap); the nonces and the flush
	// may each take a group of their own.
	if most := int(elapsed/(10*time.Millisecond)) + 1 + 5 + 1; batches > most {
		t.Errorf("%d transactions in %v: more than one per 10 ms (%d)", batches, elapsed, most)
	}
	if changes < 500 {
		t.Errorf("only %d changes committed in %v", changes, elapsed)
	}
}
