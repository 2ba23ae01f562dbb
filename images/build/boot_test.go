package build_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/build"
)

// bootInit is the /init of TestBootQEMU: it prints what the kernel
// unpacked and powers off.
const bootInit = `#!/bin/busybox sh
B=/bin/busybox
$B echo "IMAGE-ID $($B cat /etc/ramboot/image-id)"
$B stat -c 'STAT %n ino=%i links=%h owner=%u:%g mode=%a rdev=%t:%T' /usr/a /usr/b /etc/owned
[ -e /dev/testnull ] && $B stat -c 'STAT %n type=%F rdev=%t:%T' /dev/testnull
$B echo "LINK $($B readlink /bin/sh)"
$B echo "DATA $($B cat /usr/b)"
$B echo "BIG $($B sha256sum /usr/big)"
$B echo RAMBOOT-BOOT-OK
$B poweroff -f
`

// TestBootQEMU boots a real kernel with a built image as its initramfs, to
// show that the kernel's unpacker takes the zstd frame and the newc
// entries (hard links, device nodes, owners). It runs only when
// RAMBOOT_TEST_KERNEL names a kernel built with CONFIG_RD_ZSTD (Debian's
// is), and needs qemu-system-x86_64 and a static busybox.
func TestBootQEMU(t *testing.T) {
	kernel := os.Getenv("RAMBOOT_TEST_KERNEL")
	if kernel == "" {
		t.Skip("set RAMBOOT_TEST_KERNEL to a vmlinuz to boot an image under QEMU")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("RAMBOOT_TEST_KERNEL is set but: %v", err)
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("a static busybox is needed: %v", err)
	}

	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "usr", "dev", "proc"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{"bin/busybox": string(busybox), "init": bootInit, "usr/a": "hard-linked", "etc/owned": "x"}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("busybox", filepath.Join(root, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "usr/a"), filepath.Join(root, "usr/b")); err != nil {
		t.Fatal(err)
	}
	wantOwner := "0:0"
	if isRoot() {
		if err := os.Lchown(filepath.Join(root, "etc/owned"), 1234, 5678); err != nil {
			t.Fatal(err)
		}
		wantOwner = "1234:5678"
		if err := unix.Mknod(filepath.Join(root, "dev/testnull"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
	}

	// A file larger than several compression jobs, so that the kernel
	// decompresses across the encoder's job boundaries.
	big := make([]byte, 40<<20)
	r := rand.New(rand.NewPCG(3, 3))
	for off := 0; off < len(big); off += 1 << 20 {
		fillData(r, big[off:off+1<<20], off>>20%3)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/big"), big, 0o644); err != nil {
		t.Fatal(err)
	}

	// Every compressor's output must unpack in the kernel: the zstd
	// program's, the Go encoder's, and gzip for old kernels.
	for _, c := range []struct {
		name string
		set  func(*build.Options)
	}{
		{"zstd-program", func(o *build.Options) { o.Compressor = "zstd" }},
		{"go-zstd", func(o *build.Options) { o.Compressor = "go" }},
		{"gzip", func(o *build.Options) { o.Compression = build.Gzip }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "zstd-program" {
				if _, err := exec.LookPath("zstd"); err != nil {
					t.Skip("zstd not installed")
				}
			}
			st := newStore(t)
			opt := build.Options{RootDir: root, Name: "boot-test", Store: st, Kernel: kernel}
			c.set(&opt)
			m, _ := mustBuild(t, opt)

			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, qemu,
				"-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
				"-kernel", blobPath(st, m.Kernel.Digest),
				"-initrd", blobPath(st, m.Rootfs.Digest),
				"-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4",
			)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			err = cmd.Run()
			log := out.String()
			if err != nil || !strings.Contains(log, "RAMBOOT-BOOT-OK") {
				t.Fatalf("boot: %v (after %s)\n%s", err, time.Since(start), log)
			}
			t.Logf("booted and powered off in %s", time.Since(start).Round(time.Millisecond))
			for _, line := range strings.Split(log, "\n") {
				for _, marker := range []string{"IMAGE-ID ", "STAT ", "LINK ", "DATA ", "BIG "} {
					if i := strings.Index(line, marker); i >= 0 {
						t.Log(strings.TrimSpace(line[i:]))
					}
				}
			}

			wants := []string{
				"IMAGE-ID " + string(m.ContentDigest),
				"LINK busybox",
				"DATA hard-linked",
				fmt.Sprintf("BIG %x  /usr/big", sha256.Sum256(big)),
				"STAT /etc/owned ino=",
			}
			if isRoot() {
				wants = append(wants, "STAT /dev/testnull type=character special file rdev=1:3", "owner="+wantOwner)
			}
			for _, w := range wants {
				if !strings.Contains(log, w) {
					t.Errorf("console lacks %q:\n%s", w, log)
				}
			}
			// The two names of the hard link are one inode, with two links.
			var inos []string
			for _, line := range strings.Split(log, "\n") {
				if strings.HasPrefix(line, "STAT /usr/") {
					f := strings.Fields(line)
					inos = append(inos, f[2]+" "+f[3])
				}
			}
			if len(inos) != 2 || inos[0] != inos[1] || !strings.HasSuffix(inos[0], "links=2") {
				t.Errorf("hard link not kept by the kernel: %q", inos)
			}
		})
	}
}
