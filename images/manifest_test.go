package images_test

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

var goldenManifest = images.Manifest{
	SchemaVersion: 2,
	Name:          "debian12",
	Tag:           "v3",
	Created:       time.Date(2025, 6, 1, 14, 30, 0, 0, time.FixedZone("CEST", 2*3600)),
	Source:        "/srv/rootfs/debian12",
	Builder:       "ramboot v0.3.0",
	KernelVersion: "6.1.0-18-amd64",
	Kernel: images.Artifact{
		Digest:    images.Digest("sha256:" + strings.Repeat("1", 64)),
		Size:      8_000_000,
		MediaType: images.MediaTypeKernel,
	},
	Rootfs: images.Artifact{
		Digest:    images.Digest("sha256:" + strings.Repeat("2", 64)),
		Size:      300_000_000,
		MediaType: images.MediaTypeRootfs,
	},
	RootfsUncompressedSize: 1_000_000_000,
	Files:                  31_337,
	Excludes:               []string{"tmp/*", "var/cache/apt/archives/*.deb"},
	ContentDigest:          images.Digest("sha256:" + strings.Repeat("3", 64)),
}

// TestManifestV1 reads a manifest of schema 1, written before tags, as
// stores and nodes still hold them.
func TestManifestV1(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "manifest-v1.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := images.ParseManifest(b)
	if err != nil {
		t.Fatalf("ParseManifest(v1): %v", err)
	}
	if m.SchemaVersion != 1 || m.Name != "debian12" || m.Tag != "" {
		t.Errorf("v1 manifest %+v", m)
	}
	c, err := m.Canonical()
	if err != nil || !bytes.Equal(c, b) {
		t.Errorf("v1 manifest does not keep its bytes: %s, %v", c, err)
	}
	m.Tag = "x"
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "schemaVersion 1 has no tag") {
		t.Errorf("v1 with a tag: %v", err)
	}
}

func TestManifestCanonicalGolden(t *testing.T) {
	b, err := goldenManifest.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "manifest.golden.json")
	if *update {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Errorf("canonical manifest:\n%s\nwant (%s):\n%s", b, golden, want)
	}
	m, err := images.ParseManifest(want)
	if err != nil {
		t.Fatalf("ParseManifest(golden): %v", err)
	}
	if !m.Created.Equal(goldenManifest.Created) || m.Created.Location() != time.UTC {
		t.Errorf("Created %v, want %v in UTC", m.Created, goldenManifest.Created)
	}
}

func TestManifestValidate(t *testing.T) {
	m := goldenManifest
	m.SchemaVersion = 0
	m.Name = "Bad"
	m.Created = time.Time{}
	m.Kernel.Digest = "md5:x"
	m.Rootfs.MediaType = "application/x-cpio"
	m.Rootfs.Size = 0
	m.RootfsUncompressedSize = -1
	m.ContentDigest = ""
	m.Tag = ".x"
	m.Files = 0
	err := m.Validate()
	if err == nil {
		t.Fatal("Validate of a bad manifest succeeded")
	}
	for _, want := range []string{
		"schemaVersion: 0", "name: invalid image name", "created: zero time", "kernel.digest",
		"rootfs.mediaType", "rootfs.size: 0", "rootfsUncompressedSize: -1", "contentDigest",
		"tag: invalid image tag", "files: 0",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q:\n%v", want, err)
		}
	}
	if err := goldenManifest.Validate(); err != nil {
		t.Errorf("Validate(golden) = %v", err)
	}
}

func TestParseManifestRejects(t *testing.T) {
	good, err := goldenManifest.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"unknown-field", strings.Replace(string(good), `{`, `{"color":"x",`, 1), `unknown field "color"`},
		{"trailing-data", string(good) + `{}`, "data after the manifest"},
		{"not-json", "schemaVersion: 1", "decode manifest"},
		{"empty", "", "decode manifest"},
		{"too-large", string(good) + strings.Repeat(" ", 1<<20), "limit"},
		{"invalid", `{"schemaVersion":1}`, "invalid manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := images.ParseManifest([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseManifest = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	tests := []struct {
		in string
		ok bool
	}{
		{"sha256:" + hex, true},
		{"sha256:" + strings.ToUpper(hex), false},
		{"sha256:" + hex[:63], false},
		{"sha256:" + hex + "0", false},
		{"sha512:" + hex, false},
		{hex, false},
		{"sha256:" + hex[:62] + "g0", false},
		{"", false},
	}
	for _, tt := range tests {
		d, err := images.ParseDigest(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseDigest(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if tt.ok && d.Hex() != hex {
			t.Errorf("Hex() = %q, want %q", d.Hex(), hex)
		}
		if !tt.ok && images.Digest(tt.in).Hex() != "" {
			t.Errorf("Hex() of malformed %q = %q, want empty", tt.in, images.Digest(tt.in).Hex())
		}
	}
	if got := images.DigestOf(nil); got != "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("DigestOf(nil) = %s", got)
	}
}

func FuzzParseDigest(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("a", 64))
	f.Fuzz(func(t *testing.T, s string) {
		d, err := images.ParseDigest(s)
		if err != nil {
			return
		}
		if string(d) != s || len(d.Hex()) != 64 || "sha256:"+d.Hex() != s {
			t.Fatalf("ParseDigest(%q) = %q, Hex %q", s, d, d.Hex())
		}
	})
}

// FuzzParseManifest checks that ParseManifest never panics and that what it
// accepts survives a canonical round trip unchanged.
func FuzzParseManifest(f *testing.F) {
	if b, err := goldenManifest.Canonical(); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := images.ParseManifest(b)
		if err != nil {
			return
		}
		c1, err := m.Canonical()
		if err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
		m2, err := images.ParseManifest(c1)
		if err != nil {
			t.Fatalf("canonical encoding does not parse: %v\n%s", err, c1)
		}
		c2, err := m2.Canonical()
		if err != nil || !bytes.Equal(c1, c2) {
			t.Fatalf("canonical encoding not stable: %v\n%s\n%s", err, c1, c2)
		}
	})
}

func TestManifestCompressedRoot(t *testing.T) {
	m := goldenManifest
	m.CompressedRoot = &images.Artifact{Digest: images.DigestOf([]byte("c")), Size: 1234, MediaType: images.MediaTypeCompressedRoot}
	b, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"rootfs":{`) || !strings.Contains(string(b), `,"compressedRoot":{"digest":"`+string(m.CompressedRoot.Digest)+`","size":1234,"mediaType":"application/vnd.ramboot.rootfs.squashfs+cpio"},"rootfsUncompressedSize"`) {
		t.Errorf("canonical: %s", b)
	}
	back, err := images.ParseManifest(b)
	if err != nil || back.CompressedRoot == nil || *back.CompressedRoot != *m.CompressedRoot {
		t.Fatalf("ParseManifest = %+v, %v", back.CompressedRoot, err)
	}
	if as := back.Artifacts(); len(as) != 3 || as[2] != *m.CompressedRoot {
		t.Errorf("Artifacts = %+v", as)
	}
	if as := goldenManifest.Artifacts(); len(as) != 2 {
		t.Errorf("Artifacts without a compressed root = %+v", as)
	}
	// Without the field the golden manifest is unchanged (schema 2 as before).
	if b, _ := goldenManifest.Canonical(); strings.Contains(string(b), "compressedRoot") {
		t.Errorf("a manifest without a compressed root names one: %s", b)
	}

	bad := m
	bad.CompressedRoot = &images.Artifact{Digest: m.CompressedRoot.Digest, Size: 0, MediaType: images.MediaTypeRootfs}
	err = bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "compressedRoot.size") || !strings.Contains(err.Error(), "compressedRoot.mediaType") {
		t.Errorf("Validate of a bad compressed root: %v", err)
	}
	v1 := m
	v1.SchemaVersion, v1.Tag, v1.Builder, v1.Files, v1.Excludes = 1, "", "", 0, nil
	if err := v1.Validate(); err == nil || !strings.Contains(err.Error(), "schemaVersion 1 has no compressedRoot") {
		t.Errorf("Validate of schema 1 with a compressed root: %v", err)
	}
}

func TestCompressedRootOffset(t *testing.T) {
	var buf bytes.Buffer
	files := []newc.File{
		{Name: ".ramboot", Mode: fs.ModeDir | 0o700},
		{Name: ".ramboot/modules", Mode: fs.ModeDir | 0o755},
		{Name: images.CompressedRootImage, Mode: 0o400, Data: []byte("hsqs image bytes")},
	}
	if err := newc.WriteFiles(&buf, files); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	off, n, err := images.CompressedRootOffset(bytes.NewReader(b), int64(len(b)))
	if err != nil || string(b[off:off+n]) != "hsqs image bytes" {
		t.Fatalf("CompressedRootOffset = %d, %d, %v", off, n, err)
	}
	buf.Reset()
	if err := newc.WriteFiles(&buf, files[:2]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := images.CompressedRootOffset(bytes.NewReader(buf.Bytes()), int64(buf.Len())); !errors.Is(err, images.ErrNoCompressedRootImage) {
		t.Errorf("archive without the image: %v", err)
	}
	// Truncated and damaged archives are errors, never a panic.
	for _, cut := range []int{0, 50, 200, len(b) - 20} {
		if _, _, err := images.CompressedRootOffset(bytes.NewReader(b[:cut]), int64(cut)); err == nil {
			t.Errorf("archive cut at %d: no error", cut)
		}
	}
}

func FuzzCompressedRootOffset(f *testing.F) {
	var buf bytes.Buffer
	newc.WriteFiles(&buf, []newc.File{{Name: images.CompressedRootImage, Data: []byte("hsqs")}})
	f.Add(buf.Bytes())
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		off, n, err := images.CompressedRootOffset(bytes.NewReader(b), int64(len(b)))
		if err == nil && (off < 0 || n < 0 || off+n > int64(len(b))) {
			t.Fatalf("offset %d length %d outside %d bytes", off, n, len(b))
		}
	})
}
