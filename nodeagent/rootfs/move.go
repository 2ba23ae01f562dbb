package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// shortSymlink is the length from which tmpfs stores a symbolic link's
// target in a page of its own (SHORT_SYMLINK_LEN in mm/shmem.c).
const shortSymlink = 128

// Footprint returns the RAM the files under root (on root's file system,
// leaving out skip) take in a tmpfs: each regular file's size rounded up
// to whole pages, hard links once, and a page per long symbolic link.
func Footprint(root, skip string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return 0, fmt.Errorf("measure %s: %w", root, err)
	}
	dev, page := st.Dev, int64(os.Getpagesize())
	seen := map[uint64]bool{}
	var total int64
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == skip {
			return fs.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		if st.Dev != dev {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if st.Nlink > 1 {
				if seen[st.Ino] {
					return nil
				}
				seen[st.Ino] = true
			}
			total += (st.Size + page - 1) / page * page
		case unix.S_IFLNK:
			if st.Size >= shortSymlink {
				total += page
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure %s: %w", root, err)
	}
	return total, nil
}

// testHook, when set by a test, is called before each entry is created in
// the destination; an error stops the move there.
var testHook func(dst string) error

// mover moves one tree into another, entry by entry.
type mover struct {
	ctx   context.Context
	dev   uint64            // the source's file system: other mounts stay
	skip  []string          // source paths left alone (the new root)
	links map[uint64]string // source inode -> its first destination path
	buf   []byte
	n     int
	// merge: an entry that already exists in the destination wins and
	// the source's is dropped. Moving back after a failure needs it: the
	// entry the failure interrupted is still in the source.
	merge bool
	// replace: an entry that already exists in the destination (the
	// image's, under the compressed root's overlay) is replaced by the
	// source's, as a later initrd's file replaces an earlier one's.
	// Directories merge.
	replace bool
}

// move moves every entry of the tree at src that lives on src's file
// system, except skip, into dst: it recreates it with its type, mode,
// owner, times and hard links, then removes it from src, so that src's
// RAM is freed as dst's grows. Directories that still hold something
// (mount points, skip) stay in src. It returns the entries moved.
func move(ctx context.Context, src, dst, skip string) (int, error) {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return 0, fmt.Errorf("move %s: %w", src, err)
	}
	m := &mover{ctx: ctx, dev: st.Dev, skip: []string{skip}, links: map[uint64]string{}, buf: make([]byte, 1<<20)}
	err := m.dir(src, dst)
	return m.n, err
}

// moveBack moves what move moved from src back into dst after a failure:
// entries that are still in dst stay as they are there.
func moveBack(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	m := &mover{ctx: context.Background(), dev: st.Dev, links: map[uint64]string{}, buf: make([]byte, 1<<20), merge: true}
	return m.dir(src, dst)
}

func (m *mover) dir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	for _, e := range entries {
		if err := m.ctx.Err(); err != nil {
			return fmt.Errorf("move %s: %w", src, err)
		}
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if slices.Contains(m.skip, s) {
			continue
		}
		if err := m.entry(s, d); err != nil {
			return err
		}
	}
	return nil
}

func (m *mover) entry(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	if st.Dev != m.dev {
		return nil // a mount point: Setup moves the mount itself
	}
	if testHook != nil {
		if err := testHook(dst); err != nil {
			return err
		}
	}
	perm := uint32(st.Mode) & 0o7777
	if m.replace && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		var dst0 unix.Stat_t
		if unix.Lstat(dst, &dst0) == nil {
			if err := unix.Unlink(dst); err != nil {
				return fmt.Errorf("move %s: replace %s: %w", src, dst, err)
			}
		}
	}
	if m.merge && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		var dst0 unix.Stat_t
		if unix.Lstat(dst, &dst0) == nil {
			return unix.Unlink(src)
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := unix.Mkdir(dst, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("move %s: %w", src, err)
		}
		if err := m.dir(src, dst); err != nil {
			return err
		}
		if err := setAttrs(dst, &st, perm); err != nil {
			return err
		}
		m.n++
		_ = unix.Rmdir(src) // not empty when it holds a mount point
		return nil
	case unix.S_IFREG:
		// Each link moved drops the inode's link count, so the map, not
		// Nlink, says whether an inode was seen. Its number stays unique:
		// nothing is created in the source while the move runs.
		if first, ok := m.links[st.Ino]; ok {
			if err := unix.Link(first, dst); err != nil {
				return fmt.Errorf("move %s: hard link to %s: %w", src, first, err)
			}
		} else {
			if err := m.copyFile(src, dst, perm); err != nil {
				return err
			}
			if st.Nlink > 1 {
				m.links[st.Ino] = dst
			}
			if err := setAttrs(dst, &st, perm); err != nil {
				return err
			}
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("move %s: %w", src, err)
		}
		if err := unix.Symlink(target, dst); err != nil {
			return fmt.Errorf("move %s: %w", src, err)
		}
		if err := setAttrs(dst, &st, 0); err != nil {
			return err
		}
	default: // devices, fifos, sockets
		if err := unix.Mknod(dst, (st.Mode&unix.S_IFMT)|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("move %s: %w", src, err)
		}
		if err := setAttrs(dst, &st, perm); err != nil {
			return err
		}
	}
	m.n++
	if err := unix.Unlink(src); err != nil {
		return fmt.Errorf("move %s: remove the original: %w", src, err)
	}
	return nil
}

// copyFile copies a regular file's content into a new file at dst.
func (m *mover) copyFile(src, dst string, perm uint32) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(perm&0o777)|0o600)
	if err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	_, err = io.CopyBuffer(onlyWriter{out}, onlyReader{in}, m.buf)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst) // the original stays
		return fmt.Errorf("move %s: %w", src, err)
	}
	return nil
}

// onlyReader and onlyWriter hide *os.File's ReadFrom/WriteTo, whose
// copy_file_range and splice attempts fail between two file systems (and
// cost a syscall per file) before falling back to this plain copy.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

// setAttrs gives path the owner, permissions (after the owner: chown
// clears set-id bits) and times in st; perm 0 leaves the mode alone (a
// symbolic link has none).
func setAttrs(path string, st *unix.Stat_t, perm uint32) error {
	if err := unix.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("move %s: chown: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(path, perm); err != nil {
			return fmt.Errorf("move %s: chmod: %w", path, err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("move %s: set times: %w", path, err)
	}
	return nil
}
