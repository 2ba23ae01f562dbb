package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/images"
)

// Debian is what the lab's Debian image is made of: debootstrap's minbase
// variant of Suite plus Packages, from the mirror apt uses.
var (
	DebianSuite    = "bookworm"
	DebianPackages = []string{"systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "runc"}
)

// debianPrep names the preparation below; change it when prepareDebian
// changes, so that cached trees are rebuilt.
const debianPrep = "prep-1: apt caches and lists removed, initrd.img removed, machine-id emptied, systemd-networkd enabled"

// debianMirror returns $RAMBOOT_LAB_DEBIAN_MIRROR, or the first Debian
// archive URI apt is configured with, or deb.debian.org.
func debianMirror() string {
	if m := os.Getenv("RAMBOOT_LAB_DEBIAN_MIRROR"); m != "" {
		return strings.TrimRight(m, "/")
	}
	for _, f := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			fl := strings.Fields(line)
			var uri string
			switch {
			case len(fl) >= 2 && fl[0] == "URIs:":
				uri = fl[1]
			case len(fl) >= 3 && fl[0] == "deb" && !strings.HasPrefix(fl[1], "["):
				uri = fl[1]
			}
			if uri != "" && !strings.Contains(uri, "security") {
				return strings.TrimRight(uri, "/")
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// releaseDate returns the Date: field of the suite's InRelease file on the
// mirror: it changes whenever the suite's packages do.
func releaseDate(ctx context.Context, mirror, suite string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	url := mirror + "/dists/" + suite + "/InRelease"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "Date: "); ok {
			return strings.TrimSpace(d), nil
		}
	}
	return "", fmt.Errorf("%s has no Date: field", url)
}

// DebianTree returns a Debian root tree made by debootstrap, prepared as a
// diskless image (prepareDebian). Trees are cached in the lab cache under
// a key of everything that decides their content: the mirror, the suite,
// the variant, the packages, the suite's Release date on the mirror and
// the preparation. A new point release or a changed package list makes a
// new tree, so a cache hit holds what a fresh debootstrap would make.
func (l *Lab) DebianTree(ctx context.Context) (string, error) {
	for _, tool := range []string{"debootstrap", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("find %s (run `make deps`): %w", tool, err)
		}
	}
	mirror := debianMirror()
	date, err := releaseDate(ctx, mirror, DebianSuite)
	if err != nil {
		return "", err
	}
	pkgs := append([]string(nil), DebianPackages...)
	sort.Strings(pkgs)
	inputs := []string{"mirror " + mirror, "suite " + DebianSuite, "variant minbase", "include " + strings.Join(pkgs, ","), "release " + date, debianPrep}
	sum := sha256.Sum256([]byte(strings.Join(inputs, "\n")))
	key := hex.EncodeToString(sum[:8])
	base := filepath.Join(l.opt.CacheDir, "debian")
	dir := filepath.Join(base, key)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", base, err)
	}
	// One builder at a time: other labs on this machine share the cache.
	lock, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", base, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		l.logf("Debian tree from the cache: %s (%s)", dir, date)
		return filepath.Join(dir, "root"), nil
	}

	tmp := dir + ".tmp"
	if err := removeTree(tmp); err != nil {
		return "", err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	logFile := filepath.Join(l.work, "debootstrap.log")
	l.logf("debootstrap --variant=minbase --include=%s %s from %s (about 2 minutes; log %s)", strings.Join(pkgs, ","), DebianSuite, mirror, logFile)
	start := time.Now()
	f, err := os.Create(logFile)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase", "--include="+strings.Join(pkgs, ","), DebianSuite, filepath.Join(tmp, "root"), mirror)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	err = cmd.Run()
	f.Close()
	if err != nil {
		b, _ := os.ReadFile(logFile)
		removeTree(tmp)
		return "", fmt.Errorf("debootstrap: %w\n%s", err, tail(b, 20))
	}
	if err := prepareDebian(ctx, filepath.Join(tmp, "root")); err != nil {
		removeTree(tmp)
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), []byte(strings.Join(inputs, "\n")+"\n"), 0o644); err != nil {
		return "", err
	}
	// Keep one tree: the others are for other releases or package lists.
	old, _ := filepath.Glob(filepath.Join(base, "*"))
	for _, o := range old {
		if o != tmp && filepath.Base(o) != ".lock" {
			removeTree(o)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("commit the Debian tree: %w", err)
	}
	l.logf("Debian tree ready in %s: %s", time.Since(start).Round(time.Second), dir)
	return filepath.Join(dir, "root"), nil
}

// prepareDebian makes a debootstrap tree a diskless image, as an admin
// would: no package caches or lists, no initramfs of its own (ramboot
// boots the kernel without one), an empty machine-id (systemd makes one
// per boot, so nodes differ), and systemd-networkd enabled (it takes the
// interface over with the configuration the agent writes).
func prepareDebian(ctx context.Context, root string) error {
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*", "boot/initrd.img-*"} {
		matches, _ := filepath.Glob(filepath.Join(root, pattern))
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				return fmt.Errorf("prepare Debian tree: %w", err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return fmt.Errorf("prepare Debian tree: %w", err)
	}
	if out, err := exec.CommandContext(ctx, "chroot", root, "systemctl", "enable", "systemd-networkd").CombinedOutput(); err != nil {
		return fmt.Errorf("prepare Debian tree: systemctl enable systemd-networkd: %w\n%s", err, out)
	}
	return nil
}

// removeTree unmounts whatever is still mounted under dir (a debootstrap
// that died leaves /proc and /sys mounted in its target) and removes it.
func removeTree(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil {
		var points []string
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				points = append(points, f[4])
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(points)))
		for _, p := range points {
			if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount %s: %w", p, err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// BuildImageFrom builds an image from the tree at dir with `ramboot image
// build` into the daemon's store and returns its manifest digest and
// manifest.
func (l *Lab) BuildImageFrom(ctx context.Context, name, dir string) (images.Digest, images.Manifest, error) {
	l.logf("building image %s from %s", name, dir)
	start := time.Now()
	out, err := l.CLI(ctx, "image", "build", dir, "--name", name, "-o", "json")
	if err != nil {
		return "", images.Manifest{}, err
	}
	var res struct {
		Digest   images.Digest   `json:"digest"`
		Manifest images.Manifest `json:"manifest"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Digest == "" {
		return "", images.Manifest{}, fmt.Errorf("decode image build output %q: %v", out, err)
	}
	l.logf("image %s built in %s: %d MiB unpacked, %d MiB compressed", name, time.Since(start).Round(time.Second),
		res.Manifest.RootfsUncompressedSize>>20, res.Manifest.Rootfs.Size>>20)
	return res.Digest, res.Manifest, nil
}

// FillUnit is a systemd service that fills the root's writable layer past
// its cap, prints dd's error on the console, frees the room again and says
// so (FillFreed): the compressed root's ENOSPC check.
const FillUnit = `[Unit]
Description=ramboot e2e: write past the root's cap
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'dd if=/dev/zero of=/var/tmp/ramboot-fill bs=1M 2>/dev/console; echo "RAMBOOT-FILL: dd exit $$?" >/dev/console; rm -f /var/tmp/ramboot-fill; echo ` + FillFreed + ` >/dev/console'

[Install]
WantedBy=multi-user.target
`

// FillFreed is what FillUnit prints once it removed its file.
const FillFreed = "RAMBOOT-FILL-FREED"

// WithFillUnit returns a copy of the tree at dir (see CopyTree) with
// FillUnit installed and enabled.
func (l *Lab) WithFillUnit(ctx context.Context, dir string) (string, error) {
	dst, err := l.CopyTree(ctx, dir, "debian-fill")
	if err != nil {
		return "", err
	}
	return dst, AddUnit(dst, "ramboot-fill.service", FillUnit)
}

// Markers of ContainerUnit's console lines.
const (
	HostsMarker     = "RAMBOOT-HOSTS:"
	ContainerMarker = "RAMBOOT-CTR:"
	DiagMarker      = "RAMBOOT-DIAG:"
	// ContainerName is the detached container ContainerUnit leaves
	// running for ContainerSeconds.
	ContainerName    = "e2e-sleep"
	ContainerSeconds = 240
)

// ContainerScript is what ContainerUnit runs, once the agent daemon is up
// and FillUnit is done: it prints the node's /etc/hosts (its first line and
// the node's own), runs containers of image through the agent as nobody
// (one in the foreground that prints the image's PRETTY_NAME, then
// ContainerName detached, a sleep), restarts the daemon and prints its main
// PID before and after, what `ramboot-agent ps` says of ContainerName, and
// how long it took.
func ContainerScript(node, image string) string {
	return `#!/bin/sh
exec >/dev/console 2>&1
t0=$(cut -d" " -f1 /proc/uptime)
echo "` + HostsMarker + ` first $(head -n 1 /etc/hosts)"
echo "` + HostsMarker + ` self $(grep -w ` + node + ` /etc/hosts | head -n 1)"
s=$(cut -d" " -f1 /proc/uptime)
ramboot-agent run --user 65534:65534 ` + image + ` -- grep PRETTY_NAME /etc/os-release >/tmp/ramboot-e2e-run 2>&1
sed "s/^/` + ContainerMarker + ` run /" /tmp/ramboot-e2e-run
echo "` + ContainerMarker + ` first run (image download included) from uptime $s to $(cut -d" " -f1 /proc/uptime)"
if ! grep -q PRETTY_NAME /tmp/ramboot-e2e-run; then
	# What went wrong: the cgroups, the daemon's log, and runc by hand.
	echo "` + DiagMarker + ` load $(cat /proc/loadavg); root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control); daemon cgroup: $(cat /proc/$(systemctl show -P MainPID ramboot-agent)/cgroup)"
	journalctl -u ramboot-agent --no-pager -n 15 -o cat | sed "s/^/` + DiagMarker + ` journal /"
	tail -n 40 /run/ramboot/probe-*.log | sed "s/^/` + DiagMarker + ` probe /"
	dmesg | tail -n 25 | sed "s/^/` + DiagMarker + ` dmesg /"
	mkdir -p /run/rt/rootfs && mount --rbind / /run/rt/rootfs && cd /run/rt && runc spec &&
		sed -i -e "s/\"terminal\": true/\"terminal\": false/" -e "s/\"sh\"/\"\/bin\/true\"/" config.json
	s=$(cut -d" " -f1 /proc/uptime)
	timeout 120 runc --debug run -b /run/rt diag </dev/null 2>&1 | tail -n 25 | sed "s/^/` + DiagMarker + ` runc /"
	echo "` + DiagMarker + ` runc by hand from uptime $s to $(cut -d" " -f1 /proc/uptime)"
	cd /
fi
ramboot-agent run -d --name ` + ContainerName + ` --user 65534:65534 ` + image + ` -- sleep ` + fmt.Sprint(ContainerSeconds) + ` 2>&1 | sed "s/^/` + ContainerMarker + ` detached /"
sleep 6
a=$(systemctl show -P MainPID ramboot-agent)
systemctl restart ramboot-agent
b=$(systemctl show -P MainPID ramboot-agent)
echo "` + ContainerMarker + ` restart $a -> $b"
# The new daemon serves its local API once it is ready: give it 30 s.
for i in $(seq 30); do
	ramboot-agent ps 2>/dev/null | grep -w ` + ContainerName + ` >/tmp/ramboot-e2e-ps && break
	sleep 1
done
sed "s/^/` + ContainerMarker + ` ps /" /tmp/ramboot-e2e-ps
echo "` + ContainerMarker + ` done in $(echo "$(cut -d" " -f1 /proc/uptime) $t0" | awk '{print $1 - $2}') s from uptime $t0"
`
}

// ContainerUnit runs ContainerScript (at /usr/local/sbin/ramboot-e2e-container)
// once the daemon is up, without holding up the multi-user target.
const ContainerUnit = `[Unit]
Description=ramboot e2e: /etc/hosts and a container through the agent
After=ramboot-agent.service ramboot-fill.service
Wants=ramboot-agent.service

[Service]
Type=exec
ExecStart=/usr/local/sbin/ramboot-e2e-container

[Install]
WantedBy=multi-user.target
`

// WithContainerUnit installs ContainerScript and ContainerUnit in tree (a
// copy: see CopyTree).
func WithContainerUnit(tree, node, image string) error {
	script := filepath.Join(tree, "usr/local/sbin/ramboot-e2e-container")
	if err := os.MkdirAll(filepath.Dir(script), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(script, []byte(ContainerScript(node, image)), 0o755); err != nil {
		return err
	}
	return AddUnit(tree, "ramboot-e2e-container.service", ContainerUnit)
}

// CopyTree copies the tree at dir to name under the lab's work directory,
// with hard links: it costs no space, takes a second, and leaves dir (the
// cached tree) alone as long as only new files are written into the copy.
// The copy goes with the lab.
func (l *Lab) CopyTree(ctx context.Context, dir, name string) (string, error) {
	dst := filepath.Join(l.work, name)
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, "cp", "-al", dir, dst).CombinedOutput(); err != nil {
		return "", fmt.Errorf("cp -al %s: %v: %s", dir, err, out)
	}
	return dst, nil
}

// AddUnit installs a systemd service in the tree and enables it for the
// multi-user target.
func AddUnit(tree, name, unit string) error {
	if err := os.WriteFile(filepath.Join(tree, "etc/systemd/system", name), []byte(unit), 0o644); err != nil {
		return err
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	return os.Symlink("../"+name, filepath.Join(wants, name))
}

// ReadUnit is a systemd service that reads file once the node is up, from
// a cold page cache, and prints dd's summary on the console after
// ReadMarker: the read throughput from the root.
func ReadUnit(file string) string {
	return `[Unit]
Description=ramboot bench: read a large file from the root
After=multi-user.target ramboot-agent.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'sync; echo 3 >/proc/sys/vm/drop_caches; dd if=` + file + ` of=/dev/null bs=1M 2>&1 | tail -n 1 | sed "s/^/` + ReadMarker + ` /" >/dev/console'

[Install]
WantedBy=multi-user.target
`
}

// ReadMarker starts the line ReadUnit prints.
const ReadMarker = "RAMBOOT-READ:"

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
