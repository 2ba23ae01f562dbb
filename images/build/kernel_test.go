package build

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"6.1.0-10-amd64", "6.1.0-9-amd64", 1},
		{"6.10.1", "6.9.12", 1},
		{"6.1.0", "6.1.0", 0},
		{"6.1.0", "6.1.0-1", -1},
		{"5.15.0-91-generic", "6.1.0-18-amd64", -1},
		{"6.1.007", "6.1.7", 0},
		{"6.1.0-rc1", "6.1.0-rc2", -1},
		{"a", "b", -1},
	}
	for _, tt := range tests {
		t.Run(tt.a+"_vs_"+tt.b, func(t *testing.T) {
			if got := compareVersions(tt.a, tt.b); got != tt.want {
				t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
			}
			if got := compareVersions(tt.b, tt.a); got != -tt.want {
				t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.b, tt.a, got, -tt.want)
			}
		})
	}
}

func TestBzImageVersion(t *testing.T) {
	mk := func(f func(b []byte)) []byte {
		b := make([]byte, 0x1000)
		binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55)
		copy(b[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(b[0x20e:], 0x800-0x200)
		copy(b[0x800:], "6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP\x00")
		f(b)
		return b
	}
	tests := []struct {
		name string
		img  []byte
		want string
	}{
		{"debian", mk(func([]byte) {}), "6.1.0-18-amd64"},
		{"no-magic", mk(func(b []byte) { copy(b[0x202:], "ABCD") }), ""},
		{"no-boot-flag", mk(func(b []byte) { b[0x1fe] = 0 }), ""},
		{"no-pointer", mk(func(b []byte) { b[0x20e], b[0x20f] = 0, 0 }), ""},
		{"pointer-past-end", mk(func(b []byte) { binary.LittleEndian.PutUint16(b[0x20e:], 0xff00) }), ""},
		{"unterminated", mk(func(b []byte) { copy(b[0x800:], bytes.Repeat([]byte("x"), 0x800)) }), ""},
		{"control-chars", mk(func(b []byte) { copy(b[0x800:], "6.1\x01x\x00") }), ""},
		{"short-file", []byte("MZ"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := bzImageVersion(bytes.NewReader(tt.img)); got != tt.want {
				t.Errorf("bzImageVersion = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFindKernel(t *testing.T) {
	boot := t.TempDir()
	if _, err := findKernel(boot); !errors.Is(err, ErrNoKernel) {
		t.Errorf("empty boot: err = %v, want ErrNoKernel", err)
	}
	for _, name := range []string{"vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64", "config-6.1.0-99-amd64", "vmlinuz-"} {
		if err := os.WriteFile(filepath.Join(boot, name), []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(boot, "vmlinuz-7.0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("vmlinuz-6.1.0-9-amd64", filepath.Join(boot, "vmlinuz-8.0")); err != nil {
		t.Fatal(err)
	}
	got, err := findKernel(boot)
	if want := filepath.Join(boot, "vmlinuz-6.1.0-10-amd64"); err != nil || got != want {
		t.Errorf("findKernel = %q, %v; want %q", got, err, want)
	}
}
