package nodeagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent"
	"github.com/ramboot/ramboot/nodeagent/headapi/headapitest"
	"github.com/ramboot/ramboot/nodeagent/internal/bootrec"
	"github.com/ramboot/ramboot/nodeagent/kmod/kmodtest"
	"github.com/ramboot/ramboot/nodeagent/netconf"
	"github.com/ramboot/ramboot/nodeagent/rootfs"
)

const release = "6.1.0-test-amd64"

// node is a node's RAM root in a temporary directory, with what the image,
// the agent archive and the overlay put there, plus stand-ins for /proc
// and /sys.
type node struct {
	root      string
	head      *headapitest.Head
	cfg       overlay.Config
	hostnames []string
	inserted  []string
	mounted   []string
	roots     []rootfs.Config
	rootErr   error
	netcfg    []netconf.Config
	netErr    error
	clock     []time.Time
	console   bytes.Buffer
}

func newNode(t *testing.T, head *headapitest.Head, modules ...string) *node {
	t.Helper()
	n := &node{root: t.TempDir(), head: head}
	n.cfg = overlay.Config{
		Node:    "n001",
		HeadURL: head.URL,
		Token:   "tok-n001",
		Interface: overlay.Interface{
			MAC:     "52:54:00:12:34:56",
			Address: "10.77.0.10/24",
			Gateway: "10.77.0.1",
			DNS:     []string{"10.77.0.1"},
		},
		Modules: modules,
		Image:   overlay.ImageRef{Name: "debian-12", Digest: "sha256:m", ContentDigest: "sha256:c0ffee"},
		Root:    overlay.Root{Size: "25%"},
	}
	n.writeConfig(t)
	n.write(t, overlay.ImageIDPath, "sha256:c0ffee\n")
	n.write(t, "etc/hostname", "n001\n")
	n.write(t, "proc/uptime", "12.50 3.00\n")
	n.write(t, "proc/meminfo", "MemTotal:        1014020 kB\nMemFree:          911228 kB\n")
	n.write(t, "usr/lib/systemd/systemd-networkd", "\x7fELF")
	mods := filepath.Join(n.root, "lib", "modules", release, "kernel", "drivers")
	kmodtest.Module(t, mods, "virtio_ring")
	kmodtest.Module(t, mods, "virtio", "virtio_ring")
	kmodtest.Module(t, mods, "failover")
	kmodtest.Module(t, mods, "net_failover", "failover")
	kmodtest.Module(t, mods, "virtio_net", "net_failover", "virtio_ring", "virtio")
	// The NIC, found by modalias: an e1000 on the PCI bus.
	kmodtest.Aliased(t, mods, "e1000", "pci:v00008086d0000100Esv*sd*bc*sc*i*")
	n.write(t, "sys/devices/pci0000:00/0000:00:03.0/modalias", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00\n")
	return n
}

func (n *node) writeConfig(t *testing.T) {
	t.Helper()
	js, err := json.Marshal(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.write(t, overlay.ConfigPath, string(js))
}

func (n *node) write(t *testing.T, path, data string) {
	t.Helper()
	p := filepath.Join(n.root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (n *node) read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.root, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// agent returns an Agent on n's root whose privileged steps are fakes:
// mounts, the root switch, sethostname, module insertion (resolution and
// modalias matching are real), netlink and the clock. The config, name
// files, network stack files, boot record and the head's clock (n.head)
// are real.
func (n *node) agent() *nodeagent.Agent {
	return &nodeagent.Agent{
		Root:         n.root,
		Release:      release,
		Console:      &n.console,
		ClockTimeout: 2 * time.Second,
		Mounter: nodeagent.MounterFunc(func(ctx context.Context, root string) error {
			n.mounted = append(n.mounted, root)
			return nil
		}),
		RootSetter: nodeagent.RootSetterFunc(func(ctx context.Context, c rootfs.Config) (rootfs.Result, error) {
			n.roots = append(n.roots, c)
			if n.rootErr != nil {
				return rootfs.Result{Was: "rootfs"}, n.rootErr
			}
			return rootfs.Result{Switched: true, Was: "rootfs", Mode: overlay.RootTmpfs, ImageBytes: 300 << 20}, nil
		}),
		Hostname: nodeagent.HostnameSetterFunc(func(name string) error {
			n.hostnames = append(n.hostnames, name)
			return nil
		}),
		InsertModule: func(path string) error {
			n.inserted = append(n.inserted, filepath.Base(path))
			return nil
		},
		Network: nodeagent.NetworkConfigurerFunc(func(ctx context.Context, c netconf.Config) (string, error) {
			n.netcfg = append(n.netcfg, c)
			return "eth0", n.netErr
		}),
		SetClock: func(t time.Time) error { n.clock = append(n.clock, t); return nil },
	}
}

func lines(s string) []string { return strings.Split(strings.TrimSuffix(untimed(s), "\n"), "\n") }

// untimed drops the durations from console lines ("modules loaded in
// 120ms: ...").
func untimed(s string) string { return durations.ReplaceAllString(s, "") }

var durations = regexp.MustCompile(` in [0-9.]+(ns|µs|ms|s|m[0-9.]+s)`)

func TestBootReady(t *testing.T) {
	head := headapitest.New(t, "tok-n001")
	n := newNode(t, head, "virtio_net", "virtio-ring")
	rec, err := n.agent().Boot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ramboot-agent: file systems mounted",
		"ramboot-agent: node n001, image debian-12",
		"ramboot-agent: root: tmpfs, image 300 MiB under a cap of 247 MiB (moved off the initramfs)",
		"ramboot-agent: host name n001",
		"ramboot-agent: modules loaded: failover net_failover virtio_ring virtio virtio_net e1000(device)",
		"ramboot-agent: eth0 10.77.0.10/24 up",
		"ramboot-agent: default route via 10.77.0.1",
		"ramboot-agent: interface configuration written for the image's network stack: run/systemd/network/10-ramboot.network",
	}
	got := lines(n.console.String())
	if len(got) != len(want)+1 || !slices.Equal(got[:len(want)], want) || !strings.HasPrefix(got[len(want)], "ramboot-agent: clock set from the head (moved ") {
		t.Errorf("console:\n%s\nwant:\n%s\nramboot-agent: clock set from the head ...", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Equal(n.mounted, []string{n.root}) {
		t.Errorf("mounted %v", n.mounted)
	}
	if len(n.roots) != 1 || n.roots[0].Mode != overlay.RootTmpfs || n.roots[0].SizeBytes != 1014020*1024/4 {
		t.Errorf("root set up with %+v, want tmpfs of 25%% of RAM", n.roots)
	}
	if !slices.Equal(n.hostnames, []string{"n001"}) {
		t.Errorf("sethostname %v", n.hostnames)
	}
	if want := []string{"failover.ko", "net_failover.ko", "virtio_ring.ko", "virtio.ko", "virtio_net.ko", "e1000.ko"}; !slices.Equal(n.inserted, want) {
		t.Errorf("inserted %v, want %v", n.inserted, want)
	}
	if len(n.netcfg) != 1 || n.netcfg[0].MAC.String() != "52:54:00:12:34:56" || n.netcfg[0].Address.String() != "10.77.0.10/24" || n.netcfg[0].Gateway.String() != "10.77.0.1" {
		t.Errorf("network configured with %+v", n.netcfg)
	}
	if got := n.read(t, "etc/hosts"); !strings.Contains(got, "\n10.77.0.10\tn001\n") {
		t.Errorf("etc/hosts = %q", got)
	}
	if got := n.read(t, "etc/resolv.conf"); !strings.Contains(got, "\nnameserver 10.77.0.1\n") {
		t.Errorf("etc/resolv.conf = %q", got)
	}
	if got := n.read(t, "run/systemd/network/10-ramboot.network"); !strings.Contains(got, "MACAddress=52:54:00:12:34:56") {
		t.Errorf("networkd file = %q", got)
	}
	if len(n.clock) != 1 || time.Since(n.clock[0]).Abs() > 5*time.Second {
		t.Errorf("clock set to %v", n.clock)
	}

	// The record for the daemon.
	onDisk, err := bootrec.Read(n.root)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, s := range onDisk.Steps {
		steps = append(steps, s.Name)
		if s.UptimeSeconds != 12.5 {
			t.Errorf("step %s at %v, want 12.5 (proc/uptime)", s.Name, s.UptimeSeconds)
		}
	}
	if want := []string{"mounts", "config", "root", "hostname", "modules", "network", "clock"}; !slices.Equal(steps, want) {
		t.Errorf("steps %v, want %v", steps, want)
	}
	if onDisk.State != overlay.StateReady || onDisk.Error != "" || onDisk.Root.Mode != "tmpfs" || onDisk.Boot.InitSeconds != 12.5 ||
		onDisk.Boot.KernelStart.IsZero() || !slices.Contains(onDisk.Modules, "e1000") || len(rec.Steps) != len(onDisk.Steps) {
		t.Errorf("boot record %+v", onDisk)
	}
	if head.Requests() != 1 {
		t.Errorf("head saw %d requests, want 1 (the clock)", head.Requests())
	}
}

// TestBootKeepsOverlayFiles: the name files the overlay provides (the
// head's templated, cluster-wide /etc/hosts) are left as the overlay has
// them; the others are written.
func TestBootKeepsOverlayFiles(t *testing.T) {
	head := headapitest.New(t, "tok-n001")
	n := newNode(t, head)
	const hosts = "# Written by the ramboot head; changes made on the node are lost at reboot.\n10.77.0.1\thead\n10.77.0.10\tn001\n10.77.0.11\tn002\n"
	n.write(t, "etc/hosts", hosts)
	n.cfg.OverlayFiles = []string{"etc/hostname", "etc/hosts", "etc/ssh/ssh_known_hosts"}
	n.writeConfig(t)
	if _, err := n.agent().Boot(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n.read(t, "etc/hosts"); got != hosts {
		t.Errorf("etc/hosts = %q, want the overlay's %q", got, hosts)
	}
	if got := n.read(t, "etc/resolv.conf"); !strings.Contains(got, "\nnameserver 10.77.0.1\n") {
		t.Errorf("etc/resolv.conf = %q", got)
	}
	if !slices.Equal(n.hostnames, []string{"n001"}) {
		t.Errorf("sethostname %v", n.hostnames)
	}
}

func TestBootFailures(t *testing.T) {
	tests := []struct {
		name      string
		modules   []string
		setup     func(t *testing.T, n *node, a *nodeagent.Agent)
		wantLines []string // must appear, in order
		notLines  []string // must not appear
		wantState overlay.State
		wantErrIn string // in the record's Error
		wantWarn  string // in the record's Warnings
	}{
		{
			name:      "module-missing",
			modules:   []string{"virtio_net", "no_such_mod"},
			wantLines: []string{"ramboot-agent: modules loaded: failover net_failover virtio_ring virtio virtio_net e1000(device)", "ramboot-agent: modules failed: find module no_such_mod: module not found", "ramboot-agent: eth0 10.77.0.10/24 up", "ramboot-agent: clock set from the head"},
			wantState: overlay.StateFailed, wantErrIn: "modules: find module no_such_mod",
		},
		{
			name:      "two-modules-missing",
			modules:   []string{"nope_a", "virtio_net", "nope_b"},
			wantLines: []string{"ramboot-agent: modules failed: find module nope_a: module not found; find module nope_b: module not found"},
			wantState: overlay.StateFailed, wantErrIn: "modules: find module nope_a: module not found; find module nope_b",
		},
		{
			name: "mount-fails",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				a.Mounter = nodeagent.MounterFunc(func(context.Context, string) error { return errors.New("mount devpts on /dev/pts: no such device") })
			},
			wantLines: []string{"ramboot-agent: mounts failed: mount devpts on /dev/pts: no such device", "ramboot-agent: eth0 10.77.0.10/24 up"},
			wantState: overlay.StateFailed, wantErrIn: "mounts: mount devpts",
		},
		{
			name: "root-too-big",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				n.rootErr = fmt.Errorf("set up tmpfs root: %w: the image takes 800 MiB, the cap (root.size) is 247 MiB", rootfs.ErrTooBig)
			},
			wantLines: []string{"ramboot-agent: root failed: set up tmpfs root: the image does not fit under the root's size cap: the image takes 800 MiB, the cap (root.size) is 247 MiB; the node runs on the kernel's initramfs, uncapped", "ramboot-agent: host name n001", "ramboot-agent: eth0 10.77.0.10/24 up"},
			wantState: overlay.StateFailed, wantErrIn: "root: set up tmpfs root",
		},
		{
			name: "bad-root-size",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				n.cfg.Root.Size = "lots"
				n.writeConfig(t)
			},
			wantLines: []string{"ramboot-agent: config failed: invalid node config: root: size: \"lots\" is not a size like 512m, 4g or 50%"},
			notLines:  []string{"ramboot-agent: host name n001"},
			wantState: overlay.StateFailed, wantErrIn: "config: invalid node config",
		},
		{
			name: "network-fails",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				n.netErr = errors.New("wait for interface with MAC 52:54:00:12:34:56: context deadline exceeded")
			},
			wantLines: []string{"ramboot-agent: network failed: wait for interface with MAC 52:54:00:12:34:56: context deadline exceeded"},
			notLines:  []string{"ramboot-agent: clock set from the head"},
			wantState: overlay.StateFailed, wantErrIn: "network: wait for interface",
		},
		{
			name: "config-missing",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				os.Remove(filepath.Join(n.root, overlay.ConfigPath))
				a.Hostname = nodeagent.HostnameSetterFunc(func(string) error { t.Error("hostname step ran without config"); return nil })
			},
			wantLines: []string{"ramboot-agent: file systems mounted", "ramboot-agent: config failed: read node config: open etc/ramboot/node.json: no such file or directory"},
			notLines:  []string{"ramboot-agent: host name n001"},
			wantState: overlay.StateFailed, wantErrIn: "config: read node config",
		},
		{
			name: "head-unreachable",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				n.head.Stop()
				a.ClockTimeout = 500 * time.Millisecond
			},
			wantLines: []string{"ramboot-agent: eth0 10.77.0.10/24 up", "ramboot-agent: clock: the head did not answer (GET HEAD/api/v1/time: "},
			notLines:  []string{"ramboot-agent: clock failed"},
			wantState: overlay.StateReady, wantWarn: "clock: the head did not answer",
		},
		{
			name: "hostname-panics",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				a.Hostname = nodeagent.HostnameSetterFunc(func(string) error { panic("boom") })
			},
			wantLines: []string{"ramboot-agent: hostname failed: panic: boom", "ramboot-agent: eth0 10.77.0.10/24 up"},
			wantState: overlay.StateFailed, wantErrIn: "hostname: panic: boom",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			head := headapitest.New(t, "tok-n001")
			n := newNode(t, head, tt.modules...)
			a := n.agent()
			if tt.setup != nil {
				tt.setup(t, n, a)
			}
			start := time.Now()
			rec, err := a.Boot(context.Background())
			if (err == nil) != (tt.wantState == overlay.StateReady) {
				t.Fatalf("Boot: %v", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Boot took %v", d)
			}
			out := strings.ReplaceAll(untimed(n.console.String()), head.URL, "HEAD")
			rest := out
			for _, l := range tt.wantLines {
				i := strings.Index(rest, l)
				if i < 0 {
					t.Errorf("console lacks %q (in order):\n%s", l, out)
					break
				}
				rest = rest[i:]
			}
			for _, l := range tt.notLines {
				if strings.Contains(out, l) {
					t.Errorf("console has %q:\n%s", l, out)
				}
			}
			onDisk, err := bootrec.Read(n.root)
			if err != nil {
				t.Fatal(err)
			}
			if onDisk.State != tt.wantState || !strings.Contains(onDisk.Error, tt.wantErrIn) || rec.State != onDisk.State {
				t.Errorf("recorded %s %q, want %s containing %q", onDisk.State, onDisk.Error, tt.wantState, tt.wantErrIn)
			}
			if tt.wantWarn != "" && (len(onDisk.Warnings) != 1 || !strings.Contains(onDisk.Warnings[0], tt.wantWarn)) {
				t.Errorf("warnings %q, want %q", onDisk.Warnings, tt.wantWarn)
			}
		})
	}
}

func TestBootDryRun(t *testing.T) {
	head := headapitest.New(t, "tok-n001")
	n := newNode(t, head, "virtio_net")
	before := n.read(t, "etc/hostname")
	fail := func(step string) { t.Errorf("dry run called the %s step", step) }
	a := &nodeagent.Agent{
		Root:         n.root,
		Release:      release,
		Console:      &n.console,
		DryRun:       true,
		Mounter:      nodeagent.MounterFunc(func(context.Context, string) error { fail("mounts"); return nil }),
		RootSetter:   nodeagent.RootSetterFunc(func(context.Context, rootfs.Config) (rootfs.Result, error) { fail("root"); return rootfs.Result{}, nil }),
		Hostname:     nodeagent.HostnameSetterFunc(func(string) error { fail("hostname"); return nil }),
		InsertModule: func(string) error { fail("modules"); return nil },
		Network:      nodeagent.NetworkConfigurerFunc(func(context.Context, netconf.Config) (string, error) { fail("network"); return "", nil }),
		SetClock:     func(time.Time) error { fail("clock"); return nil },
	}
	rec, err := a.Boot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := n.console.String()
	for _, want := range []string{
		"ramboot-agent: would mount proc on " + filepath.Join(n.root, "proc") + "\n",
		"ramboot-agent: would move the root into a tmpfs of 247 MiB (root.size 25%)\n",
		"ramboot-agent: would set host name n001 and write " + filepath.Join(n.root, "etc", "hostname"),
		"ramboot-agent: would load modules: failover net_failover virtio_ring virtio virtio_net\n",
		"ramboot-agent: would load the modules of the devices present (modalias)\n",
		"ramboot-agent: would configure the interface with MAC 52:54:00:12:34:56: 10.77.0.10/24\n",
		"ramboot-agent: would write its configuration for systemd-networkd\n",
		"ramboot-agent: would set the clock from " + head.URL + "/api/v1/time\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if head.Requests() != 0 {
		t.Error("dry run contacted the head")
	}
	if _, err := os.Stat(filepath.Join(n.root, "etc", "hosts")); err == nil || n.read(t, "etc/hostname") != before {
		t.Error("dry run wrote name files")
	}
	if _, err := os.Stat(filepath.Join(n.root, bootrec.Path)); err == nil {
		t.Error("dry run wrote the boot record")
	}
	if rec.State != overlay.StateReady {
		t.Errorf("dry-run record %+v", rec)
	}
}

func TestHandover(t *testing.T) {
	root := t.TempDir()
	write := func(p, data string, mode os.FileMode) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	if _, why := nodeagent.FindInit(root); why == nil || !strings.Contains(why.Error(), "/sbin/init: ") {
		t.Errorf("FindInit in an image without init: %v", why)
	}
	// Debian: /sbin/init -> /lib/systemd/systemd, /lib -> usr/lib.
	write("usr/lib/systemd/systemd", "\x7fELF", 0o755)
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	os.Symlink("/lib/systemd/systemd", filepath.Join(root, "sbin/init"))
	got, why := nodeagent.FindInit(root)
	if got != "/sbin/init" || why != nil {
		t.Fatalf("FindInit = %q, %v", got, why)
	}
	if name := nodeagent.InitName(root, got); name != "systemd" {
		t.Errorf("InitName = %q, want systemd", name)
	}
	write("proc/cmdline", "console=ttyS0 ramboot.exec=none\n", 0o444)
	if got, why := nodeagent.FindInit(root); got != "" || why == nil || !strings.Contains(why.Error(), "ramboot.exec=none") {
		t.Errorf("FindInit with ramboot.exec=none = %q, %v", got, why)
	}
	write("proc/cmdline", "ramboot.exec=/etc/motd\n", 0o444)
	write("etc/motd", "hi", 0o644)
	if got, why := nodeagent.FindInit(root); got != "" || why == nil || !strings.Contains(why.Error(), "not an executable") {
		t.Errorf("FindInit of a plain file = %q, %v", got, why)
	}

	if err := nodeagent.InstallService(root, "/init"); err != nil {
		t.Fatal(err)
	}
	unit, _ := os.ReadFile(filepath.Join(root, nodeagent.ServicePath))
	if !strings.Contains(string(unit), "ExecStart=/init daemon\n") || !strings.Contains(string(unit), "Type=notify\n") {
		t.Errorf("unit:\n%s", unit)
	}
	// The daemon makes cgroups (Delegate), and its restart must leave the
	// containers it runs alone (KillMode=process; TestDebian restarts it
	// under a running container).
	for _, want := range []string{"\nDelegate=yes\n", "\nKillMode=process\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q:\n%s", strings.TrimSpace(want), unit)
		}
	}
	if target, err := os.Readlink(filepath.Join(root, nodeagent.ServiceWant)); err != nil || target != "../"+nodeagent.ServiceName {
		t.Errorf("wants link -> %q, %v", target, err)
	}
	if err := nodeagent.InstallService(root, "/init"); err != nil {
		t.Errorf("second InstallService: %v", err)
	}
	os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
	if link, err := nodeagent.LinkCommand(root, "/init"); err != nil || link != "/usr/sbin/ramboot-agent" {
		t.Errorf("LinkCommand = %q, %v", link, err)
	}
}

func TestUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	agent := filepath.Join(dir, "ramboot-agent")
	os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755)
	unit := filepath.Join(dir, nodeagent.ServiceName)
	if err := os.WriteFile(unit, []byte(nodeagent.Unit(agent)), 0o644); err != nil {
		t.Fatal(err)
	}
	// It exits 0 on most problems and only prints them: any output fails.
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", unit).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
