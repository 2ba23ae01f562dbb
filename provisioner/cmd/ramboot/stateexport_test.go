package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
)

// TestStateExportHostKeys: `state export` carries the nodes' SSH host
// keys of a single head's state directory (before, a site moved with
// export | import got new keys for every node and its known_hosts broke),
// writes the stream mode 0600 (--file, or a file stdout is redirected to:
// it holds private keys), and `state import` into another state directory
// puts the same keys there.
func TestStateExportHostKeys(t *testing.T) {
	src := t.TempDir()
	offlineDB(t, src, 1)
	srcKeys := &hostkeys.Dir{Path: filepath.Join(src, provisioner.HostKeysDir)}
	keys, err := hostkeys.Ensure(context.Background(), srcKeys, []string{"n1"}, nil)
	if err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(t.TempDir(), "state.jsonl")
	r := rb(t, src, "state", "export", "--file", file)
	r.ok(t)
	if !strings.Contains(r.err, "1 nodes' SSH host keys") {
		t.Fatalf("export summary: %q", r.err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("export --file wrote mode %v, want 0600", fi.Mode().Perm())
	}
	stream, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(stream, []byte(`{"k":"hostkeys/n1"`)) {
		t.Fatalf("no host keys in the stream:\n%s", stream)
	}

	// Redirected to a file the shell made 0644: made private.
	redirected := filepath.Join(t.TempDir(), "redirected.jsonl")
	f, err := os.OpenFile(redirected, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "state", "export", "--state-dir", src)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = f, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("export > file: %v\n%s", err, errb.String())
	}
	f.Close()
	if fi, err := os.Stat(redirected); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("export > file left mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}

	dst := t.TempDir()
	rb(t, dst, "state", "import", file).ok(t)
	got, err := (&hostkeys.Dir{Path: filepath.Join(dst, provisioner.HostKeysDir)}).Load(context.Background(), "n1")
	if err != nil {
		t.Fatalf("host keys after the import: %v", err)
	}
	for i := range keys["n1"] {
		a, _ := keys["n1"][i].PrivateFile()
		b, _ := got[i].PrivateFile()
		if !bytes.Equal(a, b) {
			t.Fatalf("host key %s of n1 changed in the move", got[i].Type)
		}
	}
}
