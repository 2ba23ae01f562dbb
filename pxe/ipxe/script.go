// Package ipxe renders the iPXE script that tells a node's iPXE what to boot:
// one kernel with its command line and the initrds the kernel unpacks, in
// order, into the node's RAM root.
//
//	s := ipxe.Script{
//		Comment: "node n1, image default",
//		Kernel:  ipxe.File{URL: "http://10.77.0.1/boot/blob/ab../vmlinuz"},
//		Args:    "console=ttyS0,115200",
//		Initrds: []ipxe.File{{URL: "http://10.77.0.1/boot/blob/cd../rootfs.cpio.zst", Name: "rootfs.cpio.zst"}},
//	}
//	b, err := s.Render()
//
// Each initrd is also named on the kernel command line as `initrd=NAME`:
// Debian's EFI iPXE build (2019) predates LoadFile2, so the kernel's EFI stub
// loads the initrds itself by those names. BIOS kernels ignore the option.
package ipxe

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
)

// File is one file iPXE fetches.
type File struct {
	// URL is the absolute http(s) URL of the file.
	URL string
	// Name is the image name iPXE gives the file and the kernel's EFI stub
	// looks it up by; empty means the last element of the URL's path.
	Name string
}

func (f File) name() string {
	if f.Name != "" {
		return f.Name
	}
	u, err := url.Parse(f.URL)
	if err != nil {
		return ""
	}
	return path.Base(u.Path)
}

// Script is one boot script.
type Script struct {
	// Comment is echoed on the node's console before anything is fetched.
	Comment string
	// Kernel is the kernel to boot.
	Kernel File
	// Args is the kernel command line, without the initrd= options.
	Args string
	// Initrds are loaded in order; the kernel unpacks later ones over
	// earlier ones.
	Initrds []File
}

// Render returns the script text, or an error naming each bad field.
func (s Script) Render() ([]byte, error) {
	var errs []error
	check := func(field string, f File) {
		u, err := url.Parse(f.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s: %q is not an absolute http(s) URL", field, f.URL))
		}
		if strings.ContainsAny(f.URL, " \t\r\n${}") {
			errs = append(errs, fmt.Errorf("%s: %q contains spaces or iPXE expansions", field, f.URL))
		}
		if n := f.name(); n == "" || n == "/" || n == "." || strings.ContainsAny(n, " \t\r\n${}") {
			errs = append(errs, fmt.Errorf("%s: bad image name %q", field, n))
		}
	}
	check("kernel", s.Kernel)
	for i, f := range s.Initrds {
		check(fmt.Sprintf("initrds[%d]", i), f)
	}
	for _, v := range []struct{ field, s string }{{"comment", s.Comment}, {"args", s.Args}} {
		if strings.ContainsAny(v.s, "\r\n${}") {
			errs = append(errs, fmt.Errorf("%s: %q contains line breaks or iPXE expansions", v.field, v.s))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("render ipxe script: %w", err)
	}
	var b bytes.Buffer
	b.WriteString("#!ipxe\n")
	if s.Comment != "" {
		fmt.Fprintf(&b, "echo ramboot: %s\n", s.Comment)
	}
	args := make([]string, 0, len(s.Initrds)+1)
	for _, f := range s.Initrds {
		args = append(args, "initrd="+f.name())
	}
	if s.Args != "" {
		args = append(args, s.Args)
	}
	fmt.Fprintf(&b, "kernel %s %s\n", s.Kernel.URL, strings.Join(args, " "))
	for _, f := range s.Initrds {
		if f.Name != "" {
			fmt.Fprintf(&b, "initrd --name %s %s\n", f.Name, f.URL)
		} else {
			fmt.Fprintf(&b, "initrd %s\n", f.URL)
		}
	}
	b.WriteString("boot\n")
	return b.Bytes(), nil
}
