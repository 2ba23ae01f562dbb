package build

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ramboot/ramboot/images/newc"
)

// ErrNoKernel reports a tree without a boot/vmlinuz-* file when
// Options.Kernel names none.
var ErrNoKernel = errors.New("no vmlinuz-* file (name a kernel with Options.Kernel)")

const kernelPrefix = "vmlinuz-"

// findKernel returns the regular file bootDir/vmlinuz-<release> with the
// highest release (see compareVersions). Symlinks are ignored: their
// targets would be resolved on the host, not in the tree.
func findKernel(bootDir string) (string, error) {
	des, err := os.ReadDir(bootDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("find kernel in %s: %w", bootDir, err)
	}
	best := ""
	for _, de := range des {
		rel, ok := strings.CutPrefix(de.Name(), kernelPrefix)
		if !ok || rel == "" || !de.Type().IsRegular() {
			continue
		}
		if best == "" || compareVersions(rel, best) > 0 {
			best = rel
		}
	}
	if best == "" {
		return "", fmt.Errorf("find kernel in %s: %w", bootDir, ErrNoKernel)
	}
	return filepath.Join(bootDir, kernelPrefix+best), nil
}

// compareVersions orders kernel releases the way people read them: runs of
// digits compare as numbers ("6.1.0-10" > "6.1.0-9"), everything else
// byte by byte. It returns -1, 0 or +1.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ra, restA := nextRun(a)
		rb, restB := nextRun(b)
		if c := compareRun(ra, rb); c != 0 {
			return c
		}
		a, b = restA, restB
	}
	switch {
	case a == "" && b == "":
		return 0
	case a == "":
		return -1
	}
	return 1
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// nextRun splits s after its leading run of digits or of non-digits.
func nextRun(s string) (run, rest string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

func compareRun(a, b string) int {
	if isDigit(a[0]) && isDigit(b[0]) {
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			if len(a) < len(b) {
				return -1
			}
			return 1
		}
	}
	return strings.Compare(a, b)
}

// kernelVersion returns the release of the kernel at path: from its name
// (vmlinuz-<release>), or else from its x86 boot protocol header; "" if
// neither says.
func kernelVersion(path string, r io.ReaderAt) string {
	if v, ok := strings.CutPrefix(filepath.Base(path), kernelPrefix); ok && v != "" {
		return v
	}
	return bzImageVersion(r)
}

// bzImageVersion reads the release from an x86 bzImage: the boot protocol
// header ("HdrS" at 0x202) points at 0x20E to a NUL-terminated version
// string ("6.1.0-18-amd64 (debian-kernel@...) #1 SMP ..."), 0x200 bytes
// further on. It returns the string's first word, or "".
func bzImageVersion(r io.ReaderAt) string {
	var hdr [0x210]byte
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return ""
	}
	if string(hdr[0x202:0x206]) != "HdrS" || binary.LittleEndian.Uint16(hdr[0x1fe:]) != 0xaa55 {
		return ""
	}
	ptr := binary.LittleEndian.Uint16(hdr[0x20e:])
	if ptr == 0 {
		return ""
	}
	var buf [256]byte
	n, _ := r.ReadAt(buf[:], int64(ptr)+0x200)
	s := string(buf[:n])
	end := strings.IndexByte(s, 0)
	if end < 0 {
		return ""
	}
	s, _, _ = strings.Cut(s[:end], " ")
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return ""
		}
	}
	return s
}

// findKernelEntry returns the regular file boot/vmlinuz-<release> of
// entries with the highest release (see compareVersions), or nil.
// Symlinks are ignored, as findKernel does.
func findKernelEntry(entries []newc.Entry) *newc.Entry {
	var best *newc.Entry
	bestRel := ""
	for i := range entries {
		e := &entries[i]
		dir, file := path.Split(e.Name)
		rel, ok := strings.CutPrefix(file, kernelPrefix)
		if dir != "boot/" || !ok || rel == "" || !e.Mode.IsRegular() {
			continue
		}
		if best == nil || compareVersions(rel, bestRel) > 0 {
			best, bestRel = e, rel
		}
	}
	return best
}
