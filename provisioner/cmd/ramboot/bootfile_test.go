package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootFileNotServed: a boot_file the head does not serve (not in the
// TFTP catalogue) is refused by node set, node add, profile add and
// apply, naming the node or profile, the key and the allowed values; one
// it serves is taken. Before, it was stored and the node's firmware got a
// file name TFTP refuses.
func TestBootFileNotServed(t *testing.T) {
	dir := t.TempDir()
	daemon(t, dir, "")
	rb(t, dir, "node", "add", "n1", "--mac", "52:54:00:79:00:01", "--ip", "10.1.0.31").ok(t)
	want := []string{"node n1", `boot_file "nope.kpxe"`, "TFTP catalogue", "ipxe.efi, snponly.efi, undionly.kpxe"}
	rb(t, dir, "node", "set", "n1", "--boot-file", "nope.kpxe").fails(t, exitInvalid, want...)
	if out := rb(t, dir, "node", "show", "n1").ok(t); strings.Contains(out, "nope") {
		t.Fatalf("a refused boot_file was stored:\n%s", out)
	}
	rb(t, dir, "node", "set", "n1", "--boot-file", "ipxe.efi").ok(t)
	rb(t, dir, "node", "add", "n2", "--mac", "52:54:00:79:00:02", "--ip", "10.1.0.32", "--boot-file", "pxelinux.0").
		fails(t, exitInvalid, "node n2", `boot_file "pxelinux.0"`)
	rb(t, dir, "profile", "add", "quirky", "--boot-file", "nope.efi").fails(t, exitInvalid, "profile quirky", `boot_file "nope.efi"`, "ipxe.efi, snponly.efi, undionly.kpxe")

	file := filepath.Join(t.TempDir(), "cluster.yaml")
	os.WriteFile(file, []byte(`nodes:
  - name: n3
    boot_file: nope.kpxe
    interfaces:
      - {mac: "52:54:00:79:00:03", ip: 10.1.0.33}
`), 0o644)
	rb(t, dir, "apply", "-f", file).fails(t, exitInvalid, "node n3", `boot_file "nope.kpxe"`, "ipxe.efi, snponly.efi, undionly.kpxe")
	if rb(t, dir, "node", "show", "n3").code == 0 {
		t.Fatal("apply stored a node with a boot_file not served")
	}
}
