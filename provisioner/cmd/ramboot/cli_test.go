package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
func daemonAPI(t *testing.T, dir string) *state.DB {
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
	return db
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

// TestStateCommands: backup offline and online (through the daemon),
// check, and restore, which refuses while a daemon serves the state
// directory and keeps the file it replaces.
func TestStateCommands(t *testing.T) {
	dir := t.TempDir()
	db, err := state.Open(filepath.Join(dir, provisioner.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:77:00:01", IP: netip.MustParseAddr("10.77.0.11")}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	offline := filepath.Join(t.TempDir(), "offline.db")
	out, err := cli(t, dir, "state", "backup", offline)
	if err != nil || !strings.Contains(out, "1 nodes") {
		t.Fatalf("offline backup: %q %v", out, err)
	}

	daemonAPI(t, dir)
	if _, err := cli(t, dir, "node", "add", "n2", "--mac", "52:54:00:77:00:02", "--ip", "10.77.0.12"); err != nil {
		t.Fatal(err)
	}
	online := filepath.Join(t.TempDir(), "online.db")
	out, err = cli(t, dir, "state", "backup", online, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res stateResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Online || res.Nodes != 2 {
		t.Fatalf("online backup: %q %v", out, err)
	}
	if out, err := cli(t, dir, "state", "check"); err != nil || !strings.Contains(out, "2 nodes") {
		t.Fatalf("check through the daemon: %q %v", out, err)
	}
	if _, err := cli(t, dir, "state", "restore", offline); err == nil || !strings.Contains(err.Error(), "stop it") {
		t.Fatalf("restore while the daemon serves: %v", err)
	}

	// Without a daemon: restore the offline copy (1 node); the replaced
	// database (2 nodes) is kept beside it.
	dir2 := t.TempDir()
	if _, err := cli(t, dir2, "state", "restore", online); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, dir2, "state", "restore", offline, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Nodes != 1 || res.Kept == "" {
		t.Fatalf("restore: %q %v", out, err)
	}
	if sum, err := state.Verify(res.Kept); err != nil || sum.Nodes != 2 {
		t.Fatalf("kept database: %+v %v", sum, err)
	}
	if out, err := cli(t, dir2, "state", "check"); err != nil || !strings.Contains(out, "1 nodes") {
		t.Fatalf("check: %q %v", out, err)
	}

	// A damaged file is refused by check and restore, naming it.
	bad := filepath.Join(t.TempDir(), "bad.db")
	if err := os.WriteFile(bad, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, dir2, "state", "check", bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("check of an empty file: %v", err)
	}
	if _, err := cli(t, dir2, "state", "restore", bad); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("restore from an empty file: %v", err)
	}
	if out, err := cli(t, dir2, "state", "check"); err != nil || !strings.Contains(out, "1 nodes") {
		t.Fatalf("a refused restore changed the database: %q %v", out, err)
	}
}

// TestNodeShowBoot: node show lists the earlier boots kept and shows one
// with --boot K.
func TestNodeShowBoot(t *testing.T) {
	dir := t.TempDir()
	db := daemonAPI(t, dir)
	if err := db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:77:00:01", IP: netip.MustParseAddr("10.77.0.11")}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := db.Record("n1", state.Event{Step: state.StepDHCPOffer, Detail: fmt.Sprintf("boot %d", i+1)}, true); err != nil {
			t.Fatal(err)
		}
	}
	out, err := cli(t, dir, "node", "show", "n1")
	if err != nil || !strings.Contains(out, "Earlier boots:  2, 1") || !strings.Contains(out, "Boot 3") {
		t.Fatalf("node show: %q %v", out, err)
	}
	out, err = cli(t, dir, "node", "show", "n1", "--boot", "1")
	if err != nil || !strings.Contains(out, "Boot 1,") || !strings.Contains(out, "boot 1") {
		t.Fatalf("node show --boot 1: %q %v", out, err)
	}
	if _, err := cli(t, dir, "node", "show", "n1", "--boot", "7"); err == nil || !strings.Contains(err.Error(), "kept: 3, 2, 1") {
		t.Fatalf("node show --boot 7: %v", err)
	}
}
