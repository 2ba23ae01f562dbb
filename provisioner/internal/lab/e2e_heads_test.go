//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// TestThreeHeadsBoot network-boots a QEMU node (SeaBIOS, the NIC's iPXE
// ROM, the busybox image) through three `ramboot serve` heads sharing one
// three-member etcd cluster, every head and member a host of its own on
// the lab link. The image is built on one head and pulled by the others
// by digest before the boot. Once iPXE has the script and starts the
// kernel, the head that answered the node's DHCP is killed (SIGKILL):
// the script's fetches fail, it gives up and reboots, and the next DHCP
// is answered by a surviving head, which boots the node to the agent's
// registration. Both surviving heads show the node booted, with the
// timeline of its last boot and the image built on the first.
func TestThreeHeadsBoot(t *testing.T) {
	if etcdtest.Binary() == "" {
		t.Skip("no etcd (Debian's etcd-server; `make deps` installs it)")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (`make deps` installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	l := newLab(ctx, t)
	var ens, eips []string
	for i := range 3 {
		ip := fmt.Sprintf("10.77.0.%d", 241+i)
		ns, err := l.Host(ctx, fmt.Sprintf("e%d", i+1), ip+"/24")
		if err != nil {
			t.Fatal(err)
		}
		ens, eips = append(ens, ns), append(eips, ip)
	}
	c := etcdtest.Start(t, etcdtest.Options{Members: 3, Netns: ens, IPs: eips})
	// A short iPXE retry schedule: the node whose head dies gives up
	// within seconds and reboots (boot.retry's smallest).
	conf := `interface: eth0
sftp: {enabled: false}
boot: {default_image: default, kernel_args: "console=tty0 console=ttyS0,115200 panic=30", retry: {attempts: 2, max_wait: 1s, fail_pause: 2s}}
state: {backend: etcd, etcd: {endpoints: [` + strings.Join(c.Endpoints(), ", ") + `], prefix: /lab/}}
`
	var heads []*lab.Head
	for i := range 3 {
		h, err := l.StartHead(ctx, fmt.Sprintf("h%d", i+1), fmt.Sprintf("10.77.0.%d", 2+i), conf)
		if err != nil {
			t.Fatal(err)
		}
		// Heads stop before the etcd members do (cleanups run last first).
		t.Cleanup(h.Stop)
		heads = append(heads, h)
	}
	t.Logf("3 etcd members and 3 heads up: %.1fs", time.Since(start).Seconds())
	digest, err := heads[0].BuildImage(ctx, "default", "--gzip")
	if err != nil {
		t.Fatal(err)
	}
	const node, mac, ip = "bios1", "52:54:00:77:00:0a", "10.77.0.10"
	if _, err := heads[1].CLI(ctx, "node", "add", node, "--mac", mac, "--ip", ip); err != nil {
		t.Fatal(err)
	}
	// The other heads pull the image now, through a script for a node
	// of their own (as docs/scale-out.md advises: boot one node through
	// each head first); else the head that answers the reboot's DHCP
	// would have to pull it from the head that just died.
	const warm, warmMAC, warmIP = "warm1", "52:54:00:77:00:3c", "10.77.0.60"
	if _, err := heads[2].CLI(ctx, "node", "add", warm, "--mac", warmMAC, "--ip", warmIP); err != nil {
		t.Fatal(err)
	}
	wns, err := l.Host(ctx, "w1", warmIP+"/24")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range heads[1:] {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", wns, "curl", "-fsS", "-m", "60",
			"http://"+h.IP+"/boot/ipxe?mac="+warmMAC).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "vmlinuz") {
			t.Fatalf("script for %s from head %s (pulling the image): %v\n%s", warm, h.Name, err, out)
		}
	}
	t.Logf("image %s built on h1, pulled by h2 and h3: %.1fs", digest, time.Since(start).Seconds())

	vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.BIOS, MAC: mac, Reboot: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	// iPXE starts the kernel's download once it has the script: the URL
	// (cut short on the console) names the head that answered its DHCP.
	kernelFrom := regexp.MustCompile(`http://(10\.77\.0\.\d+)(:\d+)?/boot/image/`)
	m, err := vm.WaitSerialMatch(ctx, kernelFrom, 5*time.Minute)
	if err != nil {
		t.Fatalf("no kernel download: %v\n%s", err, tail(vm.Serial(), 40))
	}
	first := kernelFrom.FindSubmatch(m)[1]
	var dead *lab.Head
	var live []*lab.Head
	for _, h := range heads {
		if h.IP == string(first) {
			dead = h
		} else {
			live = append(live, h)
		}
	}
	if dead == nil {
		t.Fatalf("the kernel's URL %q names no head", m)
	}
	if err := dead.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("head %s (%s), which answered the DHCP and served the script, killed %.1fs after QEMU started", dead.Name, dead.IP, killed.Sub(vm.Started()).Seconds())

	n, err := live[0].WaitBooted(ctx, node, vm, 8*time.Minute)
	if err != nil {
		t.Fatalf("%v\nlast serial output:\n%s", err, tail(vm.Serial(), 40))
	}
	t.Logf("%s booted %.1fs after QEMU started, %.1fs after the kill", node, time.Since(vm.Started()).Seconds(), time.Since(killed).Seconds())
	// The second boot's script came from a surviving head.
	urls := kernelFrom.FindAllSubmatch(vm.Serial(), -1)
	if second := string(urls[len(urls)-1][1]); second == dead.IP {
		t.Errorf("the last kernel came from the dead head %s", second)
	}
	want := []state.Step{state.StepDHCPOffer, state.StepDHCPAck, state.StepScript, state.StepKernel, state.StepImage, state.StepAgent, state.StepOverlay, state.StepReady}
	for _, h := range live {
		// Boot events land a moment after the replies: give every head
		// a deadline to show the whole last boot.
		var missing []state.Step
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			n, err = h.Node(ctx, node)
			if err != nil {
				t.Fatalf("head %s: %v", h.Name, err)
			}
			var seen []state.Step
			for _, e := range n.Status.Timeline {
				seen = append(seen, state.Step(e.Step))
			}
			missing = missing[:0]
			for _, s := range want {
				if !slices.Contains(seen, s) {
					missing = append(missing, s)
				}
			}
			if n.Status.State == string(state.StateBooted) && len(missing) == 0 || time.Now().After(deadline) {
				break
			}
		}
		t.Logf("head %s: %s %s, boot %d of %d", h.Name, node, n.Status.State, n.Status.ID, n.Status.Boots)
		for _, e := range n.Status.Timeline {
			t.Logf("  %6.2fs  %-12s %s", e.Time.Sub(n.Status.Timeline[0].Time).Seconds(), e.Step, e.Detail)
		}
		if n.Status.State != string(state.StateBooted) || len(missing) > 0 {
			t.Errorf("head %s: state %q, timeline lacks %v", h.Name, n.Status.State, missing)
		}
		if r := n.Status.Report; r == nil || r.ImageDigest != string(digest) || r.Init != "ramboot-agent" {
			t.Errorf("head %s: report %+v, want the agent on image %s", h.Name, r, digest)
		}
		if n.Status.Boots < 2 {
			t.Errorf("head %s: %d boots, want the killed one and the one that finished", h.Name, n.Status.Boots)
		}
	}
	t.Logf("whole test: %.1fs", time.Since(start).Seconds())
}
