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
)

// ExportFileNames are the files Export writes, by media type.
var ExportFileNames = map[string]string{
	MediaTypeKernel:     "vmlinuz",
	MediaTypeRootfs:     "rootfs.cpio.zst",
	MediaTypeRootfsGzip: "rootfs.cpio.gz",
	// The compressed root stays a cpio archive: it is what a boot loader
	// loads as an initrd; `cpio -i` unpacks its squashfs image.
	MediaTypeCompressedRoot: "rootfs.squashfs.cpio",
}

// ExportManifestName is the file Export writes the manifest to.
const ExportManifestName = "manifest.json"

// Export writes the image ref resolves to into dir (created if missing):
// the kernel as vmlinuz, the root file system as rootfs.cpio.zst (or .gz),
// the compressed root, when the image has one, as rootfs.squashfs.cpio,
// and the manifest's canonical bytes as manifest.json. Each file is
// written to a temporary name, checked against its digest while copied,
// fsynced and renamed, so dir never holds a partial file under those
// names. It returns the manifest and its digest.
func (s *Store) Export(ctx context.Context, ref, dir string) (Manifest, Digest, error) {
	m, d, err := s.Resolve(ref)
	if err != nil {
		return Manifest{}, "", fmt.Errorf("export image: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Manifest{}, "", fmt.Errorf("export image %s: %w", ref, err)
	}
	for _, a := range append(m.Artifacts(), Artifact{Digest: d, MediaType: "manifest"}) {
		name := ExportFileNames[a.MediaType]
		if a.MediaType == "manifest" {
			name = ExportManifestName
		}
		if err := s.exportBlob(ctx, a.Digest, filepath.Join(dir, name)); err != nil {
			return Manifest{}, "", fmt.Errorf("export image %s: %w", ref, err)
		}
	}
	return m, d, nil
}

func (s *Store) exportBlob(ctx context.Context, d Digest, dst string) error {
	src, err := s.OpenBlob(d)
	if err != nil {
		return err
	}
	defer src.Close()
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), ctxReader{ctx, src}, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if got := DigestFromHash(h); got != d {
		return fmt.Errorf("write %s: blob %s has digest %s: %w", dst, d, got, ErrDigestMismatch)
	}
	if err := f.Chmod(0o600); err != nil { // an image can hold secrets
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
		return fmt.Errorf("write %s: %w", dst, fs.ErrExist)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	ok = true
	return syncDir(filepath.Dir(dst))
}
