package provisioner

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/bootserver"
)

// peerHead serves st's /boot/ routes on loopback, as a peer head does,
// counting the requests.
func peerHead(t *testing.T, st *images.Store, tamper func(w http.ResponseWriter, r *http.Request) bool) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	h := (&bootserver.Server{Images: st, BaseURL: "http://unused"}).Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if tamper != nil && tamper(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

// TestReplicateFromPeer: a head lacking an image fetches it from a peer
// by reference or by digest, every blob verified; many nodes asking at
// once cause one fetch; a peer sending a blob that does not match its
// digest leaves nothing visible, and the next peer is tried.
func TestReplicateFromPeer(t *testing.T) {
	a := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
	d := testImage(t, a)
	m, err := a.ReadManifest(d)
	if err != nil {
		t.Fatal(err)
	}
	good, reqs := peerHead(t, a, nil)
	liar, _ := peerHead(t, a, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/boot/blob/"+m.Rootfs.Digest.Hex() {
			w.Write(bytes.Repeat([]byte{'x'}, int(m.Rootfs.Size)))
			return true
		}
		return false
	})

	// Only the lying peer: refused, nothing visible.
	b := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
	peers := []string{liar}
	r := newReplicator(b, func() []string { return peers }, slog.New(slog.DiscardHandler), nil)
	if err := r.Fetch(context.Background(), "default"); !errors.Is(err, images.ErrDigestMismatch) {
		t.Fatalf("fetch from a peer sending a bad blob: %v, want ErrDigestMismatch", err)
	}
	if _, _, err := b.Resolve("default"); !errors.Is(err, images.ErrNotFound) {
		t.Fatalf("a refused fetch left the image visible: %v", err)
	}
	if b.HasBlob(m.Rootfs) {
		t.Fatal("a blob that did not verify was stored")
	}

	// The liar first, then a good peer; 20 nodes asking at once.
	peers = []string{liar, good}
	before := reqs.Load()
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Go(func() { errs[i] = r.Fetch(context.Background(), "default") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := reqs.Load() - before; got != 3 { // ref, manifest, rootfs (the kernel came from the liar, verified)
		t.Fatalf("%d requests to the good peer for 20 nodes, want one fetch of 3", got)
	}
	_, bd, err := b.Resolve("default")
	if err != nil || bd != d {
		t.Fatalf("after the fetch: %s %v, want %s", bd, err, d)
	}
	for _, art := range []images.Artifact{m.Kernel, m.Rootfs} {
		if !b.HasBlob(art) {
			t.Fatalf("blob %s missing", art.Digest)
		}
	}

	// By digest, into a third head: the manifest and its blobs, no ref.
	c := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
	rc := newReplicator(c, func() []string { return []string{good} }, slog.New(slog.DiscardHandler), nil)
	if err := rc.Fetch(context.Background(), string(d)); err != nil {
		t.Fatal(err)
	}
	if got, err := c.ReadManifest(d); err != nil || got.Rootfs != m.Rootfs {
		t.Fatalf("manifest by digest: %v", err)
	}
	// Unknown everywhere, and no peers at all: clear errors.
	if err := rc.Fetch(context.Background(), "nosuch"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("an image no peer has: %v", err)
	}
	rn := newReplicator(c, func() []string { return nil }, slog.New(slog.DiscardHandler), nil)
	if err := rn.Fetch(context.Background(), "other"); err == nil || !strings.Contains(err.Error(), "no peer head") {
		t.Fatalf("no peers: %v", err)
	}
}
