package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/source"
)

type tarEntry struct {
	name     string
	typ      byte
	data     string
	link     string
	mode     int64
	uid, gid int
	major    int64
	minor    int64
}

func ociLayer(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		if e.typ == 0 {
			e.typ = tar.TypeReg
		}
		if e.mode == 0 {
			e.mode = 0o644
			switch e.typ {
			case tar.TypeDir:
				e.mode = 0o755
			case tar.TypeSymlink:
				e.mode = 0o777
			}
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			Devmajor: e.major, Devminor: e.minor, ModTime: time.Unix(1_700_000_000, 0), Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.data))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestBuildOCI builds from an OCI layout of two layers and checks the
// image with GNU cpio: whiteouts applied, owners, modes, device nodes,
// setuid bits, hard links (with their link count), symlinks and empty
// directories kept.
func TestBuildOCI(t *testing.T) {
	base := ociLayer(t,
		tarEntry{name: "bin/", typ: tar.TypeDir},
		tarEntry{name: "bin/busybox", data: "busybox binary", mode: 0o755},
		tarEntry{name: "bin/sh", typ: tar.TypeLink, link: "bin/busybox"},
		tarEntry{name: "bin/ls", typ: tar.TypeLink, link: "bin/busybox"},
		tarEntry{name: "bin/su", data: "su", mode: 0o4755},
		tarEntry{name: "boot/", typ: tar.TypeDir},
		tarEntry{name: "boot/vmlinuz-6.1.0-oci", data: fakeKernel},
		tarEntry{name: "dev/", typ: tar.TypeDir},
		tarEntry{name: "dev/console", typ: tar.TypeChar, mode: 0o600, major: 5, minor: 1},
		tarEntry{name: "dev/loop0", typ: tar.TypeBlock, mode: 0o660, major: 7, minor: 0, gid: 6},
		tarEntry{name: "home/user/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
		tarEntry{name: "home/user/.profile", data: "PS1=x", uid: 1000, gid: 1000},
		tarEntry{name: "etc/", typ: tar.TypeDir},
		tarEntry{name: "etc/secret", data: "s"},
		tarEntry{name: "var/empty/", typ: tar.TypeDir},
		tarEntry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		tarEntry{name: "usr/lib/", typ: tar.TypeDir},
	)
	upper := ociLayer(t,
		tarEntry{name: "etc/.wh.secret"},
		tarEntry{name: "etc/motd", data: "hi"},
		tarEntry{name: "lib/libc.so", data: "libc"}, // through lib -> usr/lib
	)
	img, err := mutate.AppendLayers(empty.Image, base, upper)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	src, err := source.Parse(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{Source: src, Name: "oci:v1", Store: st})
	digest, _ := img.Digest()
	if m.Source != "oci:"+dir+"@"+digest.String() || m.KernelVersion != "6.1.0-oci" || m.Tag != "v1" {
		t.Errorf("manifest %+v", m)
	}
	blob := blobPath(st, m.Rootfs.Digest)
	list := shell(t, "zstd -dc "+blob+" | cpio -itv --quiet --numeric-uid-gid", "zstd", "cpio")
	for _, want := range []string{
		"-rwxr-xr-x   3 0        0              14 ", // busybox: 3 links, data on the last
		"-rwsr-xr-x   1 0        0               2 ", // su, setuid
		"crw-------   1 0        0          5,   1 ",
		"brw-rw----   1 0        6          7,   0 ",
		"drwx------   2 1000     1000            0 ",
		"lrwxrwxrwx   1 0        0               7 ",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("cpio -itv lacks %q:\n%s", want, list)
		}
	}
	for _, gone := range []string{"etc/secret"} {
		if strings.Contains(list, gone) {
			t.Errorf("whited-out %s in the image", gone)
		}
	}
	for _, want := range []string{"usr/lib/libc.so", "etc/motd", "var/empty\n", "lib -> usr/lib"} {
		if !strings.Contains(list, want) {
			t.Errorf("cpio -itv lacks %q:\n%s", want, list)
		}
	}
	if !isRoot() {
		return
	}
	out := t.TempDir()
	shell(t, "cd "+out+" && zstd -dc "+blob+" | cpio -idm --no-absolute-filenames --quiet", "zstd", "cpio")
	a, _ := os.Stat(filepath.Join(out, "bin/sh"))
	b, _ := os.Stat(filepath.Join(out, "bin/busybox"))
	if a == nil || b == nil || !os.SameFile(a, b) {
		t.Errorf("bin/sh and bin/busybox are not one file after cpio -i")
	}
	if data, _ := os.ReadFile(filepath.Join(out, "bin/ls")); string(data) != "busybox binary" {
		t.Errorf("bin/ls = %q", data)
	}

	// The compressed root of a container source: the same files, hard
	// links, set-id bits and device nodes, read through the kernel.
	if m.CompressedRoot == nil {
		t.Fatal("no compressed root")
	}
	mountSquashfs(t, st, *m.CompressedRoot, func(dir string) {
		a, _ := os.Stat(filepath.Join(dir, "bin/sh"))
		b, _ := os.Stat(filepath.Join(dir, "bin/busybox"))
		if a == nil || b == nil || !os.SameFile(a, b) {
			t.Errorf("squashfs: bin/sh and bin/busybox are not one file")
		}
		if fi, err := os.Stat(filepath.Join(dir, "bin/su")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
			t.Errorf("squashfs: bin/su %v, %v: not setuid", fi, err)
		}
		if fi, err := os.Lstat(filepath.Join(dir, "dev/loop0")); err != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			t.Errorf("squashfs: dev/loop0 %v, %v: not a block device", fi, err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "usr/lib/libc.so")); err != nil || string(b) != "libc" {
			t.Errorf("squashfs: usr/lib/libc.so %q, %v", b, err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "etc/secret")); !os.IsNotExist(err) {
			t.Errorf("squashfs: whited-out etc/secret: %v", err)
		}
		if fi, err := os.Stat(filepath.Join(dir, "home/user")); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("squashfs: home/user %v, %v", fi, err)
		}
	})
}

func TestBuildExcludes(t *testing.T) {
	root := t.TempDir()
	treeNames := makeTree(t, root)
	files := map[string]string{
		"tmp/junk":                              "x",
		"var/cache/apt/archives/libc6_2.36.deb": "deb",
		"var/cache/apt/pkgcache.bin":            "bin",
		"boot/vmlinuz-5.10.0-old":               "old kernel",
		"boot/initrd.img-5.10.0-old":            "old initrd",
		"boot/System.map-5.10.0-old":            "old map",
		"boot/config-6.1.0-test":                "kept: the booted kernel's",
		"lib/modules/5.10.0-old/kernel/x.ko":    "old module",
		"lib/modules/6.1.0-test/kernel/y.ko":    "module",
		"srv/data/big.iso":                      "iso",
		"srv/data/keep.txt":                     "keep",
	}
	for n, c := range files {
		p := filepath.Join(root, n)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "x", Store: st, Excludes: []string{"*.iso", "/usr/share/doc"}})
	got := names(readArchive(t, decompress(t, st, m.Rootfs)))
	all := strings.Join(got, "\n")
	for _, gone := range []string{"tmp/junk", ".deb", "pkgcache.bin", "5.10.0-old", "big.iso", "usr/share/doc"} {
		if strings.Contains(all, gone) {
			t.Errorf("%s not excluded:\n%s", gone, all)
		}
	}
	for _, kept := range []string{"tmp", "var/cache/apt/archives", "boot/config-6.1.0-test", "lib/modules/6.1.0-test/kernel/y.ko", "srv/data/keep.txt", "usr/share"} {
		if !strings.Contains(all, kept+"\n") {
			t.Errorf("%s left out:\n%s", kept, all)
		}
	}
	if !strings.Contains(strings.Join(m.Excludes, " "), "lib/modules/5.10.0-old") || !strings.Contains(strings.Join(m.Excludes, " "), "*.iso") {
		t.Errorf("manifest excludes %v", m.Excludes)
	}
	_ = treeNames
	m2, _ := mustBuild(t, build.Options{RootDir: root, Name: "all", Store: st, NoDefaultExcludes: true})
	all2 := strings.Join(names(readArchive(t, decompress(t, st, m2.Rootfs))), "\n")
	for _, kept := range []string{"tmp/junk", "libc6_2.36.deb", "lib/modules/5.10.0-old", "boot/vmlinuz-5.10.0-old"} {
		if !strings.Contains(all2, kept) {
			t.Errorf("NoDefaultExcludes left out %s", kept)
		}
	}
	if _, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "bad", Store: st, Excludes: []string{"[x"}}); err == nil || !strings.Contains(err.Error(), `"[x"`) {
		t.Errorf("bad pattern: %v", err)
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"tmp/*", "tmp/x", true},
		{"tmp/*", "tmp", false},
		{"tmp/*", "tmp/x/y", false},
		{"/tmp", "tmp", true},
		{"*.pyc", "usr/lib/python3/a.pyc", true},
		{"__pycache__", "usr/lib/python3/__pycache__", true},
		{"usr/share/doc/*", "usr/share/doc/bash", true},
		{"usr/share/doc/*", "usr/share/docs/bash", false},
	}
	for _, tt := range tests {
		if got := build.Match([]string{tt.pattern}, tt.name); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestBuildGzip(t *testing.T) {
	root := t.TempDir()
	treeNames := makeTree(t, root)
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "old-kernel", Store: st, Compression: build.Gzip})
	if m.Rootfs.MediaType != images.MediaTypeRootfsGzip {
		t.Errorf("media type %q", m.Rootfs.MediaType)
	}
	list := shell(t, "gzip -dc "+blobPath(st, m.Rootfs.Digest)+" | cpio -t --quiet", "gzip", "cpio")
	if want := strings.Join(append(treeNames, "etc/ramboot", "etc/ramboot/image-id"), "\n") + "\n"; list != want {
		t.Errorf("gzip -dc | cpio -t:\n%s\nwant\n%s", list, want)
	}
	if _, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "x", Store: st, Compression: "lz4"}); err == nil || !strings.Contains(err.Error(), "lz4") {
		t.Errorf("unknown compression: %v", err)
	}
}

// storeState lists every file under the store with its size and
// modification time, to show that a no-op rebuild writes nothing.
func storeState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "lock" {
			return err
		}
		fi, _ := d.Info()
		b.WriteString(p + " " + fi.ModTime().String() + "\n")
		return nil
	})
	return b.String()
}

func TestBuildNoopRebuild(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	writeBenchTree(t, filepath.Join(root, "usr", "big"), 8<<20)
	st := newStore(t)
	m1, d1 := mustBuild(t, build.Options{RootDir: root, Name: "img", Store: st})
	before := storeState(t, st.Dir)

	var phases []build.Phase
	start := time.Now()
	m2, d2 := mustBuild(t, build.Options{RootDir: root, Name: "img", Store: st, Progress: func(p build.Progress) { phases = append(phases, p.Phase) }})
	dur := time.Since(start)
	if d2 != d1 || !m2.Created.Equal(m1.Created) {
		t.Errorf("no-op rebuild gave %s, want %s", d2, d1)
	}
	if dur > 500*time.Millisecond {
		t.Errorf("no-op rebuild took %s, want < 0.5 s", dur)
	}
	if phases[len(phases)-1] != build.PhaseCached {
		t.Errorf("phases %v, want the last to be cached", phases)
	}
	if after := storeState(t, st.Dir); after != before {
		t.Errorf("no-op rebuild changed the store:\n%s\nbefore:\n%s", after, before)
	}

	// Another name: a new manifest on the same blobs, no archive written.
	m3, d3 := mustBuild(t, build.Options{RootDir: root, Name: "img:copy", Store: st})
	if d3 == d1 || m3.Rootfs != m1.Rootfs || m3.Tag != "copy" {
		t.Errorf("rebuild under another name: %s %+v", d3, m3)
	}

	// What invalidates the cache: content (even with the old mtime), mode,
	// a new file, options.
	changes := []struct {
		name   string
		change func()
		opt    func(*build.Options)
	}{
		{"content-same-mtime", func() {
			p := filepath.Join(root, "etc/hostname")
			fi, _ := os.Stat(p)
			os.WriteFile(p, []byte("nodf\n"), 0o644)
			os.Chtimes(p, fi.ModTime(), fi.ModTime())
		}, nil},
		{"chmod", func() { os.Chmod(filepath.Join(root, "etc/hostname"), 0o600) }, nil},
		{"new-file", func() { os.WriteFile(filepath.Join(root, "etc/new"), []byte("n"), 0o644) }, nil},
		{"level", func() {}, func(o *build.Options) { o.Level = 1 }},
		{"exclude", func() {}, func(o *build.Options) { o.Excludes = []string{"etc/new"} }},
	}
	last := d1
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			c.change()
			opt := build.Options{RootDir: root, Name: "img", Store: st}
			if c.opt != nil {
				c.opt(&opt)
			}
			var cached bool
			opt.Progress = func(p build.Progress) { cached = cached || p.Phase == build.PhaseCached }
			_, d := mustBuild(t, opt)
			if cached || d == last {
				t.Errorf("%s: rebuild was cached (%s)", c.name, d)
			}
			last = d
		})
	}
	// GC'd blobs make the cache miss rather than commit a broken image.
	if _, err := st.Remove("img"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Remove("img:copy"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GC(images.GCOptions{MinAge: -1}); err != nil {
		t.Fatal(err)
	}
	_, d := mustBuild(t, build.Options{RootDir: root, Name: "img", Store: st, Excludes: []string{"etc/new"}})
	if _, _, err := st.Resolve(string(d)); err != nil {
		t.Errorf("build after GC: %v", err)
	}
}

func TestBuildBadInput(t *testing.T) {
	st := newStore(t)
	t.Run("too-large", func(t *testing.T) {
		root := t.TempDir()
		makeTree(t, root)
		big := filepath.Join(root, "usr/share/huge.img")
		f, err := os.Create(big)
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(4<<30 + 1) // sparse
		f.Close()
		_, _, err = build.Build(context.Background(), build.Options{RootDir: root, Name: "huge", Store: st})
		if err == nil || !strings.Contains(err.Error(), big) || !strings.Contains(err.Error(), "4 GiB") {
			t.Fatalf("Build = %v, want an error naming %s", err, big)
		}
	})
	t.Run("not-a-root-tree", func(t *testing.T) {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "boot"), 0o755)
		os.WriteFile(filepath.Join(root, "boot/vmlinuz-1"), []byte("k"), 0o644)
		_, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "x", Store: st})
		if !errors.Is(err, source.ErrNotRootTree) || !strings.Contains(err.Error(), root) {
			t.Fatalf("Build = %v", err)
		}
	})
	t.Run("file-gone-while-archiving", func(t *testing.T) {
		root := t.TempDir()
		makeTree(t, root)
		victim := filepath.Join(root, "usr/share/doc/README")
		_, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "vanish", Store: st, Progress: func(p build.Progress) {
			if p.Phase == build.PhaseArchive {
				os.Remove(victim)
			}
		}})
		if err == nil || !strings.Contains(err.Error(), victim) {
			t.Fatalf("Build = %v, want an error naming %s", err, victim)
		}
	})
	t.Run("bad-layer", func(t *testing.T) {
		l, _ := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(strings.Repeat("not a tar header ", 64))), nil
		})
		img, _ := mutate.AppendLayers(empty.Image, ociLayer(t, tarEntry{name: "bin/", typ: tar.TypeDir}), l)
		dir := t.TempDir()
		p, _ := layout.Write(dir, empty.Index)
		p.AppendImage(img)
		src, _ := source.Parse(dir)
		_, _, err := build.Build(context.Background(), build.Options{Source: src, Name: "badlayer", Store: st})
		if err == nil || !strings.Contains(err.Error(), "layer 2 (sha256:") || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Build = %v", err)
		}
	})
	refs, err := st.List()
	if err != nil || len(refs) != 0 {
		t.Errorf("bad input left images: %+v, %v", refs, err)
	}
	if des, _ := os.ReadDir(filepath.Join(st.Dir, "tmp")); len(des) != 0 {
		t.Errorf("tmp not empty: %v", des)
	}
}

// TestBuildFullDisk builds into a store on a 4 MiB tmpfs: the build fails
// with the kernel's "no space left on device", commits nothing and leaves
// no temporary file behind.
func TestBuildFullDisk(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	root := t.TempDir()
	makeTree(t, root)
	writeBenchTree(t, filepath.Join(root, "usr", "data"), 16<<20) // 20% random: does not fit compressed
	st := &images.Store{Dir: filepath.Join(mnt, "store")}
	for _, comp := range []string{"zstd", "go"} {
		if _, err := exec.LookPath("zstd"); err != nil && comp == "zstd" {
			continue
		}
		_, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "full", Store: st, Compressor: comp})
		if !errors.Is(err, unix.ENOSPC) && (err == nil || !strings.Contains(err.Error(), "no space left")) {
			t.Fatalf("%s: Build on a full disk = %v", comp, err)
		}
		if refs, err := st.List(); err != nil || len(refs) != 0 {
			t.Errorf("%s: refs %v, %v", comp, refs, err)
		}
		if des, _ := os.ReadDir(filepath.Join(st.Dir, "tmp")); len(des) != 0 {
			t.Errorf("%s: tmp/ holds %d files", comp, len(des))
		}
	}
}
