// Package initproc does what PID 1 owes the kernel and its children: it
// mounts the kernel's file systems, gives itself the console as standard
// input and output, reaps orphaned children without stealing the statuses
// of the children it started itself, keeps services (the agent daemon, a
// console shell) running, turns shutdown signals into an orderly power-off
// or reboot, and can hand PID 1 to another init.
//
//	if err := initproc.MountAll("/", initproc.KernelFS()); err != nil { ... }
//	initproc.OpenConsole("/dev/console")
//	sup := &initproc.Supervisor{Console: os.Stdout}
//	go sup.Run(ctx) // reaps, and powers off on SIGUSR2 (busybox poweroff)
//	go sup.Keep(ctx, initproc.Service{Name: "agent daemon", Path: "/init", Args: []string{"/init", "daemon"}})
//	...
//	err := initproc.Exec("/sbin/init") // only returns on failure
package initproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Mount is one file system to mount.
type Mount struct {
	// Source is the mount source ("proc", "tmpfs", ...).
	Source string
	// Target is the mount point, relative to the root given to MountAll.
	Target string
	// FSType is the file system type.
	FSType string
	// Flags are the MS_* mount flags.
	Flags uintptr
	// Data is the file-system-specific option string.
	Data string
}

// KernelFS returns the file systems PID 1 mounts at boot, in order: /proc,
// /sys, /dev (devtmpfs), /dev/pts, /dev/shm and /run (tmpfs, mode 0755,
// capped at 10% of RAM).
func KernelFS() []Mount {
	const nosuidNodevNoexec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return []Mount{
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: nosuidNodevNoexec},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: nosuidNodevNoexec},
		{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
		{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "mode=0620,ptmxmode=0666"},
		{Source: "tmpfs", Target: "/dev/shm", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777"},
		{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755,size=10%"},
	}
}

// MountAll mounts each of mounts under root, in order, creating missing
// mount points (mode 0755). A target that already is a mount point is left
// as it is, and so is one the kernel reports busy (EBUSY). MountAll goes on
// after a failure and returns all of them.
func MountAll(root string, mounts []Mount) error {
	var errs []error
	for _, m := range mounts {
		target := filepath.Join(root, m.Target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.FSType, target, err))
			continue
		}
		if mp, err := IsMountPoint(target); err == nil && mp {
			continue
		}
		err := unix.Mount(m.Source, target, m.FSType, m.Flags, m.Data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.FSType, target, err))
		}
	}
	return errors.Join(errs...)
}

// IsMountPoint reports whether path is a mount point: its device differs
// from its parent's, or it is the root.
func IsMountPoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Lstat(filepath.Join(path, ".."), &parent); err != nil {
		return false, fmt.Errorf("stat %s: %w", filepath.Dir(path), err)
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// OpenConsole opens the console device at path (normally "/dev/console")
// and makes it the process's standard input, output and error, so that
// os.Stdin, os.Stdout and os.Stderr use it. The kernel starts init with
// the console already open when its root file system has /dev/console;
// after devtmpfs is mounted this works either way.
func OpenConsole(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open console %s: %w", path, err)
	}
	for i := 0; i < 3; i++ {
		if fd == i {
			continue
		}
		if err := unix.Dup3(fd, i, 0); err != nil {
			if fd > 2 {
				unix.Close(fd)
			}
			return fmt.Errorf("open console %s: dup to fd %d: %w", path, i, err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	} else {
		// fd became one of the standard streams: it must survive exec.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("open console %s: %w", path, err)
		}
	}
	return nil
}

// Exec replaces the process with the program at path, run with no
// arguments and the process's environment, keeping PID 1. It returns only
// when the exec fails.
func Exec(path string) error {
	err := syscall.Exec(path, []string{path}, os.Environ())
	return fmt.Errorf("exec %s: %w", path, err)
}
