package newc_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/newc"
)

// raw is one entry as decoded by this test's own newc parser, with all
// header fields.
type raw struct {
	magic                                  string
	ino, mode, uid, gid, nlink, mtime      uint32
	size, devMajor, devMinor, rMajor, rMin uint32
	check                                  uint32
	offset                                 int // of the header
	name                                   string
	data                                   []byte
}

// parseRaw decodes a whole archive, trailer included, checking the
// alignment rules as it goes.
func parseRaw(t *testing.T, b []byte) []raw {
	t.Helper()
	var out []raw
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("header at offset %d not 4-aligned", off)
		}
		if len(b)-off < 110 {
			t.Fatalf("truncated header at offset %d", off)
		}
		h := b[off : off+110]
		r := raw{magic: string(h[:6]), offset: off}
		fields := []*uint32{&r.ino, &r.mode, &r.uid, &r.gid, &r.nlink, &r.mtime, &r.size, &r.devMajor, &r.devMinor, &r.rMajor, &r.rMin, nil, &r.check}
		var nameSize uint32
		for i, p := range fields {
			s := string(h[6+8*i : 14+8*i])
			v, err := strconv.ParseUint(s, 16, 32)
			if err != nil {
				t.Fatalf("field %d of header at %d: %q: %v", i, off, s, err)
			}
			if p == nil {
				nameSize = uint32(v)
			} else {
				*p = uint32(v)
			}
		}
		nameEnd := off + 110 + int(nameSize)
		if b[nameEnd-1] != 0 {
			t.Fatalf("name at %d not NUL terminated", off)
		}
		r.name = string(b[off+110 : nameEnd-1])
		dataOff := align4(nameEnd)
		for _, z := range b[nameEnd:dataOff] {
			if z != 0 {
				t.Fatalf("non-zero name padding after %q", r.name)
			}
		}
		r.data = b[dataOff : dataOff+int(r.size)]
		next := align4(dataOff + int(r.size))
		for _, z := range b[dataOff+int(r.size) : next] {
			if z != 0 {
				t.Fatalf("non-zero data padding after %q", r.name)
			}
		}
		out = append(out, r)
		off = next
		if r.name == "TRAILER!!!" {
			break
		}
	}
	if off != len(b) {
		t.Fatalf("%d bytes after the trailer", len(b)-off)
	}
	return out
}

func align4(n int) int { return (n + 3) &^ 3 }

// libEntry is one entry as read by github.com/cavaliergopher/cpio.
type libEntry struct {
	hdr  *cpio.Header
	data []byte
}

// readLib reads an archive with the cavaliergopher/cpio Reader.
func readLib(t *testing.T, b []byte) []libEntry {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(b))
	var out []libEntry
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("cpio reader: %v", err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("cpio reader: read %s: %v", h.Name, err)
		}
		out = append(out, libEntry{h, data})
	}
}

// gnuCpio runs GNU cpio with args and the archive on stdin, in dir.
func gnuCpio(t *testing.T, archive []byte, dir string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(archive)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if s := stderr.String(); strings.Contains(s, "cpio:") {
		t.Fatalf("cpio %s complained:\n%s", strings.Join(args, " "), s)
	}
	return stdout.String()
}

// extract unpacks archive into a new directory with GNU cpio as the
// kernel would: relative names, modification times kept.
func extract(t *testing.T, archive []byte) string {
	t.Helper()
	dst := t.TempDir()
	gnuCpio(t, archive, dst, "-idm", "--no-absolute-filenames", "--quiet")
	return dst
}

func isRoot() bool { return os.Geteuid() == 0 }

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return &st
}

var testFiles = []newc.File{
	{Name: ".", Mode: fs.ModeDir | 0o755},
	{Name: "etc", Mode: fs.ModeDir | 0o755, ModTime: time.Unix(1_600_000_000, 0)},
	{Name: "etc/hostname", Mode: 0o644, Data: []byte("n001\n"), ModTime: time.Unix(1_700_000_000, 0)},
	{Name: "etc/secret", Mode: 0o600, Data: []byte("abc"), UID: 1234, GID: 5678},
	{Name: "etc/empty", Mode: 0o644},
	{Name: "sbin", Mode: fs.ModeDir | 0o755},
	{Name: "sbin/su", Mode: fs.ModeSetuid | 0o755, Data: []byte("#!/bin/true\n")},
	{Name: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	{Name: "init", Mode: fs.ModeSymlink | 0o777, Linkname: "sbin/su"},
	{Name: "dev", Mode: fs.ModeDir | 0o755},
	{Name: "dev/null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, Major: 1, Minor: 3},
	{Name: "dev/vda1", Mode: fs.ModeDevice | 0o660, Major: 254, Minor: 1, GID: 6},
	{Name: "dev/initctl", Mode: fs.ModeNamedPipe | 0o600},
}

func TestWriteFilesHeaders(t *testing.T) {
	var buf bytes.Buffer
	if err := newc.WriteFiles(&buf, testFiles); err != nil {
		t.Fatal(err)
	}
	got := parseRaw(t, buf.Bytes())
	if len(got) != len(testFiles)+1 {
		t.Fatalf("got %d entries, want %d and the trailer", len(got), len(testFiles))
	}
	for i, f := range testFiles {
		r := got[i]
		t.Run(f.Name, func(t *testing.T) {
			if r.magic != "070701" || r.check != 0 {
				t.Errorf("magic %q check %d, want 070701 and 0", r.magic, r.check)
			}
			if r.name != f.Name {
				t.Errorf("name %q, want %q", r.name, f.Name)
			}
			if r.ino != uint32(i+1) {
				t.Errorf("inode %d, want %d (write order)", r.ino, i+1)
			}
			if r.devMajor != 0 || r.devMinor != 0 {
				t.Errorf("devmajor/devminor %d,%d, want 0,0", r.devMajor, r.devMinor)
			}
			if r.rMajor != f.Major || r.rMin != f.Minor {
				t.Errorf("rdev %d,%d, want %d,%d", r.rMajor, r.rMin, f.Major, f.Minor)
			}
			if r.uid != uint32(f.UID) || r.gid != uint32(f.GID) {
				t.Errorf("owner %d:%d, want %d:%d", r.uid, r.gid, f.UID, f.GID)
			}
			wantMtime := uint32(0)
			if !f.ModTime.IsZero() {
				wantMtime = uint32(f.ModTime.Unix())
			}
			if r.mtime != wantMtime {
				t.Errorf("mtime %d, want %d", r.mtime, wantMtime)
			}
			want := string(f.Data)
			if f.Mode&fs.ModeSymlink != 0 {
				want = f.Linkname
			}
			if string(r.data) != want {
				t.Errorf("data %q, want %q", r.data, want)
			}
		})
	}
	tr := got[len(got)-1]
	if tr.ino != 0 || tr.mode != 0 || tr.nlink != 1 || tr.size != 0 {
		t.Errorf("trailer %+v, want inode 0, mode 0, nlink 1, size 0", tr)
	}
}

func TestWriteFilesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := newc.WriteFiles(&buf, testFiles); err != nil {
		t.Fatal(err)
	}
	got := readLib(t, buf.Bytes())
	if len(got) != len(testFiles) {
		t.Fatalf("cpio reader got %d entries, want %d", len(got), len(testFiles))
	}
	for i, f := range testFiles {
		h, data := got[i].hdr, got[i].data
		t.Run(f.Name, func(t *testing.T) {
			if h.Name != f.Name {
				t.Errorf("name %q, want %q", h.Name, f.Name)
			}
			if m := h.FileInfo().Mode(); m != f.Mode {
				t.Errorf("mode %v, want %v", m, f.Mode)
			}
			if h.Uid != f.UID || h.Guid != f.GID {
				t.Errorf("owner %d:%d, want %d:%d", h.Uid, h.Guid, f.UID, f.GID)
			}
			if h.Linkname != f.Linkname {
				t.Errorf("linkname %q, want %q", h.Linkname, f.Linkname)
			}
			if !bytes.Equal(data, f.Data) {
				t.Errorf("data %q, want %q", data, f.Data)
			}
			if h.Inode != int64(i+1) {
				t.Errorf("inode %d, want %d", h.Inode, i+1)
			}
		})
	}
}

func TestWriteFilesGNU(t *testing.T) {
	var buf bytes.Buffer
	if err := newc.WriteFiles(&buf, testFiles); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range testFiles {
		names = append(names, f.Name)
	}
	list := gnuCpio(t, buf.Bytes(), t.TempDir(), "-t", "--quiet")
	if want := strings.Join(names, "\n") + "\n"; list != want {
		t.Errorf("cpio -t:\n%s\nwant:\n%s", list, want)
	}
	verbose := gnuCpio(t, buf.Bytes(), t.TempDir(), "-itv", "--quiet", "--numeric-uid-gid")
	for _, want := range []string{
		"crw-rw-rw-   1 0        0          1,   3 Jan  1  1970 dev/null",
		"brw-rw----   1 0        6        254,   1 Jan  1  1970 dev/vda1",
		"lrwxrwxrwx   1 0        0               7 Jan  1  1970 init -> sbin/su",
		"-rwsr-xr-x   1 0        0              12 Jan  1  1970 sbin/su",
		"-rw-------   1 1234     5678            3 Jan  1  1970 etc/secret",
		"drwxrwxrwt   2 0        0               0 Jan  1  1970 tmp",
	} {
		if !strings.Contains(verbose, want+"\n") {
			t.Errorf("cpio -itv lacks line %q; got:\n%s", want, verbose)
		}
	}
	if !isRoot() {
		t.Skip("extraction checks owners and device nodes: needs root")
	}
	dst := extract(t, buf.Bytes())
	for _, f := range testFiles {
		t.Run(f.Name, func(t *testing.T) {
			p := filepath.Join(dst, f.Name)
			st := lstat(t, p)
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != f.Mode {
				t.Errorf("mode %v, want %v", fi.Mode(), f.Mode)
			}
			if int(st.Uid) != f.UID || int(st.Gid) != f.GID {
				t.Errorf("owner %d:%d, want %d:%d", st.Uid, st.Gid, f.UID, f.GID)
			}
			switch f.Mode.Type() {
			case 0:
				b, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(b, f.Data) {
					t.Errorf("content %q, %v; want %q", b, err, f.Data)
				}
				if f.ModTime.Unix() > 0 && st.Mtim.Sec != f.ModTime.Unix() {
					t.Errorf("mtime %d, want %d", st.Mtim.Sec, f.ModTime.Unix())
				}
			case fs.ModeSymlink:
				if l, err := os.Readlink(p); l != f.Linkname {
					t.Errorf("link %q, %v; want %q", l, err, f.Linkname)
				}
			case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
				if unix.Major(st.Rdev) != f.Major || unix.Minor(st.Rdev) != f.Minor {
					t.Errorf("device %d,%d, want %d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev), f.Major, f.Minor)
				}
			}
		})
	}
}

func TestWriteFilesErrors(t *testing.T) {
	tests := []struct {
		name string
		f    newc.File
		want string
	}{
		{"absolute", newc.File{Name: "/etc"}, "not a clean relative path"},
		{"dotdot", newc.File{Name: "../etc"}, "not a clean relative path"},
		{"unclean", newc.File{Name: "etc//x"}, "not a clean relative path"},
		{"trailing-slash", newc.File{Name: "etc/", Mode: fs.ModeDir}, "not a clean relative path"},
		{"empty", newc.File{Name: ""}, "not a clean relative path"},
		{"nul", newc.File{Name: "a\x00b"}, "NUL"},
		{"long", newc.File{Name: strings.Repeat("a/", 2048) + "b"}, "longer than"},
		{"symlink-no-target", newc.File{Name: "l", Mode: fs.ModeSymlink}, "without a target"},
		{"data-on-dir", newc.File{Name: "d", Mode: fs.ModeDir, Data: []byte("x")}, "data on a directory"},
		{"target-on-file", newc.File{Name: "f", Linkname: "x"}, "link target on a regular file"},
		{"rdev-on-file", newc.File{Name: "f", Major: 1}, "device numbers on a regular file"},
		{"uid", newc.File{Name: "f", UID: -1}, "uid -1 out of range"},
		{"gid", newc.File{Name: "f", GID: 1 << 33}, "out of range"},
		{"before-1970", newc.File{Name: "f", ModTime: time.Unix(-1, 0)}, "modification time -1"},
		{"after-2106", newc.File{Name: "f", ModTime: time.Unix(1<<32, 0)}, "out of range"},
		{"irregular", newc.File{Name: "f", Mode: fs.ModeIrregular}, "unsupported file type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := newc.WriteFiles(&buf, []newc.File{tt.f})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes before failing", buf.Len())
			}
		})
	}
}

type failWriter struct{ after int }

var errDisk = errors.New("disk full")

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.after {
		n := w.after
		w.after = 0
		return n, errDisk
	}
	w.after -= len(p)
	return len(p), nil
}

func TestWriterStickyError(t *testing.T) {
	w := newc.NewWriter(&failWriter{after: 300})
	if err := w.WriteFile(newc.File{Name: "a", Data: make([]byte, 100)}); err != nil {
		t.Fatal(err)
	}
	err := w.WriteFile(newc.File{Name: "b", Data: make([]byte, 100)})
	if !errors.Is(err, errDisk) {
		t.Fatalf("second entry: err = %v, want %v", err, errDisk)
	}
	if err := w.Close(); !errors.Is(err, errDisk) {
		t.Errorf("Close after failure = %v, want %v", err, errDisk)
	}
	if w.Written() != 300 {
		t.Errorf("Written = %d, want 300", w.Written())
	}
}

func TestWriterWritten(t *testing.T) {
	var buf bytes.Buffer
	w := newc.NewWriter(&buf)
	if err := w.WriteFile(newc.File{Name: "abc", Data: []byte("12345")}); err != nil {
		t.Fatal(err)
	}
	// 110 + "abc\0" = 114, padded to 116; 5 bytes of data padded to 8.
	if w.Written() != 124 || int64(buf.Len()) != w.Written() {
		t.Errorf("Written = %d, buffer %d, want 124", w.Written(), buf.Len())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFile(newc.File{Name: "late"}); err == nil {
		t.Error("WriteFile after Close succeeded")
	}
}
