package build_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/overlay"
)

const fakeKernel = "fake kernel 6.1.0-test\n"

// makeTree writes a small root tree under dir and returns the names
// WriteTree lists, in order.
func makeTree(t *testing.T, dir string) []string {
	t.Helper()
	files := map[string]string{
		"boot/vmlinuz-6.1.0-test": fakeKernel,
		"etc/hostname":            "node\n",
		"etc/os-release":          "ID=test\n",
		"usr/bin/tool":            strings.Repeat("tool binary ", 1000),
		"usr/share/doc/README":    "read me\n",
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool2")); err != nil {
		t.Fatal(err)
	}
	return []string{
		".", "bin", "boot", "boot/vmlinuz-6.1.0-test", "etc", "etc/hostname", "etc/os-release",
		"usr", "usr/bin", "usr/bin/tool", "usr/bin/tool2", "usr/share", "usr/share/doc", "usr/share/doc/README",
	}
}

func newStore(t *testing.T) *images.Store {
	return &images.Store{Dir: filepath.Join(t.TempDir(), "store")}
}

func blobPath(s *images.Store, d images.Digest) string {
	return filepath.Join(s.Dir, "blobs", "sha256", d.Hex())
}

func mustBuild(t *testing.T, opt build.Options) (images.Manifest, images.Digest) {
	t.Helper()
	m, d, err := build.Build(context.Background(), opt)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return m, d
}

// decompress returns the uncompressed archive of a rootfs blob.
func decompress(t *testing.T, s *images.Store, a images.Artifact) []byte {
	t.Helper()
	f, err := s.OpenBlob(a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("decompress rootfs: %v", err)
	}
	return b
}

type entry struct {
	hdr  *cpio.Header
	data []byte
}

func readArchive(t *testing.T, b []byte) []entry {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(b))
	var out []entry
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read archive: %v", err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{h, data})
	}
}

func names(es []entry) []string {
	var n []string
	for _, e := range es {
		n = append(n, e.hdr.Name)
	}
	return n
}

// shell runs a shell pipeline; the test skips when a tool is missing.
func shell(t *testing.T, script string, tools ...string) string {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func TestBuild(t *testing.T) {
	root := t.TempDir()
	treeNames := makeTree(t, root)
	st := newStore(t)
	var progress []build.Progress
	var logs bytes.Buffer
	before := time.Now().Add(-time.Second)
	m, d := mustBuild(t, build.Options{
		RootDir:  root,
		Name:     "test-image",
		Store:    st,
		Progress: func(p build.Progress) { progress = append(progress, p) },
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})

	t.Run("manifest", func(t *testing.T) {
		if m.SchemaVersion != 2 || m.Name != "test-image" || m.Tag != "latest" || m.Source != root || m.KernelVersion != "6.1.0-test" ||
			m.Files != int64(len(treeNames)+2) || !strings.HasPrefix(m.Builder, "ramboot ") {
			t.Errorf("manifest %+v", m)
		}
		if m.Created.Before(before) || m.Created.After(time.Now()) {
			t.Errorf("Created %v, want the build time", m.Created)
		}
		if m.Kernel != (images.Artifact{Digest: images.DigestOf([]byte(fakeKernel)), Size: int64(len(fakeKernel)), MediaType: images.MediaTypeKernel}) {
			t.Errorf("kernel artifact %+v", m.Kernel)
		}
		for _, a := range []images.Artifact{m.Kernel, m.Rootfs} {
			b, err := os.ReadFile(blobPath(st, a.Digest))
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) != a.Size || images.DigestOf(b) != a.Digest {
				t.Errorf("blob %s: %d bytes with digest %s, manifest says %d", a.Digest, len(b), images.DigestOf(b), a.Size)
			}
		}
		if m.Rootfs.MediaType != images.MediaTypeRootfs {
			t.Errorf("rootfs media type %q", m.Rootfs.MediaType)
		}
		got, gotD, err := st.Resolve("test-image")
		if err != nil || gotD != d || got.Rootfs != m.Rootfs || got.ContentDigest != m.ContentDigest {
			t.Errorf("Resolve = %+v, %s, %v; want the built manifest %s", got, gotD, err, d)
		}
	})

	archive := decompress(t, st, m.Rootfs)
	t.Run("archive", func(t *testing.T) {
		if int64(len(archive)) != m.RootfsUncompressedSize {
			t.Errorf("archive is %d bytes, manifest says %d", len(archive), m.RootfsUncompressedSize)
		}
		es := readArchive(t, archive)
		want := append(treeNames, "etc/ramboot", overlay.ImageIDPath)
		if got := names(es); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		id := es[len(es)-1]
		if string(id.data) != string(m.ContentDigest)+"\n" || id.hdr.Mode != cpio.TypeReg|0o644 {
			t.Errorf("image-id entry %q mode %v, want %q mode 0100644", id.data, id.hdr.Mode, m.ContentDigest+"\n")
		}
		dir := es[len(es)-2]
		if !dir.hdr.Mode.IsDir() || dir.hdr.Mode.Perm() != 0o755 {
			t.Errorf("added etc/ramboot mode %v", dir.hdr.Mode)
		}
		// ContentDigest covers every byte before the image-id entry.
		off := bytes.LastIndex(archive, []byte(overlay.ImageIDPath+"\x00")) - 110
		if off < 0 || string(archive[off:off+6]) != "070701" {
			t.Fatalf("no image-id header found")
		}
		if sum := sha256.Sum256(archive[:off]); images.DigestOf(archive[:off]) != m.ContentDigest {
			t.Errorf("sha256 of the %d bytes before image-id is %x, ContentDigest %s", off, sum, m.ContentDigest)
		}
	})

	t.Run("gnu-tools", func(t *testing.T) {
		blob := blobPath(st, m.Rootfs.Digest)
		list := shell(t, "zstd -dc "+blob+" | cpio -t --quiet", "zstd", "cpio")
		want := strings.Join(append(treeNames, "etc/ramboot", overlay.ImageIDPath), "\n") + "\n"
		if list != want {
			t.Errorf("zstd -dc | cpio -t:\n%s\nwant:\n%s", list, want)
		}
		frames := shell(t, "zstd -lv "+blob+" | grep '^# Zstandard Frames'", "zstd")
		if !strings.Contains(frames, ": 1") {
			t.Errorf("zstd -lv: %q, want one frame", frames)
		}
		if !isRoot() {
			return
		}
		dst := t.TempDir()
		shell(t, "cd "+dst+" && zstd -dc "+blob+" | cpio -idm --no-absolute-filenames --quiet", "zstd", "cpio")
		b, err := os.ReadFile(filepath.Join(dst, overlay.ImageIDPath))
		if err != nil || string(b) != string(m.ContentDigest)+"\n" {
			t.Errorf("extracted image-id %q, %v", b, err)
		}
		if k, err := os.ReadFile(filepath.Join(dst, "boot/vmlinuz-6.1.0-test")); err != nil || string(k) != fakeKernel {
			t.Errorf("kernel not kept in the rootfs: %q, %v", k, err)
		}
	})

	t.Run("progress-and-log", func(t *testing.T) {
		if len(progress) < 3 || progress[0].Phase != build.PhaseScan || progress[len(progress)-1].Phase != build.PhaseDone {
			t.Fatalf("progress %+v", progress)
		}
		last := progress[len(progress)-1]
		if last.Files != int(m.Files) || last.Bytes != m.RootfsUncompressedSize || last.CompressedBytes != m.Rootfs.Size {
			t.Errorf("last progress %+v", last)
		}
		for _, p := range progress[1 : len(progress)-1] {
			if p.Phase == build.PhaseCompressedRoot && p.TotalBytes > 0 {
				continue // the squashfs, after the archive
			}
			if p.Phase != build.PhaseArchive || p.TotalFiles != int(m.Files) || p.TotalBytes <= 0 {
				t.Errorf("progress %+v", p)
			}
		}
		if !strings.Contains(logs.String(), "image committed") || !strings.Contains(logs.String(), "image=test-image:latest@"+string(d)) {
			t.Errorf("log %q", logs.String())
		}
	})
}

func TestBuildReproducible(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	st := newStore(t)
	m1, _ := mustBuild(t, build.Options{RootDir: root, Name: "one", Store: st})
	m2, _ := mustBuild(t, build.Options{RootDir: root, Name: "two", Store: newStore(t)})
	if m1.Rootfs != m2.Rootfs || m1.ContentDigest != m2.ContentDigest || m1.RootfsUncompressedSize != m2.RootfsUncompressedSize {
		t.Errorf("two builds differ:\n%+v\n%+v", m1, m2)
	}
	// Another level gives another blob, not another content.
	m3, _ := mustBuild(t, build.Options{RootDir: root, Name: "three", Store: st, Level: 19})
	if m3.ContentDigest != m1.ContentDigest || m3.Rootfs.Digest == m1.Rootfs.Digest {
		t.Errorf("level 19: content %s rootfs %s; level 1: %s %s", m3.ContentDigest, m3.Rootfs.Digest, m1.ContentDigest, m1.Rootfs.Digest)
	}
}

// TestBuildReproducibleAcrossMachines builds a tree larger than several
// compression jobs with one and with four Ps: the blob must not depend on
// the build host's core count.
func TestBuildReproducibleAcrossMachines(t *testing.T) {
	root := t.TempDir()
	writeBenchTree(t, root, 40<<20)
	for _, comp := range []string{"go", "zstd"} {
		t.Run(comp, func(t *testing.T) {
			if _, err := exec.LookPath("zstd"); err != nil && comp == "zstd" {
				t.Skip("zstd not installed")
			}
			var digests []images.Digest
			var contents []images.Digest
			for _, procs := range []int{1, 4} {
				prev := runtime.GOMAXPROCS(procs)
				m, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "procs", Store: newStore(t), Compressor: comp})
				runtime.GOMAXPROCS(prev)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(m.Builder, comp) {
					t.Errorf("builder %q does not name the compressor %s", m.Builder, comp)
				}
				digests = append(digests, m.Rootfs.Digest)
				contents = append(contents, m.ContentDigest)
			}
			if digests[0] != digests[1] {
				t.Errorf("GOMAXPROCS 1 gives %s, 4 gives %s", digests[0], digests[1])
			}
			if contents[0] != contents[1] {
				t.Errorf("content digests differ")
			}
		})
	}
	// The zstd program with one and with two threads: its output does not
	// depend on the thread count either.
	if _, err := exec.LookPath("zstd"); err == nil {
		var out []string
		for _, n := range []string{"1", "2"} {
			out = append(out, shell(t, "cd "+root+" && find . | sort | cpio -o -H newc --quiet | zstd -q -c -3 -T"+n+" | sha256sum", "zstd", "cpio"))
		}
		if out[0] != out[1] {
			t.Errorf("zstd -T1 and -T2 differ: %s %s", out[0], out[1])
		}
	}
}

func TestBuildSourceDateEpoch(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	t.Setenv("SOURCE_DATE_EPOCH", "1000000000")
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "sde", Store: st})
	for _, e := range readArchive(t, decompress(t, st, m.Rootfs)) {
		if e.hdr.ModTime.Unix() != 1_000_000_000 {
			t.Errorf("%s: mtime %d, want 1000000000", e.hdr.Name, e.hdr.ModTime.Unix())
		}
	}
	explicit := time.Unix(900_000_000, 0)
	m2, _ := mustBuild(t, build.Options{RootDir: root, Name: "sde2", Store: st, SourceDateEpoch: &explicit})
	if m2.ContentDigest == m.ContentDigest {
		t.Error("Options.SourceDateEpoch did not override the environment")
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "bad", Store: st}); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: err = %v", err)
	}
}

// bzImage returns the start of a fake x86 bzImage whose header names
// release.
func bzImage(release string) []byte {
	b := make([]byte, 0x4000)
	binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	binary.LittleEndian.PutUint16(b[0x20e:], 0x3000-0x200)
	copy(b[0x3000:], release+" (test@example.org) #1 SMP PREEMPT_DYNAMIC\x00")
	return b
}

func TestBuildKernelOverride(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	k := filepath.Join(t.TempDir(), "bzImage")
	kb := bzImage("6.12.9-custom")
	if err := os.WriteFile(k, kb, 0o644); err != nil {
		t.Fatal(err)
	}
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "custom", Store: newStore(t), Kernel: k})
	if m.Kernel.Digest != images.DigestOf(kb) || m.KernelVersion != "6.12.9-custom" {
		t.Errorf("kernel %+v version %q, want the override and 6.12.9-custom", m.Kernel, m.KernelVersion)
	}
}

func TestBuildNewestKernel(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	boot := filepath.Join(root, "boot")
	if err := os.Remove(filepath.Join(boot, "vmlinuz-6.1.0-test")); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"6.1.0-10-amd64", "6.1.0-9-amd64"} { // the older one written last
		if err := os.WriteFile(filepath.Join(boot, "vmlinuz-"+v), []byte("kernel "+v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/boot/vmlinuz-99", filepath.Join(boot, "vmlinuz-99")); err != nil {
		t.Fatal(err)
	}
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "newest", Store: newStore(t)})
	if m.KernelVersion != "6.1.0-10-amd64" || m.Kernel.Digest != images.DigestOf([]byte("kernel 6.1.0-10-amd64")) {
		t.Errorf("picked %q (%s), want 6.1.0-10-amd64", m.KernelVersion, m.Kernel.Digest)
	}
}

func TestBuildTreeWithoutEtc(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"boot", "bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "boot", "vmlinuz-1"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "minimal", Store: st})
	got := strings.Join(names(readArchive(t, decompress(t, st, m.Rootfs))), " ")
	if want := ". bin boot boot/vmlinuz-1 etc etc/ramboot etc/ramboot/image-id"; got != want {
		t.Errorf("entries %q, want %q", got, want)
	}
}

func TestBuildReplacesStaleImageID(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	stale := filepath.Join(root, overlay.ImageIDPath)
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("sha256:stale\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "rebuilt", Store: st})
	es := readArchive(t, decompress(t, st, m.Rootfs))
	var ids, dirs int
	for _, e := range es {
		switch e.hdr.Name {
		case overlay.ImageIDPath:
			ids++
		case "etc/ramboot":
			dirs++
		}
	}
	if dirs != 1 {
		t.Errorf("%d etc/ramboot entries, want the tree's one", dirs)
	}
	last := es[len(es)-1]
	if ids != 1 || last.hdr.Name != overlay.ImageIDPath || string(last.data) != string(m.ContentDigest)+"\n" {
		t.Errorf("%d image-id entries, last %q = %q", ids, last.hdr.Name, last.data)
	}
}

func TestBuildErrors(t *testing.T) {
	good := t.TempDir()
	makeTree(t, good)
	noKernel := t.TempDir()
	if err := os.Mkdir(filepath.Join(noKernel, "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	etcFile := t.TempDir()
	makeTree(t, etcFile)
	if err := os.RemoveAll(filepath.Join(etcFile, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(etcFile, "etc")); err != nil {
		t.Fatal(err)
	}
	slashLink := filepath.Join(t.TempDir(), "slash")
	if err := os.Symlink("/", slashLink); err != nil {
		t.Fatal(err)
	}
	st := newStore(t)

	tests := []struct {
		name string
		opt  build.Options
		is   error
		want []string
	}{
		{"no-kernel", build.Options{RootDir: noKernel, Name: "x", Store: st}, build.ErrNoKernel, []string{filepath.Join(noKernel, "boot")}},
		{"root-slash", build.Options{RootDir: "/", Name: "x", Store: st}, nil, []string{"refusing", "host's root"}},
		{"root-slash-dots", build.Options{RootDir: "/usr/..", Name: "x", Store: st}, nil, []string{"refusing"}},
		{"root-slash-symlink", build.Options{RootDir: slashLink, Name: "x", Store: st}, nil, []string{"refusing"}},
		{"missing-root", build.Options{RootDir: filepath.Join(good, "nope"), Name: "x", Store: st}, os.ErrNotExist, []string{"nope"}},
		{"missing-kernel-file", build.Options{RootDir: good, Name: "x", Store: st, Kernel: "/nonexistent/bzImage"}, os.ErrNotExist, []string{"/nonexistent/bzImage"}},
		{"etc-symlink", build.Options{RootDir: etcFile, Name: "x", Store: st}, nil, []string{"etc is a", "not a directory"}},
		{"everything", build.Options{Name: "Bad Name", Level: 99}, nil, []string{"invalid image name", "no store", "zstd level 99", "no source"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := build.Build(context.Background(), tt.opt)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v, want it to contain %q", err, w)
				}
			}
		})
	}
	if refs, err := st.List(); err != nil || len(refs) != 0 {
		t.Errorf("failed builds left refs: %v, %v", refs, err)
	}
}

// countdownCtx is a context whose Err reports cancellation once it has
// been asked n times: Build and the store check Err as they go, so this
// cancels a build at a repeatable point.
type countdownCtx struct {
	context.Context
	n atomic.Int64
}

func newCountdown(n int64) *countdownCtx {
	c := &countdownCtx{Context: context.Background()}
	c.n.Store(n)
	return c
}

func (c *countdownCtx) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestBuildCancelled(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	// Count the checks of a whole build, then cancel at points across it.
	full := newCountdown(1 << 30)
	fullM, _, err := build.Build(full, build.Options{RootDir: root, Name: "full", Store: newStore(t)})
	if err != nil {
		t.Fatal(err)
	}
	checks := 1<<30 - full.n.Load()
	if checks < 10 {
		t.Fatalf("a build checks its context %d times", checks)
	}
	for _, n := range []int64{0, checks / 4, checks / 2, 3 * checks / 4, checks - 1} {
		t.Run(fmt.Sprintf("after-%d", n), func(t *testing.T) {
			st := newStore(t)
			ctx := newCountdown(n)
			_, _, err := build.Build(ctx, build.Options{RootDir: root, Name: "cancelled", Store: st})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if _, _, err := st.Resolve("cancelled"); !errors.Is(err, images.ErrNotFound) {
				t.Errorf("Resolve after a cancelled build = %v, want ErrNotFound", err)
			}
			// At most the kernel and the rootfs got in (cancelled while
			// the compressed root was written), unnamed until GC.
			kernel := images.DigestOf([]byte(fakeKernel)).Hex()
			des, _ := os.ReadDir(filepath.Join(st.Dir, "blobs", "sha256"))
			for _, de := range des {
				if de.Name() != kernel && de.Name() != fullM.Rootfs.Digest.Hex() {
					t.Errorf("blob %s stored by a cancelled build", de.Name())
				}
			}
			if des, _ := os.ReadDir(filepath.Join(st.Dir, "tmp")); len(des) != 0 {
				t.Errorf("tmp not empty: %v", des)
			}
		})
	}
}

func isRoot() bool { return os.Geteuid() == 0 }
