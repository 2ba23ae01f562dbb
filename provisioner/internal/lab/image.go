package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ramboot/ramboot/images"
)

// Modules are the Debian kernel's modules the test VM needs for its
// virtio NIC, as paths under lib/modules/<version>/ (all are =m in Debian's
// kernel; the agent loads them in dependency order from .modinfo).
var Modules = []string{
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/net/core/failover.ko",
	"kernel/drivers/net/net_failover.ko",
	"kernel/drivers/net/virtio_net.ko",
}

// Kernel is a Debian kernel unpacked into the lab cache: the kernel image
// and the few modules the test image carries.
type Kernel struct {
	// Version is the kernel release, e.g. "6.1.0-56-amd64".
	Version string
	// Dir holds boot/vmlinuz-<Version> and lib/modules/<Version>/.
	Dir string
}

// Vmlinuz returns the kernel image's path.
func (k Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Version) }

// kernelPackage names the kernel package linux-image-amd64 depends on, or
// $RAMBOOT_LAB_KERNEL_PKG.
func kernelPackage(ctx context.Context) (string, error) {
	if p := os.Getenv("RAMBOOT_LAB_KERNEL_PKG"); p != "" {
		return p, nil
	}
	find := func() string {
		out, _ := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
				return f[1]
			}
		}
		return ""
	}
	if p := find(); p != "" {
		return p, nil
	}
	if _, err := run(ctx, "apt-get", "update", "-qq"); err != nil {
		return "", err
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("cannot resolve the kernel package of linux-image-amd64 (set RAMBOOT_LAB_KERNEL_PKG)")
}

// FetchKernel downloads Debian's kernel package with `apt-get download`
// (once; kept in the cache) and unpacks the kernel and the lab's modules.
func (l *Lab) FetchKernel(ctx context.Context) (Kernel, error) {
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return Kernel{}, err
	}
	version := strings.TrimPrefix(pkg, "linux-image-")
	k := Kernel{Version: version, Dir: filepath.Join(l.opt.CacheDir, "kernel", version)}
	if _, err := os.Stat(filepath.Join(k.Dir, ".complete")); err == nil {
		return k, nil
	}
	debs := filepath.Join(l.opt.CacheDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("create cache: %w", err)
	}
	deb, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
	if len(deb) == 0 {
		l.logf("downloading %s with apt-get download (about 70 MB, once)", pkg)
		cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
		cmd.Dir = debs
		if out, err := cmd.CombinedOutput(); err != nil {
			return Kernel{}, fmt.Errorf("apt-get download %s: %w: %s", pkg, err, out)
		}
		if deb, _ = filepath.Glob(filepath.Join(debs, pkg+"_*.deb")); len(deb) == 0 {
			return Kernel{}, fmt.Errorf("apt-get download %s left no .deb in %s", pkg, debs)
		}
	}
	tmp := k.Dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("create %s: %w", tmp, err)
	}
	members := []string{"./boot/vmlinuz-" + version, "./lib/modules/" + version + "/modules.builtin"}
	for _, m := range Modules {
		members = append(members, "./lib/modules/"+version+"/"+m)
	}
	l.logf("unpacking the kernel and %d modules from %s", len(Modules), filepath.Base(deb[0]))
	script := fmt.Sprintf("dpkg-deb --fsys-tarfile %q | tar -x -C %q -f - %s", deb[0], tmp, shellQuote(members))
	if _, err := run(ctx, "sh", "-c", script); err != nil {
		return Kernel{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), []byte(pkg+"\n"), 0o644); err != nil {
		return Kernel{}, err
	}
	_ = os.RemoveAll(k.Dir)
	if err := os.Rename(tmp, k.Dir); err != nil {
		return Kernel{}, fmt.Errorf("commit kernel cache: %w", err)
	}
	return k, nil
}

// writePad writes mib MiB of pseudo-random (incompressible) bytes to path.
func writePad(path string, mib int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{'r', 'a', 'm', 'b', 'o', 'o', 't'})
	buf := make([]byte, 1<<20)
	for range mib {
		_, _ = r.Read(buf)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func shellQuote(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// MakeRootfs writes the test image's tree into dir: busybox-static with
// its applet links, the kernel under boot/ and the virtio modules under
// lib/modules/. It has no /init: ramboot's agent archive provides it.
func MakeRootfs(k Kernel, dir string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("find busybox (install busybox-static): %w", err)
	}
	if out, _ := exec.Command("ldd", bb).CombinedOutput(); !strings.Contains(string(out), "not a dynamic") {
		return fmt.Errorf("%s is not static: install busybox-static", bb)
	}
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc", "root", "boot", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if _, err := run(context.Background(), "cp", bb, filepath.Join(dir, "bin", "busybox")); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":      "root:x:0:\n",
		"etc/os-release": "NAME=\"ramboot test image\"\nID=ramboot-test\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if _, err := run(context.Background(), "cp", "-a", k.Vmlinuz(), filepath.Join(dir, "boot")); err != nil {
		return err
	}
	if _, err := run(context.Background(), "cp", "-a", filepath.Join(k.Dir, "lib", "modules", k.Version), filepath.Join(dir, "lib", "modules")); err != nil {
		return err
	}
	return nil
}

// BuildImage prepares the test image's tree and builds it with
// `ramboot image build` (with buildArgs, such as --gzip) into the daemon's
// store; it returns the manifest digest the CLI printed.
func (l *Lab) BuildImage(ctx context.Context, name string, buildArgs ...string) (images.Digest, error) {
	return l.buildImage(ctx, l.State, name, 0, buildArgs...)
}

// BuildLargeImage builds the test image with padMiB of incompressible data
// in /var/lib/ramboot-pad.bin, so that downloading it takes a while: long
// enough to do something to the head in the middle.
func (l *Lab) BuildLargeImage(ctx context.Context, name string, padMiB int) (images.Digest, error) {
	return l.buildImage(ctx, l.State, name, padMiB)
}

// buildImage builds the test image into the store of the daemon of state
// directory dir.
func (l *Lab) buildImage(ctx context.Context, dir, name string, padMiB int, buildArgs ...string) (images.Digest, error) {
	k, err := l.FetchKernel(ctx)
	if err != nil {
		return "", err
	}
	tree := filepath.Join(l.work, "rootfs-"+name)
	_ = os.RemoveAll(tree)
	if err := MakeRootfs(k, tree); err != nil {
		return "", fmt.Errorf("make test rootfs: %w", err)
	}
	if padMiB > 0 {
		if err := writePad(filepath.Join(tree, "var", "lib", "ramboot-pad.bin"), padMiB); err != nil {
			return "", fmt.Errorf("make test rootfs: %w", err)
		}
	}
	defer os.RemoveAll(tree)
	l.logf("building image %s from %s (kernel %s)", name, tree, k.Version)
	out, err := l.cliAt(ctx, dir, append([]string{"image", "build", tree, "--name", name, "-o", "json"}, buildArgs...)...)
	if err != nil {
		return "", err
	}
	var res struct {
		Digest images.Digest `json:"digest"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Digest == "" {
		return "", fmt.Errorf("decode image build output %q: %v", out, err)
	}
	return res.Digest, nil
}
