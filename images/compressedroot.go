package images

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ErrNoCompressedRootImage means an archive has no CompressedRootImage
// entry.
var ErrNoCompressedRootImage = errors.New("no " + CompressedRootImage + " in the archive")

// CompressedRootOffset finds the squashfs image in a compressed root
// archive (MediaTypeCompressedRoot) of size bytes: it returns the offset
// of the image's data in the archive and its length, so that a loop device
// can map the image straight from the archive. It reads only the entries'
// headers, and fails on anything that is not a newc archive.
func CompressedRootOffset(r io.ReaderAt, size int64) (off, n int64, err error) {
	var hdr [110]byte
	for pos := int64(0); pos < size; {
		if _, err := r.ReadAt(hdr[:], pos); err != nil {
			return 0, 0, fmt.Errorf("read compressed root archive at %d: %w", pos, err)
		}
		if string(hdr[:6]) != "070701" {
			return 0, 0, fmt.Errorf("read compressed root archive at %d: not a newc header", pos)
		}
		field := func(i int) (int64, error) {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			return int64(v), err
		}
		fileSize, err1 := field(6)
		nameSize, err2 := field(11)
		if err := errors.Join(err1, err2); err != nil || nameSize < 1 || nameSize > 4096 {
			return 0, 0, fmt.Errorf("read compressed root archive at %d: bad newc header", pos)
		}
		name := make([]byte, nameSize)
		if _, err := r.ReadAt(name, pos+110); err != nil {
			return 0, 0, fmt.Errorf("read compressed root archive at %d: %w", pos, err)
		}
		data := (pos + 110 + nameSize + 3) &^ 3
		switch string(name[:nameSize-1]) {
		case CompressedRootImage:
			if data+fileSize > size {
				return 0, 0, fmt.Errorf("read compressed root archive: %s runs past the end", CompressedRootImage)
			}
			return data, fileSize, nil
		case "TRAILER!!!":
			return 0, 0, ErrNoCompressedRootImage
		}
		pos = (data + fileSize + 3) &^ 3
	}
	return 0, 0, ErrNoCompressedRootImage
}
