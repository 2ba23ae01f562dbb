//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/internal/lab"
)

// benchHead: root caps that hold the larger image unpacked (tmpfs mode)
// in a 3 GiB node.
const benchHead = `agent:
  heartbeat_interval: 2s
  down_after: 30s
boot:
  modules: []
  root: {mode: tmpfs, size: 75%}
`

// TestRootModeBench boots the Debian 12 systemd image and a larger one
// (the same plus the Go toolchain and a 99 MB executable, real software,
// about 370 MB more) in the tmpfs and the compressed root modes, one VM
// at a time, the same VM size, in the same run, and prints per boot: the
// RAM the node lost to its root after boot (MemTotal - MemAvailable, as
// the agent reports it once systemd runs and the node settled), the root's
// own figure (tmpfs used, or compressed image + upper), the boot phases,
// and the read throughput of a large file of the image from a cold page
// cache (dd on the node). docs/benchmarks.md has the figures. It boots
// four Debian nodes (20-30 minutes under TCG), so it runs only with
// RAMBOOT_BENCH_ROOT=1; RAMBOOT_BENCH_OUT=FILE also writes the table there.
func TestRootModeBench(t *testing.T) {
	if os.Getenv("RAMBOOT_BENCH_ROOT") == "" {
		t.Skip("set RAMBOOT_BENCH_ROOT=1: boots four Debian nodes (20-30 minutes)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	defer cancel()
	l := serveLabConfig(ctx, t, "bench.yaml", benchHead)
	tree, err := l.DebianTree(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const bigModule = "/usr/lib/modules/6.1.0-50-amd64/kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko"
	type image struct{ name, tree, file string }
	var imgs []image

	small, err := l.CopyTree(ctx, tree, "bench-debian")
	if err != nil {
		t.Fatal(err)
	}
	file := bigModule
	if _, err := os.Stat(filepath.Join(small, file)); err != nil {
		file = "/usr/lib/udev/hwdb.bin"
	}
	if err := lab.AddUnit(small, "ramboot-read.service", lab.ReadUnit(file)); err != nil {
		t.Fatal(err)
	}
	imgs = append(imgs, image{"debian12", small, file})

	large, err := l.CopyTree(ctx, tree, "bench-debian-large")
	if err != nil {
		t.Fatal(err)
	}
	extra := filepath.Join(large, "opt/extra")
	if err := os.MkdirAll(extra, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"/usr/local/go", "/usr/bin/node"} {
		if _, err := os.Stat(src); err != nil {
			t.Skipf("the larger image copies %s from this host: %v", src, err)
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", src, extra).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", src, err, out)
		}
	}
	if err := lab.AddUnit(large, "ramboot-read.service", lab.ReadUnit("/opt/extra/node")); err != nil {
		t.Fatal(err)
	}
	imgs = append(imgs, image{"debian12-large", large, "/opt/extra/node"})

	var rows []string
	head := "| image | mode | unpacked MiB | root RAM MiB | MemTotal-MemAvailable MiB | downloads s | kernel s | init s | to ready s | total s | read |\n" +
		"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
	i := 0
	for _, img := range imgs {
		start := time.Now()
		_, m, err := l.BuildImageFrom(ctx, img.name, img.tree)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: built in %.0fs: %d MiB unpacked, rootfs %d MiB, compressed root %d MiB", img.name, time.Since(start).Seconds(),
			m.RootfsUncompressedSize>>20, m.Rootfs.Size>>20, m.CompressedRoot.Size>>20)
		for _, mode := range []string{"tmpfs", "compressed"} {
			i++
			node := fmt.Sprintf("bench%d", i)
			mac := fmt.Sprintf("52:54:00:77:01:%02x", i)
			ip := fmt.Sprintf("10.77.0.%d", 100+i)
			if err := l.AddNode(ctx, node, mac, ip, img.name, "--root-mode", mode); err != nil {
				t.Fatal(err)
			}
			row, err := benchBoot(t, ctx, l, node, mac, img.name, mode, m.RootfsUncompressedSize)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, row)
			t.Logf("%s", row)
		}
	}
	table := head + "\n" + strings.Join(rows, "\n") + "\n"
	t.Logf("results:\n%s", table)
	if out := os.Getenv("RAMBOOT_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var readRE = regexp.MustCompile(lab.ReadMarker + ` (\d+) bytes .* copied, ([0-9.]+) s, ([0-9.,]+ [kMG]?B/s)`)

// benchBoot boots node in a 3 GiB UEFI VM and returns its table row.
func benchBoot(t *testing.T, ctx context.Context, l *lab.Lab, node, mac, image, mode string, unpacked int64) (string, error) {
	vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.UEFI, MAC: mac, NIC: "e1000", MemMiB: 3072})
	if err != nil {
		return "", err
	}
	defer vm.Stop()
	if _, err := l.WaitBooted(ctx, node, vm, 20*time.Minute); err != nil {
		return "", fmt.Errorf("%s: %w", node, err)
	}
	waitNode(t, ctx, l, node, vm, 15*time.Minute, "systemd running", func(n api.NodeStatus) bool {
		return n.Agent != nil && n.Agent.SystemState == "running" && n.Status.Report.ReadySeconds > 0
	})
	match, err := vm.WaitSerialMatch(ctx, readRE, 5*time.Minute)
	if err != nil {
		return "", fmt.Errorf("%s: no read result on the console: %w", node, err)
	}
	rate := readRE.FindSubmatch(match)[3]
	// Let the node settle (udev, timers), then take a fresh heartbeat.
	time.Sleep(20 * time.Second)
	settled := time.Now()
	n := waitNode(t, ctx, l, node, vm, time.Minute, "a heartbeat after settling", func(n api.NodeStatus) bool {
		return n.Agent != nil && n.Agent.LastSeen.After(settled)
	})
	phases, err := lab.BootPhases(vm.Started(), n)
	if err != nil {
		return "", err
	}
	r := n.Status.Report
	if r.RootMode != mode {
		return "", fmt.Errorf("%s: root mode %q, want %s", node, r.RootMode, mode)
	}
	a := n.Agent
	taken := r.MemTotalBytes - a.MemAvailableBytes
	rootRAM := a.RootUsedBytes + a.RootLowerBytes
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %s |", image, mode, unpacked>>20, rootRAM>>20, taken>>20,
		phases.Downloads, phases.Kernel, phases.Init, phases.Ready, phases.Total, rate), nil
}
