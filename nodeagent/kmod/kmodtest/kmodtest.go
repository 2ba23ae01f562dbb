// Package kmodtest builds stand-ins for kernel modules in tests: ELF
// relocatable objects, compiled by gcc, whose .modinfo section holds the
// strings a real module's would. They index and resolve like real modules;
// they cannot be loaded.
//
//	dir := t.TempDir()
//	kmodtest.Module(t, dir+"/kernel/net", "virtio_net", "net_failover", "virtio")
//	// dir/kernel/net/virtio_net.ko with "name=virtio_net" "depends=net_failover,virtio"
package kmodtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Build compiles a C file whose .modinfo section holds the given
// "key=value" strings into the ELF object path. It skips t when gcc is not
// installed and fails it when compiling fails.
func Build(t testing.TB, path string, modinfo ...string) {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed: cannot build test modules")
	}
	var src strings.Builder
	for i, kv := range modinfo {
		fmt.Fprintf(&src, "__attribute__((section(\".modinfo\"), used, aligned(1)))\nstatic const char modinfo%d[] = %s;\n", i, cString(kv))
	}
	src.WriteString("int kmodtest_init(void) { return 0; }\n")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	c := filepath.Join(t.TempDir(), "mod.c")
	if err := os.WriteFile(c, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gcc, "-c", "-O0", "-o", path, c).CombinedOutput()
	if err != nil {
		t.Fatalf("compile test module %s: %v\n%s", path, err, out)
	}
}

// Module builds dir/<name>.ko with "name=<name>" and "depends=" listing
// depends, and returns its path. '-' in name is kept in the file name and
// turned into '_' in name=, as the kernel build does.
func Module(t testing.TB, dir, name string, depends ...string) string {
	t.Helper()
	path := filepath.Join(dir, name+".ko")
	Build(t, path,
		"license=GPL",
		"depends="+strings.Join(depends, ","),
		"name="+strings.ReplaceAll(name, "-", "_"),
		"vermagic=6.1.0-kmodtest SMP preempt mod_unload modversions")
	return path
}

// Aliased builds dir/<name>.ko like Module, with no dependencies and an
// "alias=" string for each of aliases, as MODULE_DEVICE_TABLE produces.
func Aliased(t testing.TB, dir, name string, aliases ...string) string {
	t.Helper()
	path := filepath.Join(dir, name+".ko")
	info := []string{"license=GPL", "depends=", "name=" + strings.ReplaceAll(name, "-", "_")}
	for _, a := range aliases {
		info = append(info, "alias="+a)
	}
	Build(t, path, append(info, "vermagic=6.1.0-kmodtest SMP preempt mod_unload modversions")...)
	return path
}

// cString quotes s as a C string literal.
func cString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
