// Package rootfs moves the node's root file system off the kernel's
// initramfs into the root mode the head chose, then makes it the root.
//
// The kernel unpacks the image, the agent and the overlay into "rootfs",
// its initial RAM file system. That root has no size cap of its own choosing
// and cannot be left: pivot_root(2), which container runtimes use, refuses
// it. So before anything else runs, /init builds a new root and switches
// to it the way switch_root(8) does (MS_MOVE onto "/", then chroot):
//
//	res, err := rootfs.Setup(ctx, rootfs.Config{Mode: overlay.RootTmpfs, SizeBytes: 4 << 30})
//	// res.Switched: the root is now a tmpfs capped at 4 GiB holding the image
//
// Modes: [overlay.RootCompressed] keeps the image compressed: the squashfs
// the kernel unpacked from the image's compressed root archive stays in
// the initramfs and is mounted read-only through a loop device as the lower
// layer of an overlay, whose upper is a tmpfs with the cap; the
// initramfs's other files (agent, node overlay) move into it (see
// buildCompressed). [overlay.RootTmpfs] wants the image in a tmpfs with the cap. When
// the kernel made rootfs a tmpfs (no root= on its command line, the usual
// case) that tmpfs is capped where it is (a remount) and a bind mount of
// it becomes the root: nothing is copied, and the root is a mount
// pivot_root accepts. When rootfs is a ramfs, a new tmpfs is mounted and
// every file moved into it, each deleted from rootfs once copied, so the
// RAM peak is the image plus one file. A mode is one function that builds
// the new root in a directory (see the modes table).
//
// Setup never leaves the node without a root: when the image does not fit
// under the cap (checked before anything moves) or a file cannot be moved,
// it moves back what it moved and the node stays on rootfs, uncapped; the
// error says why.
package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
)

// ErrTooBig means the image does not fit under the root's size cap.
var ErrTooBig = errors.New("the image does not fit under the root's size cap")

// NewRootDir is where the new root is built, inside the old one, before it
// is moved onto "/".
const NewRootDir = ".ramboot.newroot"

// Config says which root to build.
type Config struct {
	// Mode is the root mode; empty means overlay.RootTmpfs.
	Mode overlay.RootMode
	// SizeBytes caps the root's RAM: in the compressed mode, the writable
	// upper layer's. Required.
	SizeBytes int64
	// Release is the kernel release whose modules the compressed mode
	// loads from the compressed root archive. Empty means the running
	// kernel's.
	Release string
	// LoadModules, when set, replaces the compressed mode's loading of
	// RootModules from old's compressed root archive (tests).
	LoadModules func(ctx context.Context, old string) error
	// Dev is the directory of the device nodes the compressed mode opens
	// loop devices in. Empty means old's /dev.
	Dev string
}

// Result says what Setup did.
type Result struct {
	// Switched is true when the root was moved into its mode.
	Switched bool
	// Was is the file system type the root had before ("rootfs", "ramfs",
	// or something Setup leaves alone).
	Was string
	// Mode is the root mode now in use.
	Mode overlay.RootMode
	// ImageBytes is the RAM the image's files took (page-rounded): in the
	// compressed mode, the compressed image's.
	ImageBytes int64
	// Files counts the entries moved.
	Files int
	// InPlace is true when the root was capped where the kernel unpacked
	// it (rootfs was a tmpfs), false when its files were moved.
	InPlace bool
}

// mode builds a new root in dir, mounted and filled from the tree at old
// (whose files it removes as it goes), and counts what it moved in st. On
// error it must leave old as it found it and dir unmounted.
type mode func(ctx context.Context, c Config, old, dir string, st *stats) error

// modes are the root modes Setup can build.
var modes = map[overlay.RootMode]mode{
	overlay.RootTmpfs:      buildTmpfs,
	overlay.RootCompressed: buildCompressed,
}

// stats counts what a build moved.
type stats struct {
	files   int
	bytes   int64
	inPlace bool
}

// NeedsSwitch reports whether a root of file system type fstype (from
// /proc/self/mountinfo) is the kernel's initial root that Setup moves
// off: rootfs, or a plain ramfs.
func NeedsSwitch(fstype string) bool { return fstype == "rootfs" || fstype == "ramfs" }

// Setup builds the root in c's mode from the current root "/" and switches
// to it, when the current root is the kernel's initramfs (NeedsSwitch);
// otherwise it leaves the root alone and says so in Result.Was. /proc must
// be mounted. Mounts under "/" (/proc, /sys, /dev, /run) are moved along.
func Setup(ctx context.Context, c Config) (Result, error) {
	mounts, err := procfs.ReadMountinfo(os.DirFS("/"))
	if err != nil {
		return Result{}, fmt.Errorf("set up root: %w", err)
	}
	root, ok := procfs.RootMount(mounts)
	if !ok {
		return Result{}, errors.New("set up root: no mount on / in /proc/self/mountinfo")
	}
	res := Result{Was: root.FSType}
	if !NeedsSwitch(root.FSType) {
		return res, nil
	}
	if err := Build(ctx, c, "/", &res); err != nil {
		return res, err
	}
	dir := filepath.Join("/", NewRootDir)
	// Carry the kernel file systems mounted so far into the new root.
	for _, m := range mounts {
		if m.Parent != root.ID || m.Point == "/" || m.Point == dir {
			continue
		}
		target := filepath.Join(dir, m.Point)
		if err := os.MkdirAll(target, 0o755); err == nil {
			_ = unix.Mount(m.Point, target, "", unix.MS_MOVE, "")
		}
	}
	if err := switchTo(dir); err != nil {
		return res, err
	}
	// In place, the new root shows the (now empty) mount point it was
	// built on.
	_ = os.Remove(filepath.Join("/", NewRootDir))
	res.Switched = true
	return res, nil
}

// Build builds the root in c's mode at old/NewRootDir from the tree at
// old, moving every file of old's file system into it. res receives the
// mode and the sizes. On error old is as it was and nothing stays
// mounted.
func Build(ctx context.Context, c Config, old string, res *Result) error {
	m := c.Mode
	if m == "" {
		m = overlay.RootTmpfs
	}
	build, ok := modes[m]
	if !ok {
		return fmt.Errorf("set up root: unknown root mode %q", m)
	}
	if c.SizeBytes <= 0 {
		return fmt.Errorf("set up root: no size cap")
	}
	dir := filepath.Join(old, NewRootDir)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("set up root: %w", err)
	}
	var st stats
	if err := build(ctx, c, old, dir, &st); err != nil {
		_ = os.Remove(dir)
		return fmt.Errorf("set up %s root: %w", m, err)
	}
	res.Mode, res.Files, res.ImageBytes, res.InPlace = m, st.files, st.bytes, st.inPlace
	return nil
}

// buildTmpfs is the tmpfs mode: old itself, capped, when it is a tmpfs;
// otherwise a tmpfs of c.SizeBytes at dir with every file of old moved
// into it.
func buildTmpfs(ctx context.Context, c Config, old, dir string, st *stats) error {
	var sf unix.Statfs_t
	if err := unix.Statfs(old, &sf); err != nil {
		return fmt.Errorf("statfs %s: %w", old, err)
	}
	if sf.Type == unix.TMPFS_MAGIC {
		return capInPlace(c, old, dir, &sf, st)
	}
	need, err := Footprint(old, dir)
	if err != nil {
		return err
	}
	if need > c.SizeBytes {
		return fmt.Errorf("%w: the image takes %s, the cap (root.size) is %s", ErrTooBig, mib(need), mib(c.SizeBytes))
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", c.SizeBytes)); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	n, err := move(ctx, old, dir, dir)
	st.files, st.bytes = n, need
	if err != nil {
		// Put back what was moved: old has the room, it just gave it up.
		if berr := moveBack(dir, old); berr != nil {
			err = errors.Join(err, fmt.Errorf("move back: %w", berr))
		}
		if uerr := unix.Unmount(dir, 0); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", dir, uerr))
		}
		return err
	}
	return nil
}

// capInPlace caps the tmpfs at old at c.SizeBytes and bind-mounts it on
// dir, to be moved onto "/": the root is then a mount of its own, not the
// kernel's initial one, so pivot_root works under it.
func capInPlace(c Config, old, dir string, sf *unix.Statfs_t, st *stats) error {
	used := int64(sf.Blocks-sf.Bfree) * sf.Bsize
	if used > c.SizeBytes {
		return fmt.Errorf("%w: the image takes %s, the cap (root.size) is %s", ErrTooBig, mib(used), mib(c.SizeBytes))
	}
	if err := unix.Mount("", old, "", unix.MS_REMOUNT, fmt.Sprintf("size=%d", c.SizeBytes)); err != nil {
		return fmt.Errorf("cap the tmpfs at %s: %w", old, err)
	}
	if err := unix.Mount(old, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", old, dir, err)
	}
	st.bytes, st.inPlace = used, true
	return nil
}

// switchTo makes dir the root: chdir there, move its mount onto "/",
// chroot into it.
func switchTo(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s onto /: %w", dir, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	return nil
}

// Usage returns the RAM the file system at path takes and its cap, from
// statfs(2).
func Usage(path string) (used, size int64, err error) {
	var sf unix.Statfs_t
	if err := unix.Statfs(path, &sf); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	size = int64(sf.Blocks) * sf.Bsize
	used = int64(sf.Blocks-sf.Bfree) * sf.Bsize
	return used, size, nil
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
