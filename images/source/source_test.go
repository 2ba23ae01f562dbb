package source_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/source"
)

// te is one tar entry of a test layer.
type te struct {
	name     string
	typ      byte
	data     string
	link     string
	mode     int64
	uid, gid int
	major    int64
	minor    int64
}

var mtime = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

func tarBytes(t testing.TB, entries []te) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			Devmajor: e.major, Devminor: e.minor, ModTime: mtime, Size: int64(len(e.data)), Format: tar.FormatPAX}
		if typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(e.data))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func layer(t testing.TB, entries ...te) v1.Layer {
	t.Helper()
	b := tarBytes(t, entries)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func image(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes img as an OCI layout, named tag.
func writeLayout(t testing.TB, dir string, img v1.Image, tag string) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
}

func open(t testing.TB, src source.Source) *source.Tree {
	t.Helper()
	tr, err := src.Open(context.Background(), source.Options{TmpDir: t.TempDir()})
	if err != nil {
		t.Fatalf("Open(%s): %v", src, err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func names(tr *source.Tree) string {
	var n []string
	for _, e := range tr.Entries {
		n = append(n, e.Name)
	}
	return strings.Join(n, " ")
}

func data(t testing.TB, e *newc.Entry) string {
	t.Helper()
	if e == nil || e.Open == nil {
		t.Fatalf("no data for %+v", e)
	}
	r, err := e.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, _ := io.ReadAll(r)
	return string(b)
}

var base = []te{
	{name: "./", typ: tar.TypeDir},
	{name: "bin/", typ: tar.TypeDir},
	{name: "bin/sh", data: "shell", mode: 0o755},
	{name: "etc/", typ: tar.TypeDir},
	{name: "etc/a", data: "a"},
	{name: "etc/b", data: "b"},
	{name: "usr/", typ: tar.TypeDir},
	{name: "usr/share/", typ: tar.TypeDir},
	{name: "usr/share/x", data: "x"},
	{name: "usr/share/y/", typ: tar.TypeDir},
	{name: "usr/share/y/z", data: "z"},
}

func TestFlatten(t *testing.T) {
	tests := []struct {
		name   string
		upper  []te
		want   string
		checks func(t *testing.T, tr *source.Tree)
	}{
		{"whiteout-file", []te{{name: "etc/.wh.a", data: ""}},
			". bin bin/sh etc etc/b usr usr/share usr/share/x usr/share/y usr/share/y/z", nil},
		{"whiteout-dir", []te{{name: "usr/share/.wh.y"}},
			". bin bin/sh etc etc/a etc/b usr usr/share usr/share/x", nil},
		{"opaque-dir", []te{{name: "usr/share/.wh..wh..opq"}, {name: "usr/share/new", data: "n"}},
			". bin bin/sh etc etc/a etc/b usr usr/share usr/share/new", nil},
		{"opaque-after-new-entry", []te{{name: "usr/share/new", data: "n"}, {name: "usr/share/.wh..wh..opq"}},
			". bin bin/sh etc etc/a etc/b usr usr/share usr/share/new", nil},
		{"same-layer-whiteout-keeps", []te{{name: "etc/c", data: "c"}, {name: "etc/.wh.c"}},
			". bin bin/sh etc etc/a etc/b etc/c usr usr/share usr/share/x usr/share/y usr/share/y/z", nil},
		{"file-replaces-dir", []te{{name: "usr/share/y", data: "now a file"}},
			". bin bin/sh etc etc/a etc/b usr usr/share usr/share/x usr/share/y", func(t *testing.T, tr *source.Tree) {
				if got := data(t, tr.Lookup("usr/share/y")); got != "now a file" {
					t.Errorf("y = %q", got)
				}
			}},
		{"dir-replaces-file", []te{{name: "etc/a/", typ: tar.TypeDir}, {name: "etc/a/inner", data: "i"}},
			". bin bin/sh etc etc/a etc/a/inner etc/b usr usr/share usr/share/x usr/share/y usr/share/y/z", nil},
		{"overwrite-keeps-upper", []te{{name: "etc/a", data: "upper a", mode: 0o600, uid: 7}},
			". bin bin/sh etc etc/a etc/b usr usr/share usr/share/x usr/share/y usr/share/y/z", func(t *testing.T, tr *source.Tree) {
				e := tr.Lookup("etc/a")
				if data(t, e) != "upper a" || e.Mode != 0o600 || e.UID != 7 {
					t.Errorf("etc/a = %+v", e)
				}
			}},
		{"implicit-parents", []te{{name: "opt/x/y", data: "deep"}},
			". bin bin/sh etc etc/a etc/b opt opt/x opt/x/y usr usr/share usr/share/x usr/share/y usr/share/y/z", func(t *testing.T, tr *source.Tree) {
				if e := tr.Lookup("opt/x"); e.Mode != fs.ModeDir|0o755 {
					t.Errorf("implicit dir mode %v", e.Mode)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeLayout(t, dir, image(t, layer(t, base...), layer(t, tt.upper...)), "test")
			tr := open(t, &source.OCILayout{Path: dir})
			if got := names(tr); got != tt.want {
				t.Errorf("entries:\n got %s\nwant %s", got, tt.want)
			}
			if tt.checks != nil {
				tt.checks(t, tr)
			}
		})
	}
}

func TestFlattenKeepsMetadata(t *testing.T) {
	l := layer(t,
		te{name: "bin/", typ: tar.TypeDir},
		te{name: "bin/su", data: "su", mode: 0o4755},
		te{name: "bin/su2", typ: tar.TypeLink, link: "bin/su"},
		te{name: "usr/bin/", typ: tar.TypeDir},
		te{name: "sbin", typ: tar.TypeSymlink, link: "usr/bin"},
		te{name: "dev/", typ: tar.TypeDir},
		te{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		te{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0, gid: 6},
		te{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
		te{name: "home/u/", typ: tar.TypeDir, uid: 1000, gid: 1000, mode: 0o700},
		te{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		te{name: "empty/", typ: tar.TypeDir},
	)
	// A later layer writes through the symlink sbin -> usr/bin.
	up := layer(t, te{name: "sbin/tool", data: "tool", mode: 0o755})
	dir := t.TempDir()
	writeLayout(t, dir, image(t, l, up), "x")
	tr := open(t, &source.OCILayout{Path: dir})
	checks := map[string]func(e *newc.Entry) bool{
		"bin/su":       func(e *newc.Entry) bool { return e.Mode == fs.ModeSetuid|0o755 && e.Link != 0 },
		"bin/su2":      func(e *newc.Entry) bool { return e.Link == tr.Lookup("bin/su").Link && data(t, e) == "su" },
		"sbin":         func(e *newc.Entry) bool { return e.Mode.Type() == fs.ModeSymlink && e.Linkname == "usr/bin" },
		"usr/bin/tool": func(e *newc.Entry) bool { return data(t, e) == "tool" },
		"dev/null": func(e *newc.Entry) bool {
			return e.Mode == fs.ModeDevice|fs.ModeCharDevice|0o666 && e.Major == 1 && e.Minor == 3
		},
		"dev/sda":  func(e *newc.Entry) bool { return e.Mode == fs.ModeDevice|0o660 && e.Major == 8 && e.GID == 6 },
		"run/fifo": func(e *newc.Entry) bool { return e.Mode == fs.ModeNamedPipe|0o600 },
		"home/u":   func(e *newc.Entry) bool { return e.Mode == fs.ModeDir|0o700 && e.UID == 1000 && e.GID == 1000 },
		"tmp":      func(e *newc.Entry) bool { return e.Mode == fs.ModeDir|fs.ModeSticky|0o777 },
		"empty":    func(e *newc.Entry) bool { return e.Mode.IsDir() },
	}
	for n, ok := range checks {
		e := tr.Lookup(n)
		if e == nil || !ok(e) {
			t.Errorf("%s = %+v", n, e)
		}
	}
	if tr.Lookup("sbin/tool") != nil {
		t.Error("sbin/tool listed under the symlink")
	}
	if !strings.HasPrefix(tr.Source, "oci:"+dir+"@sha256:") || !strings.HasPrefix(tr.CacheKey, "sha256:") {
		t.Errorf("Source %q CacheKey %q", tr.Source, tr.CacheKey)
	}
}

func TestFlattenErrors(t *testing.T) {
	tests := []struct {
		name string
		l    v1.Layer
		want string
	}{
		{"escape", layer(t, te{name: "../etc/passwd", data: "x"}), `"../etc/passwd" leaves the root`},
		{"link-escape", layer(t, te{name: "a", typ: tar.TypeLink, link: "../../etc/shadow"}), "leaves the root"},
		{"link-missing", layer(t, te{name: "a", typ: tar.TypeLink, link: "nope"}), `target "nope"`},
		{"symlink-loop", layer(t, te{name: "a", typ: tar.TypeSymlink, link: "b"}, te{name: "b", typ: tar.TypeSymlink, link: "a"}, te{name: "a/x", data: "x"}), "too many levels"},
		{"bad-layer", func() v1.Layer {
			l, _ := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
				return io.NopCloser(strings.NewReader("this is not a tar stream, it is far too short")), nil
			})
			return l
		}(), "read tar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeLayout(t, dir, image(t, layer(t, base...), tt.l), "x")
			_, err := (&source.OCILayout{Path: dir}).Open(context.Background(), source.Options{TmpDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "layer 2 (sha256:") || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Open = %v, want an error naming the source, layer 2 and %q", err, tt.want)
			}
		})
	}
}

func TestParseAndKinds(t *testing.T) {
	img := image(t, layer(t, base...))
	want := names(func() *source.Tree {
		dir := t.TempDir()
		writeLayout(t, dir, img, "v1")
		return open(t, &source.OCILayout{Path: dir})
	}())
	digest, _ := img.Digest()
	tmp := t.TempDir()

	layoutDir := filepath.Join(tmp, "layout")
	writeLayout(t, layoutDir, img, "v1")

	dockerArchive := filepath.Join(tmp, "img.tar")
	if err := tarball.WriteToFile(dockerArchive, name.MustParseReference("hpc/base:1"), img); err != nil {
		t.Fatal(err)
	}
	ociArchive := filepath.Join(tmp, "oci.tar")
	var ob bytes.Buffer
	tw := tar.NewWriter(&ob)
	filepath.WalkDir(layoutDir, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(layoutDir, p)
		if rel == "." {
			return nil
		}
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Name: rel + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		b, _ := os.ReadFile(p)
		tw.WriteHeader(&tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))})
		tw.Write(b)
		return nil
	})
	tw.Close()
	os.WriteFile(ociArchive, ob.Bytes(), 0o644)

	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	regRef := strings.TrimPrefix(reg.URL, "http://") + "/hpc/base:v1"
	rr, err := name.ParseReference(regRef)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(rr, img); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		spec, kind string
	}{
		{layoutDir, "oci:"},
		{"oci:" + layoutDir + ":v1", "oci:"},
		{dockerArchive, "docker-archive:"},
		{"docker-archive:" + dockerArchive, "docker-archive:"},
		{ociArchive, "oci-archive:"},
		{"oci-archive:" + ociArchive, "oci-archive:"},
		{"docker://" + regRef, "docker://"},
	} {
		t.Run(tt.spec, func(t *testing.T) {
			src, err := source.Parse(tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			tr := open(t, src)
			if got := names(tr); got != want {
				t.Errorf("entries %s, want %s", got, want)
			}
			if !strings.HasPrefix(tr.Source, tt.kind) || !strings.HasSuffix(tr.Source, "@"+digest.String()) {
				t.Errorf("Source %q, want %s...@%s", tr.Source, tt.kind, digest)
			}
			if tr.CacheKey != digest.String() {
				t.Errorf("CacheKey %s, want %s", tr.CacheKey, digest)
			}
		})
	}

	if _, err := (&source.OCILayout{Path: layoutDir, Tag: "v2"}).Open(context.Background(), source.Options{}); err == nil || !strings.Contains(err.Error(), `"v2"`) || !strings.Contains(err.Error(), "v1") {
		t.Errorf("missing tag: %v", err)
	}
	notTar := filepath.Join(tmp, "notes.txt")
	os.WriteFile(notTar, []byte("hello"), 0o644)
	if _, err := (&source.Archive{Path: notTar}).Open(context.Background(), source.Options{}); err == nil || !strings.Contains(err.Error(), notTar) {
		t.Errorf("not a tarball: %v", err)
	}
	if _, err := source.Parse(filepath.Join(tmp, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing path: %v", err)
	}
	if _, err := (&source.Registry{Ref: strings.TrimPrefix(reg.URL, "http://") + "/hpc/nope:v1"}).Open(context.Background(), source.Options{}); err == nil || !strings.Contains(err.Error(), "hpc/nope") {
		t.Errorf("missing registry image: %v", err)
	}
}

func TestDirSource(t *testing.T) {
	if _, err := (source.Dir{Path: "/"}).Open(context.Background(), source.Options{}); err == nil || !strings.Contains(err.Error(), "host's root") {
		t.Errorf("host root: %v", err)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "x"), []byte("x"), 0o644)
	tr := open(t, source.Dir{Path: dir})
	if err := source.CheckRootTree(tr); !errors.Is(err, source.ErrNotRootTree) || !strings.Contains(err.Error(), dir) {
		t.Errorf("CheckRootTree = %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "usr"), 0o755)
	tr2 := open(t, source.Dir{Path: dir})
	if err := source.CheckRootTree(tr2); err != nil {
		t.Error(err)
	}
	if tr.CacheKey == tr2.CacheKey || tr2.Source != dir {
		t.Errorf("cache keys %s %s, source %s", tr.CacheKey, tr2.CacheKey, tr2.Source)
	}
}

// FuzzFlatten feeds arbitrary bytes as the upper layer of an image: the
// flattener must return an error or a tree whose names stay inside the
// root, never panic.
func FuzzFlatten(f *testing.F) {
	f.Add(tarBytes(f, []te{{name: "etc/.wh.a"}, {name: "usr/share/.wh..wh..opq"}, {name: "x", typ: tar.TypeLink, link: "bin/sh"}}))
	f.Add(tarBytes(f, []te{{name: "../../x", data: "x"}}))
	f.Add(tarBytes(f, []te{{name: "a", typ: tar.TypeSymlink, link: "/"}, {name: "a/etc/x", data: "x"}}))
	f.Add([]byte("not a tar"))
	dir := f.TempDir()
	baseLayer := layer(f, base...)
	f.Fuzz(func(t *testing.T, upper []byte) {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(upper)), nil })
		if err != nil {
			return
		}
		img, err := mutate.AppendLayers(empty.Image, baseLayer, l)
		if err != nil {
			return
		}
		tr, err := (&source.Image{Image: img, Name: "fuzz"}).Open(context.Background(), source.Options{TmpDir: dir})
		if err != nil {
			return
		}
		defer tr.Close()
		for _, e := range tr.Entries {
			if e.Name != "." && (strings.HasPrefix(e.Name, "/") || strings.HasPrefix(e.Name, "../") || strings.Contains(e.Name, "/../") || e.Name == "..") {
				t.Fatalf("entry %q leaves the root", e.Name)
			}
		}
	})
}
