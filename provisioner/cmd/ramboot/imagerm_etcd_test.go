package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// TestImageRemovalAcrossHeads: three heads on one etcd, each with its own
// copy of an image. A removal is refused on every head, with or without
// its daemon, while a node of the shared inventory is assigned the image
// (before, a head without its daemon read no inventory, saw no node and
// removed it). Once no node uses it, a removal on one head is carried out
// by the others, by a head that was down when it starts, and a removal
// without any daemon (through the configuration the head last ran with)
// as well; the image rebuilt afterwards lifts the removal and the other
// heads fetch it again.
func TestImageRemovalAcrossHeads(t *testing.T) {
	if etcdtest.Binary() == "" {
		t.Skip("no etcd (Debian's etcd-server; `make deps` installs it)")
	}
	c := etcdtest.Start(t, etcdtest.Options{Members: 1})
	etcdConf := "state: {backend: etcd, etcd: {endpoints: [" + strings.Join(c.Endpoints(), ", ") + "], prefix: /site/}}\n"
	a, b, h3 := t.TempDir(), t.TempDir(), t.TempDir()
	tree := rootTree(t)
	for _, dir := range []string{a, b, h3} {
		for _, ref := range []string{"img1", "img2"} {
			if _, stderr, err := cliErr(t, dir, "image", "build", tree, "--name", ref, "-q"); err != nil {
				t.Fatalf("build %s: %v\n%s", ref, err, stderr)
			}
		}
	}
	daemon(t, a, etcdConf)
	hb := daemon(t, b, etcdConf)
	h3d := daemon(t, h3, etcdConf)
	rb(t, a, "node", "add", "n1", "--mac", "52:54:00:78:00:01", "--ip", "127.0.0.21", "--image", "img1").ok(t)
	// Head 3 goes down: its state directory says where its inventory is.
	stop(t, h3, h3d)
	if _, err := os.Stat(filepath.Join(h3, provisioner.BackendFile)); err != nil {
		lb, _ := os.ReadFile(h3d.log)
		t.Fatalf("serve on etcd left no %s: %v\n%s", provisioner.BackendFile, err, lb)
	}

	// In use by a node of the shared inventory: refused everywhere.
	rb(t, b, "image", "rm", "img1").fails(t, exitConflict, "n1")
	rb(t, h3, "image", "rm", "img1").fails(t, exitFailure, "n1")
	if out := rb(t, h3, "image", "list").ok(t); !strings.Contains(out, "img1") {
		t.Fatalf("a refused removal removed the image on the stopped head: %q", out)
	}
	if out := rb(t, h3, "image", "gc", "--min-age", "0").ok(t); !strings.Contains(out, "would remove 0 blobs") {
		t.Fatalf("gc on the stopped head: %q", out)
	}

	// Unused: removed on a, carried out by b at once and by head 3 when it
	// starts.
	rb(t, a, "node", "delete", "n1").ok(t)
	rb(t, a, "image", "rm", "img1").ok(t)
	waitImageGone(t, b, "img1")
	if out := rb(t, h3, "image", "list").ok(t); !strings.Contains(out, "img1") {
		t.Fatalf("the stopped head lost its image before it started: %q", out)
	}
	h3d = daemon(t, h3, etcdConf)
	waitImageGone(t, h3, "img1")
	if lb, _ := os.ReadFile(h3d.log); !strings.Contains(string(lb), "removed on another head") {
		t.Fatalf("head 3 did not log the removal:\n%s", lb)
	}

	// Without any daemon on the head: through its last configuration.
	stop(t, h3, h3d)
	rb(t, h3, "image", "rm", "img2").ok(t)
	waitImageGone(t, a, "img2")
	waitImageGone(t, b, "img2")

	// Rebuilt on a: the record is lifted and b fetches the new image for a
	// node's script.
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if resp, err := cli.Get(t.Context(), "/site/imagerm/img1:latest"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("no removal record for img1: %v %v", resp, err)
	}
	if _, stderr, err := cliErr(t, a, "image", "build", rootTree(t), "--name", "img1", "-q"); err != nil {
		t.Fatalf("rebuild: %v\n%s", err, stderr)
	}
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		resp, err := cli.Get(t.Context(), "/site/imagerm/img1:latest")
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatal("the removal record of an image rebuilt on head a was not lifted within 20 s")
		}
	}
	if out := rb(t, a, "image", "list").ok(t); !strings.Contains(out, "img1") {
		t.Fatalf("the rebuilt image was removed: %q", out)
	}
	rb(t, b, "node", "add", "n2", "--mac", "52:54:00:78:00:02", "--ip", "127.0.0.22", "--image", "img1").ok(t)
	if status, script := nodeScript(t, hb, "127.0.0.22", "52:54:00:78:00:02"); status != http.StatusOK || !strings.Contains(script, "/boot/image/") {
		t.Fatalf("script from head b for the rebuilt image: %d\n%s", status, script)
	}
}

// stop stops the daemon s on dir (SIGTERM, by pid) and waits until it no
// longer answers.
func stop(t *testing.T, dir string, s *served) {
	t.Helper()
	if err := syscall.Kill(s.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, provisioner.SocketFile)); os.IsNotExist(err) && rb(t, dir, "status").code != 0 {
			return
		}
		if time.Since(start) > 15*time.Second {
			t.Fatal("ramboot serve did not stop within 15 s of SIGTERM")
		}
	}
}

// waitImageGone waits until the head on dir lists no image ref.
func waitImageGone(t *testing.T, dir, ref string) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		out := rb(t, dir, "image", "list").ok(t)
		if !strings.Contains(out, ref) {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%s still has %s 10 s after its removal on another head:\n%s", dir, ref, out)
		}
	}
}
