package procfs

import (
	"bytes"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// MountinfoPath is the calling process's mount table.
const MountinfoPath = "proc/self/mountinfo"

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	// ID is the mount's id; Parent its parent's.
	ID, Parent int
	// Root is the directory of the file system mounted here ("/" for the
	// whole file system; a subdirectory for bind mounts).
	Root string
	// Point is the mount point, relative to the process's root.
	Point string
	// FSType is the file system type ("rootfs", "tmpfs", "proc", ...).
	FSType string
	// Source is the mount source ("none", "/dev/sda1", "tmpfs", ...).
	Source string
	// Options are the per-mount options ("rw,nosuid").
	Options string
}

// ReadMountinfo returns the mount table at MountinfoPath in root.
func ReadMountinfo(root fs.FS) ([]Mount, error) {
	b, err := fs.ReadFile(root, MountinfoPath)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return ParseMountinfo(b)
}

// ParseMountinfo parses /proc/self/mountinfo content (see proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Octal escapes (\040 for a space) in paths are decoded.
func ParseMountinfo(b []byte) ([]Mount, error) {
	var out []Mount
	n := 0
	for line := range bytes.Lines(b) {
		n++
		f := strings.Fields(string(line))
		if len(f) == 0 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("parse mountinfo line %d: want \"ID PARENT MAJ:MIN ROOT POINT OPTIONS ... - TYPE SOURCE ...\"", n)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("parse mountinfo line %d: mount ids %q %q are not numbers", n, f[0], f[1])
		}
		out = append(out, Mount{
			ID: id, Parent: parent,
			Root: unescape(f[3]), Point: unescape(f[4]), Options: f[5],
			FSType: f[sep+1], Source: unescape(f[sep+2]),
		})
	}
	return out, nil
}

// unescape decodes the kernel's octal escapes (\ooo) in mountinfo paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// RootMount returns the mount that is the process's root: the last one
// mounted on "/" (a later mount hides an earlier one).
func RootMount(mounts []Mount) (Mount, bool) {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].Point == "/" {
			return mounts[i], true
		}
	}
	return Mount{}, false
}
