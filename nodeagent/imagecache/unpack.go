package imagecache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// UnpackStats counts what Unpack wrote.
type UnpackStats struct {
	// Entries is the number of archive entries.
	Entries int
	// Bytes is the size of the regular files' data.
	Bytes int64
	// ArchiveBytes is the size of the uncompressed archive read.
	ArchiveBytes int64
}

// UnpackZstd unpacks a zstd-compressed newc cpio archive into dir; see
// Unpack.
func UnpackZstd(ctx context.Context, r io.Reader, dir string) (UnpackStats, error) {
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(false))
	if err != nil {
		return UnpackStats{}, fmt.Errorf("unpack %s: %w", dir, err)
	}
	defer zr.Close()
	return Unpack(ctx, zr, dir)
}

// Unpack unpacks a newc cpio archive (the format of ramboot images and of
// the Linux initramfs) into the existing directory dir, as the kernel would:
// directories, regular files, symbolic links, device nodes, fifos and
// sockets with their owners, modes (setuid included) and modification
// times; hard links as hard links (newc gives every link the same inode
// number and the data to the last one). A later entry of the same name
// replaces an earlier one. Every path is resolved inside dir, symbolic
// links included (openat2 RESOLVE_IN_ROOT), so no archive writes outside
// it. Unpack must run as root to set owners and create devices.
func Unpack(ctx context.Context, r io.Reader, dir string) (UnpackStats, error) {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return UnpackStats{}, fmt.Errorf("unpack into %s: %w", dir, err)
	}
	u := &unpacker{
		root:  root,
		br:    bufio.NewReaderSize(r, 1<<20),
		links: map[uint64]string{},
		pfd:   -1,
	}
	defer u.close()
	err = u.run(ctx)
	u.st.ArchiveBytes = u.off
	if err != nil {
		return u.st, fmt.Errorf("unpack into %s: %w", dir, err)
	}
	return u.st, nil
}

type unpacker struct {
	root  int
	br    *bufio.Reader
	off   int64
	st    UnpackStats
	links map[uint64]string // inode -> first path, for nlink > 1
	dirs  []dirTime
	// pfd is an open O_PATH descriptor of the directory pdir, the parent
	// of the last entry: archives list a directory's entries together.
	pdir string
	pfd  int
}

type dirTime struct {
	name  string
	mtime int64
}

func (u *unpacker) close() {
	if u.pfd >= 0 {
		unix.Close(u.pfd)
	}
	unix.Close(u.root)
}

// header is a newc header's fields.
type header struct {
	ino, mode, uid, gid, nlink, mtime, size uint32
	rdevMajor, rdevMinor                    uint32
	name                                    string
}

const (
	typeMask = 0o170000
	typeDir  = 0o040000
	typeReg  = 0o100000
	typeLnk  = 0o120000
	typeChr  = 0o020000
	typeBlk  = 0o060000
	typeFifo = 0o010000
	typeSock = 0o140000
)

var errTrailer = errors.New("trailer")

func (u *unpacker) readHeader() (header, error) {
	b, err := u.br.Peek(110)
	if err != nil {
		if err == io.EOF && len(b) == 0 {
			return header{}, io.ErrUnexpectedEOF
		}
		return header{}, fmt.Errorf("header at %d: %w", u.off, noEOF(err))
	}
	if string(b[:6]) != "070701" && string(b[:6]) != "070702" {
		return header{}, fmt.Errorf("header at %d: bad magic %q (not a newc archive)", u.off, b[:6])
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(b[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return header{}, fmt.Errorf("header at %d: field %d: %w", u.off, i, err)
		}
		f[i] = uint32(v)
	}
	h := header{ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5], size: f[6], rdevMajor: f[9], rdevMinor: f[10]}
	nameSize := int(f[11])
	if nameSize < 1 || nameSize > 4096 {
		return header{}, fmt.Errorf("header at %d: name size %d", u.off, nameSize)
	}
	u.discard(110)
	nb, err := u.br.Peek(nameSize)
	if err != nil {
		return header{}, fmt.Errorf("name at %d: %w", u.off, noEOF(err))
	}
	h.name = string(nb[:nameSize-1])
	u.discard(pad4(110+int64(nameSize)) - 110)
	if h.name == "TRAILER!!!" {
		return h, errTrailer
	}
	return h, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// discard skips n bytes known to be buffered or to follow.
func (u *unpacker) discard(n int64) error {
	for n > 0 {
		k, err := u.br.Discard(int(min(n, 1<<30)))
		u.off += int64(k)
		n -= int64(k)
		if err != nil {
			return noEOF(err)
		}
	}
	return nil
}

func pad4(n int64) int64 { return (n + 3) &^ 3 }

func (u *unpacker) run(ctx context.Context) error {
	for {
		if u.st.Entries%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		h, err := u.readHeader()
		if err == errTrailer {
			break
		}
		if err != nil {
			return err
		}
		u.st.Entries++
		if err := u.entry(h); err != nil {
			return err
		}
		// Data of every type is padded to 4 bytes.
		if err := u.discard(pad4(int64(h.size)) - int64(h.size)); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
	}
	// Directory times last, deepest first: writing into a directory
	// changes its time.
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		if err := u.setDirTime(d); err != nil {
			return err
		}
	}
	return nil
}

// clean returns the entry's path relative to the root, "." for the root
// itself, or an error for a path that leaves it.
func clean(name string) (string, error) {
	p := path.Clean("/" + name)
	if p == "/" {
		return ".", nil
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("entry %q: path leaves the archive's root", name)
		}
	}
	return p[1:], nil
}

// parent returns an O_PATH descriptor of the directory holding rel,
// resolved inside the root, and rel's last element.
func (u *unpacker) parent(rel string) (int, string, error) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return u.root, base, nil
	}
	if u.pfd >= 0 && u.pdir == dir {
		return u.pfd, base, nil
	}
	fd, err := unix.Openat2(u.root, dir, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, "", fmt.Errorf("open directory %s: %w", dir, err)
	}
	if u.pfd >= 0 {
		unix.Close(u.pfd)
	}
	u.pfd, u.pdir = fd, dir
	return fd, base, nil
}

func (u *unpacker) entry(h header) error {
	rel, err := clean(h.name)
	if err != nil {
		return err
	}
	typ := h.mode & typeMask
	perm := h.mode &^ typeMask
	if rel == "." {
		if typ != typeDir {
			return fmt.Errorf("entry %q: the root is not a directory", h.name)
		}
		if err := unix.Fchownat(u.root, "", int(h.uid), int(h.gid), unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("chown root: %w", err)
		}
		u.dirs = append(u.dirs, dirTime{".", int64(h.mtime)})
		return u.chmodPath(".", perm)
	}
	pfd, base, err := u.parent(rel)
	if err != nil {
		return fmt.Errorf("entry %q: %w", h.name, err)
	}
	if typ != typeReg && typ != typeLnk && h.size != 0 {
		return fmt.Errorf("entry %q: %d bytes of data on a non-file", h.name, h.size)
	}
	switch typ {
	case typeDir:
		err = u.mkdir(pfd, base, rel, h, perm)
	case typeReg:
		err = u.file(pfd, base, rel, h, perm)
	case typeLnk:
		err = u.symlink(pfd, base, h)
	case typeChr, typeBlk, typeFifo, typeSock:
		err = u.mknod(pfd, base, h, typ|perm)
	default:
		err = fmt.Errorf("unknown file type %#o", typ)
	}
	if err != nil {
		return fmt.Errorf("entry %q: %w", h.name, err)
	}
	return nil
}

// replace removes what is at base unless it is a directory and keep says
// directories stay.
func replace(pfd int, base string, keepDir bool) (isDir bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return false, nil
		}
		return false, err
	}
	if st.Mode&typeMask == typeDir {
		if keepDir {
			return true, nil
		}
		return true, fmt.Errorf("a directory is in the way")
	}
	return false, unix.Unlinkat(pfd, base, 0)
}

func (u *unpacker) mkdir(pfd int, base, rel string, h header, perm uint32) error {
	err := unix.Mkdirat(pfd, base, 0o700)
	if err == unix.EEXIST {
		if _, err := replace(pfd, base, true); err != nil {
			return err
		}
		err = unix.Mkdirat(pfd, base, 0o700)
		if err == unix.EEXIST {
			err = nil // a directory already: take this entry's attributes
		}
	}
	if err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	if err := unix.Fchownat(pfd, base, int(h.uid), int(h.gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmodat(pfd, base, perm, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	u.dirs = append(u.dirs, dirTime{rel, int64(h.mtime)})
	return nil
}

func (u *unpacker) chmodPath(rel string, perm uint32) error {
	if err := unix.Fchmodat(u.root, rel, perm, 0); err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
	}
	return nil
}

func (u *unpacker) file(pfd int, base, rel string, h header, perm uint32) error {
	hard := h.nlink > 1
	if hard {
		if first, ok := u.links[uint64(h.ino)]; ok && first != rel {
			if _, err := replace(pfd, base, false); err != nil {
				return err
			}
			if err := unix.Linkat(u.root, first, pfd, base, 0); err != nil {
				return fmt.Errorf("link to %s: %w", first, err)
			}
			if h.size == 0 {
				return nil
			}
			// The data comes with this (the last) link: write it into
			// the shared inode.
			fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := u.writeData(fd, h); err != nil {
				return err
			}
			return setAttrs(fd, pfd, base, h, perm)
		}
		u.links[uint64(h.ino)] = rel
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err == unix.EEXIST {
		if _, err := replace(pfd, base, false); err != nil {
			return err
		}
		fd, err = unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	}
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	defer unix.Close(fd)
	if err := u.writeData(fd, h); err != nil {
		return err
	}
	return setAttrs(fd, pfd, base, h, perm)
}

// setAttrs sets an open regular file's owner, mode and time.
func setAttrs(fd, pfd int, base string, h header, perm uint32) error {
	if err := unix.Fchown(fd, int(h.uid), int(h.gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	// After chown, which clears setuid and setgid.
	if err := unix.Fchmod(fd, perm); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := []unix.Timespec{{Sec: int64(h.mtime)}, {Sec: int64(h.mtime)}}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set time: %w", err)
	}
	return nil
}

// writeData writes the entry's data from the archive to fd.
func (u *unpacker) writeData(fd int, h header) error {
	left := int(h.size)
	u.st.Bytes += int64(h.size)
	for left > 0 {
		b, err := u.br.Peek(min(left, u.br.Size()))
		if len(b) == 0 {
			return fmt.Errorf("data: %w", noEOF(err))
		}
		for w := b; len(w) > 0; {
			n, err := unix.Write(fd, w)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				return fmt.Errorf("write: %w", err)
			}
			w = w[n:]
		}
		u.discard(int64(len(b)))
		left -= len(b)
	}
	return nil
}

func (u *unpacker) symlink(pfd int, base string, h header) error {
	if h.size == 0 || h.size > 4096 {
		return fmt.Errorf("symlink target of %d bytes", h.size)
	}
	b, err := u.br.Peek(int(h.size))
	if err != nil {
		return fmt.Errorf("symlink target: %w", noEOF(err))
	}
	target := string(b)
	u.discard(int64(h.size))
	if _, err := replace(pfd, base, false); err != nil {
		return err
	}
	if err := unix.Symlinkat(target, pfd, base); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if err := unix.Fchownat(pfd, base, int(h.uid), int(h.gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	ts := []unix.Timespec{{Sec: int64(h.mtime)}, {Sec: int64(h.mtime)}}
	return unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func (u *unpacker) mknod(pfd int, base string, h header, mode uint32) error {
	if _, err := replace(pfd, base, false); err != nil {
		return err
	}
	dev := int(unix.Mkdev(h.rdevMajor, h.rdevMinor))
	if err := unix.Mknodat(pfd, base, mode, dev); err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	if err := unix.Fchownat(pfd, base, int(h.uid), int(h.gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmodat(pfd, base, mode&^typeMask, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	ts := []unix.Timespec{{Sec: int64(h.mtime)}, {Sec: int64(h.mtime)}}
	return unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func (u *unpacker) setDirTime(d dirTime) error {
	fd := u.root
	if d.name != "." {
		var err error
		fd, err = unix.Openat2(u.root, d.name, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP {
			return nil // replaced by a later entry
		}
		if err != nil {
			return fmt.Errorf("set time of %s: %w", d.name, err)
		}
		defer unix.Close(fd)
	}
	tv := []unix.Timeval{{Sec: d.mtime}, {Sec: d.mtime}}
	if err := unix.Futimes(fd, tv); err != nil {
		return fmt.Errorf("set time of %s: %w", d.name, err)
	}
	return nil
}
