package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/state"
)

// cli runs the CLI in-process with --state-dir dir.
func cli(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), append(args, "--state-dir", dir), &out, &errb)
	return out.String(), err
}

// daemonAPI serves the admin API on the state directory's socket, as
// `ramboot serve` does, without the network services.
func daemonAPI(t *testing.T, dir string) {
	t.Helper()
	db, err := state.Open(filepath.Join(dir, provisioner.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ln, err := net.Listen("unix", filepath.Join(dir, provisioner.SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := &api.Admin{DB: db, Images: &images.Store{Dir: filepath.Join(dir, provisioner.ImagesDir)}, Subnet: netip.MustParsePrefix("10.77.0.1/24"), DefaultImage: "default"}
	srv := &http.Server{Handler: admin.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func TestNodeCommands(t *testing.T) {
	dir := t.TempDir()
	if _, err := cli(t, dir, "node", "list"); err == nil || !strings.Contains(err.Error(), "ramboot serve") {
		t.Fatalf("no daemon: %v", err)
	}
	daemonAPI(t, dir)
	out, err := cli(t, dir, "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "10.77.0.11")
	if err != nil || !strings.Contains(out, "n1") || !strings.Contains(out, "new") {
		t.Fatalf("node add: %q %v", out, err)
	}
	if _, err := cli(t, dir, "node", "add", "n2", "--ip", "10.77.0.12"); err == nil || !strings.Contains(err.Error(), "mac") {
		t.Fatalf("node add without --mac: %v", err)
	}
	out, err = cli(t, dir, "node", "list")
	if err != nil || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "52:54:00:77:00:01") {
		t.Fatalf("node list: %q %v", out, err)
	}
	out, err = cli(t, dir, "node", "show", "n1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var n state.NodeStatus
	if err := json.Unmarshal([]byte(out), &n); err != nil || n.Name != "n1" || n.Status.State != state.StateNew {
		t.Fatalf("node show -o json: %q %v", out, err)
	}
	out, err = cli(t, dir, "node", "show", "n1")
	if err != nil || !strings.Contains(out, "State:") || !strings.Contains(out, "no boot seen yet") {
		t.Fatalf("node show: %q %v", out, err)
	}
	if _, err := cli(t, dir, "node", "show", "nope"); err == nil {
		t.Fatal("show of an unknown node: no error")
	}
	if _, err := cli(t, dir, "node", "list", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Fatalf("bad -o: %v", err)
	}
	if _, err := cli(t, dir, "node", "delete", "n1"); err != nil {
		t.Fatal(err)
	}
}

func TestImageCommands(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"boot", "bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{"boot/vmlinuz-6.1.0-test": "kernel", "bin/hello": "#!/bin/sh\necho hi\n", "etc/hostname": "x\n"} {
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := cli(t, dir, "image", "build", tree, "--name", "test", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res imageResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Name != "test" || res.Ref != "test:latest" || res.Manifest.KernelVersion != "6.1.0-test" {
		t.Fatalf("image build -o json: %q %v", out, err)
	}
	if _, err := images.ParseDigest(string(res.Digest)); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, dir, "image", "list")
	if err != nil || !strings.Contains(out, "test") || !strings.Contains(out, res.Digest.Hex()[:12]) {
		t.Fatalf("image list: %q %v", out, err)
	}
	if _, err := cli(t, dir, "image", "build", tree); err == nil || !strings.Contains(err.Error(), "name") {
		t.Fatalf("build without --name: %v", err)
	}
}

func TestServeNeedsInterface(t *testing.T) {
	_, err := cli(t, t.TempDir(), "serve")
	if err == nil || !strings.Contains(err.Error(), "interface: required") {
		t.Fatalf("serve without interface: %v", err)
	}
	_, err = cli(t, t.TempDir(), "serve", "--interface", "no-such-if0")
	if err == nil || !strings.Contains(err.Error(), "no-such-if0") {
		t.Fatalf("serve on a missing interface: %v", err)
	}
}
