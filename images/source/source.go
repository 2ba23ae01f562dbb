// Package source lists the root file-system trees images are built from:
// a directory (a chroot, debootstrap output), an OCI image layout
// directory, a docker-archive or OCI archive tarball, or an image in a
// registry. Every kind yields the same thing, a newc.Tree in archive
// order, so the builder does not know where a tree came from:
//
//	src, err := source.Parse("docker://registry.example.org/hpc/rocky9:2025.06")
//	t, err := src.Open(ctx, source.Options{Skip: excluded})
//	defer t.Close()
//	for _, e := range t.Entries { ... }
//
// Container images are flattened here: their layers are applied in order,
// with whiteouts (".wh.NAME" hides NAME of lower layers) and opaque
// directories (".wh..wh..opq" hides everything a directory held in lower
// layers), hard links kept, and paths through symlinks resolved inside the
// tree. Layer data is spooled to one temporary file that the Tree reads
// from and Close removes; nothing is unpacked onto the host's file system,
// so owners, device nodes and setuid bits are kept without root.
//
// Every error names the source and, for a layer, its digest and the entry.
package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ramboot/ramboot/images/newc"
)

// Source is a root file-system tree to build an image from.
type Source interface {
	// Open lists the tree. The entries read their data until the Tree is
	// closed.
	Open(ctx context.Context, opt Options) (*Tree, error)
	// String describes the source for people and the manifest.
	String() string
}

// Options controls Open.
type Options struct {
	// Skip, when set, is asked about every entry but the root by its name
	// (e.g. "var/cache/apt/archives/x.deb"); true leaves it out, and for a
	// directory everything under it.
	Skip func(name string) bool
	// CrossFilesystems descends into file systems mounted inside a
	// directory source (see newc.TreeOptions).
	CrossFilesystems bool
	// TmpDir is where a container image's layer data is spooled. Default
	// os.TempDir().
	TmpDir string
	// Insecure lets a registry source use plain HTTP, and TLS without
	// certificate checks.
	Insecure bool
}

// Tree is an opened source: the listing and what identifies its content.
type Tree struct {
	newc.Tree
	// Source describes where the tree came from, for the manifest: the
	// absolute path of a directory, or a container image source with its
	// manifest digest ("oci:/srv/oci/rocky@sha256:...").
	Source string
	// Root is the directory of a directory source; empty for others.
	Root string
	// CacheKey identifies the tree's content: the digest of a directory's
	// metadata (newc.ScanDir), or the container image's manifest digest.
	CacheKey string

	close func() error
}

// Close releases what the tree holds (the spool file of a container
// image). The entries cannot be read afterwards.
func (t *Tree) Close() error {
	if t.close == nil {
		return nil
	}
	err := t.close()
	t.close = nil
	return err
}

// Parse returns the source that spec names:
//
//	DIR                    a root file-system tree (or an OCI layout, if DIR/oci-layout exists)
//	FILE                   a docker-archive (`docker save`) or OCI archive tarball, told apart by content
//	dir:DIR                a root file-system tree
//	oci:DIR[:TAG]          an OCI image layout; TAG selects by org.opencontainers.image.ref.name
//	oci-archive:FILE[:TAG] a tarball of an OCI image layout
//	docker-archive:FILE    a `docker save` tarball
//	docker://REF           an image in a registry, e.g. docker://docker.io/library/debian:12
func Parse(spec string) (Source, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if ok {
		switch kind {
		case "dir":
			return Dir{Path: rest}, nil
		case "oci":
			p, tag := splitTag(rest)
			return &OCILayout{Path: p, Tag: tag}, nil
		case "oci-archive":
			p, tag := splitTag(rest)
			return &Archive{Path: p, Tag: tag, kind: "oci-archive"}, nil
		case "docker-archive":
			return &Archive{Path: rest, kind: "docker-archive"}, nil
		case "docker":
			ref, ok := strings.CutPrefix(rest, "//")
			if !ok || ref == "" {
				return nil, fmt.Errorf("source %q: want docker://REGISTRY/REPOSITORY[:TAG|@DIGEST]", spec)
			}
			return &Registry{Ref: ref}, nil
		}
	}
	fi, err := os.Stat(spec)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", spec, err)
	}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(spec, "oci-layout")); err == nil {
			return &OCILayout{Path: spec}, nil
		}
		return Dir{Path: spec}, nil
	}
	if fi.Mode().IsRegular() {
		return &Archive{Path: spec}, nil
	}
	return nil, fmt.Errorf("source %s: not a directory or a tarball", spec)
}

// splitTag splits "path:tag"; a path without a colon has no tag.
func splitTag(s string) (string, string) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.ContainsRune(s[i:], '/') {
		return s, ""
	}
	return s[:i], s[i+1:]
}

// ErrNotRootTree reports a tree that has neither /bin nor /usr.
var ErrNotRootTree = errors.New("not a root file-system tree (no /bin and no /usr)")

// CheckRootTree reports a tree that does not look like a root file
// system: it has neither bin nor usr.
func CheckRootTree(t *Tree) error {
	if t.Lookup("bin") == nil && t.Lookup("usr") == nil {
		return fmt.Errorf("source %s: %w", t.Source, ErrNotRootTree)
	}
	return nil
}

// Dir is a root file-system tree in a directory.
type Dir struct {
	// Path is the directory.
	Path string
}

// String returns the path.
func (d Dir) String() string { return d.Path }

// Open scans the directory (newc.ScanDir): the host's root is refused.
func (d Dir) Open(ctx context.Context, opt Options) (*Tree, error) {
	if d.Path == "" {
		return nil, errors.New("source: empty directory path")
	}
	abs, err := filepath.Abs(d.Path)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", d.Path, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("source %s: not a directory", d.Path)
	}
	if hostRoot, err := os.Stat("/"); real == "/" || err == nil && os.SameFile(fi, hostRoot) {
		return nil, fmt.Errorf("source %s: refusing to build an image of the host's root file system", d.Path)
	}
	nt, err := newc.ScanDir(ctx, real, newc.ScanOptions{Skip: opt.Skip, CrossFilesystems: opt.CrossFilesystems})
	if err != nil {
		return nil, err
	}
	return &Tree{Tree: *nt, Source: abs, Root: real, CacheKey: nt.MetaDigest}, nil
}
