// Package images is ramboot's content-addressed image store: node images
// (a kernel and a compressed root file system) described by manifests and
// kept under references "name:tag".
//
// A build or an upload puts its blobs, then commits a manifest under a
// reference; the head resolves the reference and serves the blobs:
//
//	st := &images.Store{Dir: "/var/lib/ramboot/images"}
//	kernel, err := st.Put(ctx, kernelFile)
//	kernel.MediaType = images.MediaTypeKernel
//	...
//	d, err := st.Commit("debian12:v3", images.Manifest{SchemaVersion: images.SchemaVersion, Kernel: kernel, ...})
//
//	m, d, err := st.Resolve("debian12") // a bare name means "debian12:latest"
//	f, err := st.OpenBlob(m.Rootfs.Digest)
//	defer f.Close()
//	http.ServeContent(w, r, "rootfs.cpio.zst", time.Time{}, f)
//
//	res, err := st.GC(images.GCOptions{InUse: digestsNodesUse, DryRun: true})
//
// # Layout and guarantees
//
// Under Store.Dir, blobs/sha256/<hex> holds each blob, named by the SHA-256
// of its content (kernels, root file systems, and manifests as canonical
// JSON); refs/<name>:<tag> holds the digest of the manifest a reference
// points to, and a newline; tmp/ holds writes in flight; cache/ holds the
// builder's no-op rebuild records; lock is the store's lock file. Blobs
// and refs are written to tmp/, verified, fsynced and renamed into place,
// and the directory is fsynced, so a crash or an interrupted write leaves
// either the old state or the new, never a partial file under blobs/ or
// refs/. Only Commit makes a reference resolve, after checking that the
// blobs its manifest names are there, so an interrupted build or upload is
// never visible. Files in tmp/ left by a crash are harmless; Put removes
// those not modified for an hour. The store's directories are created on
// first write, with their missing parents.
//
// Writers need no coordination among themselves: concurrent Puts of the
// same content rename identical files over each other, and concurrent
// Commits of one reference leave it pointing at one of the manifests. GC,
// the only operation that removes blobs, takes the lock file exclusively;
// every writer holds it shared, so a blob is never removed between a
// Commit's check and its reference, and GC keeps blobs written in the last
// GCOptions.MinAge, so a build between its Puts and its Commit keeps its
// blobs.
package images

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotFound reports an image reference or blob that is not in the store.
var ErrNotFound = errors.New("not found")

// Store is a content-addressed image store in a directory. The directory
// and its subdirectories are created on first write (mode 0700: an image
// can hold secrets, so blobs are readable by the store's owner only).
type Store struct {
	// Dir is the store's root directory. It must be set.
	Dir string
}

// tmpMaxAge is how long a file in tmp/ may go unmodified before Put
// removes it as a leftover.
const tmpMaxAge = time.Hour

const (
	dirMode  = 0o700
	blobMode = 0o400
	refMode  = 0o600
)

func (s *Store) blobDir() string  { return filepath.Join(s.Dir, "blobs", "sha256") }
func (s *Store) refDir() string   { return filepath.Join(s.Dir, "refs") }
func (s *Store) tmpDir() string   { return filepath.Join(s.Dir, "tmp") }
func (s *Store) cacheDir() string { return filepath.Join(s.Dir, "cache") }
func (s *Store) lockPath() string { return filepath.Join(s.Dir, "lock") }

func (s *Store) blobPath(d Digest) string { return filepath.Join(s.blobDir(), d.Hex()) }

// check reports a Store without a directory.
func (s *Store) check() error {
	if s.Dir == "" {
		return errors.New("open store: empty Dir")
	}
	return nil
}

// init creates the store's directories that are missing, and their
// missing parents (mode 0700).
func (s *Store) init() error {
	if err := s.check(); err != nil {
		return err
	}
	if _, err := os.Stat(s.tmpDir()); err == nil {
		if _, err := os.Stat(s.cacheDir()); err == nil {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(s.Dir), dirMode); err != nil {
		return fmt.Errorf("create store directory: %w", err)
	}
	for _, d := range []string{s.Dir, filepath.Join(s.Dir, "blobs"), s.blobDir(), s.refDir(), s.cacheDir(), s.tmpDir()} {
		err := os.Mkdir(d, dirMode)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create store directory: %w", err)
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// lock takes the store's lock file, shared or exclusive, creating the
// store first. The returned function releases it.
func (s *Store) lock(exclusive bool) (func(), error) {
	if err := s.init(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.lockPath(), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock store %s: %w", s.lockPath(), err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

// Put stores the content of r as a blob and returns its digest and size;
// the caller sets MediaType. The content goes to a file in tmp/ and is
// hashed on the way; it is fsynced and renamed into blobs/ only once r is
// at EOF, so a reader error or the end of ctx leaves no blob. Putting
// content that is already stored is harmless.
func (s *Store) Put(ctx context.Context, r io.Reader) (Artifact, error) {
	return s.put(ctx, r, nil)
}

// PutVerified is Put for content whose digest and size are known in
// advance (an upload, a pull): content of another digest or size is an
// error and leaves no blob.
func (s *Store) PutVerified(ctx context.Context, r io.Reader, want Artifact) (Artifact, error) {
	return s.put(ctx, r, &want)
}

func (s *Store) put(ctx context.Context, r io.Reader, want *Artifact) (Artifact, error) {
	unlock, err := s.lock(false)
	if err != nil {
		return Artifact{}, err
	}
	defer unlock()
	s.removeOldTmp()
	f, err := os.CreateTemp(s.tmpDir(), "blob-*")
	if err != nil {
		return Artifact{}, fmt.Errorf("put blob: %w", err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(f, h), ctxReader{ctx, r}, make([]byte, 1<<20))
	if err != nil {
		return Artifact{}, fmt.Errorf("put blob %s: %w", tmp, err)
	}
	a := Artifact{Digest: DigestFromHash(h), Size: n}
	if want != nil && (a.Digest != want.Digest || a.Size != want.Size) {
		return Artifact{}, fmt.Errorf("put blob %s: got %d bytes with digest %s: %w", want.Digest, a.Size, a.Digest, ErrDigestMismatch)
	}
	if err := s.commitTemp(f, a); err != nil {
		return Artifact{}, err
	}
	done = true
	if want != nil {
		a.MediaType = want.MediaType
	}
	return a, nil
}

// ErrDigestMismatch reports content that does not have the digest or size
// it was announced with.
var ErrDigestMismatch = errors.New("content does not match its digest")

// commitTemp makes the temporary file f, whose content is a, the blob a:
// chmod, fsync, close, rename, fsync the directory. It closes f; on error
// the caller removes the file. The caller holds the lock.
func (s *Store) commitTemp(f *os.File, a Artifact) error {
	tmp := f.Name()
	if err := f.Chmod(blobMode); err != nil {
		f.Close()
		return fmt.Errorf("put blob %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("put blob %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("put blob %s: %w", tmp, err)
	}
	dst := s.blobPath(a.Digest)
	if fi, err := os.Lstat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == a.Size {
		// Already stored (the name is the content's hash). Touch it, so
		// that GC sees it as recently written.
		now := time.Now()
		_ = os.Chtimes(dst, now, now)
		return os.Remove(tmp)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("put blob %s: %w", a.Digest, err)
	}
	return syncDir(s.blobDir())
}

// CreateTemp creates a new file in the store's tmp/ directory, on the same
// file system as the blobs, for content written out of order (an SFTP
// upload) that PutTemp then turns into a blob.
func (s *Store) CreateTemp(pattern string) (*os.File, error) {
	if err := s.init(); err != nil {
		return nil, err
	}
	s.removeOldTmp()
	f, err := os.CreateTemp(s.tmpDir(), pattern)
	if err != nil {
		return nil, fmt.Errorf("create temporary file in store: %w", err)
	}
	return f, nil
}

// PutTemp makes f, a file made by CreateTemp and fully written, the blob
// want: it reads f from the start, checks that its content has want's
// digest and size, then fsyncs and renames it. f is closed and its path
// removed in every case; on error no blob is stored.
func (s *Store) PutTemp(f *os.File, want Artifact) (Artifact, error) {
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if filepath.Dir(tmp) != s.tmpDir() {
		f.Close()
		return Artifact{}, fmt.Errorf("put blob %s: %s is not in the store's tmp/", want.Digest, tmp)
	}
	unlock, err := s.lock(false)
	if err != nil {
		f.Close()
		return Artifact{}, err
	}
	defer unlock()
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, 1<<62), make([]byte, 1<<20))
	if err != nil {
		f.Close()
		return Artifact{}, fmt.Errorf("put blob %s: read %s: %w", want.Digest, tmp, err)
	}
	a := Artifact{Digest: DigestFromHash(h), Size: n, MediaType: want.MediaType}
	if a.Digest != want.Digest || a.Size != want.Size {
		f.Close()
		return Artifact{}, fmt.Errorf("put blob %s: got %d bytes with digest %s: %w", want.Digest, a.Size, a.Digest, ErrDigestMismatch)
	}
	if err := s.commitTemp(f, a); err != nil {
		return Artifact{}, err
	}
	return a, nil
}

// PutHashed is PutTemp for a file whose digest the caller computed while
// writing it (got): it is checked against want without reading the file
// again.
func (s *Store) PutHashed(f *os.File, got Digest, want Artifact) (Artifact, error) {
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if filepath.Dir(tmp) != s.tmpDir() {
		f.Close()
		return Artifact{}, fmt.Errorf("put blob %s: %s is not in the store's tmp/", want.Digest, tmp)
	}
	if got != want.Digest {
		f.Close()
		return Artifact{}, fmt.Errorf("put blob %s: got %d bytes with digest %s: %w", want.Digest, want.Size, got, ErrDigestMismatch)
	}
	unlock, err := s.lock(false)
	if err != nil {
		f.Close()
		return Artifact{}, err
	}
	defer unlock()
	if err := s.commitTemp(f, want); err != nil {
		return Artifact{}, err
	}
	return want, nil
}

// removeOldTmp removes files in tmp/ not modified for tmpMaxAge, left by
// crashed writers. A writer in progress keeps its file's mtime fresh.
// Errors are ignored: leftovers are harmless.
func (s *Store) removeOldTmp() {
	des, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return
	}
	cutoff := time.Now().Add(-tmpMaxAge)
	for _, de := range des {
		fi, err := de.Info()
		if err == nil && fi.ModTime().Before(cutoff) {
			os.RemoveAll(filepath.Join(s.tmpDir(), de.Name()))
		}
	}
}

// ctxReader fails reads once ctx has ended.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// HasBlob reports whether the blob a is stored with a's size.
func (s *Store) HasBlob(a Artifact) bool {
	return s.checkBlob(a) == nil
}

// checkBlob checks that a's blob is stored with a's size. Its digest was
// computed by Put over the bytes it stored.
func (s *Store) checkBlob(a Artifact) error {
	if _, err := ParseDigest(string(a.Digest)); err != nil {
		return fmt.Errorf("check blob: %w", err)
	}
	fi, err := os.Lstat(s.blobPath(a.Digest))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check blob %s: %w", a.Digest, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("check blob %s: %w", a.Digest, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != a.Size {
		return fmt.Errorf("check blob %s: %d bytes stored, manifest says %d", a.Digest, fi.Size(), a.Size)
	}
	return nil
}

// OpenBlob opens the blob with digest d for reading, e.g. to serve it with
// http.ServeContent. The error wraps ErrNotFound when there is no such
// blob.
func (s *Store) OpenBlob(d Digest) (*os.File, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if _, err := ParseDigest(string(d)); err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	f, err := os.Open(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", d, err)
	}
	return f, nil
}

// BlobInfo is one stored blob.
type BlobInfo struct {
	// Digest names the blob.
	Digest Digest `json:"digest"`
	// Size is its size in bytes.
	Size int64 `json:"size"`
	// ModTime is when it was last written.
	ModTime time.Time `json:"modTime"`
}

// Blobs lists every stored blob, sorted by digest. Files under blobs/ that
// are not named by a digest are left out.
func (s *Store) Blobs() ([]BlobInfo, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	des, err := os.ReadDir(s.blobDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list blobs: %w", err)
	}
	out := make([]BlobInfo, 0, len(des))
	for _, de := range des {
		d, err := ParseDigest(digestPrefix + de.Name())
		if err != nil || !de.Type().IsRegular() {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, BlobInfo{Digest: d, Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return out, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// TmpDir returns the store's tmp/ directory, creating the store if needed:
// the place for a writer's scratch files on the blobs' file system.
func (s *Store) TmpDir() (string, error) {
	if err := s.init(); err != nil {
		return "", err
	}
	return s.tmpDir(), nil
}

// CacheGet returns the manifest digest recorded for key by CachePut.
// key is a hexadecimal string chosen by the caller (the builder's tree
// and options key).
func (s *Store) CacheGet(key string) (Digest, bool) {
	if !validCacheKey(key) || s.check() != nil {
		return "", false
	}
	b, err := os.ReadFile(filepath.Join(s.cacheDir(), key))
	if err != nil {
		return "", false
	}
	d, err := ParseDigest(strings.TrimSuffix(string(b), "\n"))
	return d, err == nil
}

// CachePut records d for key, atomically.
func (s *Store) CachePut(key string, d Digest) error {
	if !validCacheKey(key) {
		return fmt.Errorf("cache key %q: want 64 hexadecimal digits", key)
	}
	if err := s.init(); err != nil {
		return err
	}
	if err := s.writeSmall(filepath.Join(s.cacheDir(), key), string(d)+"\n"); err != nil {
		return fmt.Errorf("write cache %s: %w", key, err)
	}
	return nil
}

func validCacheKey(k string) bool {
	_, err := ParseDigest(digestPrefix + k)
	return err == nil
}
