package newc

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// TreeOptions controls how WriteTree archives a directory tree. The zero
// value archives every entry of the tree's file system with its
// modification time.
type TreeOptions struct {
	// SourceDateEpoch, when set, clamps modification times: an entry
	// (Append's included) modified after it is recorded as modified at it.
	// Nil keeps modification times as they are.
	SourceDateEpoch *time.Time
	// Progress, when set, is called with the number of entries and archive
	// bytes written so far: at most about four times a second while the
	// tree is written, and once at the end.
	Progress func(files int, bytes int64)
	// Skip, when set, is asked about every entry but the root by its name
	// in the archive (e.g. "etc/shadow"); true leaves the entry out, and
	// for a directory everything under it.
	Skip func(path string) bool
	// Append are extra entries written after the tree, each with an inode
	// of its own.
	Append []File
	// CrossFilesystems descends into directories that are on another file
	// system than root. By default such a directory (a mount point, such as
	// proc or sys in a chroot) is archived but not its contents, like
	// find -xdev, and TreeStats.MountPoints lists it.
	CrossFilesystems bool
}

// TreeStats describes what WriteTree wrote.
type TreeStats struct {
	// Files is the number of entries written, the trailer excepted.
	Files int
	// Bytes is the number of uncompressed archive bytes written.
	Bytes int64
	// MountPoints lists, by archive name, the directories archived without
	// their contents because they are on another file system than the
	// tree's root (see TreeOptions.CrossFilesystems).
	MountPoints []string
}

// WriteTree writes the tree at root as a newc archive to w: its entries in
// the order described in the package documentation, then opt.Append, then
// the trailer. Owners, modes, symlink targets and device numbers are kept;
// hard links within the archive stay hard links. A symlink root is
// followed. WriteTree stops with ctx's error when ctx ends.
func WriteTree(ctx context.Context, w io.Writer, root string, opt TreeOptions) (TreeStats, error) {
	nw := NewWriter(w)
	stats, err := nw.AddTree(ctx, root, opt)
	if err != nil {
		return stats, err
	}
	if err := nw.Close(); err != nil {
		return stats, err
	}
	stats.Bytes = nw.Written()
	return stats, nil
}

// AddTree writes the entries of the tree at root, then opt.Append, as
// WriteTree does, but not the trailer. TreeStats counts what this call
// wrote.
func (w *Writer) AddTree(ctx context.Context, root string, opt TreeOptions) (TreeStats, error) {
	start := w.n
	stats := TreeStats{}
	if w.err != nil {
		return stats, w.err
	}
	if w.closed {
		return stats, fmt.Errorf("archive %s: archive closed", root)
	}
	real, entries, mounts, err := scanTree(ctx, root, opt)
	if err != nil {
		return stats, err
	}
	stats.MountPoints = mounts
	w.link(entries)

	p := progress{fn: opt.Progress}
	clamp := func(t int64) int64 {
		if opt.SourceDateEpoch != nil && t > opt.SourceDateEpoch.Unix() {
			return opt.SourceDateEpoch.Unix()
		}
		return t
	}
	for i := range entries {
		if err := ctx.Err(); err != nil {
			return stats, fmt.Errorf("archive %s: %w", root, err)
		}
		e := &entries[i]
		e.hdr.mtime = clamp(e.hdr.mtime)
		if err := w.writeTreeEntry(filepath.Join(real, e.hdr.name), e); err != nil {
			return stats, err
		}
		stats.Files++
		p.maybe(stats.Files, w.n-start)
	}
	for _, f := range opt.Append {
		if !f.ModTime.IsZero() && opt.SourceDateEpoch != nil && f.ModTime.After(*opt.SourceDateEpoch) {
			f.ModTime = *opt.SourceDateEpoch
		}
		if err := w.WriteFile(f); err != nil {
			return stats, err
		}
		stats.Files++
	}
	stats.Bytes = w.n - start
	p.done(stats.Files, stats.Bytes)
	return stats, nil
}

// treeEntry is one scanned entry of a tree.
type treeEntry struct {
	hdr      header
	dev, ino uint64 // identity on disk, for hard links
	diskLink uint64 // link count on disk
	data     bool   // the entry carries the file's data
	subdirs  uint32
}

// scanTree lists the tree at root in archive order, and the mount points
// it did not descend into.
func scanTree(ctx context.Context, root string, opt TreeOptions) (real string, entries []treeEntry, mounts []string, err error) {
	real, err = filepath.EvalSymlinks(root)
	if err != nil {
		return "", nil, nil, fmt.Errorf("archive %s: %w", root, err)
	}
	s := scanner{ctx: ctx, opt: opt}
	rootEntry, err := s.stat(real, ".")
	if err != nil {
		return "", nil, nil, err
	}
	if rootEntry.hdr.mode&unix.S_IFMT != unix.S_IFDIR {
		return "", nil, nil, fmt.Errorf("archive %s: not a directory", root)
	}
	s.rootDev = rootEntry.dev
	s.entries = append(s.entries, rootEntry)
	if err := s.walk(real, "", 0); err != nil {
		return "", nil, nil, err
	}
	return real, s.entries, s.mounts, nil
}

type scanner struct {
	ctx     context.Context
	opt     TreeOptions
	rootDev uint64
	entries []treeEntry
	mounts  []string
}

func (s *scanner) walk(dir, rel string, parent int) error {
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	des, err := os.ReadDir(dir) // sorted by name, byte order
	if err != nil {
		return fmt.Errorf("read directory %s: %w", dir, err)
	}
	for _, de := range des {
		name := path.Join(rel, de.Name())
		if s.opt.Skip != nil && s.opt.Skip(name) {
			continue
		}
		diskPath := filepath.Join(dir, de.Name())
		e, err := s.stat(diskPath, name)
		if err != nil {
			return err
		}
		s.entries = append(s.entries, e)
		if e.hdr.mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		s.entries[parent].subdirs++
		if e.dev != s.rootDev && !s.opt.CrossFilesystems {
			s.mounts = append(s.mounts, name)
			continue
		}
		if err := s.walk(diskPath, name, len(s.entries)-1); err != nil {
			return err
		}
	}
	return nil
}

func (s *scanner) stat(diskPath, name string) (treeEntry, error) {
	var st unix.Stat_t
	if err := unix.Lstat(diskPath, &st); err != nil {
		return treeEntry{}, fmt.Errorf("stat %s: %w", diskPath, err)
	}
	e := treeEntry{
		hdr: header{
			name:  name,
			mode:  st.Mode,
			uid:   int64(st.Uid),
			gid:   int64(st.Gid),
			nlink: 1,
			mtime: st.Mtim.Sec,
		},
		dev:      st.Dev,
		ino:      st.Ino,
		diskLink: uint64(st.Nlink),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.hdr.size = st.Size
		e.data = true
	case unix.S_IFLNK:
		e.hdr.size = st.Size // the target's length; read when written
	case unix.S_IFCHR, unix.S_IFBLK:
		e.hdr.major = unix.Major(st.Rdev)
		e.hdr.minor = unix.Minor(st.Rdev)
	case unix.S_IFDIR, unix.S_IFIFO, unix.S_IFSOCK:
	default:
		return treeEntry{}, fmt.Errorf("archive %s: unknown file type %#o", diskPath, st.Mode&unix.S_IFMT)
	}
	return e, nil
}

// link assigns inode numbers in archive order and turns entries that share
// an inode on disk into newc hard links: one inode number, the number of
// links in the archive, and the data on the last one. Directories and
// symlinks are never linked (the kernel creates symlinks from each entry's
// own data).
func (w *Writer) link(entries []treeEntry) {
	type key struct{ dev, ino uint64 }
	groups := map[key][]int{}
	for i := range entries {
		e := &entries[i]
		t := e.hdr.mode & unix.S_IFMT
		if t == unix.S_IFDIR {
			e.hdr.nlink = 2 + e.subdirs
		}
		if t == unix.S_IFDIR || t == unix.S_IFLNK || e.diskLink < 2 {
			e.hdr.ino = w.nextIno()
			continue
		}
		k := key{e.dev, e.ino}
		g := groups[k]
		if len(g) == 0 {
			e.hdr.ino = w.nextIno()
		} else {
			e.hdr.ino = entries[g[0]].hdr.ino
		}
		groups[k] = append(g, i)
	}
	for _, g := range groups {
		if len(g) < 2 {
			continue
		}
		for j, i := range g {
			e := &entries[i]
			e.hdr.nlink = uint32(len(g))
			if j < len(g)-1 {
				e.data = false
				e.hdr.size = 0
			}
		}
	}
}

// writeTreeEntry writes e, reading what it needs from diskPath.
func (w *Writer) writeTreeEntry(diskPath string, e *treeEntry) error {
	switch e.hdr.mode & unix.S_IFMT {
	case unix.S_IFLNK:
		target, err := os.Readlink(diskPath)
		if err != nil {
			return fmt.Errorf("read symlink %s: %w", diskPath, err)
		}
		e.hdr.size = int64(len(target))
		if target == "" {
			return fmt.Errorf("read symlink %s: empty target", diskPath)
		}
		return w.writeEntry(e.hdr, strings.NewReader(target))
	case unix.S_IFREG:
		if !e.data || e.hdr.size == 0 {
			return w.writeEntry(e.hdr, nil)
		}
		f, err := os.OpenFile(diskPath, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", diskPath, err)
		}
		err = w.writeEntry(e.hdr, f)
		f.Close()
		return err
	default:
		return w.writeEntry(e.hdr, nil)
	}
}

// progress throttles calls to a TreeOptions.Progress function.
type progress struct {
	fn   func(int, int64)
	last time.Time
}

const progressEvery = 250 * time.Millisecond

func (p *progress) maybe(files int, bytes int64) {
	if p.fn == nil {
		return
	}
	now := time.Now()
	if now.Sub(p.last) < progressEvery {
		return
	}
	p.last = now
	p.fn(files, bytes)
}

func (p *progress) done(files int, bytes int64) {
	if p.fn != nil {
		p.fn(files, bytes)
	}
}
