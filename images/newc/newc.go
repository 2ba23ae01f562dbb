// Package newc writes reproducible newc (SVR4 "070701") cpio archives, the
// format the Linux kernel unpacks as an initramfs.
//
// An archive is written from files given in memory, or from a directory tree
// on disk:
//
//	err := newc.WriteFiles(w, []newc.File{
//		{Name: "etc", Mode: fs.ModeDir | 0o755},
//		{Name: "etc/hostname", Mode: 0o644, Data: []byte("n001\n")},
//	})
//
//	epoch := time.Unix(0, 0)
//	stats, err := newc.WriteTree(ctx, w, "/srv/rootfs", newc.TreeOptions{
//		SourceDateEpoch: &epoch,
//	})
//
// A [Writer] mixes both in one archive and tells how many bytes it wrote,
// which is how a caller hashes a prefix of the archive.
//
// # Output
//
// Everything in the archive is a function of its input: inode numbers are
// assigned in write order starting at 1 (hard links share one), the device
// fields that name the file system a file came from are zero, no checksum is
// written ("070701", never "070702"), and WriteTree writes a tree in a fixed
// order (the root "." first, then depth first with the names of each
// directory in byte order, so a directory always precedes its contents).
// Hard links follow newc rules: every link carries the same inode and the
// number of links in the archive, and only the last one carries the data.
// Numeric fields are eight hexadecimal digits, so sizes, owners and
// modification times beyond 32 bits, and times before 1970, are errors that
// name the entry rather than truncated values.
//
// # Why the encoder is here
//
// The header is 13 fixed-width fields and is written by this package for
// every entry, not by github.com/cavaliergopher/cpio's Writer. That writer
// does not write rdevmajor/rdevminor (device nodes would come out as 0,0),
// switches a package-level magic to "070702" for every later archive of the
// process once any header sets Checksum, and silently cuts values wider than
// eight digits. Writing only device headers by hand would leave two encoders
// of one format to keep in step; one small encoder is simpler to check. The
// library is used where it is correct: its mode constants name the type bits
// here, and its Reader is the independent decoder the tests read every
// archive back with (as is GNU cpio).
package newc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
)

// File is one archive entry given in memory.
type File struct {
	// Name is the path inside the archive, without a leading "/", e.g.
	// "init" or "etc/ramboot/node.json"; "." names the archive's root.
	Name string
	// Mode holds the permission bits (with setuid, setgid and sticky) and
	// the type: 0 for a regular file, or fs.ModeDir, fs.ModeSymlink,
	// fs.ModeDevice (block device), fs.ModeDevice|fs.ModeCharDevice
	// (character device), fs.ModeNamedPipe or fs.ModeSocket.
	Mode fs.FileMode
	// Data is a regular file's contents; it must be empty for other types.
	Data []byte
	// Linkname is a symbolic link's target; it must be empty for other
	// types.
	Linkname string
	// UID and GID are the numeric owner and group.
	UID, GID int
	// ModTime is the modification time, in whole seconds; the zero time
	// means the Unix epoch.
	ModTime time.Time
	// Major and Minor are a device node's device numbers.
	Major, Minor uint32
}

// trailerName names the entry that ends an archive.
const trailerName = "TRAILER!!!"

// maxNameSize is the largest name field, its NUL included (PATH_MAX).
const maxNameSize = 4096

// headerSize is the size of a newc header before the name.
const headerSize = 110

// Writer writes a newc archive entry by entry. It writes straight to the
// underlying writer, without buffering, so once a method returns all the
// bytes it accounts for in Written have been passed on. Inode numbers
// count up from 1 across everything one Writer writes. After an error every
// method returns that error.
type Writer struct {
	w       io.Writer
	n       int64
	ino     uint32
	err     error
	closed  bool
	hdr     []byte
	copyBuf []byte
}

// NewWriter returns a Writer that writes an archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w}
}

// Written returns the number of archive bytes written so far.
func (w *Writer) Written() int64 {
	return w.n
}

// WriteFile writes f as one entry with an inode of its own.
func (w *Writer) WriteFile(f File) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("write entry: archive closed")
	}
	h, err := fileHeader(f)
	if err != nil {
		return err
	}
	h.ino = w.nextIno()
	var body io.Reader
	switch {
	case f.Mode.Type() == fs.ModeSymlink:
		body = strings.NewReader(f.Linkname)
	case len(f.Data) > 0:
		body = bytes.NewReader(f.Data)
	}
	return w.writeEntry(h, body)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if err := w.writeEntry(header{name: trailerName, nlink: 1}, nil); err != nil {
		return err
	}
	w.closed = true
	return nil
}

// WriteFiles writes files in the given order, then the trailer.
func WriteFiles(w io.Writer, files []File) error {
	nw := NewWriter(w)
	for _, f := range files {
		if err := nw.WriteFile(f); err != nil {
			return err
		}
	}
	return nw.Close()
}

func (w *Writer) nextIno() uint32 {
	w.ino++
	return w.ino
}

// header is one entry's newc header fields, in archive units.
type header struct {
	name         string
	ino          uint32
	mode         uint32
	uid, gid     int64
	nlink        uint32
	mtime        int64
	size         int64
	major, minor uint32
}

// fileHeader checks f and returns its header without an inode number.
func fileHeader(f File) (header, error) {
	mode, err := unixMode(f.Mode)
	if err != nil {
		return header{}, fmt.Errorf("write entry %q: %w", f.Name, err)
	}
	h := header{
		name:  f.Name,
		mode:  mode,
		uid:   int64(f.UID),
		gid:   int64(f.GID),
		nlink: 1,
	}
	if !f.ModTime.IsZero() {
		h.mtime = f.ModTime.Unix()
	}
	typ := f.Mode.Type()
	switch {
	case typ == fs.ModeDir:
		h.nlink = 2
	case typ == fs.ModeSymlink:
		if f.Linkname == "" {
			return header{}, fmt.Errorf("write entry %q: symlink without a target", f.Name)
		}
		h.size = int64(len(f.Linkname))
	case typ&fs.ModeDevice != 0:
		h.major, h.minor = f.Major, f.Minor
	}
	if typ != fs.ModeSymlink && f.Linkname != "" {
		return header{}, fmt.Errorf("write entry %q: link target on a %s entry", f.Name, typeName(typ))
	}
	if typ != 0 && len(f.Data) > 0 {
		return header{}, fmt.Errorf("write entry %q: data on a %s entry", f.Name, typeName(typ))
	}
	if typ&fs.ModeDevice == 0 && (f.Major != 0 || f.Minor != 0) {
		return header{}, fmt.Errorf("write entry %q: device numbers on a %s entry", f.Name, typeName(typ))
	}
	if typ == 0 {
		h.size = int64(len(f.Data))
	}
	return h, nil
}

// writeEntry writes h, then size bytes from body and the padding. A body
// shorter or longer than h.size is an error.
func (w *Writer) writeEntry(h header, body io.Reader) error {
	if w.err != nil {
		return w.err
	}
	if err := h.check(); err != nil {
		return err
	}
	w.hdr = h.append(w.hdr[:0])
	if err := w.write(w.hdr); err != nil {
		return err
	}
	if h.size == 0 {
		return nil
	}
	if body == nil {
		return w.fail(fmt.Errorf("write entry %q: no data for %d bytes", h.name, h.size))
	}
	if w.copyBuf == nil {
		w.copyBuf = make([]byte, 256<<10)
	}
	n, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(body, h.size), w.copyBuf)
	if w.err != nil {
		return w.err
	}
	if err != nil {
		return w.fail(fmt.Errorf("read data of %q: %w", h.name, err))
	}
	if n != h.size {
		return w.fail(fmt.Errorf("read data of %q: got %d bytes, want %d (file changed while archiving?)", h.name, n, h.size))
	}
	var one [1]byte
	if m, _ := io.ReadFull(body, one[:]); m > 0 {
		return w.fail(fmt.Errorf("read data of %q: longer than %d bytes (file changed while archiving?)", h.name, h.size))
	}
	return w.write(zeros[:pad4(h.size)])
}

var zeros [4]byte

// pad4 returns the number of bytes that align n to 4.
func pad4(n int64) int64 {
	return (4 - n%4) % 4
}

func (w *Writer) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
	if err != nil {
		return w.fail(fmt.Errorf("write archive: %w", err))
	}
	return nil
}

func (w *Writer) fail(err error) error {
	w.err = err
	return err
}

// writerOnly hides any ReadFrom of the Writer from io.CopyBuffer.
type writerOnly struct{ w *Writer }

func (o writerOnly) Write(p []byte) (int, error) {
	if err := o.w.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// check reports fields that newc cannot represent.
func (h header) check() error {
	if h.name != trailerName {
		if err := checkName(h.name); err != nil {
			return err
		}
	}
	var bad string
	switch {
	case h.uid < 0 || h.uid > math.MaxUint32:
		bad = fmt.Sprintf("uid %d", h.uid)
	case h.gid < 0 || h.gid > math.MaxUint32:
		bad = fmt.Sprintf("gid %d", h.gid)
	case h.mtime < 0 || h.mtime > math.MaxUint32:
		bad = fmt.Sprintf("modification time %d (newc holds 1970 to 2106)", h.mtime)
	case h.size < 0 || h.size > math.MaxUint32:
		bad = fmt.Sprintf("size %d (newc holds up to 4 GiB - 1)", h.size)
	default:
		return nil
	}
	return fmt.Errorf("write entry %q: %s out of range", h.name, bad)
}

// checkName reports names the kernel and cpio -i would not take as a
// relative path.
func checkName(name string) error {
	switch {
	case !fs.ValidPath(name):
		return fmt.Errorf("write entry %q: name is not a clean relative path", name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("write entry %q: name contains NUL", name)
	case len(name)+1 > maxNameSize:
		return fmt.Errorf("write entry %q: name longer than %d bytes", name, maxNameSize-1)
	}
	return nil
}

// append appends the encoded header, name and name padding to b.
func (h header) append(b []byte) []byte {
	b = append(b, "070701"...)
	for _, v := range [...]uint32{
		h.ino,
		h.mode,
		uint32(h.uid),
		uint32(h.gid),
		h.nlink,
		uint32(h.mtime),
		uint32(h.size),
		0, 0, // devmajor, devminor: the file system the file came from
		h.major, h.minor, // rdevmajor, rdevminor
		uint32(len(h.name) + 1),
		0, // check
	} {
		b = appendHex8(b, v)
	}
	b = append(b, h.name...)
	b = append(b, 0)
	return append(b, zeros[:pad4(int64(headerSize+len(h.name)+1))]...)
}

const hexDigits = "0123456789ABCDEF"

func appendHex8(b []byte, v uint32) []byte {
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hexDigits[(v>>shift)&0xf])
	}
	return b
}

// unixMode converts m to st_mode bits.
func unixMode(m fs.FileMode) (uint32, error) {
	mode := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= cpio.ModeSetuid
	}
	if m&fs.ModeSetgid != 0 {
		mode |= cpio.ModeSetgid
	}
	if m&fs.ModeSticky != 0 {
		mode |= cpio.ModeSticky
	}
	switch m.Type() {
	case 0:
		mode |= cpio.TypeReg
	case fs.ModeDir:
		mode |= cpio.TypeDir
	case fs.ModeSymlink:
		mode |= cpio.TypeSymlink
	case fs.ModeDevice:
		mode |= cpio.TypeBlock
	case fs.ModeDevice | fs.ModeCharDevice:
		mode |= cpio.TypeChar
	case fs.ModeNamedPipe:
		mode |= cpio.TypeFifo
	case fs.ModeSocket:
		mode |= cpio.TypeSocket
	default:
		return 0, fmt.Errorf("unsupported file type %v", m.Type())
	}
	return mode, nil
}

func typeName(t fs.FileMode) string {
	switch t {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSymlink:
		return "symlink"
	case fs.ModeDevice:
		return "block device"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "character device"
	case fs.ModeNamedPipe:
		return "fifo"
	case fs.ModeSocket:
		return "socket"
	}
	return t.String()
}
