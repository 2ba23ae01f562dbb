// Package loopdev attaches a file, or a byte range of one, to a free loop
// block device, read-only, so that a file system image held in RAM (the
// compressed root's squashfs) can be mounted where it lies:
//
//	d, err := loopdev.Attach(loopdev.Options{File: "/.ramboot/root.squashfs"})
//	err = unix.Mount(d.Path, "/mnt", "squashfs", unix.MS_RDONLY, "")
//	d.Close() // the mount keeps the device; it detaches when unmounted
//
// Devices are attached with LOOP_CONFIGURE (Linux 5.8) and autoclear: the
// kernel detaches one when its last user goes, so a device is never left
// behind once the mount on it is gone.
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Options says what to attach.
type Options struct {
	// File is the backing file. Required.
	File string
	// Offset is where the device starts in File; Size its length, 0
	// meaning to the end of File.
	Offset, Size int64
	// Dev is the directory of the device nodes (loop-control, loopN).
	// Empty means "/dev".
	Dev string
	// Wait bounds the wait for a new device's node to appear (devtmpfs
	// creates it as the kernel adds the device). Zero means 2 s.
	Wait time.Duration
}

// Device is an attached loop device, open until Close.
type Device struct {
	// Path is the device node, e.g. "/dev/loop0".
	Path string
	f    *os.File
}

// Close closes the device. Once something else holds it (a mount), it
// stays attached until that goes; otherwise the kernel detaches it now.
func (d *Device) Close() error { return d.f.Close() }

// Detach detaches the device at once and closes it: for a failure before
// anything used it.
func (d *Device) Detach() error {
	err := unix.IoctlSetInt(int(d.f.Fd()), unix.LOOP_CLR_FD, 0)
	if errors.Is(err, unix.ENXIO) { // autoclear was faster
		err = nil
	}
	return errors.Join(err, d.f.Close())
}

// Attach attaches o.File (from o.Offset, o.Size bytes) read-only to a free
// loop device. A device another process takes between the kernel's answer
// and the configuration is skipped for the next free one.
func Attach(o Options) (*Device, error) {
	if o.Dev == "" {
		o.Dev = "/dev"
	}
	if o.Wait == 0 {
		o.Wait = 2 * time.Second
	}
	back, err := os.Open(o.File)
	if err != nil {
		return nil, fmt.Errorf("attach %s to a loop device: %w", o.File, err)
	}
	defer back.Close()
	ctl, err := os.OpenFile(filepath.Join(o.Dev, "loop-control"), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("attach %s to a loop device: %w (is the loop module loaded?)", o.File, err)
	}
	defer ctl.Close()
	cfg := unix.LoopConfig{Fd: uint32(back.Fd())}
	cfg.Info.Offset = uint64(o.Offset)
	cfg.Info.Sizelimit = uint64(o.Size)
	cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], o.File)
	for try := 0; ; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("attach %s: find a free loop device: %w", o.File, err)
		}
		path := filepath.Join(o.Dev, fmt.Sprintf("loop%d", n))
		dev, err := openWhenThere(path, o.Wait)
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", o.File, err)
		}
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return &Device{Path: path, f: dev}, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) || try >= 8 {
			return nil, fmt.Errorf("attach %s to %s: %w", o.File, path, err)
		}
	}
}

// openWhenThere opens a device node read-only, waiting up to wait for
// devtmpfs to create it.
func openWhenThere(path string, wait time.Duration) (*os.File, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(path, os.O_RDONLY, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Backing returns the file and offset behind the loop device dev (a name
// like "loop0" or a path like "/dev/loop0") from sysfs, and the device's
// size in bytes. sys is the sysfs mount; empty means "/sys".
func Backing(sys, dev string) (file string, offset, size int64, err error) {
	if sys == "" {
		sys = "/sys"
	}
	name := filepath.Base(dev)
	dir := filepath.Join(sys, "block", name)
	read := func(p string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			return "", err
		}
		return string(trimNL(b)), nil
	}
	if file, err = read("loop/backing_file"); err != nil {
		return "", 0, 0, fmt.Errorf("loop device %s: %w", name, err)
	}
	var sectors int64
	s, err := read("size")
	if err == nil {
		_, err = fmt.Sscan(s, &sectors)
	}
	if err != nil {
		return "", 0, 0, fmt.Errorf("loop device %s: size: %w", name, err)
	}
	if s, err := read("loop/offset"); err == nil {
		fmt.Sscan(s, &offset)
	}
	return file, offset, sectors * 512, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
