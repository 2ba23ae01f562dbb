package state

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// TestSharedHostKeys: two heads on one etcd give every node the same SSH
// host keys, even when both make them at once; keys a head had in its
// state directory from before the move to etcd are the ones every head
// uses; a node's keys deleted on one head are gone on the other.
func TestSharedHostKeys(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 1})
	a, b := openShared(t, c.Endpoints(), "/k/"), openShared(t, c.Endpoints(), "/k/")
	ctx := context.Background()
	la := &hostkeys.Dir{Path: filepath.Join(t.TempDir(), "keys")}
	lb := &hostkeys.Dir{Path: filepath.Join(t.TempDir(), "keys")}
	old, err := hostkeys.Ensure(ctx, la, []string{"old"}, nil) // a's keys from its bbolt days
	if err != nil {
		t.Fatal(err)
	}
	ka, kb := a.SharedHostKeys(la), b.SharedHostKeys(lb)
	pub := func(ks hostkeys.Keys) []byte {
		var out []byte
		for _, k := range ks {
			out = append(out, k.PublicFile("")...)
		}
		return out
	}
	nodes := []string{"old", "n1", "n2", "n3"}
	var ga, gb map[string]hostkeys.Keys
	var ea, eb error
	var wg sync.WaitGroup
	wg.Go(func() { ga, ea = hostkeys.Ensure(ctx, ka, nodes, nil) })
	wg.Go(func() { gb, eb = hostkeys.Ensure(ctx, kb, nodes[1:], nil) })
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatal(ea, eb)
	}
	for _, n := range nodes[1:] {
		if !bytes.Equal(pub(ga[n]), pub(gb[n])) {
			t.Fatalf("node %s: the two heads made it different keys", n)
		}
	}
	if !bytes.Equal(pub(ga["old"]), pub(old["old"])) {
		t.Fatal("the keys a head had from before are not the ones used")
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, err := kb.Load(ctx, "old"); err != nil || !bytes.Equal(pub(got), pub(old["old"])) {
		t.Fatalf("head b's keys of node old: %v", err)
	}
	if err := ka.Delete(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := kb.Load(ctx, "n1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("keys deleted on a, on b: %v", err)
	}
}
