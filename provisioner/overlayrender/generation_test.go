package overlayrender_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

// TestGenerationSharedOnce: a render, which every registration and
// heartbeat asks for, does not re-encode and re-hash the files every node
// shares (/etc/hosts and known_hosts, megabytes in a large cluster): the
// boot storm saw 1,000 registrations take the head to 2.7 GiB, and a
// 10,000-node cluster's heartbeats would hash gigabytes a second. The
// generation still follows every change of those files.
func TestGenerationSharedOnce(t *testing.T) {
	ctx := context.Background()
	store := &hostkeys.Dir{Path: t.TempDir()}
	c := testCluster(1500)
	r := newRenderer(t, store, headSet(t))
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	var shared int
	for _, f := range snap.Shared() {
		shared += len(f.Data)
	}
	first, err := snap.Render(ctx, "n0001", "t1")
	if err != nil {
		t.Fatal(err)
	}
	const renders = 20
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range renders {
		o, err := snap.Render(ctx, "n0001", "t2")
		if err != nil {
			t.Fatal(err)
		}
		if o.Config.OverlayGeneration != first.Config.OverlayGeneration {
			t.Fatalf("generation %s then %s for the same content", first.Config.OverlayGeneration, o.Config.OverlayGeneration)
		}
	}
	runtime.ReadMemStats(&after)
	perRender := int(after.TotalAlloc-before.TotalAlloc) / renders
	t.Logf("shared files %d bytes; %d bytes allocated per render", shared, perRender)
	if perRender > shared/4 {
		t.Errorf("a render allocates %d bytes with %d bytes of shared files: it re-encodes them", perRender, shared)
	}

	// One node more: /etc/hosts and known_hosts change, and so does every
	// node's generation.
	c2 := testCluster(1501)
	snap2, err := r.Prepare(ctx, c2)
	if err != nil {
		t.Fatal(err)
	}
	o2, err := snap2.Render(ctx, "n0001", "t1")
	if err != nil {
		t.Fatal(err)
	}
	if o2.Config.OverlayGeneration == first.Config.OverlayGeneration {
		t.Error("the generation did not change with the shared files")
	}
	// The same files and configuration give the same generation as
	// Generation computes it from scratch (the head's fall-back path).
	c1 := first.Config
	want, err := overlayrender.Generation(c1, first.RuntimeFiles())
	if err != nil {
		t.Fatal(err)
	}
	if want != c1.OverlayGeneration {
		t.Errorf("render's generation %s, Generation's %s", c1.OverlayGeneration, want)
	}
}

// TestPeersInConfig: the live peer heads, asked at each render, go into
// the agent's configuration without this head, in an order that depends
// on the node (the nodes of a dead head spread over the others), and are
// not part of the generation: a head coming or going changes no node's
// content. Without peers node.json has no such key.
func TestPeersInConfig(t *testing.T) {
	ctx := context.Background()
	c := testCluster(64)
	peers := []string{}
	c.Head.Peers = func() []string { return peers }
	r := newRenderer(t, &hostkeys.Dir{Path: t.TempDir()}, headSet(t))
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	alone, err := snap.Render(ctx, "n0001", "t")
	if err != nil {
		t.Fatal(err)
	}
	if alone.Config.Peers != nil || strings.Contains(string(fileData(alone, overlay.ConfigPath)), "peers") {
		t.Errorf("one head: peers %v in the configuration", alone.Config.Peers)
	}
	self := strings.TrimRight(c.Head.URL, "/")
	peers = []string{"http://10.0.0.3/", self, "http://10.0.0.2"}
	first := map[string]int{}
	for i := 1; i <= 64; i++ {
		o, err := snap.Render(ctx, fmt.Sprintf("n%04d", i), "t")
		if err != nil {
			t.Fatal(err)
		}
		p := o.Config.Peers
		if len(p) != 2 || slices.Contains(p, self) || !slices.Contains(p, "http://10.0.0.2") || !slices.Contains(p, "http://10.0.0.3") {
			t.Fatalf("node %d: peers %v", i, p)
		}
		first[p[0]]++
		if i == 1 {
			if o.Config.OverlayGeneration != alone.Config.OverlayGeneration {
				t.Errorf("the peers changed the generation")
			}
			if cfg, err := overlay.ParseConfig(fileData(o, overlay.ConfigPath)); err != nil || !slices.Equal(cfg.Peers, p) {
				t.Errorf("node.json: %v, peers %v", err, cfg.Peers)
			}
		}
	}
	if first["http://10.0.0.2"] < 16 || first["http://10.0.0.3"] < 16 {
		t.Errorf("the first peer of 64 nodes: %v, want both often", first)
	}
}

func fileData(o *overlayrender.Overlay, path string) []byte {
	for _, f := range o.Files {
		if f.Path == path {
			return f.Data
		}
	}
	return nil
}
