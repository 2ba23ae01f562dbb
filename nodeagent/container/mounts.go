package container

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/ocispec"
)

func unsafePointer(p *unix.Siginfo) unsafe.Pointer { return unsafe.Pointer(p) }

// mountLayers mounts the container's writable layer (a tmpfs of size
// bytes at bundle/upper) and its root file system (overlayfs of lower and
// that layer at bundle/rootfs).
func mountLayers(bundle, lower string, size int64, uid, gid int) error {
	upper := filepath.Join(bundle, "upper")
	rootfs := filepath.Join(bundle, "rootfs")
	logs := filepath.Join(bundle, "log")
	for _, d := range []string{upper, rootfs, logs} {
		if err := os.Mkdir(d, 0o711); err != nil {
			return err
		}
	}
	// The output has a tmpfs of its own: a container that fills its
	// writable layer still gets its error messages out.
	if err := unix.Mount("tmpfs", logs, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, fmt.Sprintf("size=%d,mode=0700", LogBytes)); err != nil {
		return fmt.Errorf("mount the log tmpfs on %s: %w", logs, err)
	}
	if err := unix.Mount("tmpfs", upper, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, fmt.Sprintf("size=%d,mode=0711", size)); err != nil {
		return fmt.Errorf("mount the writable layer (tmpfs) on %s: %w", upper, err)
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(upper, d), 0o700); err != nil {
			return err
		}
	}
	// The merged root directory takes the upper directory's owner and
	// mode: give it the image's.
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		return fmt.Errorf("stat image root %s: %w", lower, err)
	}
	u := filepath.Join(upper, "upper")
	if err := os.Lchown(u, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Chmod(u, st.Mode&0o7777); err != nil {
		return err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, u, filepath.Join(upper, "work"))
	if err := unix.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount the root file system (overlay) on %s: %w", rootfs, err)
	}
	return nil
}

// unmountLayers undoes mountLayers; what is not mounted is skipped.
func unmountLayers(bundle string) error {
	var errs []error
	for _, d := range []string{"rootfs", "upper", "log"} {
		p := filepath.Join(bundle, d)
		if err := unmount(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmount unmounts every mount stacked at p. A mount still busy is
// detached (it goes once its last user does) and reported.
func unmount(p string) error {
	for {
		err := unix.Unmount(p, 0)
		switch {
		case err == nil:
			continue
		case err == unix.EINVAL || err == unix.ENOENT:
			return nil
		case err == unix.EBUSY:
			unix.Unmount(p, unix.MNT_DETACH)
			return fmt.Errorf("unmount %s: busy (detached; it is freed once its last process exits)", p)
		default:
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
}

// tmpfsUsed returns the bytes the file system at dir holds, 0 on error.
func tmpfsUsed(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil || st.Type != unix.TMPFS_MAGIC {
		return 0
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// parseBinds parses SRC:DST[:ro|rw] and checks that caller may reach each
// source: a user cannot bind what their own permissions do not let them
// open (a file under a directory they cannot search, say).
func parseBinds(binds []string, caller localapi.Cred) ([]ocispec.Bind, error) {
	var out []ocispec.Bind
	for _, s := range binds {
		parts := strings.Split(s, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("bind %q: want SRC:DST[:ro]: %w", s, ErrInvalid)
		}
		b := ocispec.Bind{Source: parts[0], Destination: parts[1]}
		if len(parts) == 3 {
			switch parts[2] {
			case "ro":
				b.ReadOnly = true
			case "rw":
			default:
				return nil, fmt.Errorf("bind %q: option %q, want ro or rw: %w", s, parts[2], ErrInvalid)
			}
		}
		if !path.IsAbs(b.Source) || !path.IsAbs(b.Destination) || path.Clean(b.Destination) == "/" {
			return nil, fmt.Errorf("bind %q: source and destination must be absolute, the destination not /: %w", s, ErrInvalid)
		}
		for _, c := range strings.Split(b.Destination, "/") {
			if c == ".." {
				return nil, fmt.Errorf("bind %q: '..' in the destination: %w", s, ErrInvalid)
			}
		}
		real, err := resolveAs(caller, b.Source)
		if err != nil {
			return nil, fmt.Errorf("bind %q: %w", s, err)
		}
		b.Source = real
		out = append(out, b)
	}
	return out, nil
}

// resolveAs opens p with caller's file-system identity (on a thread of
// its own, whose credentials alone change) and returns the path the
// kernel resolved, without symbolic links.
func resolveAs(caller localapi.Cred, p string) (string, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, and
		// its changed credentials with it.
		runtime.LockOSThread()
		if !caller.Root() {
			groups := callerGroups(caller.PID, caller.GID)
			gs := make([]uint32, 0, len(groups)+1)
			gs = append(gs, uint32(caller.GID))
			gs = append(gs, groups...)
			if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), uintptr(unsafe.Pointer(&gs[0])), 0); e != 0 {
				ch <- result{err: fmt.Errorf("setgroups: %w", e)}
				return
			}
			unix.RawSyscall(unix.SYS_SETFSGID, uintptr(caller.GID), 0, 0)
			unix.RawSyscall(unix.SYS_SETFSUID, uintptr(caller.UID), 0, 0)
		}
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{err: fmt.Errorf("%s: %w", p, err)}
			return
		}
		ch <- result{fd: fd}
	}()
	r := <-ch
	if r.err != nil {
		if errors.Is(r.err, unix.EACCES) {
			return "", fmt.Errorf("uid %d may not reach %s: %w", caller.UID, p, ErrForbidden)
		}
		return "", r.err
	}
	// Read back here, as root: /proc/self/fd is the agent's.
	defer unix.Close(r.fd)
	return os.Readlink(fmt.Sprintf("/proc/self/fd/%d", r.fd))
}
