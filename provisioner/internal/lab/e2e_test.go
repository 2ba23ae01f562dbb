//go:build e2e

package lab_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/state"
)

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// serveLab starts a lab with `ramboot serve` running, closed when the
// test ends; setup, if given, prepares files in the lab and returns extra
// flags for `ramboot serve`.
func serveLab(ctx context.Context, t *testing.T, setup ...func(*lab.Lab) []string) *lab.Lab {
	t.Helper()
	l := newLab(ctx, t)
	var extra []string
	for _, f := range setup {
		extra = append(extra, f(l)...)
	}
	if err := l.Serve(ctx, extra...); err != nil {
		t.Fatal(err)
	}
	return l
}

// serveLabConfig starts a lab whose `ramboot serve` runs on configuration
// conf (written into the lab as name), closed when the test ends.
func serveLabConfig(ctx context.Context, t *testing.T, name, conf string) *lab.Lab {
	t.Helper()
	return serveLab(ctx, t, func(l *lab.Lab) []string {
		cfg, err := l.WriteConfig(name, conf)
		if err != nil {
			t.Fatal(err)
		}
		return []string{"--config", cfg}
	})
}

// newLab makes a lab (its namespace and bridge, no head yet), closed
// when the test ends.
func newLab(ctx context.Context, t *testing.T) *lab.Lab {
	t.Helper()
	l, err := lab.New(ctx, lab.Options{Log: testLog{t}, Keep: os.Getenv("RAMBOOT_LAB_KEEP") != ""})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// labTemplate is the lab profile's template: a file whose content comes
// from a node tag, a profile tag and a cluster value.
const labTemplate = "node={{.Node.Name}} rack={{.Tags.rack}} site={{.Tags.site}} cluster={{.Values.lab}}\n"

// profileSetup writes the lab profile's template tree and a configuration
// naming it.
func profileSetup(t *testing.T) func(*lab.Lab) []string {
	return func(l *lab.Lab) []string {
		dir := filepath.Join(l.WorkDir(), "overlays", "lab", "etc")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "lab-check.tmpl"), []byte(labTemplate), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(l.WorkDir(), "ramboot.yaml")
		// A short iPXE retry schedule, so that the give-up case takes
		// seconds (boot.retry's smallest).
		conf := "overlay: {templates: " + filepath.Join(l.WorkDir(), "overlays") + ", authorized_keys: \"\"}\n" +
			"cluster: {name: lab, domain: lab.example, values: {lab: yes}}\n" +
			"boot: {retry: {attempts: 2, max_wait: 1s, fail_pause: 2s}}\n"
		if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{"--config", cfg}
	}
}

// renderedGeneration returns the overlay generation the head renders for
// node now, from `ramboot overlay render NODE etc/ramboot/node.json`.
func renderedGeneration(ctx context.Context, t *testing.T, l *lab.Lab, node string) string {
	t.Helper()
	out, err := l.CLI(ctx, "overlay", "render", node, "etc/ramboot/node.json")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Generation string `json:"overlayGeneration"`
	}
	if err := json.Unmarshal(out, &c); err != nil || c.Generation == "" {
		t.Fatalf("node.json of %s: %v\n%s", node, err, out)
	}
	return c.Generation
}

// TestBoot network-boots QEMU from `ramboot serve` in a namespace of its
// own, once per firmware, and waits for the agent daemon's registration to
// turn the node booted, running the image the test built. The busybox
// image has no init: the agent stays PID 1 and runs the daemon itself, and
// the virtio NIC's drivers come from modalias (boot.modules is empty). The
// nodes are in a profile: their kernel arguments come from it, and their
// overlay from its template tree.
func TestBoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	l := serveLab(ctx, t, profileSetup(t))
	if _, err := l.CLI(ctx, "profile", "add", "lab", "--tag", "site=lab1",
		"--kernel-args", "console=tty0 console=ttyS0,115200 panic=30 ramboot.lab=profile"); err != nil {
		t.Fatal(err)
	}
	// The BIOS node's image is gzip-compressed (for kernels older than
	// 5.9): the head sends it the agent and overlay archives in gzip too.
	digest, err := l.BuildImage(ctx, "default", "--gzip")
	if err != nil {
		t.Fatal(err)
	}
	// The UEFI node boots an image built from an OCI image layout.
	ociDigest, err := l.BuildOCIImage(ctx, "oci")
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]string{"default": string(digest), "oci": string(ociDigest)}
	cases := []struct {
		mode  lab.Mode
		node  string
		mac   string
		ip    string
		image string
		steps []state.Step
	}{
		{lab.BIOS, "bios1", "52:54:00:77:00:0a", "10.77.0.10", "default",
			[]state.Step{state.StepDHCPOffer, state.StepDHCPAck, state.StepScript, state.StepKernel, state.StepImage, state.StepAgent, state.StepOverlay, state.StepReady}},
		{lab.UEFI, "uefi1", "52:54:00:77:00:0b", "10.77.0.11", "oci",
			[]state.Step{state.StepDHCPOffer, state.StepDHCPAck, state.StepTFTP, state.StepScript, state.StepKernel, state.StepImage, state.StepAgent, state.StepOverlay, state.StepReady}},
	}
	for _, tc := range cases {
		t.Run(string(tc.mode), func(t *testing.T) {
			img := tc.image
			if img == "default" {
				img = "" // boot.default_image
			}
			if err := l.AddNode(ctx, tc.node, tc.mac, tc.ip, img, "--profile", "lab", "--tag", "rack="+string(tc.mode)); err != nil {
				t.Fatal(err)
			}
			if out, err := l.CLI(ctx, "overlay", "render", tc.node, "etc/lab-check"); err != nil ||
				string(out) != "node="+tc.node+" rack="+string(tc.mode)+" site=lab1 cluster=yes\n" {
				t.Fatalf("the profile's template for %s: %q %v", tc.node, out, err)
			}
			vm, err := l.Boot(ctx, lab.VMOptions{Mode: tc.mode, MAC: tc.mac})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Stop()
			n, err := l.WaitBooted(ctx, tc.node, vm, 8*time.Minute)
			if err != nil {
				t.Fatalf("%v\nlast serial output:\n%s", err, tail(vm.Serial(), 40))
			}
			t.Logf("%s booted %.1fs after QEMU started", tc.node, time.Since(vm.Started()).Seconds())
			if p, err := lab.BootPhases(vm.Started(), n); err != nil {
				t.Errorf("boot phases: %v", err)
			} else {
				t.Logf("%s ready: %s", tc.node, p)
			}
			if r := n.Status.Report; r == nil || r.Init != "ramboot-agent" || r.RootMode != "tmpfs" {
				t.Errorf("registration %+v: want the agent staying PID 1 on a tmpfs root (the image has no init)", r)
			}
			if !strings.Contains(string(vm.Serial()), "virtio_net(device)") {
				t.Errorf("virtio_net not loaded by modalias (boot.modules is empty):\n%s", tail(vm.Serial(), 40))
			}
			for _, e := range n.Status.Timeline {
				t.Logf("  %6.2fs  %-12s %s", e.Time.Sub(n.Status.Timeline[0].Time).Seconds(), e.Step, e.Detail)
			}
			if n.Status.State != string(state.StateBooted) {
				t.Fatalf("state %q, want %q; report %+v\nserial:\n%s", n.Status.State, state.StateBooted, n.Status.Report, tail(vm.Serial(), 40))
			}
			r := n.Status.Report
			if r == nil || r.ImageDigest != digests[tc.image] || r.ImageName != tc.image {
				t.Fatalf("node reports image %+v, want %s %s", r, tc.image, digests[tc.image])
			}
			if !strings.HasPrefix(r.Kernel, "6.") || r.MemTotalBytes < 512<<20 {
				t.Errorf("implausible report: kernel %q, memory %d", r.Kernel, r.MemTotalBytes)
			}
			var seen []state.Step
			for _, e := range n.Status.Timeline {
				seen = append(seen, state.Step(e.Step))
			}
			for _, s := range tc.steps {
				if !slices.Contains(seen, s) {
					t.Errorf("timeline lacks step %q: %v", s, seen)
				}
			}
			// The script came from the profile's kernel arguments; the node
			// booted on the overlay the head rendered from the profile's
			// template (its node.json, in the second archive of the
			// overlay initrd, carries the generation of every file).
			if !strings.Contains(string(vm.Serial()), "ramboot.lab=profile") {
				t.Errorf("the kernel command line lacks the profile's arguments")
			}
			if n.Agent == nil {
				t.Errorf("no registration of the agent daemon kept")
			} else if got, want := n.Agent.OverlayGeneration, renderedGeneration(ctx, t, l, tc.node); got != want {
				t.Errorf("the node registered overlay generation %q, the head renders %q", got, want)
			}
			if err := vm.WaitSerial(ctx, "ramboot-agent: "+tc.node+" ready", 30*time.Second); err != nil {
				t.Errorf("console: %v", err)
			}
			// The gzip image's node got gzip archives; the others zstd.
			ext := map[string]string{"default": "gz", "oci": "zst"}[tc.image]
			for _, want := range []string{"agent.cpio." + ext, "overlay.cpio." + ext} {
				if !slices.ContainsFunc(n.Status.Timeline, func(e api.Event) bool { return strings.HasPrefix(e.Detail, want+" ") }) {
					t.Errorf("timeline lacks %s", want)
				}
			}
		})
	}

	// The script's give-up path on real iPXE: a node whose image's root
	// blob is missing gets 404s, tries twice (boot.retry), says why and
	// reboots, and its firmware starts again.
	t.Run("give-up", func(t *testing.T) {
		start := time.Now()
		if _, err := l.BuildLargeImage(ctx, "broken", 1); err != nil {
			t.Fatal(err)
		}
		out, err := l.CLI(ctx, "image", "show", "broken", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Manifest struct {
				Rootfs struct{ Digest string } `json:"rootfs"`
			} `json:"manifest"`
		}
		if err := json.Unmarshal(out, &m); err != nil || !strings.HasPrefix(m.Manifest.Rootfs.Digest, "sha256:") {
			t.Fatalf("image show broken: %v\n%s", err, out)
		}
		blob := filepath.Join(l.State, "images", "blobs", "sha256", strings.TrimPrefix(m.Manifest.Rootfs.Digest, "sha256:"))
		if err := os.Remove(blob); err != nil {
			t.Fatal(err)
		}
		const node, mac = "gone1", "52:54:00:77:00:0c"
		if err := l.AddNode(ctx, node, mac, "10.77.0.12", "broken"); err != nil {
			t.Fatal(err)
		}
		vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.BIOS, MAC: mac, Reboot: true})
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Stop()
		for _, want := range []string{"ramboot: giving up on ", "ramboot: the boot failed (see above); rebooting in 2s"} {
			if err := vm.WaitSerial(ctx, want, 5*time.Minute); err != nil {
				t.Fatalf("%v\nlast serial output:\n%s", err, tail(vm.Serial(), 40))
			}
		}
		failed := time.Now()
		// The reboot: the firmware's banner again, then a second DHCP
		// from the node's MAC.
		banner, dhcp := "SeaBIOS (version", "Configuring (net0 "+mac+")"
		for deadline := time.Now().Add(3 * time.Minute); strings.Count(string(vm.Serial()), banner) < 2 || strings.Count(string(vm.Serial()), dhcp) < 2; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) || vm.Exited() {
				t.Fatalf("no reboot after the give-up (%d firmware banners, %d DHCP)\nlast serial output:\n%s",
					strings.Count(string(vm.Serial()), banner), strings.Count(string(vm.Serial()), dhcp), tail(vm.Serial(), 40))
			}
		}
		t.Logf("gave up and rebooted: %.1fs after the VM started, reboot %.1fs after the message; the whole case %.1fs",
			failed.Sub(vm.Started()).Seconds(), time.Since(failed).Seconds(), time.Since(start).Seconds())
		n, err := l.Node(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range n.Status.Timeline {
			t.Logf("  %-12s %s", e.Step, e.Detail)
		}
		if n.Status.State == string(state.StateBooted) {
			t.Errorf("a node without its root booted: %+v", n.Status)
		}
	})
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
