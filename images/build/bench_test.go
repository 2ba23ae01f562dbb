package build_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/newc"
)

// fillData fills b with content of one of three kinds, like the files of a
// root file system: text (configuration, documentation, scripts), machine
// code (repetitive but not text), or already-compressed data.
func fillData(r *rand.Rand, b []byte, kind int) {
	switch kind {
	case 0: // text: lines of words from a small vocabulary, Zipf-like
		vocab := benchVocab
		i := 0
		for i < len(b) {
			w := vocab[int(float64(len(vocab))*r.Float64()*r.Float64())]
			i += copy(b[i:], w)
			if i < len(b) {
				if r.IntN(12) == 0 {
					b[i] = '\n'
				} else {
					b[i] = ' '
				}
				i++
			}
		}
	case 1: // code: 4-byte words, most from a small set of "instructions"
		for i := 0; i+4 <= len(b); i += 4 {
			v := r.Uint32()
			if r.IntN(4) != 0 {
				v = uint32(r.IntN(512)) * 0x9e3779b1
			}
			b[i], b[i+1], b[i+2], b[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		}
	default: // compressed: random bytes
		for i := range b {
			b[i] = byte(r.Uint32())
		}
	}
}

var benchVocab = func() []string {
	r := rand.New(rand.NewPCG(7, 7))
	v := make([]string, 2000)
	for i := range v {
		n := 2 + r.IntN(9)
		w := make([]byte, n)
		for j := range w {
			w[j] = "etaoinshrdlucmfwypvbgkqjxz_-./="[r.IntN(31)]
		}
		v[i] = string(w)
	}
	return v
}()

// writeBenchTree writes a deterministic tree of about size bytes under dir,
// shaped like a root file system: nested directories, many small files and
// a few large ones (45% text, 35% code, 20% compressed by bytes), symlinks
// and hard links, and a kernel at boot/vmlinuz-6.1.0-bench.
func writeBenchTree(tb testing.TB, dir string, size int64) {
	tb.Helper()
	r := rand.New(rand.NewPCG(1, uint64(size)))
	tops := []string{"etc", "usr/bin", "usr/lib/x86_64-linux-gnu", "usr/share/doc", "usr/lib/python3/dist-packages", "var/lib"}
	var written int64
	buf := make([]byte, 8<<20)
	for n := 0; written < size; n++ {
		top := tops[r.IntN(len(tops))]
		sub := filepath.Join(dir, top, fmt.Sprintf("pkg%03d", r.IntN(150)))
		if r.IntN(3) == 0 {
			sub = filepath.Join(sub, fmt.Sprintf("d%d", r.IntN(5)))
		}
		if err := os.MkdirAll(sub, 0o755); err != nil {
			tb.Fatal(err)
		}
		// Sizes: mostly small, sometimes up to 8 MiB.
		fsize := 64 + r.IntN(16<<10)
		if r.IntN(50) == 0 {
			fsize = 256<<10 + r.IntN(8<<20-256<<10)
		}
		fsize = int(min(int64(fsize), size-written))
		kind := 0
		switch x := r.IntN(100); {
		case x >= 80:
			kind = 2
		case x >= 45:
			kind = 1
		}
		b := buf[:fsize]
		fillData(r, b, kind)
		p := filepath.Join(sub, fmt.Sprintf("f%05d", n))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			tb.Fatal(err)
		}
		written += int64(fsize)
		switch r.IntN(40) {
		case 0:
			if err := os.Symlink(filepath.Base(p), p+".link"); err != nil {
				tb.Fatal(err)
			}
		case 1:
			if err := os.Link(p, p+".hard"); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "boot"), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.1.0-bench"), []byte("bench kernel"), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkBuild builds a 64 MiB tree with Build and, for comparison,
// archives and compresses it with the standard tools:
//
//	find . | sort | cpio -o -H newc | zstd -T0 -<level>
//
// Both report MB/s of uncompressed archive and the compressed size. With
// RAMBOOT_BENCH_TREE set, they use that tree instead of the generated one
// (it needs a boot/vmlinuz-*).
func BenchmarkBuild(b *testing.B) {
	tree := os.Getenv("RAMBOOT_BENCH_TREE")
	if tree == "" {
		tree = b.TempDir()
		writeBenchTree(b, tree, 64<<20)
	}
	stats, err := newc.WriteTree(context.Background(), io.Discard, tree, newc.TreeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, level := range []int{1, 3} {
		b.Run(fmt.Sprintf("level=%d/ramboot", level), func(b *testing.B) {
			st := &images.Store{Dir: b.TempDir()}
			var m images.Manifest
			b.SetBytes(stats.Bytes)
			for b.Loop() {
				m, _, err = build.Build(context.Background(), build.Options{RootDir: tree, Name: "bench", Store: st, Level: level, NoCache: true, NoDefaultExcludes: true})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(m.Rootfs.Size)/(1<<20), "zst-MiB")
		})
		b.Run(fmt.Sprintf("level=%d/cpio+zstd", level), func(b *testing.B) {
			for _, tool := range []string{"cpio", "zstd", "find", "sort"} {
				if _, err := exec.LookPath(tool); err != nil {
					b.Skipf("%s not installed", tool)
				}
			}
			out := filepath.Join(b.TempDir(), "rootfs.cpio.zst")
			script := fmt.Sprintf("find . | sort | cpio -o -H newc --quiet | zstd -T0 -q -f -%d -o %s", level, out)
			b.SetBytes(stats.Bytes)
			for b.Loop() {
				cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
				cmd.Dir = tree
				cmd.Env = append(os.Environ(), "LC_ALL=C")
				if msg, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%s: %v\n%s", script, err, msg)
				}
			}
			fi, err := os.Stat(out)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(fi.Size())/(1<<20), "zst-MiB")
		})
	}
}

// TestWriteBenchTreeShape keeps the benchmark's tree what its comment says.
func TestWriteBenchTreeShape(t *testing.T) {
	dir := t.TempDir()
	writeBenchTree(t, dir, 4<<20)
	var files, links, total int
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&os.ModeSymlink != 0:
			links++
		case d.Type().IsRegular() && !strings.HasSuffix(p, ".hard"):
			files++
			total += int(fi.Size())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total < 4<<20 || total > 4<<20+64 || files < 50 {
		t.Errorf("tree of %d files, %d bytes, %d symlinks", files, total, links)
	}
}

// BenchmarkNoopRebuild times a rebuild of an unchanged tree (the cache
// hit): the tree's listing and nothing else. With RAMBOOT_BENCH_TREE set,
// it uses that tree instead of a generated 64 MiB one.
func BenchmarkNoopRebuild(b *testing.B) {
	tree := os.Getenv("RAMBOOT_BENCH_TREE")
	if tree == "" {
		tree = b.TempDir()
		writeBenchTree(b, tree, 64<<20)
	}
	st := &images.Store{Dir: b.TempDir()}
	opt := build.Options{RootDir: tree, Name: "bench", Store: st}
	if _, _, err := build.Build(context.Background(), opt); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		cached := false
		opt.Progress = func(p build.Progress) { cached = cached || p.Phase == build.PhaseCached }
		if _, _, err := build.Build(context.Background(), opt); err != nil {
			b.Fatal(err)
		}
		if !cached {
			b.Fatal("rebuild was not a cache hit")
		}
	}
}

// BenchmarkBuildVsCpio alternates, in every iteration, a Build (level 3,
// no cache, no excludes) and the standard pipeline on the same tree,
//
//	find . | sort | cpio -o -H newc --quiet | zstd -T0 -3
//
// so that both see the same machine load, and reports the ratios of their
// total times and of their sizes (below 1: ramboot faster or smaller).
// RAMBOOT_BENCH_TREE names a tree to use instead of the generated 64 MiB
// one.
func BenchmarkBuildVsCpio(b *testing.B) {
	for _, tool := range []string{"cpio", "zstd", "find", "sort"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	tree := os.Getenv("RAMBOOT_BENCH_TREE")
	if tree == "" {
		tree = b.TempDir()
		writeBenchTree(b, tree, 64<<20)
	}
	st := &images.Store{Dir: b.TempDir()}
	out := filepath.Join(b.TempDir(), "rootfs.cpio.zst")
	script := "find . | sort | cpio -o -H newc --quiet | zstd -T0 -q -f -3 -o " + out
	var rb, std time.Duration
	var m images.Manifest
	var err error
	for b.Loop() {
		start := time.Now()
		m, _, err = build.Build(context.Background(), build.Options{RootDir: tree, Name: "bench", Store: st, NoCache: true, NoDefaultExcludes: true})
		if err != nil {
			b.Fatal(err)
		}
		rb += time.Since(start)
		start = time.Now()
		cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
		cmd.Dir = tree
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", script, err, msg)
		}
		std += time.Since(start)
	}
	fi, err := os.Stat(out)
	if err != nil {
		b.Fatal(err)
	}
	n := float64(b.N)
	b.ReportMetric(rb.Seconds()/n, "ramboot-s")
	b.ReportMetric(std.Seconds()/n, "cpio-zstd-s")
	b.ReportMetric(rb.Seconds()/std.Seconds(), "time-ratio")
	b.ReportMetric(float64(m.Rootfs.Size)/float64(fi.Size()), "size-ratio")
}
