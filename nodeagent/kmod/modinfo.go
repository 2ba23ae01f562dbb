package kmod

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// maxModuleSize bounds how much a compressed module may expand to; the
// largest in-tree modules are a few tens of MiB.
const maxModuleSize = 256 << 20

// Modinfo is the content of a module's .modinfo section: each key with its
// values in section order (keys such as alias= and parm= repeat).
type Modinfo map[string][]string

// ParseModinfo decodes the content of a .modinfo section: NUL-terminated
// "key=value" strings, possibly with NUL padding between them. Strings
// without '=' are ignored.
func ParseModinfo(b []byte) Modinfo {
	m := Modinfo{}
	for s := range bytes.SplitSeq(b, []byte{0}) {
		k, v, ok := strings.Cut(string(s), "=")
		if !ok || k == "" {
			continue
		}
		m[k] = append(m[k], v)
	}
	return m
}

// Get returns the first value of key, or "".
func (m Modinfo) Get(key string) string {
	if v := m[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Depends returns the module names of the depends= field, in order.
func (m Modinfo) Depends() []string {
	var deps []string
	for _, v := range m["depends"] {
		for d := range strings.SplitSeq(v, ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, d)
			}
		}
	}
	return deps
}

// ReadModinfo reads the .modinfo section of the module file at path, which
// may be compressed (.ko.xz, .ko.zst, .ko.gz).
func ReadModinfo(path string) (Modinfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read modinfo: %w", err)
	}
	defer f.Close()
	var r io.ReaderAt = f
	if compressed(path) {
		b, err := decompress(path, f)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	m, err := ModinfoFromELF(r)
	if err != nil {
		return nil, fmt.Errorf("read modinfo of %s: %w", path, err)
	}
	return m, nil
}

// ModinfoFromELF reads the .modinfo section of an uncompressed module (an
// ELF relocatable object).
func ModinfoFromELF(r io.ReaderAt) (Modinfo, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil || sec.Type == elf.SHT_NOBITS {
		return nil, errors.New("no .modinfo section")
	}
	if sec.Size > maxModuleSize {
		return nil, fmt.Errorf(".modinfo section of %d bytes is too large", sec.Size)
	}
	b, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo section: %w", err)
	}
	return ParseModinfo(b), nil
}

// compressed reports whether path names a compressed module file.
func compressed(path string) bool {
	return !strings.HasSuffix(path, ".ko")
}

// decompress returns the uncompressed content of the module file path,
// read from r, by the compression its suffix names.
func decompress(path string, r io.Reader) ([]byte, error) {
	var (
		dr  io.Reader
		err error
	)
	switch {
	case strings.HasSuffix(path, ".xz"):
		dr, err = xz.NewReader(r)
	case strings.HasSuffix(path, ".gz"):
		var g *gzip.Reader
		g, err = gzip.NewReader(r)
		if err == nil {
			defer g.Close()
		}
		dr = g
	case strings.HasSuffix(path, ".zst"):
		var z *zstd.Decoder
		z, err = zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(maxModuleSize))
		if err == nil {
			defer z.Close()
		}
		dr = z
	default:
		err = errors.New("unknown compression")
	}
	if err != nil {
		return nil, fmt.Errorf("decompress module %s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(dr, maxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("decompress module %s: %w", path, err)
	}
	if len(b) > maxModuleSize {
		return nil, fmt.Errorf("decompress module %s: larger than %d bytes", path, maxModuleSize)
	}
	return b, nil
}
