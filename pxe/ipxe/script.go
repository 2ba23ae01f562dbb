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
//
// No node is left stuck: each download is tried up to Attempts times, with a
// wait that starts at one second and doubles up to MaxWait, so that a head
// restarted mid-download is waited for. When a file still cannot be fetched,
// or the kernel does not start, the script says why on the console, waits
// FailPause and reboots the node, which then starts a new boot from its
// firmware.
package ipxe

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"
)

// Defaults of the Script's retry fields.
const (
	DefaultAttempts  = 8
	DefaultMaxWait   = 32 * time.Second
	DefaultFailPause = 30 * time.Second
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
	// Attempts is how many times each file is tried; 0 means
	// DefaultAttempts. With the defaults a file is given up after about
	// 95 s of waits (1+2+4+8+16+32+32).
	Attempts int
	// MaxWait caps the wait between attempts, which starts at 1 s and
	// doubles; it is rounded down to a power of two seconds. 0 means
	// DefaultMaxWait.
	MaxWait time.Duration
	// FailPause is how long the console shows why the boot failed before
	// iPXE reboots the node; 0 means DefaultFailPause.
	FailPause time.Duration
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
	attempts := s.Attempts
	if attempts <= 0 {
		attempts = DefaultAttempts
	}
	limit := s.MaxWait
	if limit <= 0 {
		limit = DefaultMaxWait
	}
	maxWait := 1
	for time.Duration(maxWait*2)*time.Second <= limit {
		maxWait *= 2
	}
	pause := int(s.FailPause / time.Second)
	if s.FailPause <= 0 {
		pause = int(DefaultFailPause / time.Second)
	}

	var b, retries bytes.Buffer
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
	fetches := []struct{ cmd, name, url string }{{fmt.Sprintf("kernel %s %s", s.Kernel.URL, strings.Join(args, " ")), s.Kernel.name(), s.Kernel.URL}}
	for _, f := range s.Initrds {
		cmd := "initrd " + f.URL
		if f.Name != "" {
			cmd = fmt.Sprintf("initrd --name %s %s", f.Name, f.URL)
		}
		fetches = append(fetches, struct{ cmd, name, url string }{cmd, f.name(), f.URL})
	}
	// The main flow fetches each file in turn; a failure jumps to that
	// file's retry block, after the main flow, which waits and jumps back.
	for i, f := range fetches {
		fmt.Fprintf(&b, "set ramboot-try:int32 1\nset ramboot-wait:int32 1\n:fetch%d\n%s || goto retry%d\n", i, f.cmd, i)
		fmt.Fprintf(&retries, ":retry%d\n", i)
		fmt.Fprintf(&retries, "iseq ${ramboot-try} %d || goto wait%d\n", attempts, i)
		fmt.Fprintf(&retries, "echo ramboot: giving up on %s after %d attempts\n", f.url, attempts)
		fmt.Fprintf(&retries, "goto failed\n")
		fmt.Fprintf(&retries, ":wait%d\n", i)
		fmt.Fprintf(&retries, "echo ramboot: attempt ${ramboot-try} of %d to fetch %s failed, next in ${ramboot-wait}s\n", attempts, f.name)
		fmt.Fprintf(&retries, "sleep ${ramboot-wait}\ninc ramboot-try\n")
		fmt.Fprintf(&retries, "iseq ${ramboot-wait} %d || inc ramboot-wait ${ramboot-wait}\n", maxWait)
		fmt.Fprintf(&retries, "goto fetch%d\n", i)
	}
	b.WriteString("boot || goto failed\n")
	b.Write(retries.Bytes())
	b.WriteString(":failed\n")
	fmt.Fprintf(&b, "echo ramboot: the boot failed (see above); rebooting in %ds\n", pause)
	fmt.Fprintf(&b, "sleep %d\nreboot\n", pause)
	return b.Bytes(), nil
}
