package images_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/ramboot/ramboot/images"
)

func newStore(t *testing.T) *images.Store {
	t.Helper()
	return &images.Store{Dir: filepath.Join(t.TempDir(), "store")}
}

func put(t *testing.T, s *images.Store, content, mediaType string) images.Artifact {
	t.Helper()
	a, err := s.Put(context.Background(), strings.NewReader(content))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	a.MediaType = mediaType
	return a
}

// testManifest stores a kernel and a rootfs and returns a manifest naming
// them.
func testManifest(t *testing.T, s *images.Store, name, rootfs string) images.Manifest {
	t.Helper()
	return images.Manifest{
		SchemaVersion:          images.SchemaVersion,
		Name:                   name,
		Tag:                    "latest",
		Files:                  3,
		Builder:                "ramboot test",
		Created:                time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Source:                 "/srv/rootfs/" + name,
		KernelVersion:          "6.1.0-test",
		Kernel:                 put(t, s, "kernel of "+name, images.MediaTypeKernel),
		Rootfs:                 put(t, s, rootfs, images.MediaTypeRootfs),
		RootfsUncompressedSize: 4096,
		ContentDigest:          images.DigestOf([]byte("content of " + name)),
	}
}

// dirNames lists a directory, or nothing when it does not exist.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func blobs(t *testing.T, s *images.Store) []string {
	return dirNames(t, filepath.Join(s.Dir, "blobs", "sha256"))
}

func TestStoreRoundTrip(t *testing.T) {
	s := newStore(t)
	m := testManifest(t, s, "debian12", "rootfs bytes")
	d, err := s.Commit("debian12", m)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}

	got, gotD, err := s.Resolve("debian12")
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if gotD != d {
		t.Errorf("Resolve digest %s, Commit returned %s", gotD, d)
	}
	if !got.Created.Equal(m.Created) {
		t.Errorf("Created %v, want %v", got.Created, m.Created)
	}
	got.Created = m.Created
	if !reflect.DeepEqual(got, m) {
		t.Errorf("Resolve manifest:\n%+v\nwant\n%+v", got, m)
	}

	// The ref file holds the digest and a newline; the manifest blob is
	// the canonical encoding.
	ref, err := os.ReadFile(filepath.Join(s.Dir, "refs", "debian12:latest"))
	if err != nil || string(ref) != string(d)+"\n" {
		t.Errorf("ref file %q, %v; want %q", ref, err, d+"\n")
	}
	canon, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if images.DigestOf(canon) != d {
		t.Errorf("manifest digest %s is not the digest of its canonical encoding", d)
	}

	for _, a := range []images.Artifact{m.Kernel, m.Rootfs} {
		f, err := s.OpenBlob(a.Digest)
		if err != nil {
			t.Fatalf("OpenBlob(%s): %v", a.Digest, err)
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if int64(len(b)) != a.Size || images.DigestOf(b) != a.Digest {
			t.Errorf("blob %s: %d bytes with digest %s", a.Digest, len(b), images.DigestOf(b))
		}
	}
	if n := len(blobs(t, s)); n != 3 {
		t.Errorf("%d blobs, want 3 (kernel, rootfs, manifest)", n)
	}
	if tmp := dirNames(t, filepath.Join(s.Dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp not empty: %v", tmp)
	}
	if fi, err := os.Stat(filepath.Join(s.Dir, "blobs", "sha256", m.Rootfs.Digest.Hex())); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("rootfs blob mode %v, %v; want 0400", fi.Mode(), err)
	}
}

func TestStoreList(t *testing.T) {
	s := newStore(t)
	if refs, err := s.List(); err != nil || len(refs) != 0 {
		t.Fatalf("List of a new store = %v, %v", refs, err)
	}
	var want []string
	for _, name := range []string{"rocky9", "debian12", "alpine"} {
		m := testManifest(t, s, name, "rootfs of "+name)
		if _, err := s.Commit(name, m); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	refs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range refs {
		got = append(got, r.Name)
		if r.Manifest.Name != r.Name {
			t.Errorf("ref %s has manifest of %s", r.Name, r.Manifest.Name)
		}
		if _, d, _ := s.Resolve(r.Name); d != r.Digest {
			t.Errorf("ref %s: digest %s, Resolve says %s", r.Name, r.Digest, d)
		}
	}
	if strings.Join(got, " ") != "alpine debian12 rocky9" {
		t.Errorf("List names %v, want sorted %v", got, want)
	}
}

func TestStoreCommitSetsName(t *testing.T) {
	s := newStore(t)
	m := testManifest(t, s, "x", "r")
	m.Name = ""
	if _, err := s.Commit("nameless", m); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Resolve("nameless")
	if err != nil || got.Name != "nameless" {
		t.Errorf("Resolve = %q, %v; want name nameless", got.Name, err)
	}
}

func TestStoreCommitFailureKeepsRef(t *testing.T) {
	s := newStore(t)
	m := testManifest(t, s, "img", "old rootfs")
	old, err := s.Commit("img", m)
	if err != nil {
		t.Fatal(err)
	}
	missing := m
	missing.Rootfs = images.Artifact{Digest: images.DigestOf([]byte("never stored")), Size: 12, MediaType: images.MediaTypeRootfs}
	wrongSize := m
	wrongSize.Rootfs.Size++
	invalid := m
	invalid.SchemaVersion = 3

	tests := []struct {
		name string
		m    images.Manifest
		is   error
		want string
	}{
		{"missing-blob", missing, images.ErrNotFound, missing.Rootfs.Digest.String()},
		{"wrong-size", wrongSize, nil, "manifest says"},
		{"invalid", invalid, nil, "schemaVersion: 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Commit("img", tt.m)
			if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("Commit = %v, want error containing %q", err, tt.want)
			}
			if _, d, err := s.Resolve("img"); err != nil || d != old {
				t.Errorf("after failed Commit, Resolve = %s, %v; want the old %s", d, err, old)
			}
		})
	}
}

func TestStorePutIdempotent(t *testing.T) {
	s := newStore(t)
	a1 := put(t, s, "same", "")
	a2 := put(t, s, "same", "")
	if a1 != a2 {
		t.Errorf("two Puts of one content: %+v and %+v", a1, a2)
	}
	if got := blobs(t, s); len(got) != 1 || got[0] != a1.Digest.Hex() {
		t.Errorf("blobs %v, want only %s", got, a1.Digest.Hex())
	}
}

// cancelAfter cancels a context once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= n
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestStorePutInterrupted(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: several reads
	errRead := errors.New("connection reset")
	tests := []struct {
		name string
		r    func(cancel context.CancelFunc) io.Reader
		is   error
	}{
		{"reader-error", func(context.CancelFunc) io.Reader {
			return io.MultiReader(bytes.NewReader(big), iotest.ErrReader(errRead))
		}, errRead},
		{"ctx-cancelled", func(cancel context.CancelFunc) io.Reader {
			return &cancelAfter{r: bytes.NewReader(big), n: 1 << 20, cancel: cancel}
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := s.Put(ctx, tt.r(cancel))
			if !errors.Is(err, tt.is) {
				t.Fatalf("Put = %v, want %v", err, tt.is)
			}
			if b := blobs(t, s); len(b) != 0 {
				t.Errorf("blobs after interrupted Put: %v", b)
			}
			if tmp := dirNames(t, filepath.Join(s.Dir, "tmp")); len(tmp) != 0 {
				t.Errorf("tmp after interrupted Put: %v", tmp)
			}
			if refs, err := s.List(); err != nil || len(refs) != 0 {
				t.Errorf("refs after interrupted Put: %v, %v", refs, err)
			}
		})
	}
}

func TestStorePutConcurrent(t *testing.T) {
	s := newStore(t)
	content := bytes.Repeat([]byte("ramboot"), 300_000)
	want := images.DigestOf(content)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	got := make([]images.Artifact, 8)
	for i := range errs {
		wg.Go(func() {
			got[i], errs[i] = s.Put(context.Background(), iotest.HalfReader(bytes.NewReader(content)))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil || got[i].Digest != want || got[i].Size != int64(len(content)) {
			t.Errorf("Put %d = %+v, %v; want %s", i, got[i], err, want)
		}
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, "blobs", "sha256", want.Hex()))
	if err != nil || !bytes.Equal(b, content) {
		t.Errorf("stored blob: %d bytes, %v", len(b), err)
	}
	if n := blobs(t, s); len(n) != 1 {
		t.Errorf("blobs %v, want one", n)
	}
	if tmp := dirNames(t, filepath.Join(s.Dir, "tmp")); len(tmp) != 0 {
		t.Errorf("tmp after Puts: %v", tmp)
	}
}

func TestStoreRemovesOldTmp(t *testing.T) {
	s := newStore(t)
	put(t, s, "x", "")
	tmp := filepath.Join(s.Dir, "tmp")
	old, fresh := filepath.Join(tmp, "blob-old"), filepath.Join(tmp, "blob-fresh")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	twoHoursAgo := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, twoHoursAgo, twoHoursAgo); err != nil {
		t.Fatal(err)
	}
	put(t, s, "y", "")
	if got := dirNames(t, tmp); len(got) != 1 || got[0] != "blob-fresh" {
		t.Errorf("tmp after Put: %v, want only blob-fresh", got)
	}
}

func TestStoreNotFound(t *testing.T) {
	s := newStore(t)
	put(t, s, "x", "")
	if _, _, err := s.Resolve("nope"); !errors.Is(err, images.ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Resolve(nope) = %v, want ErrNotFound naming it", err)
	}
	if _, _, err := s.Resolve("Bad/Name"); err == nil || errors.Is(err, images.ErrNotFound) {
		t.Errorf("Resolve(Bad/Name) = %v, want an invalid-name error", err)
	}
	d := images.DigestOf([]byte("absent"))
	if _, err := s.OpenBlob(d); !errors.Is(err, images.ErrNotFound) || !strings.Contains(err.Error(), d.Hex()) {
		t.Errorf("OpenBlob(absent) = %v, want ErrNotFound naming it", err)
	}
	if _, err := s.OpenBlob("sha256:../../etc/passwd"); err == nil || errors.Is(err, images.ErrNotFound) {
		t.Errorf("OpenBlob(bad digest) = %v, want a digest error", err)
	}
	if _, err := (&images.Store{}).Put(context.Background(), strings.NewReader("x")); err == nil {
		t.Error("Put on a Store without Dir succeeded")
	}
	if _, _, err := (&images.Store{}).Resolve("x"); err == nil {
		t.Error("Resolve on a Store without Dir succeeded")
	}
}

func TestStoreTamperedManifest(t *testing.T) {
	s := newStore(t)
	d, err := s.Commit("img", testManifest(t, s, "img", "r"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(s.Dir, "blobs", "sha256", d.Hex())
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(`{"schemaVersion":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Resolve("img"); err == nil || !strings.Contains(err.Error(), "content has digest") {
		t.Errorf("Resolve of a tampered manifest = %v, want a digest mismatch", err)
	}
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), "img:latest") {
		t.Errorf("List with a broken ref = %v, want an error naming it", err)
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"debian12", true},
		{"a", true},
		{"0", true},
		{"rocky-9.3_gpu", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Debian", false},
		{"-x", false},
		{".x", false},
		{"_x", false},
		{"a/b", false},
		{"..", false},
		{"a b", false},
		{"a:b", false},
		{"é", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			err := images.ValidName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "[a-z0-9][a-z0-9._-]{0,62}") {
				t.Errorf("error %q does not name the rule", err)
			}
		})
	}
}
