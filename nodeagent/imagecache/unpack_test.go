package imagecache

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (owners, device nodes)")
	}
}

// sampleTree makes a tree with every kind of entry an image has.
func sampleTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "tmp"), 0o755))
	must(os.Chmod(filepath.Join(dir, "tmp"), 0o1777))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/su"), []byte("setuid"), 0o755))
	must(unix.Chmod(filepath.Join(dir, "usr/bin/su"), 0o4755))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/a"), bytes.Repeat([]byte("x"), 3<<20+5), 0o755))
	must(os.Link(filepath.Join(dir, "usr/bin/a"), filepath.Join(dir, "usr/bin/b")))
	must(os.Link(filepath.Join(dir, "usr/bin/a"), filepath.Join(dir, "c")))
	must(os.Symlink("usr/bin", filepath.Join(dir, "bin")))
	must(os.WriteFile(filepath.Join(dir, "owned"), []byte("x"), 0o640))
	must(os.Lchown(filepath.Join(dir, "owned"), 1234, 5678))
	must(os.Mkdir(filepath.Join(dir, "dev"), 0o755))
	must(unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	must(os.WriteFile(filepath.Join(dir, "empty"), nil, 0o600))
	return dir
}

// archive returns the tree as a zstd-compressed newc archive made by GNU
// cpio and zstd.
func archive(t *testing.T, dir string) []byte {
	t.Helper()
	cmd := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio --quiet -o -H newc | zstd -q -c")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	return out
}

type fileInfo struct {
	mode           fs.FileMode
	uid, gid, link uint32
	size, mtime    int64
	rdev           uint64
	target, data   string
}

func walk(t *testing.T, dir string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		fi := fileInfo{mode: fs.FileMode(st.Mode), uid: st.Uid, gid: st.Gid, link: uint32(st.Nlink), size: st.Size, rdev: st.Rdev}
		if !d.IsDir() && d.Type()&fs.ModeSymlink == 0 {
			// GNU cpio -m sets no symbolic link's time (the kernel
			// and Unpack do): compare the others.
			fi.mtime = st.Mtim.Sec
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			fi.target, _ = os.Readlink(p)
		case d.Type().IsRegular():
			b, _ := os.ReadFile(p)
			fi.data = string(b)
		}
		out[rel] = fi
		return nil
	})
	return out
}

// TestUnpackLikeGNUCpio: what Unpack writes is what GNU cpio -idm writes
// from the same archive: modes (setuid), owners, hard links, symlinks,
// devices, fifos, times.
func TestUnpackLikeGNUCpio(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("needs GNU cpio (make deps)")
	}
	arc := archive(t, sampleTree(t))
	mine := t.TempDir()
	st, err := UnpackZstd(context.Background(), bytes.NewReader(arc), mine)
	if err != nil {
		t.Fatal(err)
	}
	gnu := t.TempDir()
	cmd := exec.Command("sh", "-c", "zstd -d -q -c | cpio --quiet -idm --no-absolute-filenames")
	cmd.Dir, cmd.Stdin = gnu, bytes.NewReader(arc)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GNU cpio: %v %s", err, out)
	}
	a, b := walk(t, mine), walk(t, gnu)
	if len(a) != len(b) {
		t.Errorf("%d entries, GNU cpio %d", len(a), len(b))
	}
	for name, want := range b {
		if name == "." {
			continue
		}
		if got := a[name]; got != want {
			t.Errorf("%s: got %+v\nGNU cpio %+v", name, short(got), short(want))
		}
	}
	if a["usr/bin/a"].link != 3 || a["usr/bin/su"].mode&unix.S_ISUID == 0 {
		t.Errorf("hard links %d (want 3), su mode %v", a["usr/bin/a"].link, a["usr/bin/su"].mode)
	}
	if st.Entries != len(b) || st.Bytes < 3<<20 {
		t.Errorf("stats %+v", st)
	}
}

func short(f fileInfo) fileInfo {
	if len(f.data) > 16 {
		f.data = f.data[:16] + "..."
	}
	return f
}

// newcEntry writes one newc entry.
func newcEntry(b *bytes.Buffer, name string, mode uint32, data string) {
	fmt.Fprintf(b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	b.WriteString(name + "\x00")
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.WriteString(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

// TestUnpackStaysInside: symbolic links in the archive cannot make it
// write outside the directory, and ".." is refused.
func TestUnpackStaysInside(t *testing.T) {
	requireRoot(t)
	outside := t.TempDir()
	var b bytes.Buffer
	newcEntry(&b, "up", 0o120777, outside)
	newcEntry(&b, "up/escaped", 0o100644, "x")
	newcEntry(&b, "rel", 0o120777, "../../../../../../"+outside)
	newcEntry(&b, "rel/escaped2", 0o100644, "x")
	newcEntry(&b, "TRAILER!!!", 0, "")
	dir := t.TempDir()
	_, err := Unpack(context.Background(), bytes.NewReader(b.Bytes()), dir)
	if des, _ := os.ReadDir(outside); len(des) != 0 {
		t.Fatalf("wrote outside: %v (err %v)", des, err)
	}
	if err == nil {
		// Written inside: the links resolve within dir.
		t.Logf("archive unpacked inside: %v", walk(t, dir))
	}

	var bad bytes.Buffer
	newcEntry(&bad, "a/../../x", 0o100644, "x")
	newcEntry(&bad, "TRAILER!!!", 0, "")
	if _, err := Unpack(context.Background(), bytes.NewReader(bad.Bytes()), t.TempDir()); err == nil || !strings.Contains(err.Error(), "leaves the archive's root") {
		t.Errorf("'..' entry: %v", err)
	}
	for _, c := range []struct{ name, arc, msg string }{
		{"not newc", "hello world, this is not an archive at all; it is long enough for one header to be read from it, or at least more than one hundred and ten bytes", "bad magic"},
		{"truncated", b.String()[:150], "unexpected EOF"},
		{"empty", "", "unexpected EOF"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Unpack(context.Background(), strings.NewReader(c.arc), t.TempDir())
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err %v, want %q", err, c.msg)
			}
		})
	}
}

func FuzzUnpack(f *testing.F) {
	var b bytes.Buffer
	newcEntry(&b, "d", 0o040755, "")
	newcEntry(&b, "d/f", 0o100644, "data")
	newcEntry(&b, "l", 0o120777, "d/f")
	newcEntry(&b, "TRAILER!!!", 0, "")
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		if os.Geteuid() != 0 {
			t.Skip("needs root")
		}
		dir := t.TempDir()
		outside := filepath.Dir(dir)
		before, _ := os.ReadDir(outside)
		Unpack(context.Background(), bytes.NewReader(data), dir)
		after, _ := os.ReadDir(outside)
		if len(after) != len(before) {
			t.Fatalf("wrote next to the directory")
		}
	})
}
