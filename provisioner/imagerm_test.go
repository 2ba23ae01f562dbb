package provisioner

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/store"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// TestImageRemovalsShared: two heads on one etcd. A removal on head A
// reaches head B's store; head B does not fetch the removed image back
// from a peer that still has it; a copy B fetched from a peer is removed
// too, but a reference B's admin writes after the removal is kept and
// lifts the record.
func TestImageRemovalsShared(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 1})
	open := func() store.Store {
		st, err := store.OpenEtcd(t.Context(), store.EtcdOptions{Endpoints: c.Endpoints(), Prefix: "/t/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	newStore := func() *images.Store {
		s := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
		testImage(t, s)
		return s
	}
	a, b, stale := newStore(), newStore(), newStore()
	ra := newImageRemovals(open(), a, "http://head-a", nil)
	rb := newImageRemovals(open(), b, "http://head-b", nil)
	rb.sweepEvery = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- rb.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	if _, err := ra.Remove(t.Context(), "default"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Resolve("default"); !errors.Is(err, images.ErrNotFound) {
		t.Fatalf("head a kept the image it removed: %v", err)
	}
	waitGone := func(what string) {
		t.Helper()
		for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
			if _, _, err := b.Resolve("default"); errors.Is(err, images.ErrNotFound) {
				return
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s: head b still has the image 10 s after its removal on head a", what)
			}
		}
	}
	waitGone("removal")
	// The sweep counts a removal just after the store let the image go.
	for start := time.Now(); testutil.ToFloat64(rb.m.WithLabelValues("other_head")) < 1 && time.Since(start) < 5*time.Second; {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(rb.m.WithLabelValues("other_head")); got != 1 {
		t.Errorf("head b counted %v removals for another head, want 1", got)
	}
	if got := testutil.ToFloat64(ra.m.WithLabelValues("local")); got != 1 {
		t.Errorf("head a counted %v local removals, want 1", got)
	}

	// A peer still holding it: not fetched back.
	peer, _ := peerHead(t, stale, nil)
	rep := newReplicator(b, func() []string { return []string{peer} }, slog.New(slog.DiscardHandler), nil)
	rep.removals = rb
	if err := rep.Fetch(t.Context(), "default"); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("fetch of a removed image from a stale peer: %v, want refused", err)
	}
	if _, _, err := b.Resolve("default"); !errors.Is(err, images.ErrNotFound) {
		t.Fatal("head b fetched a removed image back from a peer")
	}

	// A copy fetched from a peer just before the record arrived (the race
	// the record's time cannot settle) is removed, not taken for a rebuild.
	done2 := rb.Fetching("default")
	testImage(t, b)                    // commits "default" as the replicator does
	time.Sleep(100 * time.Millisecond) // sweeps meanwhile leave it alone
	if _, ok := rb.Removed("default"); !ok {
		t.Fatal("a fetch in progress lifted the removal")
	}
	done2(true)
	waitGone("a copy fetched from a peer")

	// Written by b's admin after the removal: kept, and the record lifted.
	time.Sleep(10 * time.Millisecond) // the file's time must pass the record's
	testImage(t, b)
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := rb.Removed("default"); !ok {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the record of an image written again was not lifted")
		}
	}
	if _, _, err := b.Resolve("default"); err != nil {
		t.Fatalf("head b removed an image written after the removal: %v", err)
	}
	if _, ok, err := rb.st.Get(t.Context(), keyImageRemoved+"default:latest"); err != nil || ok {
		t.Fatalf("the record is still stored: %v %v", ok, err)
	}
}
