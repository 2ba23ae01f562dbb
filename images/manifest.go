package images

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// SchemaVersion is the manifest schema version this package writes and
// reads.
const SchemaVersion = 1

// The media types of an image's artifacts.
const (
	// MediaTypeKernel is a Linux kernel image (bzImage, Image) as the boot
	// loader loads it.
	MediaTypeKernel = "application/vnd.ramboot.kernel"
	// MediaTypeRootfs is the root file system: a newc cpio archive in one
	// zstd frame, unpackable by Linux 5.9 and later as an initramfs.
	MediaTypeRootfs = "application/vnd.ramboot.rootfs.cpio+zstd"
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
	// Created is when the image was built. It is the one field that
	// differs between two builds of the same tree.
	Created time.Time `json:"created"`
	// Source says what the image was built from, e.g. the absolute path
	// of the root file-system tree.
	Source string `json:"source"`
	// KernelVersion is the kernel's release, e.g. "6.1.0-18-amd64", from
	// the kernel file's name (vmlinuz-<release>) or its bzImage header;
	// empty when neither says.
	KernelVersion string `json:"kernelVersion,omitempty"`
	// Kernel is the kernel blob (MediaTypeKernel).
	Kernel Artifact `json:"kernel"`
	// Rootfs is the root file-system blob (MediaTypeRootfs).
	Rootfs Artifact `json:"rootfs"`
	// RootfsUncompressedSize is the size of the root file system's cpio
	// archive before compression: roughly the RAM the unpacked root takes.
	RootfsUncompressedSize int64 `json:"rootfsUncompressedSize"`
	// ContentDigest is the SHA-256 of the uncompressed archive up to the
	// entry of the image-id file (overlay.ImageIDPath), which records this
	// same digest inside the image, so a node can report what it runs.
	ContentDigest Digest `json:"contentDigest"`
}

// Validate reports every problem with m at once.
func (m Manifest) Validate() error {
	var errs []error
	if m.SchemaVersion != SchemaVersion {
		errs = append(errs, fmt.Errorf("schemaVersion: %d, want %d", m.SchemaVersion, SchemaVersion))
	}
	if err := ValidName(m.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if m.Created.IsZero() {
		errs = append(errs, errors.New("created: zero time"))
	} else if _, err := m.Created.UTC().MarshalText(); err != nil {
		errs = append(errs, fmt.Errorf("created: %w", err))
	}
	errs = append(errs, m.Kernel.validate("kernel", MediaTypeKernel)...)
	errs = append(errs, m.Rootfs.validate("rootfs", MediaTypeRootfs)...)
	if m.RootfsUncompressedSize <= 0 {
		errs = append(errs, fmt.Errorf("rootfsUncompressedSize: %d, want > 0", m.RootfsUncompressedSize))
	}
	if _, err := ParseDigest(string(m.ContentDigest)); err != nil {
		errs = append(errs, fmt.Errorf("contentDigest: %w", err))
	}
	return errors.Join(errs...)
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
