package images

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// DefaultTag is the tag of a reference that names none.
const DefaultTag = "latest"

// Reference names an image in a store: a name and a tag, written
// "name:tag".
type Reference struct {
	// Name is the image name (see ValidName).
	Name string
	// Tag is the tag (see ValidTag).
	Tag string
}

// String returns "name:tag".
func (r Reference) String() string { return r.Name + ":" + r.Tag }

// ParseReference parses "name" or "name:tag"; a bare name means
// "name:latest".
func ParseReference(s string) (Reference, error) {
	name, tag, ok := strings.Cut(s, ":")
	if !ok {
		tag = DefaultTag
	}
	if err := ValidName(name); err != nil {
		return Reference{}, fmt.Errorf("parse image reference %q: %w", s, err)
	}
	if err := ValidTag(tag); err != nil {
		return Reference{}, fmt.Errorf("parse image reference %q: %w", s, err)
	}
	return Reference{Name: name, Tag: tag}, nil
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

// ValidTag reports whether tag can tag an image: 1 to 128 characters from
// [A-Za-z0-9._-], the first not '.' or '-' (the OCI rule).
func ValidTag(tag string) error {
	const rule = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
	if tag == "" || len(tag) > 128 {
		return fmt.Errorf("invalid image tag %q: want 1 to 128 characters matching %s", tag, rule)
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
		if i > 0 {
			ok = ok || c == '.' || c == '-'
		}
		if !ok {
			return fmt.Errorf("invalid image tag %q: character %q at %d does not match %s", tag, c, i, rule)
		}
	}
	return nil
}

// Ref is a reference in the store and the manifest it points to.
type Ref struct {
	// Name is the image name.
	Name string
	// Tag is the reference's tag.
	Tag string
	// Digest is the manifest's digest.
	Digest Digest
	// Manifest is the manifest.
	Manifest Manifest
}

// Reference returns "name:tag".
func (r Ref) Reference() string { return r.Name + ":" + r.Tag }

// refPath is where ref's file lives. A store written before tags existed
// has refs/<name> for name:latest; refFiles reads both.
func (s *Store) refPath(r Reference) string { return filepath.Join(s.refDir(), r.String()) }
func (s *Store) legacyRefPath(r Reference) string {
	return filepath.Join(s.refDir(), r.Name)
}

// Commit makes the reference ref ("name" or "name:tag") resolve to m. It
// checks that m is valid and that the kernel and root file-system blobs
// are stored with the sizes m gives, stores m as a blob of canonical JSON,
// and atomically replaces the reference. An empty m.Name and m.Tag are set
// from ref. Commit returns the manifest's digest; on error the reference
// keeps what it pointed to before.
func (s *Store) Commit(ref string, m Manifest) (Digest, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("commit image: %w", err)
	}
	if m.Name == "" {
		m.Name = r.Name
	}
	if m.Tag == "" && m.SchemaVersion >= 2 {
		m.Tag = r.Tag
	}
	b, err := m.Canonical()
	if err != nil {
		return "", fmt.Errorf("commit image %s: %w", r, err)
	}
	unlock, err := s.lock(false)
	if err != nil {
		return "", err
	}
	defer unlock()
	for _, a := range m.Artifacts() {
		if err := s.checkBlob(a); err != nil {
			return "", fmt.Errorf("commit image %s: %w", r, err)
		}
	}
	d := DigestOf(b)
	if err := s.checkBlob(Artifact{Digest: d, Size: int64(len(b))}); err != nil {
		f, err := os.CreateTemp(s.tmpDir(), "manifest-*")
		if err != nil {
			return "", fmt.Errorf("commit image %s: %w", r, err)
		}
		_, err = f.Write(b)
		if err == nil {
			err = s.commitTemp(f, Artifact{Digest: d, Size: int64(len(b))})
		} else {
			f.Close()
		}
		if err != nil {
			os.Remove(f.Name())
			return "", fmt.Errorf("commit image %s: %w", r, err)
		}
	}
	if err := s.writeRef(r, d); err != nil {
		return "", fmt.Errorf("commit image %s: %w", r, err)
	}
	return d, nil
}

// CommitManifest commits manifest bytes received from elsewhere (a push,
// a pull) under ref: b must be a valid manifest in canonical form, so that
// it keeps its digest, and its blobs must be stored.
func (s *Store) CommitManifest(ref string, b []byte) (Digest, error) {
	m, err := ParseManifest(b)
	if err != nil {
		return "", fmt.Errorf("commit image %s: %w", ref, err)
	}
	canon, err := m.Canonical()
	if err != nil {
		return "", fmt.Errorf("commit image %s: %w", ref, err)
	}
	if !bytes.Equal(canon, b) {
		return "", fmt.Errorf("commit image %s: manifest %s is not in canonical form", ref, DigestOf(b))
	}
	return s.Commit(ref, m)
}

// Tag makes the reference dst point to the manifest src resolves to. src
// may also be a manifest digest.
func (s *Store) Tag(src, dst string) (Digest, error) {
	r, err := ParseReference(dst)
	if err != nil {
		return "", fmt.Errorf("tag image: %w", err)
	}
	_, d, err := s.Resolve(src)
	if err != nil {
		return "", fmt.Errorf("tag image %s as %s: %w", src, r, err)
	}
	unlock, err := s.lock(false)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := s.ReadManifest(d); err != nil { // GC may have run meanwhile
		return "", fmt.Errorf("tag image %s as %s: %w", src, r, err)
	}
	if err := s.writeRef(r, d); err != nil {
		return "", fmt.Errorf("tag image %s as %s: %w", src, r, err)
	}
	return d, nil
}

// Remove removes the reference ref and returns the digest it pointed to.
// The blobs stay until GC finds them unused. The error wraps ErrNotFound
// when there is no such reference.
func (s *Store) Remove(ref string) (Digest, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("remove image: %w", err)
	}
	_, d, err := s.Resolve(r.String())
	if err != nil && !errors.Is(err, ErrNotFound) {
		// A damaged ref can be removed too.
		d = ""
	} else if err != nil {
		return "", fmt.Errorf("remove image %s: %w", r, err)
	}
	unlock, err := s.lock(false)
	if err != nil {
		return "", err
	}
	defer unlock()
	removed := false
	for _, p := range s.refPaths(r) {
		err := os.Remove(p)
		if err == nil {
			removed = true
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("remove image %s: %w", r, err)
		}
	}
	if !removed {
		return "", fmt.Errorf("remove image %s: %w", r, ErrNotFound)
	}
	return d, syncDir(s.refDir())
}

// refPaths returns the files that can hold r: refs/name:tag, and
// refs/name for name:latest.
func (s *Store) refPaths(r Reference) []string {
	if r.Tag == DefaultTag {
		return []string{s.refPath(r), s.legacyRefPath(r)}
	}
	return []string{s.refPath(r)}
}

func (s *Store) writeRef(r Reference, d Digest) error {
	if err := s.writeSmall(s.refPath(r), string(d)+"\n"); err != nil {
		return fmt.Errorf("write ref %s: %w", r, err)
	}
	if r.Tag == DefaultTag {
		os.Remove(s.legacyRefPath(r)) // superseded
	}
	return syncDir(s.refDir())
}

// writeSmall writes content to dst through a file in tmp/: written,
// fsynced, renamed (mode 0600). The caller fsyncs dst's directory.
func (s *Store) writeSmall(dst, content string) error {
	f, err := os.CreateTemp(s.tmpDir(), "small-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.WriteString(content)
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
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Resolve returns the manifest a reference points to and the manifest's
// digest. ref is "name", "name:tag" or a manifest digest "sha256:...". The
// error wraps ErrNotFound when there is no such reference.
func (s *Store) Resolve(ref string) (Manifest, Digest, error) {
	if err := s.check(); err != nil {
		return Manifest{}, "", err
	}
	if strings.HasPrefix(ref, digestPrefix) {
		d, err := ParseDigest(ref)
		if err != nil {
			return Manifest{}, "", fmt.Errorf("resolve image: %w", err)
		}
		m, err := s.ReadManifest(d)
		return m, d, err
	}
	r, err := ParseReference(ref)
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image: %w", err)
	}
	return s.resolve(r)
}

func (s *Store) resolve(r Reference) (Manifest, Digest, error) {
	var b []byte
	var err error
	for _, p := range s.refPaths(r) {
		b, err = os.ReadFile(p)
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, "", fmt.Errorf("resolve image %s: %w", r, ErrNotFound)
	}
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image %s: %w", r, err)
	}
	d, err := ParseDigest(strings.TrimSuffix(string(b), "\n"))
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image %s: %w", r, err)
	}
	m, err := s.ReadManifest(d)
	if err != nil {
		return Manifest{}, "", fmt.Errorf("resolve image %s: %w", r, err)
	}
	return m, d, nil
}

// ReadManifest returns the manifest stored as blob d, after checking that
// its content has digest d. The error wraps ErrNotFound when there is no
// such blob.
func (s *Store) ReadManifest(d Digest) (Manifest, error) {
	b, err := s.ManifestBytes(d)
	if err != nil {
		return Manifest{}, err
	}
	m, err := ParseManifest(b)
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s: %w", d, err)
	}
	return m, nil
}

// ManifestBytes returns the stored bytes of manifest d, after checking
// that they have digest d.
func (s *Store) ManifestBytes(d Digest) ([]byte, error) {
	f, err := s.OpenBlob(d)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", d, err)
	}
	if got := DigestOf(b); got != d {
		return nil, fmt.Errorf("read manifest %s: content has digest %s", d, got)
	}
	return b, nil
}

// List returns every reference in the store with its manifest, sorted by
// name and tag. A reference whose manifest cannot be read is an error
// naming it.
func (s *Store) List() ([]Ref, error) {
	rs, err := s.references()
	if err != nil {
		return nil, err
	}
	refs := make([]Ref, 0, len(rs))
	for _, r := range rs {
		m, d, err := s.resolve(r)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		refs = append(refs, Ref{Name: r.Name, Tag: r.Tag, Digest: d, Manifest: m})
	}
	return refs, nil
}

// references lists the references that have a file under refs/, sorted.
func (s *Store) references() ([]Reference, error) {
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
	seen := map[Reference]bool{}
	var out []Reference
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		r, err := ParseReference(de.Name())
		if err != nil || seen[r] {
			continue
		}
		seen[r] = true
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Reference) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Tag, b.Tag)
	})
	return out, nil
}

// RefTime returns the digest reference ref points to and when its file
// was last written (the modification time of refs/name:tag): what a head
// compares with the time a reference was removed on another head. The
// error wraps ErrNotFound when there is no such reference.
func (s *Store) RefTime(ref string) (Digest, time.Time, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("image %s: %w", ref, err)
	}
	for _, p := range s.refPaths(r) {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", time.Time{}, fmt.Errorf("image %s: %w", r, err)
		}
		_, d, err := s.resolve(r)
		if err != nil {
			d = "" // a damaged reference has a time all the same
		}
		return d, fi.ModTime(), nil
	}
	return "", time.Time{}, fmt.Errorf("image %s: %w", r, ErrNotFound)
}

// RemoveWrittenBefore removes the reference ref if its file was written
// at or before t (see RefTime), and reports whether it did: a reference
// written again since (a rebuild, a tag, a push) is kept. It holds the
// store's exclusive lock, so no commit of ref slips between the check and
// the removal. No such reference is not an error.
func (s *Store) RemoveWrittenBefore(ref string, t time.Time) (Digest, bool, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return "", false, fmt.Errorf("remove image: %w", err)
	}
	unlock, err := s.lock(true)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	_, d, _ := s.resolve(r)
	removed := false
	for _, p := range s.refPaths(r) {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", false, fmt.Errorf("remove image %s: %w", r, err)
		}
		if fi.ModTime().After(t) {
			return d, false, nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", false, fmt.Errorf("remove image %s: %w", r, err)
		}
		removed = true
	}
	if !removed {
		return "", false, nil
	}
	return d, true, syncDir(s.refDir())
}
