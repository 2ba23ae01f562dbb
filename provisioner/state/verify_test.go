package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// goodDB writes a database with a few dozen nodes (several pages) and some
// boot history, closes it and returns its path and bytes.
func goodDB(t *testing.T) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ramboot.db")
	db, err := OpenWith(path, Options{History: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		n := Node{Name: "n" + string(rune('a'+i%26)) + string(rune('a'+i/26)), MAC: "52:54:00:00:01:" + hex2(i), IP: addr("10.0.1." + itoa(10+i))}
		if err := db.AddNode(n); err != nil {
			t.Fatal(err)
		}
		if i < 3 {
			boot(t, db, n.Name)
			boot(t, db, n.Name)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b
}

func hex2(i int) string { return string("0123456789abcdef"[i>>4]) + string("0123456789abcdef"[i&15]) }
func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// leafPages returns the ids of the pages of the nodes bucket's tree that
// hold records (reachable leaf pages), and the page size.
func leafPages(t *testing.T, path string) ([]int, int) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	var ids []int
	err = bdb.View(func(tx *bolt.Tx) error {
		for id := 2; id < int(tx.Size())/bdb.Info().PageSize; id++ {
			pi, err := tx.Page(id)
			if err != nil {
				return err
			}
			if pi != nil && pi.Type == "leaf" {
				ids = append(ids, id)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids, bdb.Info().PageSize
}

// usedBytes returns how far the pages in use reach in the file at path.
func usedBytes(t *testing.T, path string) int {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	var n int
	_ = bdb.View(func(tx *bolt.Tx) error { n = int(tx.Size()); return nil })
	return n
}

// TestDamagedDatabase: an empty, truncated or damaged database file is a
// clear error naming the file, never a panic and never a new inventory;
// the file is left as it was.
func TestDamagedDatabase(t *testing.T) {
	path0, good := goodDB(t)
	leaves, ps := leafPages(t, path0)
	used := usedBytes(t, path0) // bbolt grows the file ahead of the pages in use
	if len(leaves) < 2 {
		t.Fatalf("test database has %d leaf pages, want several", len(leaves))
	}
	set := func(b []byte, off int, v []byte) []byte { b = bytes.Clone(b); copy(b[off:], v); return b }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "is empty"},
		{"not a database", bytes.Repeat([]byte("ramboot\n"), 2000), "not a bbolt database"},
		{"truncated to 100 bytes", good[:100], "truncated"},
		{"truncated to one page", good[:ps], "truncated"},
		{"truncated mid-file", good[:used/2+123], "truncated"},
		{"truncated at a page boundary", good[:(used/ps/2)*ps], "truncated"},
		{"header pages zeroed", set(good, 0, make([]byte, 2*ps)), "header pages"},
		{"first header zeroed, second with a bad checksum", set(set(good, 0, make([]byte, ps)), ps+64, []byte{0xde, 0xad}), "header"},
		{"leaf page zeroed", set(good, leaves[0]*ps, make([]byte, ps)), "damaged"},
		{"leaf page id wrong", set(good, leaves[len(leaves)-1]*ps, binary.NativeEndian.AppendUint64(nil, 99999)), "damaged"},
		{"leaf page element offsets past the file", set(good, leaves[0]*ps+16, bytes.Repeat([]byte{0xff}, 64)), "damaged"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ramboot.db")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			db, err := Open(path)
			if err == nil {
				db.Close()
				t.Fatal("opened a damaged database")
			}
			var de *DamageError
			if !errors.As(err, &de) || de.Path != path {
				t.Fatalf("error %v (%T), want a *DamageError for %s", err, err, path)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks the path or %q", err, tc.want)
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, tc.data) {
				t.Errorf("the damaged file was changed (%d bytes, was %d)", len(after), len(tc.data))
			}
			if _, err := os.Stat(path + ".new"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a new database was started beside it: %v", err)
			}
		})
	}
}

// TestRandomDamageNeverPanics overwrites random spans of a good database:
// bbolt has no page checksums, so some damage goes unnoticed, but Verify
// and Open must never crash the process.
func TestRandomDamageNeverPanics(t *testing.T) {
	_, good := goodDB(t)
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	caught := 0
	for i := range 60 {
		b := bytes.Clone(good)
		off := r.IntN(len(b) - 64)
		n := 1 + r.IntN(64)
		for j := range n {
			b[off+j] = byte(r.Uint32())
		}
		if i%3 == 0 { // and sometimes cut it too
			b = b[:len(b)-r.IntN(len(b)/2)]
		}
		path := filepath.Join(dir, "ramboot.db")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if db, err := Open(path); err == nil {
			db.Close()
		} else {
			caught++
		}
	}
	t.Logf("%d of 60 damaged files refused", caught)
	if caught == 0 {
		t.Fatal("no damage detected at all")
	}
}

func TestDamagedRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ramboot.db")
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("nodes"))
		if err != nil {
			return err
		}
		return b.Put([]byte("n1"), []byte(`{"node":{"name":"n1"`))
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path)
	var de *DamageError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), `node "n1"`) {
		t.Fatalf("error %v, want a damage error naming node n1", err)
	}
}

// TestCreateOnlyWhenMissing: a missing file becomes a new database, with no
// window in which an empty file sits at the path.
func TestCreateOnlyWhenMissing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "ramboot.db")
	db := open(t, path)
	if err := db.AddNode(node("n1", "52:54:00:aa:00:01", "10.0.0.11")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := os.Stat(path + ".new"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	db = open(t, path)
	if len(db.List()) != 1 {
		t.Fatal("node lost on reopen")
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(dir, "adir")); err == nil {
		t.Fatal("opened a directory")
	}
}

// TestOldFormat: a database written before boot history (one bucket, no
// boot ids) opens, keeps its nodes and numbers the current boot.
func TestOldFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ramboot.db")
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := `{"node":{"name":"n1","mac":"52:54:00:aa:00:01","ip":"10.0.0.11","created":"2026-01-01T00:00:00Z"},` +
		`"status":{"state":"booted","boots":3,"started":"2026-01-02T00:00:00Z","timeline":[{"time":"2026-01-02T00:00:00Z","step":"dhcp-offer"}]},"tokenHash":"ab"}`
	err = bdb.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("nodes"))
		if err != nil {
			return err
		}
		return b.Put([]byte("n1"), []byte(old))
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	db := open(t, path)
	n, err := db.Get("n1")
	if err != nil || n.Status.ID != 3 || n.Status.State != StateBooted || len(n.Status.Timeline) != 1 {
		t.Fatalf("old record: %+v %v", n, err)
	}
	if err := db.Record("n1", ev(StepDHCPOffer), true); err != nil {
		t.Fatal(err)
	}
	if b, err := db.BootByID("n1", 3); err != nil || b.State != StateBooted {
		t.Fatalf("boot 3 after a new boot: %+v %v", b, err)
	}
}

// TestContainedFault: a read past the end of a mapped file (what bbolt
// does on a short or damaged file) is a fault that would kill the process;
// contained turns it into an error.
func TestContainedFault(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "short"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("short")); err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	m, err := syscall.Mmap(int(f.Fd()), 0, 4*ps, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(m)
	var sink byte
	err = contained(func() error {
		sink = m[2*ps+1] // past the end of the file: SIGBUS
		return nil
	})
	if !errors.As(err, new(panicked)) {
		t.Fatalf("fault not contained: %v (read %d)", err, sink)
	}
}
