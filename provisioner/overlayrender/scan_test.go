package overlayrender_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

// TestScanImage builds an image archive the way `ramboot image build` does
// (newc.WriteTree of a root tree) and scans it back.
func TestScanImage(t *testing.T) {
	root := t.TempDir()
	for p, m := range map[string]os.FileMode{"etc": 0o755, "etc/ssh": 0o755, "root": 0o700, "tmp": 0o777 | os.ModeSticky, "etc/munge": 0o700} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, p), m); err != nil {
			t.Fatal(err)
		}
	}
	for p, data := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
		"etc/group":  "root:x:0:\nshadow:x:42:\n",
		"etc/shadow": "root:*:19000:0:99999:7:::\n",
		"etc/motd":   "hello\n",
	} {
		if err := os.WriteFile(filepath.Join(root, p), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Join(root, "etc/munge"), 101, 102); err != nil {
			t.Fatal(err)
		}
	}
	epoch := time.Unix(0, 0)
	var archive bytes.Buffer
	if _, err := newc.WriteTree(context.Background(), &archive, root, newc.TreeOptions{SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	acc, dirs, err := overlayrender.ScanImage(&archive)
	if err != nil {
		t.Fatal(err)
	}
	if acc == nil || string(acc.Passwd) != "root:x:0:0:root:/root:/bin/bash\n" || string(acc.Group) != "root:x:0:\nshadow:x:42:\n" ||
		string(acc.Shadow) != "root:*:19000:0:99999:7:::\n" || acc.GShadow != nil {
		t.Errorf("accounts %+v", acc)
	}
	for p, want := range map[string]fs.FileMode{"etc": 0o755, "root": 0o700, "tmp": 0o777 | fs.ModeSticky} {
		if dirs[p].Mode != want {
			t.Errorf("%s: mode %v, want %v", p, dirs[p].Mode, want)
		}
	}
	if os.Geteuid() == 0 && (dirs["etc/munge"].UID != 101 || dirs["etc/munge"].GID != 102) {
		t.Errorf("etc/munge owner %+v", dirs["etc/munge"])
	}
	if _, ok := dirs["."]; ok {
		t.Error("the root is listed as a directory")
	}
	// An image without account files: nil accounts, directories still.
	archive.Reset()
	os.Remove(filepath.Join(root, "etc/passwd"))
	if _, err := newc.WriteTree(context.Background(), &archive, root, newc.TreeOptions{SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	acc, dirs, err = overlayrender.ScanImage(&archive)
	if err != nil || acc != nil || dirs["etc"].Mode != 0o755 {
		t.Errorf("no passwd: %+v %v %v", acc, dirs["etc"], err)
	}
	// A broken archive is an error.
	if _, _, err := overlayrender.ScanImage(bytes.NewReader([]byte("070701garbage"))); err == nil {
		t.Error("garbage: no error")
	}
}

// FuzzScanImage: whatever the archive holds, ScanImage returns or fails,
// never panics.
func FuzzScanImage(f *testing.F) {
	var b bytes.Buffer
	_ = newc.WriteFiles(&b, []newc.File{
		{Name: "etc", Mode: fs.ModeDir | 0o755},
		{Name: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0::/root:/bin/sh\n")},
		{Name: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\n")},
	})
	f.Add(b.Bytes())
	f.Add(b.Bytes()[:100])
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, _ = overlayrender.ScanImage(bytes.NewReader(data))
	})
}
