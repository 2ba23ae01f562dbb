package newc_test

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log"

	"github.com/cavaliergopher/cpio"

	"github.com/ramboot/ramboot/images/newc"
)

func ExampleWriteFiles() {
	var buf bytes.Buffer
	err := newc.WriteFiles(&buf, []newc.File{
		{Name: "dev", Mode: fs.ModeDir | 0o755},
		{Name: "dev/console", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Major: 5, Minor: 1},
		{Name: "etc", Mode: fs.ModeDir | 0o755},
		{Name: "etc/hostname", Mode: 0o644, Data: []byte("n001\n")},
		{Name: "init", Mode: fs.ModeSymlink | 0o777, Linkname: "sbin/ramboot-agent"},
	})
	if err != nil {
		log.Fatal(err)
	}
	r := cpio.NewReader(&buf)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		if h.Linkname != "" {
			fmt.Println(h.Inode, h.Mode, h.Name, "->", h.Linkname)
		} else {
			fmt.Println(h.Inode, h.Mode, h.Name)
		}
	}
	// Output:
	// 1 040755 dev
	// 2 020600 dev/console
	// 3 040755 etc
	// 4 0100644 etc/hostname
	// 5 0120777 init -> sbin/ramboot-agent
}
