package images

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// SchemaVersion is the manifest schema version this package writes. It
// reads version 1 too (manifests without tag, files and builder).
const SchemaVersion = 2

// The media types of an image's artifacts.
const (
	// MediaTypeKernel is a Linux kernel image (bzImage, Image) as the boot
	// loader loads it.
	MediaTypeKernel = "application/vnd.ramboot.kernel"
	// MediaTypeRootfs is the root file system: a newc cpio archive in one
	// zstd frame, unpackable by Linux 5.9 and later as an initramfs.
	MediaTypeRootfs = "application/vnd.ramboot.rootfs.cpio+zstd"
	// MediaTypeRootfsGzip is the root file system as a newc cpio archive
	// compressed with gzip, for kernels older than 5.9.
	MediaTypeRootfsGzip = "application/vnd.ramboot.rootfs.cpio+gzip"
	// MediaTypeCompressedRoot is the root file system kept compressed on
	// the node: an uncompressed newc cpio archive holding the tree as a
	// squashfs image (CompressedRootImage) and the kernel modules needed
	// to mount it (under CompressedRootModules). Linux unpacks it as an
	// initramfs like any other; the squashfs file stays compressed there
	// and is mounted read-only through a loop device.
	MediaTypeCompressedRoot = "application/vnd.ramboot.rootfs.squashfs+cpio"
)

// Paths inside a MediaTypeCompressedRoot archive, without the leading
// slash.
const (
	// CompressedRootDir is the directory holding everything the archive
	// adds to the initramfs.
	CompressedRootDir = ".ramboot"
	// CompressedRootImage is the squashfs image of the root tree. Its data
	// starts at a multiple of 4096 bytes in the archive, so a loop device
	// can map it straight from the archive (see CompressedRootOffset).
	CompressedRootImage = ".ramboot/root.squashfs"
	// CompressedRootModules is a directory laid out like /lib/modules
	// (<release>/modules.dep and the modules) holding the image's loop,
	// squashfs and overlay modules and what they depend on; empty when the
	// image's kernel has them built in.
	CompressedRootModules = ".ramboot/modules"
)

// maxManifestSize bounds the manifests Resolve and ParseManifest read.
const maxManifestSize = 1 << 20

// Artifact is one blob of an image.
type Artifact struct {
	// Digest is the blob's SHA-256 digest.
	Digest Digest `json:"digest"`
	// Size is the blob's size in bytes.
	Size int64 `json:"size"`
	// MediaType says what the blob is, e.g. MediaTypeRootfs.
	MediaType string `json:"mediaType"`
}

// Manifest describes one image: its kernel and root file-system blobs and
// where they came from. A manifest is stored as a blob of canonical JSON
// (see Canonical); its digest identifies the image.
type Manifest struct {
	// SchemaVersion is SchemaVersion.
	SchemaVersion int `json:"schemaVersion"`
	// Name is the name the image was built as.
	Name string `json:"name"`
	// Tag is the tag the image was built as (schema 2).
	Tag string `json:"tag,omitempty"`
	// Created is when the image was built. It is the one field that
	// differs between two builds of the same tree.
	Created time.Time `json:"created"`
	// Source says what the image was built from: the absolute path of a
	// root file-system tree, or a container image source and its digest,
	// e.g. "oci:/srv/oci/rocky@sha256:...".
	Source string `json:"source"`
	// Builder names the program and version that built the image, e.g.
	// "ramboot v0.3.0" (schema 2).
	Builder string `json:"builder,omitempty"`
	// KernelVersion is the kernel's release, e.g. "6.1.0-18-amd64", from
	// the kernel file's name (vmlinuz-<release>) or its bzImage header;
	// empty when neither says.
	KernelVersion string `json:"kernelVersion,omitempty"`
	// Kernel is the kernel blob (MediaTypeKernel).
	Kernel Artifact `json:"kernel"`
	// Rootfs is the root file-system blob (MediaTypeRootfs, or
	// MediaTypeRootfsGzip).
	Rootfs Artifact `json:"rootfs"`
	// CompressedRoot is the root file system for the compressed root mode
	// (MediaTypeCompressedRoot), when the build made one. Optional within
	// schema 2: a manifest without it is a valid schema 2 manifest, and
	// readers older than the field refuse a manifest that has it.
	CompressedRoot *Artifact `json:"compressedRoot,omitempty"`
	// RootfsUncompressedSize is the size of the root file system's cpio
	// archive before compression: roughly the RAM the unpacked root takes.
	RootfsUncompressedSize int64 `json:"rootfsUncompressedSize"`
	// Files is the number of entries in the root file system's archive
	// (schema 2).
	Files int64 `json:"files,omitempty"`
	// Excludes are the patterns whose matches the build left out of the
	// tree (schema 2).
	Excludes []string `json:"excludes,omitempty"`
	// ContentDigest is the SHA-256 of the uncompressed archive up to the
	// entry of the image-id file (overlay.ImageIDPath), which records this
	// same digest inside the image, so a node can report what it runs.
	ContentDigest Digest `json:"contentDigest"`
}

// Validate reports every problem with m at once.
func (m Manifest) Validate() error {
	var errs []error
	if m.SchemaVersion != 1 && m.SchemaVersion != SchemaVersion {
		errs = append(errs, fmt.Errorf("schemaVersion: %d, want 1 or %d", m.SchemaVersion, SchemaVersion))
	}
	if err := ValidName(m.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if m.SchemaVersion == 1 && (m.Tag != "" || m.Builder != "" || m.Files != 0 || len(m.Excludes) > 0) {
		errs = append(errs, errors.New("schemaVersion 1 has no tag, builder, files or excludes"))
	}
	if m.SchemaVersion != 1 {
		if err := ValidTag(m.Tag); err != nil {
			errs = append(errs, fmt.Errorf("tag: %w", err))
		}
		if m.Files <= 0 {
			errs = append(errs, fmt.Errorf("files: %d, want > 0", m.Files))
		}
	}
	if m.Created.IsZero() {
		errs = append(errs, errors.New("created: zero time"))
	} else if _, err := m.Created.UTC().MarshalText(); err != nil {
		errs = append(errs, fmt.Errorf("created: %w", err))
	}
	errs = append(errs, m.Kernel.validate("kernel", MediaTypeKernel)...)
	if m.Rootfs.MediaType == MediaTypeRootfsGzip {
		errs = append(errs, m.Rootfs.validate("rootfs", MediaTypeRootfsGzip)...)
	} else {
		errs = append(errs, m.Rootfs.validate("rootfs", MediaTypeRootfs)...)
	}
	if m.CompressedRoot != nil {
		if m.SchemaVersion == 1 {
			errs = append(errs, errors.New("schemaVersion 1 has no compressedRoot"))
		}
		errs = append(errs, m.CompressedRoot.validate("compressedRoot", MediaTypeCompressedRoot)...)
	}
	if m.RootfsUncompressedSize <= 0 {
		errs = append(errs, fmt.Errorf("rootfsUncompressedSize: %d, want > 0", m.RootfsUncompressedSize))
	}
	if _, err := ParseDigest(string(m.ContentDigest)); err != nil {
		errs = append(errs, fmt.Errorf("contentDigest: %w", err))
	}
	return errors.Join(errs...)
}

// Artifacts returns the image's blobs other than the manifest: the kernel,
// the root file system, and the compressed root when there is one. Every
// part of the store and of push and pull that handles an image's blobs
// asks this one place.
func (m Manifest) Artifacts() []Artifact {
	as := []Artifact{m.Kernel, m.Rootfs}
	if m.CompressedRoot != nil {
		as = append(as, *m.CompressedRoot)
	}
	return as
}

// Size returns the bytes the image's blobs take in a store: every
// artifact's size (the manifest itself not counted).
func (m Manifest) Size() int64 {
	var n int64
	for _, a := range m.Artifacts() {
		n += a.Size
	}
	return n
}

// ArtifactName returns a short name for one of the image's artifacts, for
// progress and errors: "kernel", "rootfs" or "compressed-root".
func ArtifactName(a Artifact) string {
	switch a.MediaType {
	case MediaTypeKernel:
		return "kernel"
	case MediaTypeCompressedRoot:
		return "compressed-root"
	}
	return "rootfs"
}

func (a Artifact) validate(field, mediaType string) []error {
	var errs []error
	if _, err := ParseDigest(string(a.Digest)); err != nil {
		errs = append(errs, fmt.Errorf("%s.digest: %w", field, err))
	}
	if a.Size <= 0 {
		errs = append(errs, fmt.Errorf("%s.size: %d, want > 0", field, a.Size))
	}
	if a.MediaType != mediaType {
		errs = append(errs, fmt.Errorf("%s.mediaType: %q, want %q", field, a.MediaType, mediaType))
	}
	return errs
}

// Canonical returns the manifest's canonical JSON encoding, the bytes its
// digest is taken over: the fields in declaration order, no insignificant
// white space, Created in UTC. It fails if m is not valid.
func (m Manifest) Canonical() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encode manifest %q: %w", m.Name, err)
	}
	m.Created = m.Created.UTC()
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode manifest %q: %w", m.Name, err)
	}
	return b, nil
}

// ParseManifest decodes and validates a manifest. Unknown fields, trailing
// data and manifests larger than 1 MiB are errors.
func ParseManifest(b []byte) (Manifest, error) {
	if len(b) > maxManifestSize {
		return Manifest{}, fmt.Errorf("decode manifest: %d bytes, limit %d", len(b), maxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("decode manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, errors.New("decode manifest: data after the manifest")
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("invalid manifest: %w", err)
	}
	return m, nil
}
