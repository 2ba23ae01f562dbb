package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/nodeagent/internal/loopdev"
	"github.com/ramboot/ramboot/nodeagent/kmod"
)

// ErrNoCompressedRoot means the compressed mode found no squashfs image in
// the initramfs: the image was built without its compressed root
// (--no-compressed-root), or the head sent the tmpfs mode's archive.
var ErrNoCompressedRoot = errors.New("no compressed root image in the initramfs")

// StageDir is where the compressed mode mounts its layers, inside /run (a
// tmpfs the agent mounted, carried into the new root): lower is the
// squashfs, rw the capped tmpfs holding upper and work. The daemon finds
// them there to report the root's RAM.
const StageDir = "run/ramboot/root"

// RootModules are the modules the compressed mode loads from the
// compressed root archive before it mounts it.
var RootModules = []string{"loop", "squashfs", "overlay"}

// buildCompressed is the compressed mode: the squashfs image the kernel
// unpacked into old (images.CompressedRootImage) is mounted read-only
// through a loop device, where it lies, as the lower layer of an overlay
// mounted at dir whose upper layer is a tmpfs capped at c.SizeBytes. The
// initramfs's other files (the agent, the node's overlay) are moved into
// it, over the image's: they came after the image, as in the tmpfs mode.
func buildCompressed(ctx context.Context, c Config, old, dir string, st *stats) (err error) {
	img := filepath.Join(old, images.CompressedRootImage)
	fi, err := os.Stat(img)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w (%s): build the image with its compressed root, or boot the node in the tmpfs mode", ErrNoCompressedRoot, "/"+images.CompressedRootImage)
	}
	if err != nil {
		return err
	}
	if err := c.loadModules(ctx, old); err != nil {
		return err
	}
	stage := filepath.Join(old, StageDir)
	lower, rw := filepath.Join(stage, "lower"), filepath.Join(stage, "rw")
	for _, d := range []string{lower, rw} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				if uerr := undo[i](); uerr != nil {
					err = errors.Join(err, uerr)
				}
			}
		}
	}()
	dev, err := loopdev.Attach(loopdev.Options{File: img, Dev: c.devDir(old)})
	if err != nil {
		return err
	}
	if err := unix.Mount(dev.Path, lower, "squashfs", unix.MS_RDONLY, ""); err != nil {
		dev.Detach()
		return fmt.Errorf("mount the squashfs %s on %s: %w", dev.Path, lower, err)
	}
	dev.Close() // the mount holds it; it detaches when unmounted
	undo = append(undo, unmounter(lower))
	if err := unix.Mount("tmpfs", rw, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", c.SizeBytes)); err != nil {
		return fmt.Errorf("mount the upper tmpfs on %s: %w", rw, err)
	}
	undo = append(undo, unmounter(rw))
	upper, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	// The root directory's attributes are the upper's: give it the image's.
	var rootSt unix.Stat_t
	if err := unix.Stat(lower, &rootSt); err != nil {
		return err
	}
	if err := setAttrs(upper, &rootSt, uint32(rootSt.Mode)&0o7777); err != nil {
		return err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", dir, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount the overlay on %s: %w", dir, err)
	}
	undo = append(undo, unmounter(dir))
	m := &mover{ctx: ctx, dev: devOf(old), skip: []string{dir, filepath.Join(old, images.CompressedRootDir), filepath.Join(old, "run")},
		links: map[uint64]string{}, buf: make([]byte, 1<<20), replace: true}
	if err := m.dir(old, dir); err != nil {
		return fmt.Errorf("move the initramfs's files into the root: %w", err)
	}
	st.files = m.n
	st.bytes = (fi.Size() + pageSize - 1) / pageSize * pageSize
	return nil
}

var pageSize = int64(os.Getpagesize())

func devOf(path string) uint64 {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return 0
	}
	return st.Dev
}

func unmounter(path string) func() error {
	return func() error {
		if err := unix.Unmount(path, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
		return nil
	}
}

// loadModules loads RootModules from the compressed root archive's module
// tree for the running kernel (built-in and loaded ones count as there).
func (c Config) loadModules(ctx context.Context, old string) error {
	if c.LoadModules != nil {
		return c.LoadModules(ctx, old)
	}
	rel := c.Release
	if rel == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return fmt.Errorf("uname: %w", err)
		}
		rel = unix.ByteSliceToString(u.Release[:])
	}
	l := &kmod.Loader{Dir: filepath.Join(old, images.CompressedRootModules, rel), SysModule: filepath.Join(old, "sys", "module")}
	if _, err := l.Load(ctx, RootModules); err != nil {
		return fmt.Errorf("load the compressed root's modules: %w", err)
	}
	return nil
}

func (c Config) devDir(old string) string {
	if c.Dev != "" {
		return c.Dev
	}
	return filepath.Join(old, "dev")
}

// Layers returns the compressed root's RAM: the squashfs image under it
// (the lower layer, from its loop device's backing file) and the capped
// tmpfs it writes to (the upper), as mounted under root/StageDir. ok is
// false when root is not a compressed root.
func Layers(root string) (lowerBytes, upperUsed, upperSize int64, ok bool, err error) {
	stage := filepath.Join(root, StageDir)
	var sf unix.Statfs_t
	if err := unix.Statfs(filepath.Join(stage, "lower"), &sf); err != nil || sf.Type != unix.SQUASHFS_MAGIC {
		return 0, 0, 0, false, nil
	}
	upperUsed, upperSize, err = Usage(filepath.Join(stage, "rw"))
	if err != nil {
		return 0, 0, 0, true, err
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(stage, "lower"), &st); err != nil {
		return 0, 0, 0, true, err
	}
	dev := fmt.Sprintf("loop%d", unix.Minor(st.Dev))
	if unix.Major(st.Dev) != 7 { // LOOP_MAJOR
		return 0, upperUsed, upperSize, true, fmt.Errorf("the compressed root is on device %d:%d, not a loop device", unix.Major(st.Dev), unix.Minor(st.Dev))
	}
	_, _, size, err := loopdev.Backing(filepath.Join(root, "sys"), dev)
	if err != nil {
		return 0, upperUsed, upperSize, true, err
	}
	return (size + pageSize - 1) / pageSize * pageSize, upperUsed, upperSize, true, nil
}
