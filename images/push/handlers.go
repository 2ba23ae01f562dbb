package push

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
)

// The server's namespace.
const (
	blobsDir     = "/blobs/sha256"
	refsDir      = "/refs"
	manifestsDir = "/manifests"
)

// BlobPath, RefPath and ManifestPath are where the server exposes a blob,
// a reference and a reference's manifest.
func BlobPath(d images.Digest) string { return blobsDir + "/" + d.Hex() }

// RefPath is the path of a reference's digest file.
func RefPath(ref string) string { return refsDir + "/" + ref }

// ManifestPath is the path a reference's manifest is read from or pushed to.
func ManifestPath(ref string) string { return manifestsDir + "/" + ref }

// errDenied is what every operation outside the namespace gets.
var errDenied = sftp.ErrSSHFxPermissionDenied

// handlers are one session's sftp handlers.
type handlers struct {
	srv *Server
	log *slog.Logger
}

// split returns the namespace directory of p ("/blobs/sha256", "/refs",
// "/manifests") and the name in it.
func split(p string) (dir, name string) {
	p = path.Clean("/" + p)
	return path.Dir(p), path.Base(p)
}

func blobDigest(name string) (images.Digest, error) {
	return images.ParseDigest("sha256:" + name)
}

func (h *handlers) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	st := h.srv.Store
	dir, name := split(r.Filepath)
	switch dir {
	case blobsDir:
		d, err := blobDigest(name)
		if err != nil {
			return nil, os.ErrNotExist
		}
		f, err := st.OpenBlob(d)
		if err != nil {
			return nil, os.ErrNotExist
		}
		return &countingReader{f: f, m: h.srv.Metrics}, nil
	case refsDir:
		_, d, err := st.Resolve(name)
		if err != nil {
			return nil, os.ErrNotExist
		}
		return strings.NewReader(string(d) + "\n"), nil
	case manifestsDir:
		_, d, err := st.Resolve(name)
		if err != nil {
			return nil, os.ErrNotExist
		}
		b, err := st.ManifestBytes(d)
		if err != nil {
			return nil, err
		}
		return bytes.NewReader(b), nil
	}
	return nil, errDenied
}

// countingReader serves a blob and counts the bytes sent.
type countingReader struct {
	f *os.File
	m *Metrics
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.f.ReadAt(p, off)
	c.m.sent(n)
	return n, err
}

func (c *countingReader) Close() error { return c.f.Close() }

func (h *handlers) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	dir, name := split(r.Filepath)
	switch dir {
	case blobsDir:
		d, err := blobDigest(name)
		if err != nil {
			return nil, fmt.Errorf("upload %s: not a blob path /blobs/sha256/<64 hex digits>: %w", r.Filepath, errDenied)
		}
		f, err := h.srv.Store.CreateTemp("upload-*")
		if err != nil {
			return nil, err
		}
		u := &upload{h: h, f: f, digest: d, path: r.Filepath, hash: sha256.New()}
		if _, err := u.room(0); err != nil {
			f.Close()
			os.Remove(f.Name())
			h.srv.Metrics.blob(u.refusal)
			h.log.Warn("sftp upload refused", "path", r.Filepath, "err", err)
			return nil, err
		}
		return u, nil
	case manifestsDir:
		if _, err := images.ParseReference(name); err != nil {
			return nil, fmt.Errorf("upload %s: %v: %w", r.Filepath, err, errDenied)
		}
		return &manifestUpload{h: h, ref: name}, nil
	}
	return nil, errDenied
}

// upload is one blob being uploaded into a file in the store's tmp/.
// While the writes come in order, it hashes them as they come, so closing
// the upload need not read the file again.
type upload struct {
	h      *handlers
	f      *os.File
	digest images.Digest
	path   string

	mu      sync.Mutex
	aborted error
	closed  bool
	hash    hash.Hash // nil once a write came out of order
	next    int64     // the offset the next in-order write starts at
	end     int64     // the file's size so far
	refused error     // a write past a bound: the upload is discarded
	refusal string    // its metric label
}

// room checks that writing up to offset end keeps the upload
// within Server.MaxUploadBytes and leaves Server.MinFreeBytes free in the
// store's file system, counting the bytes of writes granted but not yet
// written (see Server.pending); it records the refusal. It returns the
// bytes it granted, which the caller gives back with release once they
// are written (or failed). Callers hold u.mu or own u.
func (u *upload) room(end int64) (int64, error) {
	if u.refused != nil {
		return 0, u.refused
	}
	srv := u.h.srv
	if srv.MaxUploadBytes > 0 && end > srv.MaxUploadBytes {
		u.refusal = "too_large"
		u.refused = fmt.Errorf("upload %s: larger than the head's limit of %d bytes (sftp.max_upload)", u.path, srv.MaxUploadBytes)
		return 0, u.refused
	}
	reserve := orDefault(srv.MinFreeBytes, DefaultMinFreeBytes)
	if reserve < 0 {
		return 0, nil
	}
	grow := max(0, end-u.end)
	srv.space.Lock()
	defer srv.space.Unlock()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(u.f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("upload %s: free space: %w", u.path, err)
	}
	free := int64(st.Bavail)*st.Bsize - srv.pending
	if free-grow < reserve {
		u.refusal = "no_space"
		u.refused = fmt.Errorf("upload %s: the head's image store would have less than %d bytes free (sftp.min_free; %d free, %d more to write): %w",
			u.path, reserve, free, grow, unix.ENOSPC)
		return 0, u.refused
	}
	srv.pending += grow
	return grow, nil
}

// release gives back bytes granted by room once they are in the file
// system (statfs counts them from then on) or their write failed.
func (srv *Server) release(n int64) {
	if n == 0 {
		return
	}
	srv.space.Lock()
	srv.pending -= n
	srv.space.Unlock()
}

func (u *upload) WriteAt(p []byte, off int64) (int, error) {
	u.mu.Lock()
	end := off + int64(len(p))
	granted, err := u.room(end)
	if err != nil {
		u.mu.Unlock()
		return 0, err
	}
	u.end = max(u.end, end)
	u.mu.Unlock()
	n, err := u.f.WriteAt(p, off)
	u.h.srv.release(granted)
	u.h.srv.Metrics.received(n)
	u.mu.Lock()
	if u.hash != nil {
		if off == u.next && err == nil {
			u.hash.Write(p[:n])
			u.next += int64(n)
		} else {
			u.hash = nil
		}
	}
	u.mu.Unlock()
	return n, err
}

// TransferError is called by the request server when the session ends
// with the file still open: the upload is incomplete.
func (u *upload) TransferError(err error) {
	u.mu.Lock()
	u.aborted = err
	u.mu.Unlock()
}

// Close verifies the upload and stores it as a blob, or discards it.
func (u *upload) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	if u.refused != nil {
		u.f.Close()
		os.Remove(u.f.Name())
		u.h.srv.Metrics.blob(u.refusal)
		u.h.log.Warn("sftp upload refused: discarded", "path", u.path, "err", u.refused)
		return u.refused
	}
	if u.aborted != nil {
		u.f.Close()
		os.Remove(u.f.Name())
		u.h.srv.Metrics.blob("interrupted")
		u.h.log.Warn("sftp upload interrupted: discarded", "path", u.path, "err", u.aborted)
		return u.aborted
	}
	fi, err := u.f.Stat()
	if err != nil {
		u.f.Close()
		os.Remove(u.f.Name())
		return err
	}
	want := images.Artifact{Digest: u.digest, Size: fi.Size()}
	var a images.Artifact
	if u.hash != nil && u.next == fi.Size() {
		a, err = u.h.srv.Store.PutHashed(u.f, images.DigestFromHash(u.hash), want)
	} else {
		a, err = u.h.srv.Store.PutTemp(u.f, want)
	}
	if err != nil {
		u.h.srv.Metrics.blob("rejected")
		u.h.log.Warn("sftp upload rejected", "path", u.path, "bytes", fi.Size(), "err", err)
		return err
	}
	u.h.srv.Metrics.blob("stored")
	u.h.log.Debug("sftp blob stored", "path", u.path, "bytes", a.Size)
	return nil
}

// manifestUpload is a manifest being uploaded, committed at Close.
type manifestUpload struct {
	h   *handlers
	ref string

	mu      sync.Mutex
	buf     []byte
	aborted error
	closed  bool
}

const maxManifest = 1 << 20

func (m *manifestUpload) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	end := off + int64(len(p))
	if off < 0 || end > maxManifest {
		return 0, fmt.Errorf("manifest larger than %d bytes", maxManifest)
	}
	if int64(len(m.buf)) < end {
		m.buf = append(m.buf, make([]byte, end-int64(len(m.buf)))...)
	}
	copy(m.buf[off:], p)
	m.h.srv.Metrics.received(len(p))
	return len(p), nil
}

func (m *manifestUpload) TransferError(err error) {
	m.mu.Lock()
	m.aborted = err
	m.mu.Unlock()
}

func (m *manifestUpload) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if m.aborted != nil {
		return m.aborted
	}
	d, err := m.h.srv.Store.CommitManifest(m.ref, m.buf)
	if err != nil {
		m.h.log.Warn("sftp manifest rejected", "image", m.ref, "err", err)
		return err
	}
	m.h.srv.Metrics.commit()
	m.h.log.Info("image committed", "image", m.ref+"@"+string(d))
	if m.h.srv.Committed != nil {
		m.h.srv.Committed(m.ref, d)
	}
	return nil
}

// Filecmd allows only Setstat (a no-op: clients send it after a put);
// nothing can be removed, renamed, linked or created.
func (h *handlers) Filecmd(r *sftp.Request) error {
	if r.Method == "Setstat" {
		if _, err := h.stat(r.Filepath); err == nil {
			return nil
		}
		dir, _ := split(r.Filepath)
		if dir == blobsDir || dir == manifestsDir {
			return nil // an upload in progress
		}
	}
	return errDenied
}

func (h *handlers) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	switch r.Method {
	case "Stat", "Lstat":
		fi, err := h.stat(r.Filepath)
		if err != nil {
			return nil, err
		}
		return listerAt{fi}, nil
	case "List":
		return h.list(path.Clean("/" + r.Filepath))
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

var namespaceDirs = map[string][]string{
	"/":      {"blobs", "manifests", "refs"},
	"/blobs": {"sha256"},
}

func (h *handlers) stat(p string) (os.FileInfo, error) {
	p = path.Clean("/" + p)
	if _, ok := namespaceDirs[p]; ok || p == blobsDir || p == refsDir || p == manifestsDir {
		return fileInfo{name: path.Base(p), dir: true}, nil
	}
	st := h.srv.Store
	dir, name := split(p)
	switch dir {
	case blobsDir:
		d, err := blobDigest(name)
		if err != nil {
			return nil, os.ErrNotExist
		}
		f, err := st.OpenBlob(d)
		if err != nil {
			return nil, os.ErrNotExist
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		return fileInfo{name: name, size: fi.Size(), mtime: fi.ModTime()}, nil
	case refsDir, manifestsDir:
		_, d, err := st.Resolve(name)
		if err != nil {
			return nil, os.ErrNotExist
		}
		size := int64(len(d) + 1)
		if dir == manifestsDir {
			b, err := st.ManifestBytes(d)
			if err != nil {
				return nil, err
			}
			size = int64(len(b))
		}
		return fileInfo{name: name, size: size}, nil
	}
	return nil, os.ErrNotExist
}

func (h *handlers) list(p string) (sftp.ListerAt, error) {
	if names, ok := namespaceDirs[p]; ok {
		var out listerAt
		for _, n := range names {
			out = append(out, fileInfo{name: n, dir: true})
		}
		return out, nil
	}
	st := h.srv.Store
	switch p {
	case blobsDir:
		bs, err := st.Blobs()
		if err != nil {
			return nil, err
		}
		out := make(listerAt, 0, len(bs))
		for _, b := range bs {
			out = append(out, fileInfo{name: b.Digest.Hex(), size: b.Size, mtime: b.ModTime})
		}
		return out, nil
	case refsDir, manifestsDir:
		refs, err := st.List()
		if err != nil {
			return nil, err
		}
		out := make(listerAt, 0, len(refs))
		for _, r := range refs {
			out = append(out, fileInfo{name: r.Reference(), size: int64(len(r.Digest) + 1), mtime: r.Manifest.Created})
		}
		return out, nil
	}
	return nil, os.ErrNotExist
}

type listerAt []os.FileInfo

func (l listerAt) ListAt(out []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(out, l[off:])
	if off+int64(n) >= int64(len(l)) {
		return n, io.EOF
	}
	return n, nil
}

// fileInfo describes a name of the namespace.
type fileInfo struct {
	name  string
	size  int64
	mtime time.Time
	dir   bool
}

func (f fileInfo) Name() string       { return f.name }
func (f fileInfo) Size() int64        { return f.size }
func (f fileInfo) ModTime() time.Time { return f.mtime }
func (f fileInfo) IsDir() bool        { return f.dir }
func (f fileInfo) Sys() any           { return nil }
func (f fileInfo) Mode() fs.FileMode {
	if f.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
