package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ramboot/ramboot/provisioner/store"
)

func openBolt(t *testing.T) (*store.Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.db")
	if err := store.CreateBolt(path); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func next(t *testing.T, ch <-chan store.Change) store.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no change within 5s")
	}
	return store.Change{}
}

// TestTxnCompareAndSwap: a transaction commits only if the keys it
// compares still have the revisions it read; a failed one changes nothing.
func TestTxnCompareAndSwap(t *testing.T) {
	s, _ := openBolt(t)
	testCompareAndSwap(t, s)
}

func testCompareAndSwap(t *testing.T, s store.Store) {
	ctx := context.Background()
	rev, err := s.Txn(ctx, []store.Cmp{{Key: "a/1", Rev: 0}}, []store.Op{store.Put("a/1", []byte("x")), store.Put("a/2", []byte("y"))})
	if err != nil || rev <= 0 {
		t.Fatalf("create: rev %d, %v", rev, err)
	}
	if _, err := s.Txn(ctx, []store.Cmp{{Key: "a/1", Rev: 0}}, []store.Op{store.Put("a/1", []byte("z"))}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v, want a conflict", err)
	}
	if _, err := s.Txn(ctx, []store.Cmp{{Key: "a/1", Rev: rev - 1}}, []store.Op{store.Put("a/1", []byte("w"))}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale revision: %v, want a conflict", err)
	}
	rev2, err := s.Txn(ctx, []store.Cmp{{Key: "a/1", Rev: rev}}, []store.Op{store.Put("a/1", []byte("z")), store.Delete("a/2")})
	if err != nil || rev2 != rev+1 {
		t.Fatalf("swap: rev %d, %v", rev2, err)
	}
	kvs, lrev, err := s.List(ctx, "a/")
	if err != nil || lrev != rev2 || len(kvs) != 1 || string(kvs[0].Value) != "z" || kvs[0].Rev != rev2 {
		t.Fatalf("list: %+v rev %d %v", kvs, lrev, err)
	}
	if cur, err := s.Current(ctx); err != nil || cur != rev2 {
		t.Fatalf("current: %d %v, want %d", cur, err, rev2)
	}
	// Concurrent read-modify-write of one counter: every increment lands
	// once, through retries on conflict.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				for {
					kv, ok, err := s.Get(ctx, "ctr")
					if err != nil {
						t.Error(err)
						return
					}
					n := len(kv.Value)
					var r int64
					if ok {
						r = kv.Rev
					}
					if _, err := s.Txn(ctx, []store.Cmp{{Key: "ctr", Rev: r}}, []store.Op{store.Put("ctr", make([]byte, n+1))}); err == nil {
						break
					} else if !errors.Is(err, store.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if kv, _, _ := s.Get(ctx, "ctr"); len(kv.Value) != 80 {
		t.Fatalf("counter %d, want 80", len(kv.Value))
	}
}

// TestWatch: a watcher sees every change after its revision, in order,
// only under its prefix, including changes made before it started.
func TestWatch(t *testing.T) {
	s, _ := openBolt(t)
	testWatch(t, s)
}

func testWatch(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r1, _ := s.Txn(ctx, nil, []store.Op{store.Put("n/1", []byte("a"))})
	s.Txn(ctx, nil, []store.Op{store.Put("other", []byte("b"))})
	ch := s.Watch(ctx, "n/", r1-1)
	if c := next(t, ch); c.Rev != r1 || len(c.Events) != 1 || c.Events[0].Key != "n/1" {
		t.Fatalf("first change %+v", c)
	}
	r3, _ := s.Txn(ctx, nil, []store.Op{store.Put("n/2", []byte("c")), store.DeletePrefix("n/1")})
	c := next(t, ch)
	if c.Rev != r3 || len(c.Events) != 2 || !c.Events[1].Deleted || c.Events[1].Key != "n/1" {
		t.Fatalf("change %+v", c)
	}
	cancel()
	for range ch {
	}
}

// TestMigrate: buckets of an earlier layout become "BUCKET/KEY" keys.
func TestMigrate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("nodes"))
		if err != nil {
			return err
		}
		return b.Put([]byte("n1"), []byte("{}"))
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kvs, rev, err := s.List(context.Background(), "")
	if err != nil || len(kvs) != 1 || kvs[0].Key != "nodes/n1" || rev != 1 {
		t.Fatalf("migrated: %+v rev %d %v", kvs, rev, err)
	}
}

// TestSecondOpenInUse: one process holds the file.
func TestSecondOpenInUse(t *testing.T) {
	_, path := openBolt(t)
	if _, err := store.OpenBolt(path, store.BoltOptions{Timeout: 100 * time.Millisecond}); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
}
