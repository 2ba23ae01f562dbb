package newc

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
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

// Entry is one entry of a tree listing (see Tree): File's header fields
// and where a regular file's data and a symlink's target come from.
type Entry struct {
	// Name, Mode, UID, GID, ModTime, Major and Minor are as in File.
	Name         string
	Mode         fs.FileMode
	UID, GID     int
	ModTime      time.Time
	Major, Minor uint32
	// Linkname is a symlink's target; empty for a symlink read from Path.
	Linkname string
	// Size is a regular file's size.
	Size int64
	// Path is the file on disk a regular file's data (or a symlink's
	// target) is read from when Open is nil.
	Path string
	// Open, when set, opens a regular file's data: Size bytes.
	Open func() (io.ReadCloser, error)
	// Link, when not zero, makes entries with the same Link hard links
	// of one file: one inode, and the data once (on the last of them).
	Link uint64
}

// Tree is a listing of a root file-system tree in archive order: "."
// first, then depth first with the names of each directory in byte order
// (SortEntries). ScanDir lists a directory; other sources build one.
type Tree struct {
	// Entries are the entries, in archive order.
	Entries []Entry
	// MountPoints lists, by name, the directories ScanDir did not descend
	// into because they are on another file system.
	MountPoints []string
	// MetaDigest is the SHA-256 of every entry's metadata as ScanDir read
	// it (see ScanDir); empty for trees listed otherwise.
	MetaDigest string
}

// Lookup returns the entry named name, or nil.
func (t *Tree) Lookup(name string) *Entry {
	i, ok := slices.BinarySearchFunc(t.Entries, name, func(e Entry, n string) int { return compareNames(e.Name, n) })
	if !ok {
		return nil
	}
	return &t.Entries[i]
}

// Bytes returns the total size of the regular files' data.
func (t *Tree) Bytes() int64 {
	var n int64
	seen := map[uint64]bool{}
	for _, e := range t.Entries {
		if e.Link != 0 {
			if seen[e.Link] {
				continue
			}
			seen[e.Link] = true
		}
		n += e.Size
	}
	return n
}

// SortEntries sorts entries in archive order: a directory before its
// contents, the names in each directory in byte order.
func SortEntries(entries []Entry) {
	slices.SortFunc(entries, func(a, b Entry) int { return compareNames(a.Name, b.Name) })
}

// compareNames orders archive names: "." first, then path by path
// component, so "a/b" sorts right after "a" and before "a-b".
func compareNames(a, b string) int {
	if a == b {
		return 0
	}
	if a == "." {
		return -1
	}
	if b == "." {
		return 1
	}
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return -1
		}
		if cb == '/' {
			return 1
		}
		if ca < cb {
			return -1
		}
		return 1
	}
	return len(a) - len(b)
}

// ScanOptions controls ScanDir.
type ScanOptions struct {
	// Skip and CrossFilesystems are as in TreeOptions.
	Skip             func(path string) bool
	CrossFilesystems bool
}

// ScanDir lists the directory tree at root (a symlink root is followed)
// in archive order without reading any file's data. Tree.MetaDigest is
// the SHA-256 of every listed entry's name and lstat fields (type and
// mode, owner, size, modification and change times in nanoseconds, inode,
// link count, device numbers): any change to a listed file, even one that
// restores its modification time, changes the change time and so the
// digest.
func ScanDir(ctx context.Context, root string, opt ScanOptions) (*Tree, error) {
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", real, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("archive %s: not a directory", root)
	}
	s := &scanner{ctx: ctx, opt: opt, rootDev: st.Dev}
	top := &scanDir{}
	if err := s.list(real, "", top); err != nil {
		return nil, err
	}
	o := orderer{h: sha256.New(), links: map[[2]uint64]uint64{}}
	o.add(scanned{name: ".", path: real, st: st})
	o.walk(top)
	return &Tree{Entries: o.entries, MountPoints: o.mounts, MetaDigest: fmt.Sprintf("sha256:%x", o.h.Sum(nil))}, nil
}

// scanned is one listed entry with its lstat fields.
type scanned struct {
	name, path string
	st         unix.Stat_t
	sub        *scanDir // the directory's listing, if it was descended into
	mount      bool     // a directory on another file system, not descended into
}

// scanDir is one directory's listing, sorted by name.
type scanDir struct {
	children []scanned
}

type scanner struct {
	ctx     context.Context
	opt     ScanOptions
	rootDev uint64
}

// list lists dir into d and its subdirectories into theirs. The stat
// calls are relative to the open directory (fstatat), so the kernel does
// not walk the whole path again for every entry.
func (s *scanner) list(dir, rel string, d *scanDir) error {
	if err := s.ctx.Err(); err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", dir, err)
	}
	slices.Sort(names)
	fd := int(f.Fd())
	d.children = make([]scanned, 0, len(names))
	for _, n := range names {
		name := n
		if rel != "" {
			name = rel + "/" + n
		}
		if s.opt.Skip != nil && s.opt.Skip(name) {
			continue
		}
		c := scanned{name: name, path: dir + "/" + n}
		if err := unix.Fstatat(fd, n, &c.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("stat %s: %w", c.path, err)
		}
		if c.st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if c.st.Dev != s.rootDev && !s.opt.CrossFilesystems {
				c.mount = true
			} else {
				c.sub = &scanDir{}
			}
		}
		d.children = append(d.children, c)
	}
	for i := range d.children {
		c := &d.children[i]
		if c.sub == nil {
			continue
		}
		if err := s.list(c.path, c.name, c.sub); err != nil {
			return err
		}
	}
	return nil
}

// orderer turns the listing into entries in archive order and digests
// their metadata.
type orderer struct {
	entries []Entry
	mounts  []string
	h       hash.Hash
	buf     []byte
	links   map[[2]uint64]uint64 // (dev, ino) -> Entry.Link
}

func (o *orderer) walk(d *scanDir) {
	for i := range d.children {
		c := &d.children[i]
		o.add(*c)
		if c.mount {
			o.mounts = append(o.mounts, c.name)
		}
		if c.sub != nil {
			o.walk(c.sub)
		}
	}
}

func (o *orderer) add(c scanned) {
	st := &c.st
	e := Entry{
		Name:    c.name,
		UID:     int(st.Uid),
		GID:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, 0),
		Path:    c.path,
	}
	perm := fs.FileMode(st.Mode & 0o777)
	if st.Mode&unix.S_ISUID != 0 {
		perm |= fs.ModeSetuid
	}
	if st.Mode&unix.S_ISGID != 0 {
		perm |= fs.ModeSetgid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		perm |= fs.ModeSticky
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Size = st.Size
		if st.Nlink > 1 {
			k := [2]uint64{st.Dev, st.Ino}
			if o.links[k] == 0 {
				o.links[k] = uint64(len(o.links) + 1)
			}
			e.Link = o.links[k]
		}
	case unix.S_IFDIR:
		perm |= fs.ModeDir
	case unix.S_IFLNK:
		perm |= fs.ModeSymlink
	case unix.S_IFCHR:
		perm |= fs.ModeDevice | fs.ModeCharDevice
		e.Major, e.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	case unix.S_IFBLK:
		perm |= fs.ModeDevice
		e.Major, e.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	case unix.S_IFIFO:
		perm |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		perm |= fs.ModeSocket
	default:
		// Not a type Linux file systems have; newc cannot say it either.
		perm |= fs.ModeIrregular
	}
	e.Mode = perm
	o.entries = append(o.entries, e)

	b := append(o.buf[:0], c.name...)
	b = append(b, 0)
	for _, v := range [...]uint64{
		uint64(st.Mode), uint64(st.Uid), uint64(st.Gid), uint64(st.Size),
		uint64(st.Mtim.Sec), uint64(st.Mtim.Nsec), uint64(st.Ctim.Sec), uint64(st.Ctim.Nsec),
		st.Ino, uint64(st.Nlink), st.Rdev, st.Dev,
	} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	o.buf = b
	o.h.Write(b)
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
	if w.err != nil {
		return TreeStats{}, w.err
	}
	if w.closed {
		return TreeStats{}, fmt.Errorf("archive %s: archive closed", root)
	}
	t, err := ScanDir(ctx, root, ScanOptions{Skip: opt.Skip, CrossFilesystems: opt.CrossFilesystems})
	if err != nil {
		return TreeStats{}, err
	}
	stats, err := w.AddEntries(ctx, t.Entries, opt)
	stats.MountPoints = t.MountPoints
	return stats, err
}

// AddEntries writes entries, which must be in archive order (SortEntries),
// then opt.Append, without the trailer. Of opt it uses SourceDateEpoch,
// Progress and Append. Entries with the same Link become newc hard links:
// one inode number, the number of links in the archive, and the data on
// the last one. Directories get a link count of 2 plus their
// subdirectories. TreeStats counts what this call wrote.
func (w *Writer) AddEntries(ctx context.Context, entries []Entry, opt TreeOptions) (TreeStats, error) {
	start := w.n
	stats := TreeStats{}
	if w.err != nil {
		return stats, w.err
	}
	if w.closed {
		return stats, errors.New("write archive: archive closed")
	}
	hdrs, err := w.headers(entries)
	if err != nil {
		return stats, err
	}
	p := progress{fn: opt.Progress}
	for i := range entries {
		if err := ctx.Err(); err != nil {
			return stats, fmt.Errorf("write archive: %w", err)
		}
		h := &hdrs[i]
		if opt.SourceDateEpoch != nil && h.mtime > opt.SourceDateEpoch.Unix() {
			h.mtime = opt.SourceDateEpoch.Unix()
		}
		if err := w.writeListed(&entries[i], h); err != nil {
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

// headers returns the entries' headers with inode numbers and link counts:
// inodes in archive order, hard links sharing one, with the number of
// links in the archive and the data on the last one (size 0 on the
// others). Directories and symlinks are never linked.
func (w *Writer) headers(entries []Entry) ([]header, error) {
	hdrs := make([]header, len(entries))
	subdirs := map[string]uint32{}
	for _, e := range entries {
		if e.Mode.IsDir() && e.Name != "." {
			subdirs[path.Dir(e.Name)]++
		}
	}
	groups := map[uint64][]int{}
	for i := range entries {
		e := &entries[i]
		mode, err := unixMode(e.Mode)
		if err != nil {
			return nil, fmt.Errorf("write entry %q: %w", e.Name, err)
		}
		h := header{name: e.Name, mode: mode, uid: int64(e.UID), gid: int64(e.GID), nlink: 1}
		if !e.ModTime.IsZero() {
			h.mtime = e.ModTime.Unix()
		}
		typ := e.Mode.Type()
		switch {
		case typ == 0:
			h.size = e.Size
		case typ == fs.ModeDir:
			h.nlink = 2 + subdirs[e.Name]
		case typ&fs.ModeDevice != 0:
			h.major, h.minor = e.Major, e.Minor
		}
		hdrs[i] = h
		if typ != 0 || e.Link == 0 {
			hdrs[i].ino = w.nextIno()
			continue
		}
		g := groups[e.Link]
		if len(g) == 0 {
			hdrs[i].ino = w.nextIno()
		} else {
			hdrs[i].ino = hdrs[g[0]].ino
		}
		groups[e.Link] = append(g, i)
	}
	for _, g := range groups {
		if len(g) < 2 {
			continue
		}
		for j, i := range g {
			hdrs[i].nlink = uint32(len(g))
			if j < len(g)-1 {
				hdrs[i].size = 0
			}
		}
	}
	return hdrs, nil
}

// writeListed writes e with header h, reading its data or target.
func (w *Writer) writeListed(e *Entry, h *header) error {
	switch e.Mode.Type() {
	case fs.ModeSymlink:
		target := e.Linkname
		if target == "" && e.Path != "" {
			var err error
			if target, err = os.Readlink(e.Path); err != nil {
				return fmt.Errorf("read symlink %s: %w", e.Path, err)
			}
		}
		if target == "" {
			return fmt.Errorf("read symlink %s: empty target", e.Name)
		}
		h.size = int64(len(target))
		return w.writeEntry(*h, strings.NewReader(target))
	case 0:
		if h.size == 0 {
			return w.writeEntry(*h, nil)
		}
		var r io.ReadCloser
		var err error
		if e.Open != nil {
			r, err = e.Open()
		} else {
			r, err = os.OpenFile(e.Path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		}
		if err != nil {
			return fmt.Errorf("open %s: %w", e.describe(), err)
		}
		err = w.writeEntry(*h, r)
		r.Close()
		return err
	default:
		return w.writeEntry(*h, nil)
	}
}

func (e *Entry) describe() string {
	if e.Path != "" {
		return e.Path
	}
	return e.Name
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
