package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push/pushtest"
	"github.com/ramboot/ramboot/provisioner/api"
)

// rootTree writes a small root tree with a kernel and returns its path.
func rootTree(t *testing.T) string {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "rootfs")
	for name, content := range map[string]string{
		"boot/vmlinuz-6.1.0-test": "kernel", "bin/hello": "#!/bin/sh\necho hi\n", "etc/hostname": "x\n", "tmp/junk": "j",
	} {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return tree
}

// cliErr runs the CLI and returns stdout, stderr and the error.
func cliErr(t *testing.T, dir string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb strings.Builder
	err := run(context.Background(), append(args, "--state-dir", dir), &out, &errb)
	return out.String(), errb.String(), err
}

// TestImageLifecycle runs every image command on a fresh machine: a state
// directory that does not exist yet, no daemon.
func TestImageLifecycle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "ramboot")
	tree := rootTree(t)
	out, stderr, err := cliErr(t, dir, "image", "build", tree, "--name", "compute:v1")
	if err != nil {
		t.Fatalf("build on a fresh machine: %v", err)
	}
	if !strings.Contains(out, "compute:v1") || !strings.Contains(stderr, "compute:v1: ") || !strings.Contains(stderr, "compressed to") {
		t.Errorf("build output %q, progress %q", out, stderr)
	}
	// Unchanged: nothing to do.
	_, stderr, err = cliErr(t, dir, "image", "build", tree, "--name", "compute:v1")
	if err != nil || !strings.Contains(stderr, "unchanged") {
		t.Errorf("rebuild: %q, %v", stderr, err)
	}
	if _, stderr, _ := cliErr(t, dir, "image", "build", tree, "--name", "compute:v1", "-q", "--no-cache"); stderr != "" {
		t.Errorf("-q printed %q", stderr)
	}
	if _, _, err := cliErr(t, dir, "image", "tag", "compute:v1", "compute"); err != nil {
		t.Fatal(err)
	}
	out, _, err = cliErr(t, dir, "image", "list")
	if err != nil || !strings.Contains(out, "compute  latest") || !strings.Contains(out, "compute  v1") {
		t.Errorf("list:\n%s %v", out, err)
	}
	out, _, err = cliErr(t, dir, "image", "show", "compute")
	if err != nil || !strings.Contains(out, "Kernel:") || !strings.Contains(out, "6.1.0-test") || !strings.Contains(out, "Excluded:") ||
		!strings.Contains(out, "Compressed root:  squashfs+cpio") {
		t.Errorf("show:\n%s %v", out, err)
	}
	out, _, err = cliErr(t, dir, "image", "show", "compute", "--files")
	if err != nil || !strings.Contains(out, "bin/hello") || !strings.Contains(out, "etc/ramboot/image-id") || strings.Contains(out, "tmp/junk") {
		t.Errorf("show --files:\n%s %v", out, err)
	}
	out, _, err = cliErr(t, dir, "image", "show", "compute", "--files", "-o", "json")
	var files []fileEntry
	if err != nil || json.Unmarshal([]byte(out), &files) != nil || len(files) < 5 {
		t.Errorf("show --files -o json: %v %q", err, out)
	}
	exp := filepath.Join(t.TempDir(), "export")
	if _, _, err := cliErr(t, dir, "image", "export", "compute", exp); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(exp, "vmlinuz")); err != nil || string(b) != "kernel" {
		t.Errorf("exported kernel %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(exp, "rootfs.squashfs.cpio")); err != nil {
		t.Errorf("compressed root not exported: %v", err)
	}
	if _, _, err := cliErr(t, dir, "image", "rm", "compute:v1", "compute"); err != nil {
		t.Fatal(err)
	}
	// Kernel, root, compressed root and manifest; the --no-cache rebuild
	// adds a second manifest when it ran in another second than the first
	// build (the manifest's Created), an orphan since v1 moved to it.
	st := &images.Store{Dir: filepath.Join(dir, "images")}
	blobs, _ := st.Blobs()
	if n := len(blobs); n != 4 && n != 5 {
		t.Fatalf("%d blobs before gc: %v", n, blobs)
	}
	out, _, err = cliErr(t, dir, "image", "gc", "--min-age", "0")
	if err != nil || !strings.Contains(out, fmt.Sprintf("would remove %d blobs", len(blobs))) || !strings.Contains(out, "--yes") {
		t.Errorf("gc dry run:\n%s %v", out, err)
	}
	if bs, _ := st.Blobs(); len(bs) != len(blobs) {
		t.Errorf("dry run removed blobs: %d left", len(bs))
	}
	out, _, err = cliErr(t, dir, "image", "gc", "--min-age", "0", "--yes")
	if err != nil || !strings.Contains(out, fmt.Sprintf("removed %d blobs", len(blobs))) {
		t.Errorf("gc:\n%s %v", out, err)
	}
	if bs, _ := st.Blobs(); len(bs) != 0 {
		t.Errorf("blobs after gc: %v", bs)
	}
}

// TestImageCommandsThroughDaemon checks that rm and gc go through the
// daemon, which refuses to remove an image nodes are assigned.
func TestImageCommandsThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	daemon(t, dir, "")
	tree := rootTree(t)
	if _, _, err := cliErr(t, dir, "image", "build", tree, "--name", "default"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cliErr(t, dir, "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "127.0.0.11"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cliErr(t, dir, "image", "rm", "default"); err == nil || !strings.Contains(err.Error(), "n1") {
		t.Fatalf("rm of the default image with a node on it: %v", err)
	}
	out, _, err := cliErr(t, dir, "image", "show", "default")
	if err != nil || !strings.Contains(out, "Nodes:     n1") {
		t.Errorf("show:\n%s %v", out, err)
	}
	if _, _, err := cliErr(t, dir, "image", "tag", "default", "default:keep"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cliErr(t, dir, "image", "rm", "default", "--force"); err != nil {
		t.Fatal(err)
	}
	out, _, err = cliErr(t, dir, "image", "gc", "--min-age", "0", "--yes", "-o", "json")
	var res api.GCResponse
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || len(res.Removed) != 0 || res.Kept != 4 { // manifest, kernel, rootfs, compressed root
		t.Errorf("gc through the daemon: %s %v", out, err)
	}
}

func TestImagePushPullCommands(t *testing.T) {
	local := t.TempDir()
	head := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
	srv := pushtest.NewServer(t, head)
	tree := rootTree(t)
	if _, _, err := cliErr(t, local, "image", "build", tree, "--name", "compute:v1"); err != nil {
		t.Fatal(err)
	}
	to := "127.0.0.1:" + strconv.Itoa(srv.Port)
	args := []string{"-i", srv.ClientKeyFile, "--known-hosts", srv.KnownHostsFile}
	out, stderr, err := cliErr(t, local, append([]string{"image", "push", "compute:v1", "--to", "admin@" + to}, args...)...)
	if err != nil || !strings.Contains(out, "3 blobs sent") || !strings.Contains(stderr, "push rootfs") {
		t.Fatalf("push: %q %q %v", out, stderr, err)
	}
	out, _, err = cliErr(t, local, append([]string{"image", "push", "compute:v1", "--to", to, "-o", "json"}, args...)...)
	var res struct {
		Bytes     int64 `json:"bytes"`
		Unchanged bool  `json:"unchanged"`
	}
	if err != nil || json.Unmarshal([]byte(out), &res) != nil || res.Bytes != 0 || !res.Unchanged {
		t.Errorf("second push: %s %v", out, err)
	}
	other := t.TempDir()
	if _, _, err := cliErr(t, other, append([]string{"image", "pull", "compute:v1", "--from", to, "--as", "mine"}, args...)...); err != nil {
		t.Fatal(err)
	}
	if out, _, err := cliErr(t, other, "image", "list"); err != nil || !strings.Contains(out, "mine") {
		t.Errorf("list after pull: %q %v", out, err)
	}
	// An unknown head is refused until accepted.
	_, _, err = cliErr(t, local, "image", "push", "compute:v1", "--to", to, "-i", srv.ClientKeyFile, "--known-hosts", filepath.Join(t.TempDir(), "kh"))
	if err == nil || !strings.Contains(err.Error(), "--accept-new-host-key") {
		t.Errorf("unknown host: %v", err)
	}
}

func TestParseHead(t *testing.T) {
	for in, want := range map[string]string{"head": "head:2222", "root@head:22": "head:22", "10.0.0.1": "10.0.0.1:2222", "[fd00::1]:2022": "[fd00::1]:2022"} {
		if _, got, err := parseHead(in); err != nil || got != want {
			t.Errorf("parseHead(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, _, err := parseHead("head:x"); err == nil {
		t.Error("bad port accepted")
	}
}

// TestImageListSize: `image list` counts every artifact of an image, the
// compressed root too (it counted the kernel and the cpio archive only),
// and `image show` lists each with the total.
func TestImageListSize(t *testing.T) {
	dir := t.TempDir()
	tree := rootTree(t)
	// Incompressible data makes the compressed root as large as the
	// archive, so leaving it out shows in the table's MiB.
	pad := make([]byte, 3<<20)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(pad)
	if err := os.WriteFile(filepath.Join(tree, "bin", "pad"), pad, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cliErr(t, dir, "image", "build", tree, "--name", "big", "-q"); err != nil {
		t.Fatal(err)
	}
	st := &images.Store{Dir: filepath.Join(dir, "images")}
	m, _, err := st.Resolve("big")
	if err != nil || m.CompressedRoot == nil {
		t.Fatalf("image without its compressed root: %v", err)
	}
	var total int64
	for _, a := range m.Artifacts() {
		total += a.Size
	}
	if total != m.Kernel.Size+m.Rootfs.Size+m.CompressedRoot.Size {
		t.Fatalf("artifacts %+v", m.Artifacts())
	}
	out, _, err := cliErr(t, dir, "image", "list")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, " "+mib(total)+" ") {
		t.Errorf("image list SIZE, want %s (kernel, rootfs and compressed root):\n%s", mib(total), out)
	}
	out, _, err = cliErr(t, dir, "image", "show", "big")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Kernel:", "Root fs:", "Compressed root:", "Size: " + mib(total) + " in 3 blobs"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), want) {
			t.Errorf("image show lacks %q:\n%s", want, out)
		}
	}
}
