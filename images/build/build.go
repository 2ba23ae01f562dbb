// Package build turns a root file-system tree into a ramboot image in an
// images.Store: the engine of `ramboot image build`.
//
// The tree (a chroot, debootstrap output, an unpacked container image)
// becomes a newc cpio archive compressed as one zstd frame, the kernel a
// blob of its own, and both are committed under a name:
//
//	st := &images.Store{Dir: "/var/lib/ramboot/images"}
//	m, d, err := build.Build(ctx, build.Options{
//		RootDir:  "/srv/rootfs/debian12",
//		Name:     "debian12",
//		Store:    st,
//		Progress: os.Stderr,
//	})
//
// The archive is streamed from the tree through the compressor into the
// store: nothing is held in memory whole, and nothing is visible under the
// name until the final commit. Its last entry, before the trailer, is
// overlay.ImageIDPath, holding the manifest's ContentDigest: the SHA-256 of
// every archive byte before that entry (see [images.Manifest]). A node
// reads it from its own root to report what it actually runs. A file at
// that path in the tree is left out; parent directories etc and
// etc/ramboot are added when the tree lacks them.
//
// Builds are reproducible: two builds of the same tree give byte-identical
// root file-system blobs (only the manifest's Created differs). Entry
// order, inode numbers and the added entries are fixed by the tree, and the
// compressor runs with a fixed configuration, whatever the machine.
// Modification times are kept unless a SourceDateEpoch clamps them.
package build

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
)

// DefaultLevel is the zstd level Build uses when Options.Level is 0:
// zstd's own default, the encoder's second-fastest speed. On 1.3 GB of
// Debian binaries and libraries on 2 cores it makes the image 9% smaller
// than level 1 for 25% more build time (docs/benchmarks.md); an image is
// built once and sent to every node at every boot.
const DefaultLevel = 3

// encoderConcurrency returns the number of zstd compression jobs to run at
// once. With concurrent blocks the encoder cuts the stream into jobs whose
// size depends only on the level, so its output is the same for any
// concurrency above 1; below 2 it would switch to another mode, so the
// floor is 2 whatever GOMAXPROCS says, and the compressed bytes do not
// depend on the machine. The cap bounds memory: each worker adds a few
// jobs in flight, and a job holds four windows (16-32 MiB); with two, a
// level-3 build peaks at about 370 MB resident.
func encoderConcurrency() int {
	return max(2, min(4, runtime.GOMAXPROCS(0)))
}

// Options configures Build.
type Options struct {
	// RootDir is the root file-system tree to build from. Required; "/"
	// (or any path to the host's root) is refused.
	RootDir string
	// Name is the image name to commit (see images.ValidName). Required.
	Name string
	// Kernel is the kernel file, a path on the host. Default: the
	// RootDir/boot/vmlinuz-<release> with the highest release.
	Kernel string
	// Store is the store to build into. Required.
	Store *images.Store
	// SourceDateEpoch, when set, clamps modification times in the archive
	// to it. Default: the environment's SOURCE_DATE_EPOCH (seconds since
	// 1970) if set, else none: times are kept as they are in the tree,
	// which already makes builds of one tree identical, and keeps
	// timestamp-checked caches (Python .pyc files) valid on the nodes.
	SourceDateEpoch *time.Time
	// Level is the zstd compression level, 1 to 22 (the encoder has four
	// speeds: 1-2, 3-5, 6-9, 10-22). Default: DefaultLevel.
	Level int
	// Progress, when set, receives human-readable progress lines (entries,
	// MiB, rate) about once a second, and a summary.
	Progress io.Writer
	// CrossFilesystems includes the contents of file systems mounted inside
	// RootDir. By default a mount point (proc, sys, dev of a chroot) is
	// archived empty, and Build warns about each one.
	CrossFilesystems bool
	// Logger logs the committed image at Info, mount points left empty at
	// Warn. Default: discard.
	Logger *slog.Logger
}

// Build builds the image described by opt, commits it under opt.Name and
// returns its manifest and the manifest's digest. On error nothing is
// committed; blobs already stored stay, unnamed.
func Build(ctx context.Context, opt Options) (images.Manifest, images.Digest, error) {
	start := time.Now()
	b, err := newBuilder(opt)
	if err != nil {
		return images.Manifest{}, "", err
	}
	log := b.log
	log.Debug("building image", "image", opt.Name, "path", b.root)
	log.Debug("using kernel", "image", opt.Name, "path", b.kernel)

	kernel, version, err := b.putKernel(ctx)
	if err != nil {
		return images.Manifest{}, "", fmt.Errorf("build image %q: %w", opt.Name, err)
	}
	rootfs, uncompressed, content, err := b.putRootfs(ctx)
	if err != nil {
		return images.Manifest{}, "", fmt.Errorf("build image %q: %w", opt.Name, err)
	}
	m := images.Manifest{
		SchemaVersion:          images.SchemaVersion,
		Name:                   opt.Name,
		Created:                time.Now().UTC().Truncate(time.Second),
		Source:                 b.source,
		KernelVersion:          version,
		Kernel:                 kernel,
		Rootfs:                 rootfs,
		RootfsUncompressedSize: uncompressed,
		ContentDigest:          content,
	}
	d, err := opt.Store.Commit(opt.Name, m)
	if err != nil {
		return images.Manifest{}, "", fmt.Errorf("build image %q: %w", opt.Name, err)
	}
	dur := time.Since(start)
	b.progressf("%s: %s uncompressed, %s compressed (%.1f%%), in %s\n",
		opt.Name, mib(uncompressed), mib(rootfs.Size), 100*float64(rootfs.Size)/float64(uncompressed), dur.Round(time.Millisecond))
	log.Info("image committed", "image", opt.Name+"@"+string(d), "bytes", rootfs.Size, "dur", dur)
	return m, d, nil
}

// builder is one build's settled options.
type builder struct {
	opt    Options
	log    *slog.Logger
	root   string // RootDir with symlinks resolved
	source string // RootDir made absolute
	kernel string
	epoch  *time.Time
	level  int
}

func newBuilder(opt Options) (*builder, error) {
	b := &builder{opt: opt, log: opt.Logger, level: opt.Level, epoch: opt.SourceDateEpoch}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if err := images.ValidName(opt.Name); err != nil {
		errs = append(errs, err)
	}
	if opt.Store == nil {
		errs = append(errs, errors.New("no store"))
	}
	if b.level == 0 {
		b.level = DefaultLevel
	}
	if b.level < 1 || b.level > 22 {
		errs = append(errs, fmt.Errorf("zstd level %d: want 1 to 22", opt.Level))
	}
	if b.epoch == nil {
		if s, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok {
			sec, err := strconv.ParseInt(s, 10, 64)
			if err != nil || sec < 0 {
				errs = append(errs, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", s))
			}
			t := time.Unix(sec, 0).UTC()
			b.epoch = &t
		}
	}
	if err := b.setRoot(opt.RootDir); err != nil {
		errs = append(errs, err)
	} else if opt.Kernel != "" {
		b.kernel = opt.Kernel
	} else if k, err := findKernel(filepath.Join(b.root, "boot")); err != nil {
		errs = append(errs, err)
	} else {
		b.kernel = k
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("build image %q: %w", opt.Name, err)
	}
	return b, nil
}

// setRoot checks the root directory and refuses the host's root.
func (b *builder) setRoot(dir string) error {
	if dir == "" {
		return errors.New("no root directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("root directory %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("root directory: %w", err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("root directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("root directory %s: not a directory", dir)
	}
	if hostRoot, err := os.Stat("/"); real == "/" || err == nil && os.SameFile(fi, hostRoot) {
		return fmt.Errorf("root directory %s: refusing to build an image of the host's root file system", dir)
	}
	b.root, b.source = real, abs
	return nil
}

func (b *builder) putKernel(ctx context.Context) (images.Artifact, string, error) {
	f, err := os.Open(b.kernel)
	if err != nil {
		return images.Artifact{}, "", fmt.Errorf("open kernel: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return images.Artifact{}, "", fmt.Errorf("open kernel %s: not a regular file", b.kernel)
	}
	version := kernelVersion(b.kernel, f)
	a, err := b.opt.Store.Put(ctx, f)
	if err != nil {
		return images.Artifact{}, "", fmt.Errorf("store kernel %s: %w", b.kernel, err)
	}
	a.MediaType = images.MediaTypeKernel
	return a, version, nil
}

// putRootfs streams the compressed archive into the store: a goroutine
// writes it into a pipe that Put reads.
func (b *builder) putRootfs(ctx context.Context) (a images.Artifact, uncompressed int64, content images.Digest, err error) {
	pr, pw := io.Pipe()
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() {
		uncompressed, content, werr = b.writeRootfs(ctx, pw)
		pw.CloseWithError(werr) // nil: Put reads EOF
	})
	a, err = b.opt.Store.Put(ctx, pr)
	pr.CloseWithError(errors.New("store stopped reading")) // unblocks the writer if Put failed
	wg.Wait()
	if werr != nil {
		return a, 0, "", werr
	}
	if err != nil {
		return a, 0, "", fmt.Errorf("store rootfs: %w", err)
	}
	a.MediaType = images.MediaTypeRootfs
	return a, uncompressed, content, nil
}

// writeRootfs writes the compressed archive to w and returns its
// uncompressed size and content digest.
func (b *builder) writeRootfs(ctx context.Context, w io.Writer) (int64, images.Digest, error) {
	extra, err := b.missingDirs()
	if err != nil {
		return 0, "", err
	}
	zw, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(b.level)),
		zstd.WithEncoderConcurrency(encoderConcurrency()),
		zstd.WithConcurrentBlocks(true),
	)
	if err != nil {
		return 0, "", fmt.Errorf("start zstd encoder: %w", err)
	}
	defer zw.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(zw, h), 1<<20)
	cw := newc.NewWriter(bw)

	stats, err := cw.AddTree(ctx, b.root, newc.TreeOptions{
		SourceDateEpoch:  b.epoch,
		Skip:             func(p string) bool { return p == overlay.ImageIDPath },
		Progress:         b.progressReporter(),
		Append:           extra,
		CrossFilesystems: b.opt.CrossFilesystems,
	})
	if err != nil {
		return 0, "", err
	}
	for _, mp := range stats.MountPoints {
		p := filepath.Join(b.root, mp)
		b.log.Warn("mount point archived empty", "image", b.opt.Name, "path", p)
		b.progressf("%s: %s is another file system: archived empty (CrossFilesystems includes it)\n", b.opt.Name, p)
	}
	if err := bw.Flush(); err != nil {
		return 0, "", fmt.Errorf("compress rootfs: %w", err)
	}
	content := images.DigestFromHash(h)
	err = cw.WriteFile(newc.File{
		Name:    overlay.ImageIDPath,
		Mode:    0o644,
		Data:    []byte(string(content) + "\n"),
		ModTime: b.addedTime(),
	})
	if err == nil {
		err = cw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return 0, "", fmt.Errorf("write rootfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return 0, "", fmt.Errorf("compress rootfs: %w", err)
	}
	return cw.Written(), content, nil
}

// addedTime is the modification time of the entries Build adds.
func (b *builder) addedTime() time.Time {
	if b.epoch != nil {
		return *b.epoch
	}
	return time.Time{} // 1970
}

// missingDirs returns entries for the parents of overlay.ImageIDPath that
// the tree lacks, and refuses a tree where they are not directories.
func (b *builder) missingDirs() ([]newc.File, error) {
	var out []newc.File
	dir := filepath.Dir(overlay.ImageIDPath) // etc/ramboot
	var parents []string
	for d := dir; d != "."; d = filepath.Dir(d) {
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		fi, err := os.Lstat(filepath.Join(b.root, d))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, newc.File{Name: d, Mode: fs.ModeDir | 0o755, ModTime: b.addedTime()})
		case err != nil:
			return nil, fmt.Errorf("stat %s: %w", filepath.Join(b.root, d), err)
		case !fi.IsDir():
			return nil, fmt.Errorf("image tree %s: %s is a %v, not a directory, so %s cannot be added",
				b.root, d, fi.Mode().Type(), overlay.ImageIDPath)
		}
	}
	return out, nil
}

// progressReporter returns a newc progress callback that prints a line to
// opt.Progress at most once a second, or nil.
func (b *builder) progressReporter() func(int, int64) {
	if b.opt.Progress == nil {
		return nil
	}
	start := time.Now()
	last := start
	return func(files int, n int64) {
		now := time.Now()
		if now.Sub(last) < time.Second {
			return
		}
		last = now
		secs := now.Sub(start).Seconds()
		rate := 0.0
		if secs > 0 {
			rate = float64(n) / secs / (1 << 20)
		}
		b.progressf("%s: %d files, %s, %.1f MiB/s\n", b.opt.Name, files, mib(n), rate)
	}
}

func (b *builder) progressf(format string, args ...any) {
	if b.opt.Progress != nil {
		fmt.Fprintf(b.opt.Progress, format, args...)
	}
}

func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
