package build_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/overlay"
)

// makeModulesTree adds a merged-/usr module directory to the tree at dir:
// loop, squashfs (which depends on a helper) and overlay, and a module
// the compressed root does not need.
func makeModulesTree(t *testing.T, dir string) {
	t.Helper()
	mods := filepath.Join(dir, "usr/lib/modules/6.1.0-test")
	files := map[string]string{
		"modules.dep": "kernel/drivers/block/loop.ko:\n" +
			"kernel/fs/squashfs/squashfs.ko: kernel/lib/sq-helper.ko\n" +
			"kernel/lib/sq-helper.ko:\n" +
			"kernel/fs/overlayfs/overlay.ko:\n" +
			"kernel/drivers/net/e1000.ko:\n",
		"kernel/drivers/block/loop.ko":   "loop module",
		"kernel/fs/squashfs/squashfs.ko": "squashfs module",
		"kernel/lib/sq-helper.ko":        "helper module",
		"kernel/fs/overlayfs/overlay.ko": "overlay module",
		"kernel/drivers/net/e1000.ko":    "e1000 module",
	}
	for name, data := range files {
		p := filepath.Join(mods, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/lib", filepath.Join(dir, "lib")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp/junk"), []byte("left out by the default excludes"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps)", tool)
		}
	}
}

// squashfsOf returns the squashfs image inside an image's compressed root
// archive, and checks that it sits on a page boundary there.
func squashfsOf(t *testing.T, st *images.Store, a images.Artifact) []byte {
	t.Helper()
	f, err := st.OpenBlob(a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off, n, err := images.CompressedRootOffset(f, a.Size)
	if err != nil {
		t.Fatalf("CompressedRootOffset: %v", err)
	}
	if off%4096 != 0 {
		t.Errorf("squashfs data at %d, not on a page boundary", off)
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("hsqs")) {
		t.Fatalf("no squashfs magic at offset %d", off)
	}
	return b
}

func TestCompressedRoot(t *testing.T) {
	needTools(t, build.Tar2sqfs, "unsquashfs")
	root := t.TempDir()
	makeTree(t, root)
	makeModulesTree(t, root)
	st := newStore(t)
	m, _ := mustBuild(t, build.Options{RootDir: root, Name: "sq", Store: st, Compressor: "go"})
	if m.CompressedRoot == nil {
		t.Fatal("no compressed root in the manifest")
	}
	if m.CompressedRoot.MediaType != images.MediaTypeCompressedRoot || !st.HasBlob(*m.CompressedRoot) {
		t.Fatalf("compressed root %+v not stored", m.CompressedRoot)
	}

	t.Run("archive", func(t *testing.T) {
		f, err := st.OpenBlob(m.CompressedRoot.Digest)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		es := readArchive(t, b)
		want := []string{
			".ramboot", ".ramboot/modules", ".ramboot/modules/6.1.0-test",
			".ramboot/modules/6.1.0-test/kernel",
			".ramboot/modules/6.1.0-test/kernel/drivers", ".ramboot/modules/6.1.0-test/kernel/drivers/block",
			".ramboot/modules/6.1.0-test/kernel/drivers/block/loop.ko",
			".ramboot/modules/6.1.0-test/kernel/fs",
			".ramboot/modules/6.1.0-test/kernel/fs/overlayfs", ".ramboot/modules/6.1.0-test/kernel/fs/overlayfs/overlay.ko",
			".ramboot/modules/6.1.0-test/kernel/fs/squashfs", ".ramboot/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko",
			".ramboot/modules/6.1.0-test/kernel/lib", ".ramboot/modules/6.1.0-test/kernel/lib/sq-helper.ko",
			".ramboot/modules/6.1.0-test/modules.dep",
			".ramboot/.pad", images.CompressedRootImage,
		}
		if got := names(es); !slices.Equal(got, want) {
			t.Errorf("archive:\n%q\nwant\n%q", got, want)
		}
		for _, e := range es {
			switch e.hdr.Name {
			case ".ramboot/modules/6.1.0-test/modules.dep":
				wantDep := "kernel/drivers/block/loop.ko:\nkernel/fs/overlayfs/overlay.ko:\n" +
					"kernel/fs/squashfs/squashfs.ko: kernel/lib/sq-helper.ko\nkernel/lib/sq-helper.ko:\n"
				if string(e.data) != wantDep {
					t.Errorf("modules.dep:\n%s\nwant\n%s", e.data, wantDep)
				}
			case ".ramboot/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko":
				if string(e.data) != "squashfs module" {
					t.Errorf("squashfs.ko holds %q", e.data)
				}
			}
		}
	})

	t.Run("squashfs", func(t *testing.T) {
		img := filepath.Join(t.TempDir(), "root.squashfs")
		if err := os.WriteFile(img, squashfsOf(t, st, *m.CompressedRoot), 0o600); err != nil {
			t.Fatal(err)
		}
		// The squashfs holds what the cpio archive holds, name for name.
		out := shell(t, "unsquashfs -no-progress -d R -ls "+img+" | sed -n 's|^R/||p'", "unsquashfs")
		got := strings.Split(strings.TrimSpace(out), "\n")
		var want []string
		for _, n := range names(readArchive(t, decompress(t, st, m.Rootfs))) {
			if n != "." {
				want = append(want, n)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("squashfs names:\n%q\nthe cpio archive's:\n%q", got, want)
		}
		if slices.Contains(got, "tmp/junk") || !slices.Contains(got, "tmp") {
			t.Error("the default excludes were not applied as in the cpio archive")
		}
		id := shell(t, "unsquashfs -cat "+img+" "+overlay.ImageIDPath, "unsquashfs")
		if id != string(m.ContentDigest)+"\n" {
			t.Errorf("image-id %q, want the content digest %s", id, m.ContentDigest)
		}
		long := shell(t, "unsquashfs -no-progress -lln "+img, "unsquashfs")
		for _, want := range []string{"lrwxrwxrwx 0/0", "squashfs-root/bin -> usr/bin", "squashfs-root/usr/bin/tool2", "squashfs-root/usr/lib/modules/6.1.0-test/modules.dep"} {
			if !strings.Contains(long, want) {
				t.Errorf("listing lacks %q:\n%s", want, long)
			}
		}
	})

	t.Run("mounted", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("mounting needs root")
		}
		mountSquashfs(t, st, *m.CompressedRoot, func(dir string) {
			var a, b unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, "usr/bin/tool"), &a); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lstat(filepath.Join(dir, "usr/bin/tool2"), &b); err != nil {
				t.Fatal(err)
			}
			if a.Ino != b.Ino || a.Nlink != 2 {
				t.Errorf("tool and tool2: inodes %d %d, links %d: not hard links", a.Ino, b.Ino, a.Nlink)
			}
			src, _ := os.ReadFile(filepath.Join(root, "usr/bin/tool"))
			got, err := os.ReadFile(filepath.Join(dir, "usr/bin/tool"))
			if err != nil || !bytes.Equal(got, src) {
				t.Errorf("usr/bin/tool: %v, %d bytes, want %d", err, len(got), len(src))
			}
			var st0 unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, "etc/hostname"), &st0); err != nil {
				t.Fatal(err)
			}
			var st1 unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, "etc/hostname"), &st1); err != nil {
				t.Fatal(err)
			}
			if st0.Mtim.Sec != st1.Mtim.Sec || st0.Mode != st1.Mode {
				t.Errorf("etc/hostname: mtime %d mode %o, want %d %o", st1.Mtim.Sec, st1.Mode, st0.Mtim.Sec, st0.Mode)
			}
		})
	})

	t.Run("reproducible", func(t *testing.T) {
		m2, _ := mustBuild(t, build.Options{RootDir: root, Name: "sq2", Store: newStore(t), Compressor: "go"})
		if *m2.CompressedRoot != *m.CompressedRoot {
			t.Errorf("two builds: %+v and %+v", m2.CompressedRoot, m.CompressedRoot)
		}
		// Another level: another blob.
		m3, _ := mustBuild(t, build.Options{RootDir: root, Name: "sq3", Store: st, Compressor: "go", SquashfsLevel: 3})
		if m3.CompressedRoot.Digest == m.CompressedRoot.Digest || m3.ContentDigest != m.ContentDigest {
			t.Errorf("level 3 gave the same compressed root, or another content")
		}
		// tar2sqfs writes the same image whatever its number of jobs.
		tarball := filepath.Join(t.TempDir(), "t.tar")
		shell(t, "tar --sort=name -C "+root+" -cf "+tarball+" .", "tar")
		out := shell(t, "for j in 1 2 4; do tar2sqfs -q -f -j $j -c zstd "+tarball+".$j.sqfs < "+tarball+"; sha256sum < "+tarball+".$j.sqfs; done | sort -u | wc -l", build.Tar2sqfs)
		if strings.TrimSpace(out) != "1" {
			t.Errorf("tar2sqfs -j 1, 2, 4 gave %s different images", strings.TrimSpace(out))
		}
	})

	t.Run("cached", func(t *testing.T) {
		// The no-op rebuild keeps the compressed root; a build without it
		// is another build.
		m4, _ := mustBuild(t, build.Options{RootDir: root, Name: "sq", Store: st, Compressor: "go"})
		if m4.CompressedRoot == nil || *m4.CompressedRoot != *m.CompressedRoot {
			t.Errorf("cached rebuild: %+v", m4.CompressedRoot)
		}
		m5, _ := mustBuild(t, build.Options{RootDir: root, Name: "sq", Store: st, Compressor: "go", NoCompressedRoot: true})
		if m5.CompressedRoot != nil {
			t.Errorf("NoCompressedRoot: %+v", m5.CompressedRoot)
		}
		if m5.Rootfs != m.Rootfs {
			t.Errorf("NoCompressedRoot changed the rootfs")
		}
	})
}

// mountSquashfs mounts the squashfs inside a compressed root archive the
// way the node does: a read-only loop device at the image's offset.
func mountSquashfs(t *testing.T, st *images.Store, a images.Artifact, fn func(dir string)) {
	t.Helper()
	f, err := st.OpenBlob(a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	off, n, err := images.CompressedRootOffset(f, a.Size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opts := "loop,ro,offset=" + itoa(off) + ",sizelimit=" + itoa(n)
	if out, err := exec.Command("mount", "-t", "squashfs", "-o", opts, filepath.Join(st.Dir, "blobs", "sha256", a.Digest.Hex()), dir).CombinedOutput(); err != nil {
		t.Skipf("mount squashfs (module missing?): %v: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	}()
	fn(dir)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestCompressedRootNeedsTar2sqfs(t *testing.T) {
	root := t.TempDir()
	makeTree(t, root)
	t.Setenv("PATH", t.TempDir())
	_, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "x", Store: newStore(t), Compressor: "go"})
	if err == nil || !strings.Contains(err.Error(), "squashfs-tools-ng") || !strings.Contains(err.Error(), "--no-compressed-root") {
		t.Fatalf("Build without tar2sqfs: %v, want an error naming the package and the flag", err)
	}
	if _, _, err := build.Build(context.Background(), build.Options{RootDir: root, Name: "x", Store: newStore(t), Compressor: "go", NoCompressedRoot: true}); err != nil {
		t.Fatalf("Build with NoCompressedRoot and no tar2sqfs: %v", err)
	}
}
