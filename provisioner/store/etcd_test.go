package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/store"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

func openEtcd(t *testing.T, endpoints []string, prefix string) *store.Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.OpenEtcd(ctx, store.EtcdOptions{Endpoints: endpoints, Prefix: prefix, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcd runs the store's contract (compare-and-swap, watch) against a
// real etcd, and checks that the prefix keeps clusters apart.
func TestEtcd(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 1})
	t.Run("CompareAndSwap", func(t *testing.T) { testCompareAndSwap(t, openEtcd(t, c.Endpoints(), "/cas/")) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, openEtcd(t, c.Endpoints(), "/watch/")) })
	t.Run("Prefix", func(t *testing.T) {
		a, b := openEtcd(t, c.Endpoints(), "/a/"), openEtcd(t, c.Endpoints(), "/b/")
		ctx := context.Background()
		if _, err := a.Txn(ctx, nil, []store.Op{store.Put("nodes/n1", []byte("a"))}); err != nil {
			t.Fatal(err)
		}
		if kvs, _, err := b.List(ctx, ""); err != nil || len(kvs) != 0 {
			t.Fatalf("b sees %+v %v", kvs, err)
		}
		if kv, ok, err := a.Get(ctx, "nodes/n1"); err != nil || !ok || string(kv.Value) != "a" || kv.Key != "nodes/n1" {
			t.Fatalf("a: %+v %v %v", kv, ok, err)
		}
	})
	t.Run("ListPages", func(t *testing.T) {
		s := openEtcd(t, c.Endpoints(), "/pages/")
		ctx := context.Background()
		for i := 0; i < 2500; i += 100 {
			var ops []store.Op
			for j := i; j < i+100; j++ {
				ops = append(ops, store.Put(fmt.Sprintf("k/%05d", j), []byte("v")))
			}
			if _, err := s.Txn(ctx, nil, ops); err != nil {
				t.Fatal(err)
			}
		}
		kvs, _, err := s.List(ctx, "k/")
		if err != nil || len(kvs) != 2500 || kvs[0].Key != "k/00000" || kvs[2499].Key != "k/02499" {
			t.Fatalf("list: %d keys, %v", len(kvs), err)
		}
	})
	t.Run("Limits", func(t *testing.T) {
		s := openEtcd(t, c.Endpoints(), "/limits/")
		ops := make([]store.Op, 129)
		for i := range ops {
			ops[i] = store.Put(fmt.Sprintf("k%d", i), nil)
		}
		_, err := s.Txn(context.Background(), nil, ops)
		if err == nil || !strings.Contains(err.Error(), "max-txn-ops") {
			t.Fatalf("129 ops: %v, want refused naming --max-txn-ops", err)
		}
		if l := s.Limits(); l.MaxOps != 128 || l.MaxBytes == 0 {
			t.Fatalf("limits %+v", l)
		}
	})
	t.Run("Compacted", func(t *testing.T) {
		s := openEtcd(t, c.Endpoints(), "/compact/")
		ctx := context.Background()
		r1, _ := s.Txn(ctx, nil, []store.Op{store.Put("x", []byte("1"))})
		r2, _ := s.Txn(ctx, nil, []store.Op{store.Put("x", []byte("2"))})
		if _, err := s.Client().Compact(ctx, r2); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch := s.Watch(wctx, "", r1-1)
		if c := next(t, ch); !errors.Is(c.Err, store.ErrCompacted) {
			t.Fatalf("watch from a compacted revision: %+v, want ErrCompacted", c)
		}
		if _, ok := <-ch; ok {
			t.Fatal("watch did not close after ErrCompacted")
		}
	})
	t.Run("Hold", func(t *testing.T) {
		s := openEtcd(t, c.Endpoints(), "/hold/")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Hold(ctx, "heads/h1", []byte("up"), 2*time.Second) }()
		waitKey(t, s, "heads/h1", true)
		cancel()
		<-done
		waitKey(t, s, "heads/h1", false)
		// A holder that dies without a word: its key goes when the
		// lease runs out.
		gone := openEtcd(t, c.Endpoints(), "/hold/")
		hctx, hcancel := context.WithCancel(context.Background())
		defer hcancel()
		go gone.Hold(hctx, "heads/h2", []byte("up"), time.Second)
		waitKey(t, s, "heads/h2", true)
		gone.Client().Close() // no revoke, no more keep-alives
		waitKey(t, s, "heads/h2", false)
	})
}

func waitKey(t *testing.T, s store.Store, key string, present bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, ok, err := s.Get(context.Background(), key)
		if err == nil && ok == present {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s present=%v after 15s, want %v (%v)", key, ok, present, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEtcdWatchSurvivesMemberLoss: a watcher on a 3-member cluster keeps
// receiving every change, in order and without a gap, while the members
// are killed one at a time (each brought back before the next), and
// transactions keep committing through the survivors.
func TestEtcdWatchSurvivesMemberLoss(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3})
	w := openEtcd(t, c.Endpoints(), "/loss/")
	wr := openEtcd(t, c.Endpoints(), "/loss/")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start, err := w.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch := w.Watch(ctx, "", start)
	want := 0
	expect := func() {
		t.Helper()
		for want < sent {
			c := nextWithin(t, ch, 30*time.Second)
			if c.Err != nil {
				t.Fatalf("watch ended: %v", c.Err)
			}
			for _, e := range c.Events {
				if e.Key != fmt.Sprintf("n/%04d", want) {
					t.Fatalf("event %s, want n/%04d", e.Key, want)
				}
				want++
			}
		}
	}
	for i := range 3 {
		put(t, wr, 20)
		expect()
		c.Kill(i)
		put(t, wr, 20) // through the two members left
		expect()
		c.Restart(i)
		c.WaitHealthy(60 * time.Second)
	}
	put(t, wr, 5)
	expect()
}

var sent int

func put(t *testing.T, s store.Store, n int) {
	t.Helper()
	for range n {
		deadline := time.Now().Add(30 * time.Second)
		for {
			key := fmt.Sprintf("n/%04d", sent)
			_, err := s.Txn(context.Background(), []store.Cmp{{Key: key}}, []store.Op{store.Put(key, []byte("v"))})
			if err == nil || errors.Is(err, store.ErrConflict) {
				break // a conflict: an earlier try committed before it failed
			}
			if time.Now().After(deadline) {
				t.Fatalf("put n/%04d: %v", sent, err)
			}
			time.Sleep(100 * time.Millisecond) // a leader election under way
		}
		sent++
	}
}

func nextWithin(t *testing.T, ch <-chan store.Change, d time.Duration) store.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("watch closed")
		}
		return c
	case <-time.After(d):
		t.Fatalf("no change within %s", d)
	}
	return store.Change{}
}

// TestEtcdTxnSurvivesLeaderLoss: writers compare-and-swap their own keys
// in a loop while the leader is killed. A transaction caught in flight is
// sent again by the store, not failed: every write either commits or,
// when its first sending had committed after all, meets a conflict, and
// none fails otherwise (before, they failed with "request timed out,
// possibly due to previous leader failure" or with the connection lost,
// and a head lost the boot events they carried).
func TestEtcdTxnSurvivesLeaderLoss(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3})
	s := openEtcd(t, c.Endpoints(), "/leader/")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leader := -1
	for i, ep := range c.Endpoints() {
		st, err := s.Client().Status(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no leader")
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fails []error
	var commits, conflicts, after int
	killed := make(chan struct{})
	stop := time.Now().Add(3 * time.Second) // writes in flight at the kill may take ~7 s more
	for w := range 6 {
		wg.Go(func() {
			key := fmt.Sprintf("w%d", w)
			for time.Now().Before(stop) {
				kv, _, err := s.Get(ctx, key)
				if err == nil {
					_, err = s.Txn(ctx, []store.Cmp{{Key: key, Rev: kv.Rev}}, []store.Op{store.Put(key, []byte(time.Now().String()))})
				}
				mu.Lock()
				switch {
				case err == nil:
					commits++
					select {
					case <-killed:
						after++
					default:
					}
				case errors.Is(err, store.ErrConflict):
					conflicts++
				default:
					fails = append(fails, err)
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // the writers under way
	c.Kill(leader)
	close(killed)
	wg.Wait()
	t.Logf("leader m%d killed: %d commits (%d after the kill), %d conflicts, %d sent again", leader, commits, after, conflicts, s.Retries())
	if len(fails) > 0 {
		t.Fatalf("%d writes failed, first: %v", len(fails), fails[0])
	}
	if after == 0 {
		t.Fatal("no write committed after the leader was killed")
	}
}
