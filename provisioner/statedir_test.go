package provisioner

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/ramboot/ramboot/provisioner/state"
)

// TestOpenStateKeepsOldBackup: when the database is gone but the rolling
// backup of an earlier one is there, a new database starts and the old
// backup is kept aside, so the new database's first backup cannot replace
// the only copy of the old inventory.
func TestOpenStateKeepsOldBackup(t *testing.T) {
	dir := t.TempDir()
	db, err := OpenState(dir, state.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:00:00:01", IP: mustAddr("10.0.0.11")}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Backup(filepath.Join(dir, BackupFile)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.Remove(filepath.Join(dir, DBFile)); err != nil { // the admin moved it away
		t.Fatal(err)
	}
	db, err = OpenState(dir, state.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if len(db.List()) != 0 {
		t.Fatal("the new database is not empty")
	}
	if _, err := os.Stat(filepath.Join(dir, BackupFile)); !os.IsNotExist(err) {
		t.Fatalf("the old backup is still where the next backup goes: %v", err)
	}
	kept, _ := filepath.Glob(filepath.Join(dir, BackupFile+".*"))
	if len(kept) != 1 {
		t.Fatalf("kept backups %v, want one", kept)
	}
	if sum, err := state.Verify(kept[0]); err != nil || sum.Nodes != 1 {
		t.Fatalf("kept backup %s: %+v %v", kept[0], sum, err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
