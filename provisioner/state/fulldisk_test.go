package state

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size on a new temporary directory (root
// only) and unmounts it when the test ends.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("ramboot-test", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return p
		}
	}
}

// TestFullDisk: with the state directory's file system full, writes fail
// and change nothing in memory: the token a node holds stays valid, no
// token is minted, the report is not applied, the nonce is not spent. The
// next good write persists none of the failed changes.
func TestFullDisk(t *testing.T) {
	dir := mountTmpfs(t, "2m")
	path := filepath.Join(dir, "ramboot.db")
	db, err := OpenWith(path, Options{mmapSize: 16 << 20}) // no remap: it would wait for rtx below
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()
	for _, n := range []Node{node("n1", "52:54:00:aa:00:01", "10.0.0.11"), node("n2", "52:54:00:aa:00:02", "10.0.0.12"), node("n3", "52:54:00:aa:00:03", "10.0.0.13")} {
		if err := db.AddNode(n); err != nil {
			t.Fatal(err)
		}
	}
	tok1 := boot(t, db, "n1") // n1 holds a token, waiting to report
	if err := db.Record("n2", ev(StepDHCPOffer), true); err != nil {
		t.Fatal(err)
	}
	nonce2, err := db.NewBootNonce("n2", ev(StepScript)) // n2 was served its script
	if err != nil {
		t.Fatal(err)
	}

	// A long read transaction (an online backup does this) keeps bbolt
	// from reusing pages freed after it began: every write then needs new
	// pages. Use up the pages that were free before it, then fill the disk.
	rtx, err := db.bolt.DB().Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := db.Record("n3", ev(StepDHCPAck), false); err != nil {
			t.Fatal(err)
		}
	}
	filler := fill(t, dir)
	before1, _ := db.Get("n1")
	before2, _ := db.Get("n2")

	tokX := NewToken()
	if _, err := db.Register("n1", tok1, addr("10.0.0.11"), Report{State: "ready", Kernel: "6.1"}, Agent{}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("report on a full disk: %v, want ENOSPC", err)
	}
	if err := db.ConsumeNonce("n2", nonce2, tokX, ev(StepOverlay)); err == nil {
		t.Fatal("nonce consumed on a full disk")
	}
	if _, err := db.NewBootNonce("n1", ev(StepScript)); err == nil {
		t.Fatal("script nonce written to a full disk")
	}
	if err := db.Record("n1", ev(StepDHCPOffer), true); err == nil {
		t.Fatal("new boot written to a full disk")
	}
	if db.CommitFailures() != 4 {
		t.Errorf("commit failures %d, want 4", db.CommitFailures())
	}
	after1, _ := db.Get("n1")
	after2, _ := db.Get("n2")
	if !reflect.DeepEqual(before1, after1) || !reflect.DeepEqual(before2, after2) {
		t.Fatalf("memory changed by failed writes:\n n1 %+v\n -> %+v\n n2 %+v\n -> %+v", before1.Status, after1.Status, before2.Status, after2.Status)
	}
	if err := db.CheckNonce("n2", nonce2); err != nil {
		t.Fatalf("n2's nonce spent by a failed write: %v", err)
	}
	if _, err := db.Register("n2", tokX, addr("10.0.0.12"), Report{State: "ready"}, Agent{}); !errors.Is(err, ErrBadToken) {
		t.Fatalf("token of a failed overlay write accepted: %v", err)
	}

	// Space again: the next good write must not carry the failed changes.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := rtx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := db.Record("n1", ev(StepKernel), false); err != nil {
		t.Fatal(err)
	}
	if err := db.Record("n2", ev(StepAgent), false); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if db, err = Open(path); err != nil {
		t.Fatal(err)
	}
	n1, _ := db.Get("n1")
	if n1.Status.Report != nil || n1.Status.State != StateBooting || n1.Status.ID != 1 {
		t.Fatalf("n1 after reopen: %+v, want boot 1 booting without a report", n1.Status)
	}
	if err := db.CheckNonce("n2", nonce2); err != nil {
		t.Fatalf("n2's nonce after reopen: %v", err)
	}
	if ok, err := db.Register("n1", tok1, addr("10.0.0.11"), Report{State: "ready"}, Agent{}); err != nil || !ok {
		t.Fatalf("n1's token after reopen: %v", err)
	}
}

// TestFailedWriteChangesNothing is the same rule without root: writes to a
// database whose file is closed under it fail, and memory stays as it was.
func TestFailedWriteChangesNothing(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "s.db"))
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	tok := boot(t, db, "n1")
	before, _ := db.Get("n1")
	db.bolt.DB().Close()
	if _, err := db.Register("n1", tok, addr("10.0.0.11"), Report{State: "ready"}, Agent{}); err == nil {
		t.Fatal("write to a closed database succeeded")
	}
	if _, err := db.NewBootNonce("n1", ev(StepScript)); err == nil {
		t.Fatal("write to a closed database succeeded")
	}
	if after, _ := db.Get("n1"); !reflect.DeepEqual(before, after) {
		t.Fatalf("memory changed:\n%+v\n%+v", before.Status, after.Status)
	}
}
