//go:build e2e

package lab_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/state"
)

// TestHeadKilledMidDownload: the head is killed with SIGKILL while a BIOS
// node downloads its image, then started again; the node reaches booted
// with no human action, in the same boot: the iPXE script retried the
// download. The image is large (96 MiB of incompressible data) and the
// node's link shaped to 64 Mbit/s, so the download takes over ten seconds;
// the test checks on the console that the kill did land mid-download.
func TestHeadKilledMidDownload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	l := serveLab(ctx, t)
	digest, err := l.BuildLargeImage(ctx, "big", 96)
	if err != nil {
		t.Fatal(err)
	}
	const node, mac, ip = "kill1", "52:54:00:77:00:0c", "10.77.0.12"
	if err := l.AddNode(ctx, node, mac, ip, "big"); err != nil {
		t.Fatal(err)
	}
	vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.BIOS, MAC: mac, LinkMbit: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()

	// iPXE prints the download's progress about once a second: kill the
	// head once some of the image, not all of it, has arrived.
	progress := regexp.MustCompile(`rootfs\.cpio\.zst\.\.\.[^\n]*?\b([1-9][0-9]?)%`)
	m, err := vm.WaitSerialMatch(ctx, progress, 8*time.Minute)
	if err != nil {
		t.Fatalf("image download never showed progress: %v\n%s", err, tail(vm.Serial(), 30))
	}
	if err := l.KillServe(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("head killed with SIGKILL %.1fs after QEMU started, the console showing %q", killed.Sub(vm.Started()).Seconds(), progressOf(m))

	// Proof that the kill landed mid-download: the rootfs fetch failed and
	// the script is retrying it.
	if err := vm.WaitSerial(ctx, "attempt 1 of 8 to fetch rootfs.cpio.zst failed", 2*time.Minute); err != nil {
		t.Fatalf("the kill did not land during the image download: %v\n%s", err, tail(vm.Serial(), 30))
	}
	if err := l.Serve(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("head restarted %.1fs after the kill", time.Since(killed).Seconds())

	n, err := l.WaitBooted(ctx, node, vm, 8*time.Minute)
	if err != nil {
		t.Fatalf("%v\nlast serial output:\n%s", err, tail(vm.Serial(), 40))
	}
	for _, e := range n.Status.Timeline {
		t.Logf("  %6.2fs  %-12s %s", e.Time.Sub(n.Status.Timeline[0].Time).Seconds(), e.Step, e.Detail)
	}
	if n.Status.State != string(state.StateBooted) || n.Status.Report == nil || n.Status.Report.ImageDigest != string(digest) {
		t.Fatalf("node %s: state %s, report %+v; want booted with image big %s", node, n.Status.State, n.Status.Report, digest)
	}
	if n.Status.ID != 1 || n.Status.Boots != 1 {
		t.Errorf("node went through %d boots (current %d), want the first boot to finish", n.Status.Boots, n.Status.ID)
	}
	var imageAt time.Time
	for _, e := range n.Status.Timeline {
		if e.Step == string(state.StepImage) {
			imageAt = e.Time
		}
	}
	if imageAt.IsZero() || imageAt.Before(killed) {
		t.Errorf("image step at %s, want it recorded by the restarted head (killed at %s)", imageAt, killed)
	}
	t.Logf("%s booted %.1fs after QEMU started, %.1fs after the kill", node, time.Since(vm.Started()).Seconds(), time.Since(killed).Seconds())
}

func progressOf(m []byte) string {
	if i := regexp.MustCompile(`\d+%`).FindIndex(m); i != nil {
		return string(m[i[0]:i[1]])
	}
	return string(m)
}
