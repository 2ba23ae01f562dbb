package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
)

// TestBuildCompressed builds the compressed root from a real squashfs
// image (mksquashfs) in a tmpfs standing in for the initramfs, with real
// loop, squashfs and overlay mounts: the image's files read through the
// overlay, the initramfs's own files (the agent, the node's overlay) move
// in over the image's, the squashfs stays where it is, a write past the
// upper's cap fails with ENOSPC and leaves the root readable, and Layers
// reports the compressed image and the upper. Without the squashfs image
// the mode fails and leaves the old root alone.
func TestBuildCompressed(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		t.Skip("mksquashfs not installed (make deps)")
	}
	runHelper(t, "compressed")
}

func compressedHelper(dir string) error {
	// The image: a few files, one of them replaced by the node's overlay.
	tree := filepath.Join(dir, "tree")
	files := map[string]string{
		"etc/hostname":   "image\n",
		"etc/os-release": "ID=test\n",
		"usr/bin/tool":   strings.Repeat("tool ", 200000), // 1 MB
	}
	for name, data := range files {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(tree, "bin")); err != nil {
		return err
	}
	old := filepath.Join(dir, "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", old, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	// The initramfs: the agent, the overlay's files.
	for name, data := range map[string]string{"init": "agent binary", "etc/hostname": "node1\n", "etc/ramboot/node.json": "{}"} {
		p := filepath.Join(old, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	var res Result
	noModules := func(context.Context, string) error { return nil }
	cfg := Config{Mode: overlay.RootCompressed, SizeBytes: 8 << 20, LoadModules: noModules, Dev: "/dev"}

	// No squashfs: an error that says so, nothing mounted or moved.
	err := Build(context.Background(), cfg, old, &res)
	if !errors.Is(err, ErrNoCompressedRoot) {
		return fmt.Errorf("build without the image: %v, want ErrNoCompressedRoot", err)
	}
	if b, _ := os.ReadFile(filepath.Join(old, "etc/hostname")); string(b) != "node1\n" {
		return errors.New("the failed build changed the old root")
	}

	img := filepath.Join(old, images.CompressedRootImage)
	if err := os.MkdirAll(filepath.Dir(img), 0o700); err != nil {
		return err
	}
	if out, err := exec.Command("mksquashfs", tree, img, "-comp", "zstd", "-quiet", "-no-progress").CombinedOutput(); err != nil {
		return fmt.Errorf("mksquashfs: %v: %s", err, out)
	}
	if err := Build(context.Background(), cfg, old, &res); err != nil {
		return err
	}
	newRoot := filepath.Join(old, NewRootDir)
	fi, _ := os.Stat(img)
	if res.Mode != overlay.RootCompressed || res.ImageBytes < fi.Size() || res.Files < 3 {
		return fmt.Errorf("result %+v (image %d bytes)", res, fi.Size())
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(newRoot, &sf); err != nil || sf.Type != unix.OVERLAYFS_SUPER_MAGIC {
		return fmt.Errorf("new root: type %#x (%v), want overlayfs", sf.Type, err)
	}
	for name, want := range map[string]string{
		"etc/hostname": "node1\n", "etc/os-release": "ID=test\n", "init": "agent binary",
		"etc/ramboot/node.json": "{}", "bin/tool": files["usr/bin/tool"],
	} {
		if b, err := os.ReadFile(filepath.Join(newRoot, name)); err != nil || string(b) != want {
			return fmt.Errorf("%s in the new root: %d bytes, %v", name, len(b), err)
		}
	}
	// The initramfs keeps the image (the loop device reads it) and gave up
	// the files that moved.
	if _, err := os.Stat(img); err != nil {
		return fmt.Errorf("the squashfs image left the initramfs: %w", err)
	}
	if _, err := os.Stat(filepath.Join(old, "etc/hostname")); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("etc/hostname still in the initramfs: %v", err)
	}

	// Writes go to the upper, up to its cap; past it, ENOSPC, and the
	// root still reads.
	if err := os.WriteFile(filepath.Join(newRoot, "var-small"), bytes.Repeat([]byte{1}, 4<<20), 0o644); err != nil {
		return fmt.Errorf("write 4 MiB under an 8 MiB cap: %w", err)
	}
	err = os.WriteFile(filepath.Join(newRoot, "var-big"), bytes.Repeat([]byte{1}, 16<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("write past the cap: %v, want ENOSPC", err)
	}
	if b, err := os.ReadFile(filepath.Join(newRoot, "usr/bin/tool")); err != nil || len(b) != len(files["usr/bin/tool"]) {
		return fmt.Errorf("the image after ENOSPC: %d bytes, %v", len(b), err)
	}
	// Removing the partial file gives the room back.
	if err := os.Remove(filepath.Join(newRoot, "var-big")); err != nil {
		return err
	}
	// Changing an image file copies it up; the lower is untouched.
	if err := os.WriteFile(filepath.Join(newRoot, "etc/os-release"), []byte("ID=changed\n"), 0o644); err != nil {
		return err
	}
	if b, _ := os.ReadFile(filepath.Join(old, StageDir, "lower/etc/os-release")); string(b) != "ID=test\n" {
		return fmt.Errorf("lower's os-release %q", b)
	}

	// Layers reads back what the daemon reports (old holds sys only when
	// it is mounted there).
	if err := os.MkdirAll(filepath.Join(old, "sys"), 0o755); err != nil {
		return err
	}
	if err := unix.Mount("sysfs", filepath.Join(old, "sys"), "sysfs", 0, ""); err != nil {
		return err
	}
	lower, used, size, ok, err := Layers(old)
	if err != nil || !ok {
		return fmt.Errorf("Layers = %v, %v", ok, err)
	}
	if lower < fi.Size() || lower > fi.Size()+int64(os.Getpagesize()) || size != 8<<20 || used < 4<<20 || used > size {
		return fmt.Errorf("Layers: lower %d (image %d), upper %d of %d", lower, fi.Size(), used, size)
	}
	if _, _, _, ok, _ := Layers(tree); ok {
		return errors.New("Layers says a plain directory is a compressed root")
	}
	return nil
}
