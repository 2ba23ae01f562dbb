package imagecache

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUnpackBench compares Unpack with `zstd -d | cpio -idm` on the same
// archive of a real tree (RAMBOOT_BENCH_TREE, default /usr/share), both
// into a fresh tmpfs, three runs each, interleaved. Run with
//
//	RAMBOOT_BENCH=1 go test -run TestUnpackBench -v ./nodeagent/imagecache/
func TestUnpackBench(t *testing.T) {
	if os.Getenv("RAMBOOT_BENCH") == "" {
		t.Skip("set RAMBOOT_BENCH=1")
	}
	requireRoot(t)
	tree := os.Getenv("RAMBOOT_BENCH_TREE")
	if tree == "" {
		tree = "/usr/share"
	}
	dir := t.TempDir()
	arc := filepath.Join(dir, "rootfs.cpio.zst")
	cmd := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio --quiet -o -H newc | zstd -q -3 -T0 -o "+arc)
	cmd.Dir = tree
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make archive: %v %s", err, out)
	}
	raw, err := exec.Command("sh", "-c", "zstd -d -c "+arc+" | wc -c").Output()
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	fmt.Sscan(string(raw), &size)
	target := filepath.Join(dir, "t")
	os.Mkdir(target, 0o755)
	once := func(fn func() error) time.Duration {
		if err := unix.Mount("tmpfs", target, "tmpfs", 0, "size=8g"); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(target, unix.MNT_DETACH)
		exec.Command("sync").Run()
		start := time.Now()
		if err := fn(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	var mine, gnu []time.Duration
	for range 3 {
		mine = append(mine, once(func() error {
			f, err := os.Open(arc)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = UnpackZstd(context.Background(), f, target)
			return err
		}))
		gnu = append(gnu, once(func() error {
			c := exec.Command("sh", "-c", "zstd -d -q -c "+arc+" | cpio --quiet -idm --no-absolute-filenames")
			c.Dir = target
			out, err := c.CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		}))
	}
	slices.Sort(mine)
	slices.Sort(gnu)
	mbps := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	t.Logf("archive: %s, %.0f MiB uncompressed", tree, float64(size)/(1<<20))
	t.Logf("| unpacker | median of 3 | MiB/s |")
	t.Logf("| ramboot-agent (imagecache.UnpackZstd) | %s | %.0f |", mine[1].Round(time.Millisecond), mbps(mine[1]))
	t.Logf("| zstd -d \\| cpio -idm | %s | %.0f |", gnu[1].Round(time.Millisecond), mbps(gnu[1]))
	t.Logf("ratio (ours / cpio, MiB/s): %.2fx", mbps(mine[1])/mbps(gnu[1]))
}
