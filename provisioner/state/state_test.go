package state

import (
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
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
	return Node{Name: name, MAC: mac, IP: netip.MustParseAddr(ip)}
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
	if err != nil || n.Name != "n1" || n.MAC != "52:54:00:aa:00:01" || n.Status.State != StateNew {
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
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		step    string
		newBoot bool
	}{{StepDHCPOffer, true}, {StepDHCPAck, false}, {StepTFTP, false}, {StepDHCPOffer, false}, {StepDHCPAck, false}}
	for i, s := range steps {
		if err := db.Record("n1", Event{Time: t0.Add(time.Duration(i) * time.Second), Step: s.step}, s.newBoot); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := db.Get("n1")
	if n.Status.Boots != 1 || len(n.Status.Timeline) != 5 || n.Status.State != StateBooting {
		t.Fatalf("iPXE's DHCP after firmware's must stay in one boot: %+v", n.Status)
	}
	nonce, err := db.NewBootNonce("n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.NewToken("n1", "wrong"); !errors.Is(err, ErrBadToken) {
		t.Fatalf("wrong nonce: %v", err)
	}
	tok, err := db.NewToken("n1", nonce)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.SetReport("n1", "not-the-token", Report{State: "ready"}); !errors.Is(err, ErrBadToken) {
		t.Fatalf("bad token accepted: %v", err)
	}
	if err := db.Record("n1", Event{Step: StepScript}, false); err != nil {
		t.Fatal(err)
	}
	// Reopen: the token hash, nonce and timeline are durable.
	db.Close()
	db = open(t, path)
	if err := db.SetReport("n1", tok, Report{State: "ready", Kernel: "6.1", ImageDigest: "sha256:ab"}); err != nil {
		t.Fatalf("report after reopen: %v", err)
	}
	n, _ = db.Get("n1")
	if n.Status.State != StateBooted || n.Status.Report == nil || n.Status.Report.ImageDigest != "sha256:ab" {
		t.Fatalf("after report: %+v", n.Status)
	}
	if last := n.Status.Timeline[len(n.Status.Timeline)-1]; last.Step != StepReady {
		t.Fatalf("last step %q", last.Step)
	}
	// The next DHCP offer, even from iPXE, starts boot 2 with a fresh timeline.
	if err := db.Record("n1", Event{Step: StepDHCPOffer}, false); err != nil {
		t.Fatal(err)
	}
	n, _ = db.Get("n1")
	if n.Status.Boots != 2 || len(n.Status.Timeline) != 1 || n.Status.State != StateBooting {
		t.Fatalf("second boot: %+v", n.Status)
	}
}

func TestTimelineBounded(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	for range 3 * maxEvents {
		if err := db.Record("n1", Event{Step: StepDHCPAck}, false); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := db.Get("n1"); len(n.Status.Timeline) != maxEvents {
		t.Fatalf("timeline has %d events, bound is %d", len(n.Status.Timeline), maxEvents)
	}
}

func TestDeleteAndSecondOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db := open(t, path)
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil {
		t.Fatal("a second Open of a held database succeeded")
	}
	if err := db.DeleteNode("n1"); err != nil {
		t.Fatal(err)
	}
	if err := db.AddNode(node("n2", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatalf("MAC and IP of a deleted node must be free: %v", err)
	}
	if err := db.DeleteNode("n1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}
