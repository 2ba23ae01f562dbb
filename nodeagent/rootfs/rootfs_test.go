package rootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
)

// The tests that mount run the test binary again in a private mount
// namespace; helperEnv names the helper to run there.
const helperEnv = "ROOTFS_TEST_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			fmt.Fprintln(os.Stderr, "make mounts private:", err)
			os.Exit(1)
		}
		var err error
		switch h {
		case "build":
			err = buildHelper(os.Getenv("ROOTFS_TEST_DIR"))
		case "inplace":
			err = inPlaceHelper(os.Getenv("ROOTFS_TEST_DIR"))
		case "compressed":
			err = compressedHelper(os.Getenv("ROOTFS_TEST_DIR"))
		default:
			err = fmt.Errorf("unknown helper %q", h)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runHelper(t *testing.T, name string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts ramfs and tmpfs in a mount namespace")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+name, "ROOTFS_TEST_DIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s helper: %v\n%s", name, err, out)
	}
}

// TestBuild moves a tree from a ramfs (the kernel's rootfs stand-in) into
// a capped tmpfs: everything arrives with its type, mode, owner, times and
// hard links, the ramfs is emptied, a mount inside it stays; an image too
// big for the cap and a move that fails half way both leave the old root
// exactly as it was.
func TestBuild(t *testing.T) { runHelper(t, "build") }

func buildHelper(dir string) error {
	old := filepath.Join(dir, "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("ramfs", old, "ramfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount ramfs: %w", err)
	}
	if err := populate(old); err != nil {
		return fmt.Errorf("populate: %w", err)
	}
	// A mount inside the old root (as /proc is in the initramfs).
	mnt := filepath.Join(old, "proc")
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(mnt, "stays"), []byte("x"), 0o644); err != nil {
		return err
	}
	before, err := snapshot(old)
	if err != nil {
		return err
	}
	need, err := Footprint(old, filepath.Join(old, NewRootDir))
	if err != nil {
		return err
	}
	// 3 MiB, a page for each of the 6 small files (the hard-linked one
	// once, the empty one none) and one for the long symbolic link.
	if want := int64(3<<20 + 7*os.Getpagesize()); need != want {
		return fmt.Errorf("footprint %d, want %d", need, want)
	}

	// Too big for the cap: nothing moves.
	var res Result
	err = Build(context.Background(), Config{SizeBytes: need - 1}, old, &res)
	if !errors.Is(err, ErrTooBig) || !strings.Contains(err.Error(), "the cap (root.size) is") {
		return fmt.Errorf("build over the cap: %v, want ErrTooBig", err)
	}
	if err := same(old, before); err != nil {
		return fmt.Errorf("after the refused build: %w", err)
	}

	// A failure half way: everything moves back.
	n := 0
	testHook = func(dst string) error {
		if n++; n == 12 {
			return fmt.Errorf("injected failure at %s", dst)
		}
		return nil
	}
	err = Build(context.Background(), Config{SizeBytes: 64 << 20}, old, &res)
	testHook = nil
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		return fmt.Errorf("build with a failure: %v", err)
	}
	if err := same(old, before); err != nil {
		return fmt.Errorf("after the failed build: %w", err)
	}
	if mp, _ := isMountPoint(filepath.Join(old, NewRootDir)); mp {
		return errors.New("the new root is still mounted after a failed build")
	}

	// The real thing.
	if err := Build(context.Background(), Config{Mode: overlay.RootTmpfs, SizeBytes: 64 << 20}, old, &res); err != nil {
		return err
	}
	newRoot := filepath.Join(old, NewRootDir)
	if res.Mode != overlay.RootTmpfs || res.ImageBytes != need || res.Files < 15 {
		return fmt.Errorf("result %+v", res)
	}
	// The mount point and what is on it stay: Setup moves the mount whole.
	delete(before, "proc/stays")
	delete(before, "proc")
	if err := same(newRoot, before); err != nil {
		return fmt.Errorf("new root: %w", err)
	}
	left, _ := os.ReadDir(old)
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if !reflect.DeepEqual(names, []string{NewRootDir, "proc"}) {
		return fmt.Errorf("old root still holds %v, want only the new root and the mount point", names)
	}
	if _, err := os.Stat(filepath.Join(mnt, "stays")); err != nil {
		return fmt.Errorf("the mount inside the old root lost its file: %w", err)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(newRoot, &sf); err != nil || sf.Type != unix.TMPFS_MAGIC || int64(sf.Blocks)*sf.Bsize != 64<<20 {
		return fmt.Errorf("new root: type %#x, %d blocks of %d (%v); want a 64 MiB tmpfs", sf.Type, sf.Blocks, sf.Bsize, err)
	}
	used, size, err := Usage(newRoot)
	if err != nil || size != 64<<20 || used < need {
		return fmt.Errorf("Usage = %d, %d, %v", used, size, err)
	}
	return nil
}

// TestBuildInPlace: when the old root is a tmpfs (the kernel's rootfs
// usually is) it is capped where it is and bound on the new root's mount
// point; nothing is copied. A cap below what the image takes is refused
// and leaves the size as it was.
func TestBuildInPlace(t *testing.T) { runHelper(t, "inplace") }

func inPlaceHelper(dir string) error {
	old := filepath.Join(dir, "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", old, "tmpfs", 0, "size=128m,mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	if err := populate(old); err != nil {
		return err
	}
	before, err := snapshot(old)
	if err != nil {
		return err
	}
	var res Result
	err = Build(context.Background(), Config{SizeBytes: 1 << 20}, old, &res)
	if !errors.Is(err, ErrTooBig) {
		return fmt.Errorf("build under a 1 MiB cap: %v, want ErrTooBig", err)
	}
	var sf unix.Statfs_t
	if unix.Statfs(old, &sf); int64(sf.Blocks)*sf.Bsize != 128<<20 {
		return fmt.Errorf("a refused build changed the size to %d", int64(sf.Blocks)*sf.Bsize)
	}
	if err := Build(context.Background(), Config{SizeBytes: 32 << 20}, old, &res); err != nil {
		return err
	}
	if !res.InPlace || res.Mode != overlay.RootTmpfs || res.ImageBytes < 3<<20 || res.Files != 0 {
		return fmt.Errorf("result %+v", res)
	}
	newRoot := filepath.Join(old, NewRootDir)
	if mp, _ := isMountPoint(newRoot); !mp {
		return errors.New("the new root is not a mount")
	}
	for _, p := range []string{old, newRoot} {
		if err := unix.Statfs(p, &sf); err != nil || sf.Type != unix.TMPFS_MAGIC || int64(sf.Blocks)*sf.Bsize != 32<<20 {
			return fmt.Errorf("%s: type %#x, %d bytes (%v); want a 32 MiB tmpfs", p, sf.Type, int64(sf.Blocks)*sf.Bsize, err)
		}
	}
	// The new root shows the old one's files, and its own mount point.
	after, err := snapshot(newRoot)
	if err != nil {
		return err
	}
	delete(after, NewRootDir)
	if err := same(old, before); err != nil {
		return fmt.Errorf("old root: %w", err)
	}
	for p, w := range before {
		if g, ok := after[p]; !ok || (g != w && p != "." && p != "proc") {
			return fmt.Errorf("new root: %s is %+v, want %+v", p, g, w)
		}
	}
	return nil
}

// populate writes a tree with every kind of entry an image holds.
func populate(root string) error {
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	type entry struct {
		path string
		mode fs.FileMode
		data string
		uid  int
	}
	files := []entry{
		{"etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n", 0},
		{"etc/shadow", 0o640, "root:*:1::::::\n", 0},
		{"usr/bin/su", 0o4755, "#!setuid", 0},
		{"usr/bin/wall", 0o2755, "#!setgid", 0},
		{"home/u/.profile", 0o600, "PS1=x\n", 1234},
		{"tmp/empty", 0o644, "", 0},
		{"usr/lib/big", 0o644, strings.Repeat("0123456789abcdef", 3<<16), 0},
		{"usr/lib/a", 0o755, "linked", 0},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			return err
		}
		if err := os.Chown(p, f.uid, f.uid+1); err != nil {
			return err
		}
		if err := os.Chmod(p, f.mode); err != nil {
			return err
		}
	}
	// setuid/setgid through os.Chmod need the fs.ModeSetuid bits.
	if err := unix.Chmod(filepath.Join(root, "usr/bin/su"), 0o4755); err != nil {
		return err
	}
	if err := unix.Chmod(filepath.Join(root, "usr/bin/wall"), 0o2755); err != nil {
		return err
	}
	if err := os.Link(filepath.Join(root, "usr/lib/a"), filepath.Join(root, "usr/lib/b")); err != nil {
		return err
	}
	if err := os.Symlink("../lib/a", filepath.Join(root, "usr/bin/short")); err != nil {
		return err
	}
	if err := os.Symlink(strings.Repeat("x/", 80), filepath.Join(root, "usr/bin/long")); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(root, "dev"), 0o755); err != nil {
		return err
	}
	if err := unix.Mknod(filepath.Join(root, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		return err
	}
	if err := unix.Mkfifo(filepath.Join(root, "tmp/fifo"), 0o620); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(root, "proc"), 0o555); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(root, "var/empty/dir"), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.Chown(filepath.Join(root, "home/u"), 1234, 1235); err != nil {
		return err
	}
	// Times last, deepest first, so creating entries does not change them.
	var paths []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root && !strings.HasPrefix(p, filepath.Join(root, "proc")+"/") {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for i, p := range paths {
		ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.Add(time.Duration(i) * time.Hour).UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// node is what snapshot records of one entry.
type node struct {
	Mode  uint32
	UID   uint32
	GID   uint32
	Mtime int64
	Rdev  uint64
	Data  string // sha256 of a file, target of a link
	Link  string // first path with the same inode (hard links)
}

// snapshot records every entry under root, mount points included but not
// the new root.
func snapshot(root string) (map[string]node, error) {
	out := map[string]node{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == NewRootDir {
			return fs.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Nano(), Rdev: st.Rdev}
		if rel == "." || rel == "proc" {
			n.Mtime = 0 // the root's and a mount point's times are not the tree's
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Data = fmt.Sprintf("%x", sha256.Sum256(b))
			if first, ok := inodes[st.Ino]; ok {
				n.Link = first
			} else {
				inodes[st.Ino] = rel
			}
		case unix.S_IFLNK:
			n.Data, _ = os.Readlink(p)
		}
		out[rel] = n
		return nil
	})
	return out, err
}

// same compares the tree at root with a snapshot.
func same(root string, want map[string]node) error {
	got, err := snapshot(root)
	if err != nil {
		return err
	}
	var diffs []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			diffs = append(diffs, "missing "+p)
		} else if g != w && !(p == "." || p == "proc") {
			diffs = append(diffs, fmt.Sprintf("%s: %+v, want %+v", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "extra "+p)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return errors.New(strings.Join(diffs, "\n"))
	}
	return nil
}

func isMountPoint(path string) (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	return bytes.Contains(b, []byte(" "+path+" ")), nil
}
