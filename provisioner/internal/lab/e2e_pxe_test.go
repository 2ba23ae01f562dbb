//go:build e2e

package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
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

// Lean boots: the firmware and network paths these tests prove end where
// the head serves the node its kernel (the script, and so the node's
// reserved address, came first). What follows (image, agent, overlay,
// registration) is the same for every firmware and is TestBoot's.

// waitStep polls the node's timeline until it has step, the VM exits or
// the deadline passes.
func waitStep(ctx context.Context, t *testing.T, l *lab.Lab, node string, vm *lab.VM, step state.Step, timeout time.Duration) api.NodeStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n, err := l.Node(ctx, node)
		if err == nil && slices.ContainsFunc(n.Status.Timeline, func(e api.Event) bool { return e.Step == string(step) }) {
			return n
		}
		switch {
		case vm.Exited():
			t.Fatalf("QEMU exited before node %s reached %s\n%s", node, step, tail(vm.Serial(), 40))
		case time.Now().After(deadline):
			logTimeline(t, n)
			t.Fatalf("node %s: no %s step after %s (%v)\nlast serial output:\n%s", node, step, timeout, err, tail(vm.Serial(), 40))
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func logTimeline(t *testing.T, n api.NodeStatus) {
	t.Helper()
	for _, e := range n.Status.Timeline {
		t.Logf("  %s  %-12s %s", e.Time.Format("15:04:05.000"), e.Step, e.Detail)
	}
}

// stepDetails returns the details of the node's timeline events of step.
func stepDetails(n api.NodeStatus, step state.Step) []string {
	var out []string
	for _, e := range n.Status.Timeline {
		if e.Step == string(step) {
			out = append(out, e.Detail)
		}
	}
	return out
}

// bootEvents returns `ramboot boot events --mac MAC -o json`.
func bootEvents(ctx context.Context, t *testing.T, l *lab.Lab, mac string) api.BootEvents {
	t.Helper()
	out, err := l.CLI(ctx, "boot", "events", "--mac", mac, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var evs api.BootEvents
	if err := json.Unmarshal(out, &evs); err != nil {
		t.Fatalf("boot events: %v\n%s", err, out)
	}
	return evs
}

// TestProxyMode runs ramboot in proxy mode next to the site's own DHCP
// server (dnsmasq on another host of the link, handing out addresses
// only): a BIOS node (SeaBIOS, the NIC's iPXE ROM) and a UEFI node (OVMF's
// own PXE client, which asks port 4011, then fetches snponly.efi over
// TFTP) boot at once, take their address from dnsmasq and their boot file
// from ramboot's proxy offers, and fetch their script (served only to the
// reserved address) and kernel.
func TestProxyMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	nodes := []struct {
		mode      lab.Mode
		name, mac string
		ip        string
	}{
		{lab.BIOS, "pbios", "52:54:00:77:01:0a", "10.77.0.20"},
		{lab.UEFI, "puefi", "52:54:00:77:01:0b", "10.77.0.21"},
	}
	l := serveLab(ctx, t, func(l *lab.Lab) []string {
		var hosts []lab.SiteHost
		for _, n := range nodes {
			hosts = append(hosts, lab.SiteHost{MAC: n.mac, IP: n.ip})
		}
		if err := l.StartSiteDHCP(ctx, hosts); err != nil {
			t.Fatal(err)
		}
		cfg, err := l.WriteConfig("proxy.yaml", "dhcp: {mode: proxy}\n")
		if err != nil {
			t.Fatal(err)
		}
		return []string{"--config", cfg}
	})
	if _, err := l.BuildImage(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	vms := make([]*lab.VM, len(nodes))
	for i, n := range nodes {
		if err := l.AddNode(ctx, n.name, n.mac, n.ip, ""); err != nil {
			t.Fatal(err)
		}
		vm, err := l.Boot(ctx, lab.VMOptions{Mode: n.mode, MAC: n.mac, MemMiB: 512})
		if err != nil {
			t.Fatal(err)
		}
		defer vm.Stop()
		vms[i] = vm
	}
	for i, n := range nodes {
		st := waitStep(ctx, t, l, n.name, vms[i], state.StepKernel, 10*time.Minute)
		t.Logf("%s (%s): the head served its kernel %.1fs after QEMU started", n.name, n.mode, time.Since(vms[i].Started()).Seconds())
		logTimeline(t, st)
		vms[i].Stop()
		// Every reply ramboot sent was a proxy one: no address of its own.
		offers := slices.Concat(stepDetails(st, state.StepDHCPOffer), stepDetails(st, state.StepDHCPAck))
		if len(offers) == 0 {
			t.Errorf("%s: no DHCP reply in the timeline", n.name)
		}
		for _, d := range offers {
			if !strings.Contains(d, "proxy (port ") {
				t.Errorf("%s: a reply that is not a proxy one: %q", n.name, d)
			}
		}
		if n.mode == lab.UEFI && !slices.ContainsFunc(stepDetails(st, state.StepTFTP), func(d string) bool { return strings.Contains(d, "snponly.efi") }) {
			t.Errorf("%s: no TFTP fetch of snponly.efi in the timeline", n.name)
		}
		evs := bootEvents(ctx, t, l, n.mac)
		var ports []int
		for _, e := range evs.Events {
			if e.Protocol == "dhcp" && e.Reply != "" {
				if !e.Proxy || e.IP != "" {
					t.Errorf("%s: boot event %+v: a reply with an address in proxy mode", n.name, e)
				}
				if !slices.Contains(ports, e.Port) {
					ports = append(ports, e.Port)
				}
			}
		}
		t.Logf("%s: ramboot answered on ports %v", n.name, ports)
		if evs.Node != n.name || len(ports) == 0 {
			t.Errorf("%s: boot events %+v", n.name, evs)
		}
		if n.mode == lab.UEFI && !slices.Contains(ports, 4011) {
			t.Errorf("%s: OVMF's PXE client got no answer on port 4011 (ports %v)", n.name, ports)
		}
		// Its TFTP fetch is in its events too, though ramboot gave no
		// address: found by the inventory's.
		if n.mode == lab.UEFI && !slices.ContainsFunc(evs.Events, func(e api.BootEvent) bool {
			return e.Protocol == "tftp" && e.Request == "snponly.efi" && e.IP == n.ip
		}) {
			t.Errorf("%s: no TFTP fetch of snponly.efi in the boot events: %+v", n.name, evs.Events)
		}
	}
	// The addresses were dnsmasq's: its log has an ACK for each node.
	b, _ := os.ReadFile(filepath.Join(l.WorkDir(), "site-dhcp.log"))
	for _, n := range nodes {
		if !strings.Contains(string(b), fmt.Sprintf("DHCPACK(eth0) %s %s", n.ip, n.mac)) {
			t.Errorf("the site's dnsmasq log has no DHCPACK of %s to %s:\n%s", n.ip, n.mac, tail(b, 30))
		}
	}
}

// TestHTTPBoot boots OVMF by UEFI HTTP boot (PXE switched off in the
// firmware): its DHCP request says HTTPClient, arch 16; the head answers
// with the URL of snponly.efi under /boot/nbp/ and option 60 HTTPClient;
// OVMF fetches it over HTTP, and iPXE chains to the node's script and
// kernel.
func TestHTTPBoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	l := serveLab(ctx, t)
	if _, err := l.BuildImage(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	const node, mac = "http1", "52:54:00:77:02:0c"
	if err := l.AddNode(ctx, node, mac, "10.77.0.30", ""); err != nil {
		t.Fatal(err)
	}
	vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.UEFIHTTP, MAC: mac, MemMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	st := waitStep(ctx, t, l, node, vm, state.StepKernel, 10*time.Minute)
	t.Logf("%s: the head served its kernel %.1fs after QEMU started", node, time.Since(vm.Started()).Seconds())
	logTimeline(t, st)
	vm.Stop()
	if !slices.ContainsFunc(stepDetails(st, state.StepTFTP), func(d string) bool { return strings.Contains(d, "http snponly.efi") }) {
		t.Errorf("no HTTP fetch of snponly.efi (/boot/nbp/) in the timeline")
	}
	if slices.ContainsFunc(stepDetails(st, state.StepTFTP), func(d string) bool { return !strings.Contains(d, "http ") }) {
		t.Errorf("a TFTP transfer with PXE switched off")
	}
	evs := bootEvents(ctx, t, l, mac)
	var http bool
	for _, e := range evs.Events {
		if e.Protocol == "dhcp" && e.Stage == "http-boot" && e.Reply != "" {
			http = true
			if e.Arch != "efi-x64-http" || !strings.HasSuffix(e.BootFile, "/boot/nbp/snponly.efi") {
				t.Errorf("HTTP boot reply: arch %q, boot file %q", e.Arch, e.BootFile)
			}
		}
	}
	if !http {
		t.Errorf("no DHCP reply to an HTTP boot client in the boot events: %+v", evs.Events)
	}
}
