package images_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images"
)

func TestParseReference(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"debian12", "debian12:latest", true},
		{"debian12:v3", "debian12:v3", true},
		{"rocky9:2025.06-gpu_A", "rocky9:2025.06-gpu_A", true},
		{"debian12:", "", false},
		{"debian12:.x", "", false},
		{"debian12:a:b", "", false},
		{"Debian:v1", "", false},
		{":v1", "", false},
		{"a/b:c", "", false},
		{"x:" + strings.Repeat("t", 129), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := images.ParseReference(tt.in)
			if (err == nil) != tt.ok || (tt.ok && r.String() != tt.want) {
				t.Fatalf("ParseReference(%q) = %v, %v; want %q ok=%v", tt.in, r, err, tt.want, tt.ok)
			}
		})
	}
}

func TestStoreTags(t *testing.T) {
	s := newStore(t)
	d1, err := s.Commit("compute:v1", testManifest(t, s, "compute", "rootfs v1"))
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.Commit("compute:v2", testManifest(t, s, "compute", "rootfs v2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Resolve("compute"); !errors.Is(err, images.ErrNotFound) {
		t.Fatalf("Resolve(compute) with no latest tag = %v, want ErrNotFound", err)
	}
	if d, err := s.Tag("compute:v2", "compute"); err != nil || d != d2 {
		t.Fatalf("Tag = %s, %v", d, err)
	}
	for ref, want := range map[string]images.Digest{"compute": d2, "compute:latest": d2, "compute:v1": d1, string(d1): d1} {
		if _, d, err := s.Resolve(ref); err != nil || d != want {
			t.Errorf("Resolve(%s) = %s, %v; want %s", ref, d, err, want)
		}
	}
	refs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range refs {
		got = append(got, r.Reference())
	}
	if strings.Join(got, " ") != "compute:latest compute:v1 compute:v2" {
		t.Errorf("List = %v", got)
	}
	if _, err := s.Tag("nope", "x"); !errors.Is(err, images.ErrNotFound) {
		t.Errorf("Tag of a missing image = %v", err)
	}
	if d, err := s.Remove("compute:v1"); err != nil || d != d1 {
		t.Errorf("Remove = %s, %v", d, err)
	}
	if _, err := s.Remove("compute:v1"); !errors.Is(err, images.ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	// The manifest stays until GC: a digest still resolves.
	if _, _, err := s.Resolve(string(d1)); err != nil {
		t.Errorf("Resolve(removed digest) = %v", err)
	}
}

// TestStoreLegacyRef reads a store written before tags (refs/<name>) as
// name:latest, and replaces the old file on the next commit.
func TestStoreLegacyRef(t *testing.T) {
	s := newStore(t)
	d, err := s.Commit("old:v0", testManifest(t, s, "old", "r"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(s.Dir, "refs", "old:v0"), filepath.Join(s.Dir, "refs", "old")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := s.Resolve("old"); err != nil || got != d {
		t.Fatalf("Resolve(legacy) = %s, %v", got, err)
	}
	refs, err := s.List()
	if err != nil || len(refs) != 1 || refs[0].Reference() != "old:latest" {
		t.Fatalf("List = %+v, %v", refs, err)
	}
	d2, err := s.Commit("old", testManifest(t, s, "old", "r2"))
	if err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, filepath.Join(s.Dir, "refs")); strings.Join(names, " ") != "old:latest" {
		t.Errorf("refs after commit: %v", names)
	}
	if _, got, _ := s.Resolve("old"); got != d2 {
		t.Errorf("Resolve = %s, want %s", got, d2)
	}
}

func TestStoreCreatedOnFirstUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "ramboot", "images")
	s := &images.Store{Dir: dir}
	if refs, err := s.List(); err != nil || len(refs) != 0 {
		t.Fatalf("List of a missing store = %v, %v", refs, err)
	}
	if res, err := s.GC(images.GCOptions{}); err != nil || res.Kept != 0 {
		t.Fatalf("GC of a missing store = %+v, %v", res, err)
	}
	if _, err := s.Commit("first", testManifest(t, s, "first", "r")); err != nil {
		t.Fatalf("Commit into a missing store: %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("store dir %v, %v; want mode 0700", fi, err)
	}
}

func TestStoreGC(t *testing.T) {
	s := newStore(t)
	keepM := testManifest(t, s, "keep", "rootfs keep")
	dKeep, err := s.Commit("keep", keepM)
	if err != nil {
		t.Fatal(err)
	}
	usedM := testManifest(t, s, "used", "rootfs used")
	dUsed, err := s.Commit("used", usedM)
	if err != nil {
		t.Fatal(err)
	}
	goneM := testManifest(t, s, "gone", "rootfs gone")
	dGone, err := s.Commit("gone", goneM)
	if err != nil {
		t.Fatal(err)
	}
	// A blob shared by a removed image and a kept one stays.
	shared := testManifest(t, s, "shared", "rootfs keep")
	if _, err := s.Commit("shared", shared); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"used", "gone", "shared"} {
		if _, err := s.Remove(r); err != nil {
			t.Fatal(err)
		}
	}
	before := blobs(t, s)

	// Everything was just written: the default MinAge keeps it all.
	res, err := s.GC(images.GCOptions{InUse: []images.Digest{dUsed}})
	if err != nil || len(res.Removed) != 0 {
		t.Fatalf("GC of fresh blobs = %+v, %v; want nothing removed", res, err)
	}

	opt := images.GCOptions{InUse: []images.Digest{dUsed, images.DigestOf([]byte("gone long ago"))}, MinAge: -1, DryRun: true}
	dry, err := s.GC(opt)
	if err != nil {
		t.Fatal(err)
	}
	if got := blobs(t, s); strings.Join(got, " ") != strings.Join(before, " ") {
		t.Fatalf("dry run removed blobs: %v -> %v", before, got)
	}
	opt.DryRun = false
	res, err = s.GC(opt)
	if err != nil {
		t.Fatal(err)
	}
	var removed []images.Digest
	for _, b := range res.Removed {
		removed = append(removed, b.Digest)
	}
	if len(dry.Removed) != len(res.Removed) || dry.RemovedBytes != res.RemovedBytes {
		t.Errorf("dry run said %+v, GC did %+v", dry, res)
	}
	// gone's manifest, kernel, rootfs, and shared's manifest and kernel.
	wantGone := []images.Digest{dGone, goneM.Kernel.Digest, goneM.Rootfs.Digest, shared.Kernel.Digest}
	for _, d := range wantGone {
		if !contains(removed, d) {
			t.Errorf("GC kept %s, which nothing uses", d)
		}
	}
	if len(removed) != 5 {
		t.Errorf("GC removed %d blobs, want 5: %v", len(removed), removed)
	}
	for _, d := range []images.Digest{dKeep, keepM.Kernel.Digest, keepM.Rootfs.Digest, dUsed, usedM.Kernel.Digest, usedM.Rootfs.Digest} {
		if f, err := s.OpenBlob(d); err != nil {
			t.Errorf("GC removed %s, which is used: %v", d, err)
		} else {
			f.Close()
		}
	}
	if _, _, err := s.Resolve("keep"); err != nil {
		t.Error(err)
	}
	if res.Kept != 6 {
		t.Errorf("kept %d, want 6", res.Kept)
	}
}

func contains(ds []images.Digest, d images.Digest) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// TestStoreGCHoldsCommits checks that GC and Commit exclude each other:
// with the lock held exclusively by GC, a Commit waits, so it never checks
// a blob GC then removes.
func TestStoreGCLocksOutWriters(t *testing.T) {
	s := newStore(t)
	m := testManifest(t, s, "img", "rootfs")
	if _, err := s.Commit("img", m); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Remove("img"); err != nil {
		t.Fatal(err)
	}
	// Make the blobs old, then race a re-commit of the same manifest
	// (a push whose blobs were present) against GC, many times.
	old := time.Now().Add(-2 * time.Hour)
	for i := 0; i < 20; i++ {
		for _, d := range []images.Digest{m.Kernel.Digest, m.Rootfs.Digest} {
			os.Chtimes(filepath.Join(s.Dir, "blobs", "sha256", d.Hex()), old, old)
		}
		done := make(chan error, 1)
		go func() {
			_, err := s.Commit("img", m)
			done <- err
		}()
		if _, err := s.GC(images.GCOptions{}); err != nil {
			t.Fatal(err)
		}
		err := <-done
		_, _, rerr := s.Resolve("img")
		switch {
		case err == nil && rerr != nil:
			t.Fatalf("round %d: Commit succeeded but the image does not resolve: %v", i, rerr)
		case err == nil:
			for _, a := range []images.Artifact{m.Kernel, m.Rootfs} {
				if f, err := s.OpenBlob(a.Digest); err != nil {
					t.Fatalf("round %d: committed image lost blob %s", i, a.Digest)
				} else {
					f.Close()
				}
			}
		case !errors.Is(err, images.ErrNotFound):
			t.Fatalf("round %d: Commit = %v", i, err)
		default:
			// GC won: restore the blobs for the next round.
			m = restore(t, s, m)
		}
		if _, err := s.Remove("img"); err != nil && !errors.Is(err, images.ErrNotFound) {
			t.Fatal(err)
		}
	}
}

func restore(t *testing.T, s *images.Store, m images.Manifest) images.Manifest {
	t.Helper()
	m.Kernel = put(t, s, "kernel of img", images.MediaTypeKernel)
	m.Rootfs = put(t, s, "rootfs", images.MediaTypeRootfs)
	return m
}

func TestStoreExport(t *testing.T) {
	s := newStore(t)
	m := testManifest(t, s, "img", "rootfs bytes")
	d, err := s.Commit("img:v1", m)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "export")
	if _, got, err := s.Export(context.Background(), "img:v1", out); err != nil || got != d {
		t.Fatalf("Export = %s, %v", got, err)
	}
	if names := dirNames(t, out); strings.Join(names, " ") != "manifest.json rootfs.cpio.zst vmlinuz" {
		t.Errorf("exported %v", names)
	}
	for name, want := range map[string]string{"vmlinuz": "kernel of img", "rootfs.cpio.zst": "rootfs bytes"} {
		if b, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v", name, b, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil || images.DigestOf(b) != d {
		t.Errorf("manifest.json has digest %s, want %s (%v)", images.DigestOf(b), d, err)
	}
	// A damaged blob is an error and leaves no file under the real name.
	p := filepath.Join(s.Dir, "blobs", "sha256", m.Rootfs.Digest.Hex())
	os.Chmod(p, 0o600)
	os.WriteFile(p, []byte("rootfs BYTES"), 0o600)
	out2 := filepath.Join(t.TempDir(), "export")
	if _, _, err := s.Export(context.Background(), "img:v1", out2); !errors.Is(err, images.ErrDigestMismatch) {
		t.Errorf("Export of a damaged blob = %v", err)
	}
	for _, n := range dirNames(t, out2) {
		if n == "rootfs.cpio.zst" {
			t.Errorf("damaged rootfs exported under its name")
		}
	}
}

func TestStorePutVerified(t *testing.T) {
	s := newStore(t)
	content := []byte("exact content")
	want := images.Artifact{Digest: images.DigestOf(content), Size: int64(len(content)), MediaType: images.MediaTypeKernel}
	if _, err := s.PutVerified(context.Background(), bytes.NewReader([]byte("other content")), want); !errors.Is(err, images.ErrDigestMismatch) {
		t.Fatalf("PutVerified of other content = %v", err)
	}
	if b := blobs(t, s); len(b) != 0 {
		t.Fatalf("blobs after a rejected put: %v", b)
	}
	if a, err := s.PutVerified(context.Background(), bytes.NewReader(content), want); err != nil || a != want {
		t.Fatalf("PutVerified = %+v, %v", a, err)
	}
	// PutTemp: a file written out of order in tmp/.
	f, err := s.CreateTemp("upload-*")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("tent"), 3)
	f.WriteAt([]byte("con"), 0)
	c2 := []byte("content")
	want2 := images.Artifact{Digest: images.DigestOf(c2), Size: int64(len(c2))}
	if _, err := s.PutTemp(f, want2); err != nil {
		t.Fatal(err)
	}
	if tmp := dirNames(t, filepath.Join(s.Dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp after PutTemp: %v", tmp)
	}
	f, _ = s.CreateTemp("upload-*")
	f.Write([]byte("contenT"))
	if _, err := s.PutTemp(f, want2); !errors.Is(err, images.ErrDigestMismatch) {
		t.Errorf("PutTemp of corrupted content = %v", err)
	}
	if tmp := dirNames(t, filepath.Join(s.Dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp after rejected PutTemp: %v", tmp)
	}
}

func TestStoreCommitManifest(t *testing.T) {
	s := newStore(t)
	m := testManifest(t, s, "img", "r")
	b, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.CommitManifest("img:pushed", b)
	if err != nil || d != images.DigestOf(b) {
		t.Fatalf("CommitManifest = %s, %v; want %s", d, err, images.DigestOf(b))
	}
	indented := bytes.Replace(b, []byte(`,"`), []byte(`, "`), 1)
	if _, err := s.CommitManifest("img:x", indented); err == nil || !strings.Contains(err.Error(), "canonical") {
		t.Errorf("CommitManifest of a non-canonical manifest = %v", err)
	}
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"debian12", "debian12:v3", "a:b:c", ":x", "x:", "../x", "x:" + strings.Repeat("t", 130), "Ab:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := images.ParseReference(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(r.String(), "/\x00") || r.Name == "" || r.Tag == "" {
			t.Fatalf("ParseReference(%q) = %q", s, r)
		}
		again, err := images.ParseReference(r.String())
		if err != nil || again != r {
			t.Fatalf("round trip of %q: %v, %v", r, again, err)
		}
	})
}

// withCompressedRoot adds a compressed root blob to m.
func withCompressedRoot(t *testing.T, s *images.Store, m images.Manifest, content string) images.Manifest {
	t.Helper()
	a := put(t, s, content, images.MediaTypeCompressedRoot)
	m.CompressedRoot = &a
	return m
}

// TestStoreCompressedRoot: the compressed root is a blob like the others:
// Commit checks it is there, GC keeps it while the image is named and
// removes it after, Export writes it.
func TestStoreCompressedRoot(t *testing.T) {
	s := newStore(t)
	m := withCompressedRoot(t, s, testManifest(t, s, "small", "rootfs small"), "squashfs of small")
	d, err := s.Commit("small:v1", m)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Resolve("small:v1")
	if err != nil || got.CompressedRoot == nil || *got.CompressedRoot != *m.CompressedRoot {
		t.Fatalf("Resolve = %+v, %v", got.CompressedRoot, err)
	}

	// A manifest naming a compressed root the store lacks is refused.
	missing := testManifest(t, s, "missing", "rootfs missing")
	missing.CompressedRoot = &images.Artifact{Digest: images.DigestOf([]byte("not stored")), Size: 10, MediaType: images.MediaTypeCompressedRoot}
	if _, err := s.Commit("missing", missing); !errors.Is(err, images.ErrNotFound) {
		t.Errorf("Commit with a missing compressed root = %v, want ErrNotFound", err)
	}

	out := filepath.Join(t.TempDir(), "export")
	if _, _, err := s.Export(context.Background(), "small:v1", out); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, out); strings.Join(names, " ") != "manifest.json rootfs.cpio.zst rootfs.squashfs.cpio vmlinuz" {
		t.Errorf("exported %v", names)
	}
	if b, err := os.ReadFile(filepath.Join(out, "rootfs.squashfs.cpio")); err != nil || string(b) != "squashfs of small" {
		t.Errorf("rootfs.squashfs.cpio = %q, %v", b, err)
	}

	res, err := s.GC(images.GCOptions{MinAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range res.Removed {
		if b.Digest == m.CompressedRoot.Digest {
			t.Fatal("GC removed the compressed root of a named image")
		}
	}
	if _, err := s.Remove("small:v1"); err != nil {
		t.Fatal(err)
	}
	res, err = s.GC(images.GCOptions{MinAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	var removed []images.Digest
	for _, b := range res.Removed {
		removed = append(removed, b.Digest)
	}
	for _, want := range []images.Digest{d, m.CompressedRoot.Digest, m.Rootfs.Digest} {
		if !contains(removed, want) {
			t.Errorf("GC kept %s of a removed image", want)
		}
	}
}

// TestStoreRemoveWrittenBefore removes a reference written before a time
// and keeps one written after it (a removal on another head against a
// rebuild here).
func TestStoreRemoveWrittenBefore(t *testing.T) {
	s := newStore(t)
	d1, err := s.Commit("compute:v1", testManifest(t, s, "compute", "rootfs v1"))
	if err != nil {
		t.Fatal(err)
	}
	d, at, err := s.RefTime("compute:v1")
	if err != nil || d != d1 || at.IsZero() {
		t.Fatalf("RefTime = %s %v %v", d, at, err)
	}
	if _, ok, err := s.RemoveWrittenBefore("compute:v1", at.Add(-time.Second)); err != nil || ok {
		t.Fatalf("RemoveWrittenBefore a time before the reference was written = %v, %v; want kept", ok, err)
	}
	if _, _, err := s.Resolve("compute:v1"); err != nil {
		t.Fatalf("the reference written after the time was removed: %v", err)
	}
	if d, ok, err := s.RemoveWrittenBefore("compute:v1", at); err != nil || !ok || d != d1 {
		t.Fatalf("RemoveWrittenBefore its own time = %s %v %v; want removed", d, ok, err)
	}
	if _, _, err := s.RefTime("compute:v1"); !errors.Is(err, images.ErrNotFound) {
		t.Fatalf("RefTime after the removal = %v, want ErrNotFound", err)
	}
	if _, ok, err := s.RemoveWrittenBefore("compute:v1", at); err != nil || ok {
		t.Fatalf("RemoveWrittenBefore of no reference = %v, %v", ok, err)
	}
}
