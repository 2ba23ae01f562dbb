package overlayrender

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/cavaliergopher/cpio"

	"github.com/ramboot/ramboot/provisioner/accounts"
)

// maxAccountFile bounds each account file ScanImage keeps: a passwd of a
// million users is 100 MB; anything larger is not an account file.
const maxAccountFile = 64 << 20

// ScanImage reads an image's root archive (the newc stream, decompressed)
// once and returns what the renderer needs from it: the account files
// (Image.Accounts; nil when the image has no etc/passwd or etc/group) and
// every directory's mode and owner (Image.Dirs). The head calls it when an
// image is committed and keeps the result with the image.
func ScanImage(r io.Reader) (*accounts.Files, map[string]Attr, error) {
	cr := cpio.NewReader(r)
	dirs := map[string]Attr{}
	var files accounts.Files
	found := map[string]bool{}
	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("scan image: %w", err)
		}
		name := strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/")
		mode := h.FileInfo().Mode()
		switch {
		case mode.IsDir():
			if name != "" && name != "." {
				dirs[name] = Attr{Mode: mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: h.Uid, GID: h.Guid}
			}
			continue
		case !mode.IsRegular():
			continue
		}
		var dst *[]byte
		switch name {
		case accounts.PasswdPath:
			dst = &files.Passwd
		case accounts.GroupPath:
			dst = &files.Group
		case accounts.ShadowPath:
			dst = &files.Shadow
		case accounts.GShadowPath:
			dst = &files.GShadow
		default:
			continue
		}
		if h.Size > maxAccountFile {
			return nil, nil, fmt.Errorf("scan image: %s: %d bytes, more than %d", name, h.Size, maxAccountFile)
		}
		b, err := io.ReadAll(cr)
		if err != nil {
			return nil, nil, fmt.Errorf("scan image: %s: %w", name, err)
		}
		if b == nil {
			b = []byte{}
		}
		*dst = b
		found[name] = true
	}
	if !found[accounts.PasswdPath] || !found[accounts.GroupPath] {
		return nil, dirs, nil
	}
	return &files, dirs, nil
}
