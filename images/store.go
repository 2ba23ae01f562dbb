// Package images is ramboot's content-addressed image store: node images
// (a kernel and a compressed root file system) described by manifests and
// kept under names.
//
// A build or an upload puts its blobs, then commits a manifest under a
// name; the head resolves the name and serves the blobs:
//
//	st := &images.Store{Dir: "/var/lib/ramboot/images"}
//	kernel, err := st.Put(ctx, kernelFile)
//	kernel.MediaType = images.MediaTypeKernel
//	...
//	d, err := st.Commit("debian12", images.Manifest{SchemaVersion: 1, Kernel: kernel, ...})
//
//	m, d, err := st.Resolve("debian12")
//	f, err := st.OpenBlob(m.Rootfs.Digest)
//	defer f.Close()
//	http.ServeContent(w, r, "rootfs.cpio.zst", time.Time{}, f)
//
// # Layout and guarantees
//
// Under Store.Dir, blobs/sha256/<hex> holds each blob, named by the SHA-256
// of its content (kernels, root file systems, and manifests as canonical
// JSON); refs/<name> holds the digest of the manifest a name points to, and
// a newline; tmp/ holds writes in flight. Blobs and refs are written to
// tmp/, fsynced and renamed into place, and the directory is fsynced, so
// a crash or an interrupted write leaves either the old state or the new,
// never a partial file under blobs/ or refs/. Only Commit makes a name
// resolve, after checking that the blobs its manifest names are there, so
// an interrupted build or upload is never visible. Files in tmp/ left by a
// crash are harmless; Put removes those not modified for an hour.
//
// Writers need no lock: concurrent Puts of the same content rename
// identical files over each other, and concurrent Commits of one name
// leave it pointing at one of the manifests. Blobs are never removed by
// this package.
package images

import (
	"bytes"
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
)

// ErrNotFound reports an image name or blob that is not in the store.
var ErrNotFound = errors.New("not found")

// Store is a content-addressed image store in a directory. The directory
// and its subdirectories are created on first write (mode 0700: an image
// can hold secrets, so blobs are readable by the store's owner only).
type Store struct {
	// Dir is the store's root directory. It must be set.
	Dir string
}

// Ref is a name in the store and the manifest it points to.
type Ref struct {
	// Name is the image name.
	Name string
	// Digest is the manifest's digest.
	Digest Digest
	// Manifest is the manifest.
	Manifest Manifest
}

// tmpMaxAge is how long a file in tmp/ may go unmodified before Put
// removes it as a leftover.
const tmpMaxAge = time.Hour

const (
	dirMode  = 0o700
	blobMode = 0o400
	refMode  = 0o600
)

func (s *Store) blobDir() string { return filepath.Join(s.Dir, "blobs", "sha256") }
func (s *Store) refDir() string  { return filepath.Join(s.Dir, "refs") }
func (s *Store) tmpDir() string  { return filepath.Join(s.Dir, "tmp") }

func (s *Store) blobPath(d Digest) string { return filepath.Join(s.blobDir(), d.Hex()) }

// check reports a Store without a directory.
func (s *Store) check() error {
	if s.Dir == "" {
		return errors.New("open store: empty Dir")
	}
	return nil
}

// init creates the store's directories that are missing.
func (s *Store) init() error {
	if err := s.check(); err != nil {
		return err
	}
	for _, d := range []string{s.Dir, filepath.Join(s.Dir, "blobs"), s.blobDir(), s.refDir(), s.tmpDir()} {
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

// Put stores the content of r as a blob and returns its digest and size;
// the caller sets MediaType. The content goes to a file in tmp/ and is
// hashed on the way; it is fsynced and renamed into blobs/ only once r is
// at EOF, so a reader error or the end of ctx leaves no blob. Putting
// content that is already stored is harmless.
func (s *Store) Put(ctx context.Context, r io.Reader) (Artifact, error) {
	if err := s.init(); err != nil {
		return Artifact{}, err
	}
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
	if err := f.Chmod(blobMode); err != nil {
		return Artifact{}, fmt.Errorf("put blob %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return Artifact{}, fmt.Errorf("put blob %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return Artifact{}, fmt.Errorf("put blob %s: %w", tmp, err)
	}
	a := Artifact{Digest: DigestFromHash(h), Size: n}
	dst := s.blobPath(a.Digest)
	if fi, err := os.Lstat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == n {
		// Already stored (the name is the content's hash).
		done = true
		os.Remove(tmp)
		return a, nil
	}
	if err := os.Rename(tmp, dst); err != nil {
		return Artifact{}, fmt.Errorf("put blob %s: %w", a.Digest, err)
	}
	done = true
	if err := syncDir(s.blobDir()); err != nil {
		return Artifact{}, err
	}
	return a, nil
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
			os.Remove(filepath.Join(s.tmpDir(), de.Name()))
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

// Commit makes name resolve to m. It checks that m is valid and that the
// kernel and root file-system blobs are stored with the sizes m gives,
// stores m as a blob of canonical JSON, and atomically replaces the ref.
// An empty m.Name is set to name. Commit returns the manifest's digest; on
// error the name keeps what it pointed to before.
func (s *Store) Commit(name string, m Manifest) (Digest, error) {
	if err := ValidName(name); err != nil {
		return "", fmt.Errorf("commit image: %w", err)
	}
	if m.Name == "" {
		m.Name = name
	}
	b, err := m.Canonical()
	if err != nil {
		return "", fmt.Errorf("commit image %q: %w", name, err)
	}
	for _, a := range []Artifact{m.Kernel, m.Rootfs} {
		if err := s.checkBlob(a); err != nil {
			return "", fmt.Errorf("commit image %q: %w", name, err)
		}
	}
	ma, err := s.Put(context.Background(), bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("commit image %q: %w", name, err)
	}
	if err := s.writeRef(name, ma.Digest); err != nil {
		return "", fmt.Errorf("commit image %q: %w", name, err)
	}
	return ma.Digest, nil
}

// checkBlob checks that a's blob is stored with a's size. Its digest was
// computed by Put over the bytes it stored.
func (s *Store) checkBlob(a Artifact) error {
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

func (s *Store) writeRef(name string, d Digest) error {
	f, err := os.CreateTemp(s.tmpDir(), "ref-*")
	if err != nil {
		return fmt.Errorf("write ref: %w", err)
	}
	tmp := f.Name()
	_, err = f.WriteString(string(d) + "\n")
	if err == nil {
		err = f.Chmod(refMode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.refDir(), name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write ref %s: %w", name, err)
	}
	return syncDir(s.refDir())
}

// Resolve returns the manifest name points to and the manifest's digest.
// The error wraps ErrNotFound when there is no such name.
func (s *Store) Resolve(name string) (Manifest, Digest, error) {
	if err := s.check(); err != nil {
		return Manifest{}, "", err
	}
	if err := ValidName(name); err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(s.refDir(), name))
	if errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, "", fmt.Errorf("resolve image %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image %q: %w", name, err)
	}
	d, err := ParseDigest(strings.TrimSuffix(string(b), "\n"))
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image %q: %w", name, err)
	}
	m, err := s.ReadManifest(d)
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image %q: %w", name, err)
	}
	return m, d, nil
}

// ReadManifest returns the manifest stored as blob d, after checking that
// its content has digest d. The error wraps ErrNotFound when there is no
// such blob.
func (s *Store) ReadManifest(d Digest) (Manifest, error) {
	f, err := s.OpenBlob(d)
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s: %w", d, err)
	}
	if got := DigestOf(b); got != d {
		return Manifest{}, fmt.Errorf("read manifest %s: content has digest %s", d, got)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s: %w", d, err)
	}
	return m, nil
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

// List returns every name in the store with its manifest, sorted by name.
// A name whose manifest cannot be read is an error naming it.
func (s *Store) List() ([]Ref, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	des, err := os.ReadDir(s.refDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var refs []Ref
	for _, de := range des { // sorted by name
		if ValidName(de.Name()) != nil || !de.Type().IsRegular() {
			continue
		}
		m, d, err := s.Resolve(de.Name())
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		refs = append(refs, Ref{Name: de.Name(), Digest: d, Manifest: m})
	}
	return refs, nil
}

// ValidName reports whether name can name an image: 1 to 63 characters
// from [a-z0-9._-], the first a letter or digit.
func ValidName(name string) error {
	const rule = "[a-z0-9][a-z0-9._-]{0,62}"
	if name == "" || len(name) > 63 {
		return fmt.Errorf("invalid image name %q: want 1 to 63 characters matching %s", name, rule)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '.' || c == '_' || c == '-'
		}
		if !ok {
			return fmt.Errorf("invalid image name %q: character %q at %d does not match %s", name, c, i, rule)
		}
	}
	return nil
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
