package nodeagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent"
	"github.com/ramboot/ramboot/nodeagent/kmod"
	"github.com/ramboot/ramboot/nodeagent/kmod/kmodtest"
	"github.com/ramboot/ramboot/nodeagent/netconf"
	"github.com/ramboot/ramboot/nodeagent/report/reporttest"
)

const release = "6.1.0-test-amd64"

// node is a node's RAM root in a temporary directory, with what the image,
// the agent archive and the overlay put there, plus stand-ins for /proc.
type node struct {
	root      string
	head      *reporttest.Head
	cfg       overlay.Config
	hostnames []string
	inserted  []string
	mounted   []string
	netcfg    []netconf.Config
	netErr    error
	console   bytes.Buffer
}

func newNode(t *testing.T, head *reporttest.Head, modules ...string) *node {
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
	}
	js, err := json.Marshal(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.write(t, overlay.ConfigPath, string(js))
	n.write(t, overlay.ImageIDPath, "sha256:c0ffee\n")
	n.write(t, "etc/hostname", "n001\n")
	n.write(t, "proc/uptime", "12.50 3.00\n")
	n.write(t, "proc/meminfo", "MemTotal:        1014020 kB\nMemFree:          911228 kB\n")
	mods := filepath.Join(n.root, "lib", "modules", release, "kernel", "drivers")
	kmodtest.Module(t, mods, "virtio_ring")
	kmodtest.Module(t, mods, "virtio", "virtio_ring")
	kmodtest.Module(t, mods, "failover")
	kmodtest.Module(t, mods, "net_failover", "failover")
	kmodtest.Module(t, mods, "virtio_net", "net_failover", "virtio_ring", "virtio")
	return n
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
// mounts, sethostname, module insertion (resolution is real) and netlink.
// The config, name files and report (to n.head) are real.
func (n *node) agent() *nodeagent.Agent {
	return &nodeagent.Agent{
		Root:          n.root,
		Release:       release,
		Console:       &n.console,
		ReportTimeout: 20 * time.Second,
		Mounter: nodeagent.MounterFunc(func(ctx context.Context, root string) error {
			n.mounted = append(n.mounted, root)
			return nil
		}),
		Hostname: nodeagent.HostnameSetterFunc(func(name string) error {
			n.hostnames = append(n.hostnames, name)
			return nil
		}),
		Modules: nodeagent.ModuleLoaderFunc(func(ctx context.Context, names []string) ([]kmod.Module, error) {
			l := &kmod.Loader{
				Dir:       filepath.Join(n.root, "lib", "modules", release),
				SysModule: filepath.Join(n.root, "sys", "module"),
				Insert: func(path string) error {
					n.inserted = append(n.inserted, filepath.Base(path))
					return nil
				},
			}
			return l.Load(ctx, names)
		}),
		Network: nodeagent.NetworkConfigurerFunc(func(ctx context.Context, c netconf.Config) (string, error) {
			n.netcfg = append(n.netcfg, c)
			return "eth0", n.netErr
		}),
	}
}

func lines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }

func TestBootReady(t *testing.T) {
	// The head is busy at first: the agent retries.
	head := reporttest.NewHead(t, "tok-n001", http.StatusServiceUnavailable)
	n := newNode(t, head, "virtio_net", "virtio-ring")
	rep, err := n.agent().Boot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ramboot-agent: file systems mounted",
		"ramboot-agent: node n001, image debian-12",
		"ramboot-agent: host name n001",
		"ramboot-agent: modules loaded: failover net_failover virtio_ring virtio virtio_net",
		"ramboot-agent: eth0 10.77.0.10/24 up",
		"ramboot-agent: default route via 10.77.0.1",
		"ramboot-agent: n001 ready",
	}
	if got := lines(n.console.String()); !slices.Equal(got, want) {
		t.Errorf("console:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !slices.Equal(n.mounted, []string{n.root}) {
		t.Errorf("mounted %v", n.mounted)
	}
	if !slices.Equal(n.hostnames, []string{"n001"}) {
		t.Errorf("sethostname %v", n.hostnames)
	}
	if want := []string{"failover.ko", "net_failover.ko", "virtio_ring.ko", "virtio.ko", "virtio_net.ko"}; !slices.Equal(n.inserted, want) {
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
	if got := n.read(t, "etc/hostname"); got != "n001\n" {
		t.Errorf("etc/hostname = %q", got)
	}

	got := head.Reports()
	if len(got) != 1 || head.Requests() != 2 {
		t.Fatalf("head accepted %d reports in %d requests, want 1 in 2", len(got), head.Requests())
	}
	r := got[0].Report
	if got[0].Node != "n001" || r.State != overlay.StateReady || r.Error != "" || r.ContentDigest != "sha256:c0ffee" ||
		r.Kernel != release || r.MemTotalBytes != 1014020*1024 || r.UptimeSeconds != 12.5 {
		t.Errorf("head got %+v", got[0])
	}
	var steps []string
	for _, s := range r.Steps {
		steps = append(steps, s.Name)
		if s.UptimeSeconds != 12.5 {
			t.Errorf("step %s at %v, want 12.5 (proc/uptime)", s.Name, s.UptimeSeconds)
		}
	}
	if want := []string{"mounts", "config", "hostname", "modules", "network"}; !slices.Equal(steps, want) {
		t.Errorf("steps %v, want %v", steps, want)
	}
	if rep.State != r.State || len(rep.Steps) != len(r.Steps) {
		t.Errorf("Boot returned %+v, head got %+v", rep, r)
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
		wantErrIn string // in the reported Error
		reports   int    // reports the head accepted
		requests  int    // -1: don't check
	}{
		{
			name:      "module-missing",
			modules:   []string{"virtio_net", "no_such_mod"},
			wantLines: []string{"ramboot-agent: modules loaded: failover net_failover virtio_ring virtio virtio_net", "ramboot-agent: modules failed: find module no_such_mod: module not found", "ramboot-agent: eth0 10.77.0.10/24 up", "ramboot-agent: n001 reported failed"},
			notLines:  []string{"ramboot-agent: n001 ready"},
			wantState: overlay.StateFailed, wantErrIn: "modules: find module no_such_mod", reports: 1, requests: 1,
		},
		{
			name:      "two-modules-missing",
			modules:   []string{"nope_a", "virtio_net", "nope_b"},
			wantLines: []string{"ramboot-agent: modules failed: find module nope_a: module not found; find module nope_b: module not found"},
			wantState: overlay.StateFailed, wantErrIn: "modules: find module nope_a: module not found; find module nope_b", reports: 1, requests: 1,
		},
		{
			name: "mount-fails",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				a.Mounter = nodeagent.MounterFunc(func(context.Context, string) error { return errors.New("mount devpts on /dev/pts: no such device") })
			},
			wantLines: []string{"ramboot-agent: mounts failed: mount devpts on /dev/pts: no such device", "ramboot-agent: n001 reported failed"},
			wantState: overlay.StateFailed, wantErrIn: "mounts: mount devpts", reports: 1, requests: 1,
		},
		{
			name: "network-fails",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				n.netErr = errors.New("wait for interface with MAC 52:54:00:12:34:56: context deadline exceeded")
			},
			wantLines: []string{"ramboot-agent: network failed: wait for interface with MAC 52:54:00:12:34:56: context deadline exceeded"},
			notLines:  []string{"ramboot-agent: n001 ready", "ramboot-agent: n001 reported failed"},
			requests:  0,
		},
		{
			name: "config-missing",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				os.Remove(filepath.Join(n.root, overlay.ConfigPath))
				a.Hostname = nodeagent.HostnameSetterFunc(func(string) error { t.Error("hostname step ran without config"); return nil })
			},
			wantLines: []string{"ramboot-agent: file systems mounted", "ramboot-agent: config failed: read node config: open etc/ramboot/node.json: no such file or directory"},
			notLines:  []string{"ramboot-agent: host name n001"},
			requests:  0,
		},
		{
			name: "bad-token",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				n.cfg.Token = "stale"
				js, _ := json.Marshal(n.cfg)
				n.write(t, overlay.ConfigPath, string(js))
			},
			wantLines: []string{"ramboot-agent: report failed: post report to " + "HEAD/api/v1/nodes/n001/report: head answered 401 Unauthorized: bad token"},
			notLines:  []string{"ramboot-agent: n001 ready"},
			requests:  1,
		},
		{
			name: "hostname-panics",
			setup: func(t *testing.T, n *node, a *nodeagent.Agent) {
				a.Hostname = nodeagent.HostnameSetterFunc(func(string) error { panic("boom") })
			},
			wantLines: []string{"ramboot-agent: hostname failed: panic: boom", "ramboot-agent: eth0 10.77.0.10/24 up", "ramboot-agent: n001 reported failed"},
			wantState: overlay.StateFailed, wantErrIn: "hostname: panic: boom", reports: 1, requests: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			head := reporttest.NewHead(t, "tok-n001")
			n := newNode(t, head, tt.modules...)
			a := n.agent()
			if tt.setup != nil {
				tt.setup(t, n, a)
			}
			start := time.Now()
			_, err := a.Boot(context.Background())
			if err == nil {
				t.Fatal("Boot succeeded")
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Boot took %v", d)
			}
			out := strings.ReplaceAll(n.console.String(), head.URL, "HEAD")
			rest := out
			for _, l := range tt.wantLines {
				i := strings.Index(rest, l+"\n")
				if i < 0 {
					t.Errorf("console lacks %q (in order):\n%s", l, out)
					break
				}
				rest = rest[i:]
			}
			for _, l := range tt.notLines {
				if strings.Contains(out, l+"\n") {
					t.Errorf("console has %q:\n%s", l, out)
				}
			}
			if tt.requests >= 0 && head.Requests() != tt.requests {
				t.Errorf("head saw %d requests, want %d", head.Requests(), tt.requests)
			}
			got := head.Reports()
			if len(got) != tt.reports {
				t.Fatalf("head accepted %d reports, want %d", len(got), tt.reports)
			}
			if tt.reports > 0 {
				if r := got[0].Report; r.State != tt.wantState || !strings.Contains(r.Error, tt.wantErrIn) {
					t.Errorf("reported %s %q, want %s containing %q", r.State, r.Error, tt.wantState, tt.wantErrIn)
				}
			}
		})
	}
}

func TestBootDryRun(t *testing.T) {
	head := reporttest.NewHead(t, "tok-n001")
	n := newNode(t, head, "virtio_net")
	before := n.read(t, "etc/hostname")
	fail := func(step string) { t.Errorf("dry run called the %s step", step) }
	a := &nodeagent.Agent{
		Root:     n.root,
		Release:  release,
		Console:  &n.console,
		DryRun:   true,
		Mounter:  nodeagent.MounterFunc(func(context.Context, string) error { fail("mounts"); return nil }),
		Hostname: nodeagent.HostnameSetterFunc(func(string) error { fail("hostname"); return nil }),
		Modules:  nodeagent.ModuleLoaderFunc(func(context.Context, []string) ([]kmod.Module, error) { fail("modules"); return nil, nil }),
		Network:  nodeagent.NetworkConfigurerFunc(func(context.Context, netconf.Config) (string, error) { fail("network"); return "", nil }),
		Reporter: nodeagent.ReporterFunc(func(context.Context, overlay.Config, overlay.Report) error { fail("report"); return nil }),
	}
	rep, err := a.Boot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := n.console.String()
	for _, want := range []string{
		"ramboot-agent: would mount proc on " + filepath.Join(n.root, "proc") + "\n",
		"ramboot-agent: would set host name n001 and write " + filepath.Join(n.root, "etc", "hostname"),
		"ramboot-agent: would load modules: failover net_failover virtio_ring virtio virtio_net\n",
		"ramboot-agent: would configure the interface with MAC 52:54:00:12:34:56: 10.77.0.10/24\n",
		"ramboot-agent: would report to " + head.URL + "/api/v1/nodes/n001/report: {\"state\":\"ready\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ready\n") && strings.Contains(out, "n001 ready") {
		t.Errorf("dry run printed ready:\n%s", out)
	}
	if head.Requests() != 0 {
		t.Error("dry run contacted the head")
	}
	if _, err := os.Stat(filepath.Join(n.root, "etc", "hosts")); err == nil || n.read(t, "etc/hostname") != before {
		t.Error("dry run wrote name files")
	}
	if rep.State != overlay.StateReady || rep.ContentDigest != "sha256:c0ffee" {
		t.Errorf("dry-run report %+v", rep)
	}
}
