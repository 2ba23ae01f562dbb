package newc_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/newc"
)

// treeSpec is one entry of a test tree, in the order WriteTree must write
// it.
type treeSpec struct {
	name     string
	mode     fs.FileMode
	data     string
	link     string // symlink target, or the earlier entry this one is a hard link of
	hardlink bool
	uid, gid int
	major    uint32
	minor    uint32
	rootOnly bool // owners other than the caller, device nodes
}

var bigData = func() string {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 100_003)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}()

// testTree is listed in archive order: depth first, names in byte order,
// so "usr/lib/empty" comes before "usr/lib.conf" although "." < "/".
var testTree = []treeSpec{
	{name: ".", mode: fs.ModeDir | 0o755},
	{name: "bin", mode: fs.ModeSymlink | 0o777, link: "usr/bin"},
	{name: "dev", mode: fs.ModeDir | 0o755},
	{name: "dev/fifo", mode: fs.ModeNamedPipe | 0o600},
	{name: "dev/loop0", mode: fs.ModeDevice | 0o660, major: 7, minor: 0, gid: 6, rootOnly: true},
	{name: "dev/null", mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, major: 1, minor: 3, rootOnly: true},
	{name: "etc", mode: fs.ModeDir | 0o755},
	{name: "etc/hostname", mode: 0o644, data: "n001\n"},
	{name: "etc/shadow", mode: 0o640, data: "root:*:19000:0:99999:7:::\n", gid: 42, rootOnly: true},
	{name: "home", mode: fs.ModeDir | 0o755},
	{name: "home/u", mode: fs.ModeDir | 0o750, uid: 1234, gid: 5678, rootOnly: true},
	{name: "home/u/.profile", mode: 0o644, data: "PATH=/bin\n", uid: 1234, gid: 5678, rootOnly: true},
	{name: "home/u/link", mode: fs.ModeSymlink | 0o777, link: "../../etc/hostname", uid: 1234, gid: 5678, rootOnly: true},
	{name: "tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
	{name: "usr", mode: fs.ModeDir | 0o755},
	{name: "usr/bin", mode: fs.ModeDir | 0o755},
	{name: "usr/bin/a", mode: 0o755, data: bigData},
	{name: "usr/bin/b", hardlink: true, link: "usr/bin/a"},
	{name: "usr/bin/su", mode: fs.ModeSetuid | 0o755, data: "su"},
	{name: "usr/bin/z", hardlink: true, link: "usr/bin/a"},
	{name: "usr/lib", mode: fs.ModeDir | 0o755},
	{name: "usr/lib/empty", mode: 0o644},
	{name: "usr/lib.conf", mode: 0o644, data: "abc"},
}

// owner returns the owner the entry has on disk: its own when set (which
// needs root), else the caller's.
func (s treeSpec) owner() (uid, gid int) {
	if s.uid != 0 || s.gid != 0 || isRoot() {
		return s.uid, s.gid
	}
	return os.Geteuid(), os.Getegid()
}

// skipped entries exist in the tree but TreeOptions.Skip leaves them out;
// "skipme/a" is a fourth link of usr/bin/a.
var skippedTree = []treeSpec{
	{name: "skipme", mode: fs.ModeDir | 0o755},
	{name: "skipme/a", hardlink: true, link: "usr/bin/a"},
}

func skipMe(p string) bool { return p == "skipme" || strings.HasPrefix(p, "skipme/") }

// wantTree returns the entries of testTree the caller can create.
func wantTree() []treeSpec {
	var out []treeSpec
	for _, s := range testTree {
		if s.rootOnly && !isRoot() {
			continue
		}
		out = append(out, s)
	}
	return out
}

// makeTree creates the test tree under dir, directory modes last so that
// read-only modes do not get in the way, and every mtime set to mtime.
func makeTree(t *testing.T, dir string, mtime time.Time) {
	t.Helper()
	specs := append(wantTree(), skippedTree...)
	for _, s := range specs {
		p := filepath.Join(dir, s.name)
		var err error
		switch {
		case s.name == ".":
		case s.hardlink:
			err = os.Link(filepath.Join(dir, s.link), p)
		case s.mode.IsDir():
			err = os.Mkdir(p, 0o700)
		case s.mode&fs.ModeSymlink != 0:
			err = os.Symlink(s.link, p)
		case s.mode&fs.ModeNamedPipe != 0:
			err = unix.Mkfifo(p, 0o600)
		case s.mode&fs.ModeCharDevice != 0:
			err = unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(s.major, s.minor)))
		case s.mode&fs.ModeDevice != 0:
			err = unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(s.major, s.minor)))
		default:
			err = os.WriteFile(p, []byte(s.data), 0o600)
		}
		if err != nil {
			t.Fatalf("create %s: %v", s.name, err)
		}
		if s.hardlink {
			continue
		}
		if s.uid != 0 || s.gid != 0 {
			if err := os.Lchown(p, s.uid, s.gid); err != nil {
				t.Fatalf("chown %s: %v", s.name, err)
			}
		}
		if s.mode&fs.ModeSymlink == 0 {
			// os.Chmod takes Go mode bits, setuid and sticky included.
			if err := os.Chmod(p, s.mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				t.Fatalf("chmod %s: %v", s.name, err)
			}
		}
	}
	// Times last, deepest first, since creating entries touches their
	// directory.
	for i := len(specs) - 1; i >= 0; i-- {
		p := filepath.Join(dir, specs[i].name)
		ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatalf("set times of %s: %v", specs[i].name, err)
		}
	}
}

func writeTree(t *testing.T, dir string, opt newc.TreeOptions) ([]byte, newc.TreeStats) {
	t.Helper()
	var buf bytes.Buffer
	stats, err := newc.WriteTree(context.Background(), &buf, dir, opt)
	if err != nil {
		t.Fatalf("WriteTree: %v", err)
	}
	if stats.Bytes != int64(buf.Len()) {
		t.Errorf("stats.Bytes = %d, archive is %d bytes", stats.Bytes, buf.Len())
	}
	return buf.Bytes(), stats
}

func TestWriteTree(t *testing.T) {
	dir := t.TempDir()
	mtime := time.Unix(1_500_000_000, 0)
	makeTree(t, dir, mtime)
	epoch := time.Unix(1_400_000_000, 0)
	archive, stats := writeTree(t, dir, newc.TreeOptions{SourceDateEpoch: &epoch, Skip: skipMe})
	want := wantTree()
	if stats.Files != len(want) {
		t.Errorf("stats.Files = %d, want %d", stats.Files, len(want))
	}

	t.Run("headers", func(t *testing.T) {
		raws := parseRaw(t, archive)
		if len(raws) != len(want)+1 {
			t.Fatalf("%d entries, want %d and the trailer", len(raws), len(want))
		}
		inodes := map[string]uint32{}
		nextIno := uint32(1)
		for i, s := range want {
			r := raws[i]
			if r.name != s.name {
				t.Fatalf("entry %d is %q, want %q", i, r.name, s.name)
			}
			if r.mtime != uint32(epoch.Unix()) {
				t.Errorf("%s: mtime %d, want clamped to %d", s.name, r.mtime, epoch.Unix())
			}
			if r.devMajor != 0 || r.devMinor != 0 {
				t.Errorf("%s: devmajor/devminor %d,%d, want 0,0", s.name, r.devMajor, r.devMinor)
			}
			if r.rMajor != s.major || r.rMin != s.minor {
				t.Errorf("%s: rdev %d,%d, want %d,%d", s.name, r.rMajor, r.rMin, s.major, s.minor)
			}
			if s.hardlink {
				if r.ino != inodes[s.link] {
					t.Errorf("%s: inode %d, want %d of %s", s.name, r.ino, inodes[s.link], s.link)
				}
			} else {
				if r.ino != nextIno {
					t.Errorf("%s: inode %d, want %d (write order)", s.name, r.ino, nextIno)
				}
				inodes[s.name] = r.ino
				nextIno++
			}
		}
		// Three links of usr/bin/a are in the archive (the fourth is
		// skipped); only the last carries the data.
		for _, r := range raws {
			switch r.name {
			case "usr/bin/a", "usr/bin/b":
				if r.nlink != 3 || r.size != 0 {
					t.Errorf("%s: nlink %d size %d, want 3 and 0", r.name, r.nlink, r.size)
				}
			case "usr/bin/z":
				if r.nlink != 3 || string(r.data) != bigData {
					t.Errorf("%s: nlink %d, %d bytes; want 3 and the data", r.name, r.nlink, len(r.data))
				}
			case ".":
				if r.nlink != 2+5 { // dev etc home tmp usr
					t.Errorf(".: nlink %d, want 7", r.nlink)
				}
			}
		}
	})

	t.Run("cavaliergopher", func(t *testing.T) {
		got := readLib(t, archive)
		if len(got) != len(want) {
			t.Fatalf("cpio reader got %d entries, want %d", len(got), len(want))
		}
		for i, s := range want {
			h := got[i].hdr
			if h.Name != s.name {
				t.Fatalf("entry %d is %q, want %q", i, h.Name, s.name)
			}
			if !s.hardlink && h.FileInfo().Mode() != s.mode {
				t.Errorf("%s: mode %v, want %v", s.name, h.FileInfo().Mode(), s.mode)
			}
			if uid, gid := s.owner(); !s.hardlink && (h.Uid != uid || h.Guid != gid) {
				t.Errorf("%s: owner %d:%d, want %d:%d", s.name, h.Uid, h.Guid, uid, gid)
			}
			if s.mode&fs.ModeSymlink != 0 && h.Linkname != s.link {
				t.Errorf("%s: link %q, want %q", s.name, h.Linkname, s.link)
			}
		}
	})

	t.Run("gnu-list", func(t *testing.T) {
		var names []string
		for _, s := range want {
			names = append(names, s.name)
		}
		list := gnuCpio(t, archive, t.TempDir(), "-t", "--quiet")
		if w := strings.Join(names, "\n") + "\n"; list != w {
			t.Errorf("cpio -t:\n%s\nwant:\n%s", list, w)
		}
	})

	t.Run("gnu-extract", func(t *testing.T) {
		if !isRoot() {
			t.Skip("extraction with owners and device nodes needs root")
		}
		dst := extract(t, archive)
		for _, s := range want {
			p := filepath.Join(dst, s.name)
			fi, err := os.Lstat(p)
			if err != nil {
				t.Errorf("%s: %v", s.name, err)
				continue
			}
			st := lstat(t, p)
			spec := s
			if s.hardlink {
				spec = findSpec(s.link)
			}
			if fi.Mode() != spec.mode {
				t.Errorf("%s: mode %v, want %v", s.name, fi.Mode(), spec.mode)
			}
			if int(st.Uid) != spec.uid || int(st.Gid) != spec.gid {
				t.Errorf("%s: owner %d:%d, want %d:%d", s.name, st.Uid, st.Gid, spec.uid, spec.gid)
			}
			switch spec.mode.Type() {
			case 0:
				b, err := os.ReadFile(p)
				if err != nil || string(b) != spec.data {
					t.Errorf("%s: %d bytes, %v; want %d", s.name, len(b), err, len(spec.data))
				}
				if st.Mtim.Sec != epoch.Unix() {
					t.Errorf("%s: mtime %d, want %d", s.name, st.Mtim.Sec, epoch.Unix())
				}
			case fs.ModeSymlink:
				if l, _ := os.Readlink(p); l != spec.link {
					t.Errorf("%s: link %q, want %q", s.name, l, spec.link)
				}
			case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
				if unix.Major(st.Rdev) != spec.major || unix.Minor(st.Rdev) != spec.minor {
					t.Errorf("%s: device %d,%d, want %d,%d", s.name, unix.Major(st.Rdev), unix.Minor(st.Rdev), spec.major, spec.minor)
				}
			}
		}
		a, b, z := lstat(t, filepath.Join(dst, "usr/bin/a")), lstat(t, filepath.Join(dst, "usr/bin/b")), lstat(t, filepath.Join(dst, "usr/bin/z"))
		if a.Ino != b.Ino || a.Ino != z.Ino || a.Nlink != 3 {
			t.Errorf("hard links not kept: inodes %d %d %d, nlink %d", a.Ino, b.Ino, z.Ino, a.Nlink)
		}
		if _, err := os.Lstat(filepath.Join(dst, "skipme")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("skipped directory extracted: %v", err)
		}
	})
}

func findSpec(name string) treeSpec {
	for _, s := range testTree {
		if s.name == name {
			return s
		}
	}
	panic("no spec " + name)
}

func TestWriteTreeReproducible(t *testing.T) {
	epoch := time.Unix(1_000_000_000, 0)
	opt := newc.TreeOptions{SourceDateEpoch: &epoch}
	// Two copies made at different times: different inode numbers and
	// mtimes on disk, equal content.
	dir1, dir2 := t.TempDir(), t.TempDir()
	makeTree(t, dir1, time.Now())
	makeTree(t, dir2, time.Now().Add(time.Hour))
	a1, _ := writeTree(t, dir1, opt)
	a1again, _ := writeTree(t, dir1, opt)
	a2, _ := writeTree(t, dir2, opt)
	if !bytes.Equal(a1, a1again) {
		t.Error("two archives of one tree differ")
	}
	if !bytes.Equal(a1, a2) {
		t.Error("archives of two copies of a tree differ")
	}
}

func TestWriteTreeKeepsMtimes(t *testing.T) {
	dir := t.TempDir()
	old := time.Unix(1_234_567_890, 0)
	makeTree(t, dir, old)
	later := time.Unix(1_300_000_000, 0)
	for _, tt := range []struct {
		name  string
		epoch *time.Time
	}{
		{"nil-epoch", nil},
		{"later-epoch", &later},
	} {
		t.Run(tt.name, func(t *testing.T) {
			archive, _ := writeTree(t, dir, newc.TreeOptions{SourceDateEpoch: tt.epoch, Skip: skipMe})
			for _, r := range parseRaw(t, archive) {
				if r.name != "TRAILER!!!" && r.mtime != uint32(old.Unix()) {
					t.Errorf("%s: mtime %d, want %d", r.name, r.mtime, old.Unix())
				}
			}
		})
	}
}

func TestWriteTreeAppend(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, time.Unix(1_500_000_000, 0))
	epoch := time.Unix(1_400_000_000, 0)
	archive, stats := writeTree(t, dir, newc.TreeOptions{
		SourceDateEpoch: &epoch,
		Skip:            skipMe,
		Append: []newc.File{
			{Name: "etc/extra", Mode: 0o600, Data: []byte("x"), ModTime: time.Unix(2_000_000_000, 0)},
		},
	})
	raws := parseRaw(t, archive)
	last := raws[len(raws)-2]
	if last.name != "etc/extra" || string(last.data) != "x" || last.mtime != uint32(epoch.Unix()) {
		t.Errorf("last entry %q %q mtime %d, want etc/extra, x, %d", last.name, last.data, last.mtime, epoch.Unix())
	}
	if last.ino != raws[len(raws)-3].ino+1 && last.ino <= uint32(len(raws)-2) {
		t.Errorf("appended entry inode %d does not continue the sequence", last.ino)
	}
	if stats.Files != len(wantTree())+1 {
		t.Errorf("stats.Files = %d, want %d", stats.Files, len(wantTree())+1)
	}
}

func TestWriteTreeProgress(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, time.Unix(1_500_000_000, 0))
	var calls int
	var lastFiles int
	var lastBytes int64
	var buf bytes.Buffer
	stats, err := newc.WriteTree(context.Background(), &buf, dir, newc.TreeOptions{
		Progress: func(files int, bytes int64) { calls++; lastFiles, lastBytes = files, bytes },
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls == 0 || lastFiles != stats.Files {
		t.Errorf("progress: %d calls, last files %d; want the final %d", calls, lastFiles, stats.Files)
	}
	// The final call comes before the trailer.
	if lastBytes <= 0 || lastBytes >= stats.Bytes {
		t.Errorf("progress: last bytes %d, want in (0, %d)", lastBytes, stats.Bytes)
	}
}

func TestWriteTreeErrors(t *testing.T) {
	t.Run("cancelled", func(t *testing.T) {
		dir := t.TempDir()
		makeTree(t, dir, time.Now())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var buf bytes.Buffer
		_, err := newc.WriteTree(ctx, &buf, dir, newc.TreeOptions{})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("missing-root", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope")
		_, err := newc.WriteTree(context.Background(), &bytes.Buffer{}, missing, newc.TreeOptions{})
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
			t.Errorf("err = %v, want not-exist naming %s", err, missing)
		}
	})
	t.Run("root-is-file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := newc.WriteTree(context.Background(), &bytes.Buffer{}, f, newc.TreeOptions{})
		if err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("err = %v, want not a directory", err)
		}
	})
	t.Run("unreadable", func(t *testing.T) {
		if isRoot() {
			t.Skip("root reads everything")
		}
		dir := t.TempDir()
		p := filepath.Join(dir, "secret")
		if err := os.WriteFile(p, []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
		_, err := newc.WriteTree(context.Background(), &bytes.Buffer{}, dir, newc.TreeOptions{})
		if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), p) {
			t.Errorf("err = %v, want permission error naming %s", err, p)
		}
	})
}

// TestWriteTreeMountPoint mounts a tmpfs inside the tree, in a mount
// namespace of this test's own thread, and checks that its contents are
// left out unless CrossFilesystems is set.
func TestWriteTreeMountPoint(t *testing.T) {
	if !isRoot() {
		t.Skip("mounting needs root")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	type result struct {
		without, with []byte
		mounts        []string
		crossMounts   []string
		err           error
		skip          string
	}
	done := make(chan result)
	go func() {
		// The thread stays locked: it exits with this goroutine, namespace
		// and all.
		runtime.LockOSThread()
		var r result
		defer func() { done <- r }()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			r.skip = "unshare mount namespace: " + err.Error()
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			r.err = err
			return
		}
		if err := unix.Mount("tmpfs", filepath.Join(dir, "proc"), "tmpfs", 0, "size=1m"); err != nil {
			r.skip = "mount tmpfs: " + err.Error()
			return
		}
		if r.err = os.WriteFile(filepath.Join(dir, "proc", "inside"), []byte("x"), 0o644); r.err != nil {
			return
		}
		var b1, b2 bytes.Buffer
		var s1, s2 newc.TreeStats
		if s1, r.err = newc.WriteTree(context.Background(), &b1, dir, newc.TreeOptions{}); r.err != nil {
			return
		}
		s2, r.err = newc.WriteTree(context.Background(), &b2, dir, newc.TreeOptions{CrossFilesystems: true})
		r.without, r.with = b1.Bytes(), b2.Bytes()
		r.mounts, r.crossMounts = s1.MountPoints, s2.MountPoints
	}()
	r := <-done
	if r.skip != "" {
		t.Skip(r.skip)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	names := func(b []byte) string {
		var n []string
		for _, e := range parseRaw(t, b) {
			n = append(n, e.name)
		}
		return strings.Join(n, " ")
	}
	if got, want := names(r.without), ". proc TRAILER!!!"; got != want {
		t.Errorf("default: entries %q, want %q", got, want)
	}
	if got, want := names(r.with), ". proc proc/inside TRAILER!!!"; got != want {
		t.Errorf("CrossFilesystems: entries %q, want %q", got, want)
	}
	if len(r.mounts) != 1 || r.mounts[0] != "proc" || len(r.crossMounts) != 0 {
		t.Errorf("MountPoints %q, with CrossFilesystems %q; want [proc] and none", r.mounts, r.crossMounts)
	}
}
