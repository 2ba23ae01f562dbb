package overlayrender_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

const benchNodes = 10_000

// BenchmarkRenderCluster renders the overlay of every node of a
// 10,000-node cluster (two profiles with templates, host keys, accounts,
// known_hosts): one op is the whole cluster.
func BenchmarkRenderCluster(b *testing.B) {
	ctx := context.Background()
	store := &hostkeys.Dir{Path: b.TempDir()}
	c := testCluster(benchNodes)
	r := newRenderer(b, store, headSet(b))
	snap, err := r.Prepare(ctx, c) // makes and stores the keys once
	if err != nil {
		b.Fatal(err)
	}
	var files int
	for b.Loop() {
		for i := range c.Nodes {
			o, err := snap.Render(ctx, c.Nodes[i].Name, "token")
			if err != nil {
				b.Fatal(err)
			}
			files += len(o.Files)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*benchNodes), "µs/node")
}

// BenchmarkPrepare prepares a 10,000-node cluster with a new renderer (a
// head start): host keys loaded from the store, /etc/hosts and known_hosts
// rendered once.
func BenchmarkPrepare(b *testing.B) {
	ctx := context.Background()
	store := &hostkeys.Dir{Path: b.TempDir()}
	c := testCluster(benchNodes)
	if _, err := hostkeys.Ensure(ctx, store, names(c), nil); err != nil {
		b.Fatal(err)
	}
	b.Run("keys-from-store", func(b *testing.B) {
		for b.Loop() {
			r := newRenderer(b, store, headSet(b))
			if _, err := r.Prepare(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("keys-cached", func(b *testing.B) {
		r := newRenderer(b, store, headSet(b))
		for b.Loop() {
			if _, err := r.Prepare(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkFirstKeys makes and stores host keys for 10,000 nodes that have
// none (a new cluster's first Prepare).
func BenchmarkFirstKeys(b *testing.B) {
	ctx := context.Background()
	c := testCluster(benchNodes)
	for b.Loop() {
		store := &hostkeys.Dir{Path: b.TempDir()}
		if _, err := hostkeys.Ensure(ctx, store, names(c), nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkArchive is one node's overlay from render to the compressed
// archive the head serves, in a 10,000-node cluster: "whole" compresses
// every file for every node; "own" compresses only the node's own part
// (Overlay.Own), the shared part (Snapshot.Shared: /etc/hosts,
// known_hosts) being compressed once per snapshot ("shared-once").
func BenchmarkArchive(b *testing.B) {
	ctx := context.Background()
	c := testCluster(benchNodes)
	r := newRenderer(b, &hostkeys.Dir{Path: b.TempDir()}, headSet(b))
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		b.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		b.Fatal(err)
	}
	archive := func(files []overlayrender.File) (raw, compressed int) {
		o := overlayrender.Overlay{Files: files}
		var buf bytes.Buffer
		if err := newc.WriteFiles(&buf, o.NewcFiles()); err != nil {
			b.Fatal(err)
		}
		return buf.Len(), len(enc.EncodeAll(buf.Bytes(), nil))
	}
	for _, part := range []string{"whole", "own", "shared-once"} {
		b.Run(part, func(b *testing.B) {
			var raw, size int
			for b.Loop() {
				if part == "shared-once" {
					raw, size = archive(snap.Shared())
					continue
				}
				o, err := snap.Render(ctx, "n0042", "token")
				if err != nil {
					b.Fatal(err)
				}
				files := o.Files
				if part == "own" {
					own, ok := o.Own()
					if !ok {
						b.Fatal("shared part does not apply")
					}
					files = own
				}
				raw, size = archive(files)
			}
			b.ReportMetric(float64(raw), "cpio-bytes")
			b.ReportMetric(float64(size), "zstd-bytes")
		})
	}
}

func names(c *overlayrender.Cluster) []string {
	out := make([]string, len(c.Nodes))
	for i := range c.Nodes {
		out[i] = c.Nodes[i].Name
	}
	return out
}
