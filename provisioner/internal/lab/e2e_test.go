//go:build e2e

package lab_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
	l, err := lab.New(ctx, lab.Options{Log: testLog{t}, Keep: os.Getenv("RAMBOOT_LAB_KEEP") != ""})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	var extra []string
	for _, f := range setup {
		extra = append(extra, f(l)...)
	}
	if err := l.Serve(ctx, extra...); err != nil {
		t.Fatal(err)
	}
	return l
}

// labCheck is the lab profile's template: a script the agent execs after
// the boot (ramboot.exec from the profile's kernel arguments) that prints
// what the node's overlay gave it: the template's own values (a node tag,
// a profile tag, a cluster value) from the node's own archive, and whether
// /etc/ssh/ssh_known_hosts, from the shared archive served before it,
// lists the node under its domain name. (Not /etc/hosts: the agent writes
// its own at boot.)
const labCheck = `#!/bin/sh
grep -q "{{.Node.Name}}.lab.example" /etc/ssh/ssh_known_hosts && h=ok || h=missing
echo "LAB-OVERLAY node={{.Node.Name}} rack={{.Tags.rack}} site={{.Tags.site}} cluster={{.Values.lab}} known_hosts=$h"
while :; do sleep 3600; done
`

// profileSetup writes the lab profile's template tree and a configuration
// that takes the nodes' modules from their profile only.
func profileSetup(t *testing.T) func(*lab.Lab) []string {
	return func(l *lab.Lab) []string {
		dir := filepath.Join(l.WorkDir(), "overlays", "lab", "usr", "local", "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "lab-check.tmpl"), []byte(labCheck), 0o755); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(l.WorkDir(), "ramboot.yaml")
		conf := "boot: {modules: []}\n" +
			"overlay: {templates: " + filepath.Join(l.WorkDir(), "overlays") + ", authorized_keys: \"\"}\n" +
			"cluster: {name: lab, domain: lab.example, values: {lab: yes}}\n"
		if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{"--config", cfg}
	}
}

// TestBoot network-boots QEMU from `ramboot serve` in a namespace of its
// own, once per firmware, and waits for the agent's report to turn the
// node booted, running the image the test built. The nodes are in a
// profile: their kernel arguments and modules come from it (the
// configuration gives none), and their overlay from its template, whose
// output the node prints on its console.
func TestBoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	l := serveLab(ctx, t, profileSetup(t))
	if _, err := l.CLI(ctx, "profile", "add", "lab", "--tag", "site=lab1", "--modules", "virtio_pci,virtio_net",
		"--kernel-args", "console=tty0 console=ttyS0,115200 panic=30 ramboot.exec=/usr/local/bin/lab-check ramboot.lab=profile"); err != nil {
		t.Fatal(err)
	}
	digest, err := l.BuildImage(ctx, "default")
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
			if err := vm.WaitSerial(ctx, "ramboot-agent: "+tc.node+" ready", 30*time.Second); err != nil {
				t.Errorf("console: %v", err)
			}
			// The profile's kernel arguments, and the template's output on
			// the node: both archives of the overlay were unpacked.
			if !strings.Contains(string(vm.Serial()), "ramboot.lab=profile") {
				t.Errorf("the kernel command line lacks the profile's arguments")
			}
			want := "LAB-OVERLAY node=" + tc.node + " rack=" + string(tc.mode) + " site=lab1 cluster=yes known_hosts=ok"
			if err := vm.WaitSerial(ctx, want, time.Minute); err != nil {
				t.Errorf("console: %v\n%s", err, tail(vm.Serial(), 20))
			}
		})
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
