// Package build turns a root file-system tree into a ramboot image in an
// images.Store: the engine of `ramboot image build`.
//
// The tree (a directory such as a chroot or debootstrap output, or a
// container image from any images/source) becomes a newc cpio archive
// compressed as one zstd (or gzip) frame, the kernel a blob of its own,
// and, unless Options.NoCompressedRoot, the same tree as a squashfs image
// for the compressed root mode (see putCompressedRoot); all are committed
// under a reference:
//
//	st := &images.Store{Dir: "/var/lib/ramboot/images"}
//	m, d, err := build.Build(ctx, build.Options{
//		RootDir: "/srv/rootfs/debian12", // or Source: source.Parse("docker://...")
//		Name:    "debian12:v3",
//		Store:   st,
//	})
//
// The archive is streamed from the tree through the compressor into the
// store: nothing is held in memory whole, and nothing is visible under the
// reference until the final commit. Its last entry, before the trailer, is
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
//
// A rebuild of an unchanged tree is a no-op: Build records, under the
// store's cache/, the manifest each (tree, options) pair gave, keyed on
// the tree's metadata (see CacheKey), and when the key is unchanged and
// the manifest's blobs are still stored it commits that manifest again
// (nothing at all when the reference already points to it).
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
	"math"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/images/source"
)

// DefaultLevel is the zstd level Build uses when Options.Level is 0:
// zstd's own default, the encoder's second-fastest speed. On 1.3 GB of
// Debian binaries and libraries on 2 cores it makes the image 9% smaller
// than level 1 for 25% more build time (docs/benchmarks.md); an image is
// built once and sent to every node at every boot.
const DefaultLevel = 3

// DefaultGzipLevel is the gzip level of Compression "gzip" when
// Options.Level is 0.
const DefaultGzipLevel = 6

// Compression names the root file system's compressor.
type Compression string

// The compressors.
const (
	// Zstd needs Linux 5.9 or later (CONFIG_RD_ZSTD). The default.
	Zstd Compression = "zstd"
	// Gzip is for older kernels: slower to build and to unpack, larger.
	Gzip Compression = "gzip"
)

// Options configures Build.
type Options struct {
	// Source is the tree to build from (see images/source). Required
	// unless RootDir is set.
	Source source.Source
	// RootDir is a root file-system directory to build from, the same as
	// Source: source.Dir{Path: RootDir}. "/" (or any path to the host's
	// root) is refused.
	RootDir string
	// Name is the reference to commit, "name" or "name:tag" (a bare name
	// means name:latest). Required.
	Name string
	// Kernel is the kernel file, a path on the host. Default: the tree's
	// boot/vmlinuz-<release> with the highest release.
	Kernel string
	// Store is the store to build into. Required.
	Store *images.Store
	// SourceDateEpoch, when set, clamps modification times in the archive
	// to it. Default: the environment's SOURCE_DATE_EPOCH (seconds since
	// 1970) if set, else none: times are kept as they are in the tree,
	// which already makes builds of one tree identical, and keeps
	// timestamp-checked caches (Python .pyc files) valid on the nodes.
	SourceDateEpoch *time.Time
	// Compression is the root file system's compressor. Default Zstd.
	Compression Compression
	// Compressor says what compresses zstd: "zstd" runs the zstd program
	// (C, about 1.4 times as fast as the Go encoder on two cores), "go"
	// the Go encoder (github.com/klauspost/compress). Default: the program
	// when it is on $PATH, else Go. The archive is the same either way;
	// the compressed bytes depend on the compressor and its version.
	Compressor string
	// Level is the compression level: zstd 1 to 22 (the encoder has four
	// speeds: 1-2, 3-5, 6-9, 10-22), gzip 1 to 9. Default: DefaultLevel,
	// DefaultGzipLevel.
	Level int
	// Excludes are patterns of entries to leave out (see Match), on top of
	// DefaultExcludes unless NoDefaultExcludes is set.
	Excludes []string
	// NoDefaultExcludes keeps what DefaultExcludes and the other-kernels
	// rule would leave out.
	NoDefaultExcludes bool
	// Progress, when set, is called with the build's progress about four
	// times a second, and once at the end of each phase.
	Progress func(Progress)
	// CrossFilesystems includes the contents of file systems mounted inside
	// a directory source. By default a mount point (proc, sys, dev of a
	// chroot) is archived empty, and Build warns about each one.
	CrossFilesystems bool
	// Insecure lets a registry source use plain HTTP or unchecked TLS.
	Insecure bool
	// NoCache builds even when the cache says the tree is unchanged.
	NoCache bool
	// NoCompressedRoot leaves out the compressed root (the tree as a
	// squashfs image for the compressed root mode, see
	// images.MediaTypeCompressedRoot), which needs the tar2sqfs program.
	// Default: build it.
	NoCompressedRoot bool
	// SquashfsLevel is the compressed root's zstd level, 1 to 22. Default:
	// DefaultSquashfsLevel.
	SquashfsLevel int
	// Logger logs the committed image at Info, mount points left empty at
	// Warn. Default: discard.
	Logger *slog.Logger
}

// Phase is a step of a build, for Progress.
type Phase string

// The phases of a build.
const (
	PhaseScan    Phase = "scan"    // listing the source (pulling and flattening a container image)
	PhaseArchive Phase = "archive" // writing and compressing the archive
	// PhaseCompressedRoot is writing the compressed root's squashfs image.
	PhaseCompressedRoot Phase = "squashfs"
	PhaseCached         Phase = "cached" // the cache says the tree is unchanged: nothing built
	PhaseDone           Phase = "done"   // committed
)

// Progress is where a build is.
type Progress struct {
	// Phase is the current step.
	Phase Phase
	// Files is the number of archive entries written so far, of
	// TotalFiles.
	Files, TotalFiles int
	// Bytes is the number of uncompressed archive bytes written so far, of
	// about TotalBytes.
	Bytes, TotalBytes int64
	// CompressedBytes is the size of the compressed root file system, at
	// PhaseDone.
	CompressedBytes int64
	// Elapsed is the time since Build started.
	Elapsed time.Duration
}

// Builder returns what the manifest's builder field says: "ramboot" and
// the module version and VCS revision of the running binary.
func Builder() string {
	v := "ramboot devel"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = "ramboot " + bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
	}
	return v
}

// Build builds the image described by opt, commits it under opt.Name and
// returns its manifest and the manifest's digest. On error nothing is
// committed; blobs already stored stay, unnamed, until images.Store.GC.
func Build(ctx context.Context, opt Options) (images.Manifest, images.Digest, error) {
	start := time.Now()
	b, err := newBuilder(opt)
	if err != nil {
		return images.Manifest{}, "", err
	}
	b.start = start
	m, d, err := b.build(ctx)
	if err != nil {
		return images.Manifest{}, "", fmt.Errorf("build image %s: %w", b.ref, err)
	}
	return m, d, nil
}

// builder is one build's settled options.
type builder struct {
	opt      Options
	ref      images.Reference
	src      source.Source
	log      *slog.Logger
	epoch    *time.Time
	level    int
	excludes []string
	// squashfsLevel is the compressed root's zstd level.
	squashfsLevel int
	start         time.Time
	zstdCmd       string // the zstd program, when it compresses
	zstdVer       string // its version
}

func newBuilder(opt Options) (*builder, error) {
	b := &builder{opt: opt, log: opt.Logger, level: opt.Level, epoch: opt.SourceDateEpoch, src: opt.Source}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	ref, err := images.ParseReference(opt.Name)
	if err != nil {
		errs = append(errs, err)
	}
	b.ref = ref
	if opt.Store == nil {
		errs = append(errs, errors.New("no store"))
	}
	switch {
	case b.src == nil && opt.RootDir == "":
		errs = append(errs, errors.New("no source (Source or RootDir)"))
	case b.src == nil:
		b.src = source.Dir{Path: opt.RootDir}
	case opt.RootDir != "":
		errs = append(errs, errors.New("both Source and RootDir set"))
	}
	switch opt.Compression {
	case "", Zstd:
		b.opt.Compression = Zstd
		if b.level == 0 {
			b.level = DefaultLevel
		}
		if b.level < 1 || b.level > 22 {
			errs = append(errs, fmt.Errorf("zstd level %d: want 1 to 22", opt.Level))
		}
	case Gzip:
		if b.level == 0 {
			b.level = DefaultGzipLevel
		}
		if b.level < 1 || b.level > 9 {
			errs = append(errs, fmt.Errorf("gzip level %d: want 1 to 9", opt.Level))
		}
	default:
		errs = append(errs, fmt.Errorf("compression %q: want zstd or gzip", opt.Compression))
	}
	b.squashfsLevel = opt.SquashfsLevel
	if b.squashfsLevel == 0 {
		b.squashfsLevel = DefaultSquashfsLevel
	}
	if b.squashfsLevel < 1 || b.squashfsLevel > 22 {
		errs = append(errs, fmt.Errorf("squashfs zstd level %d: want 1 to 22", opt.SquashfsLevel))
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
	if err := b.pickCompressor(); err != nil {
		errs = append(errs, err)
	}
	if !opt.NoDefaultExcludes {
		b.excludes = append(b.excludes, DefaultExcludes...)
	}
	for _, p := range opt.Excludes {
		if err := checkPattern(p); err != nil {
			errs = append(errs, err)
		}
		b.excludes = append(b.excludes, p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("build image %s: %w", opt.Name, err)
	}
	return b, nil
}

func (b *builder) progress(p Progress) {
	if b.opt.Progress != nil {
		p.Elapsed = time.Since(b.start)
		b.opt.Progress(p)
	}
}

func (b *builder) build(ctx context.Context) (images.Manifest, images.Digest, error) {
	st := b.opt.Store
	b.progress(Progress{Phase: PhaseScan})
	tmpDir, err := st.TmpDir()
	if err != nil {
		return images.Manifest{}, "", err
	}
	excl := compile(b.excludes)
	tree, err := b.src.Open(ctx, source.Options{
		Skip:             func(name string) bool { return name == overlay.ImageIDPath || excl.match(name) },
		CrossFilesystems: b.opt.CrossFilesystems,
		TmpDir:           tmpDir,
		Insecure:         b.opt.Insecure,
	})
	if err != nil {
		return images.Manifest{}, "", err
	}
	defer tree.Close()
	if err := source.CheckRootTree(tree); err != nil {
		return images.Manifest{}, "", err
	}
	kernel, err := b.findKernel(tree)
	if err != nil {
		return images.Manifest{}, "", err
	}
	if !b.opt.NoDefaultExcludes {
		b.excludeOtherKernels(tree, kernel)
	}
	if err := checkSizes(tree); err != nil {
		return images.Manifest{}, "", err
	}
	key, err := b.cacheKey(tree, kernel)
	if err != nil {
		return images.Manifest{}, "", err
	}
	if !b.opt.NoCache {
		if m, d, ok := b.cached(key); ok {
			b.progress(Progress{Phase: PhaseCached, Files: int(m.Files), TotalFiles: int(m.Files),
				Bytes: m.RootfsUncompressedSize, TotalBytes: m.RootfsUncompressedSize, CompressedBytes: m.Rootfs.Size})
			b.log.Info("image unchanged", "image", b.ref.String()+"@"+string(d), "path", tree.Source)
			return m, d, nil
		}
	}
	for _, mp := range tree.MountPoints {
		b.log.Warn("mount point archived empty", "image", b.ref.String(), "path", path.Join(tree.Root, mp))
	}

	kart, version, err := b.putKernel(ctx, kernel)
	if err != nil {
		return images.Manifest{}, "", err
	}
	rootfs, stats, content, err := b.putRootfs(ctx, tree)
	if err != nil {
		return images.Manifest{}, "", err
	}
	var compressed *images.Artifact
	if !b.opt.NoCompressedRoot {
		a, err := b.putCompressedRoot(ctx, tree, content, version)
		if err != nil {
			return images.Manifest{}, "", err
		}
		compressed = &a
	}
	m := images.Manifest{
		SchemaVersion:          images.SchemaVersion,
		Name:                   b.ref.Name,
		Tag:                    b.ref.Tag,
		Created:                time.Now().UTC().Truncate(time.Second),
		Source:                 tree.Source,
		Builder:                b.builderName(),
		KernelVersion:          version,
		Kernel:                 kart,
		Rootfs:                 rootfs,
		CompressedRoot:         compressed,
		RootfsUncompressedSize: stats.Bytes,
		Files:                  int64(stats.Files),
		Excludes:               b.excludes,
		ContentDigest:          content,
	}
	d, err := st.Commit(b.ref.String(), m)
	if err != nil {
		return images.Manifest{}, "", err
	}
	b.saveCache(key, d)
	b.progress(Progress{Phase: PhaseDone, Files: stats.Files, TotalFiles: stats.Files, Bytes: stats.Bytes, TotalBytes: stats.Bytes, CompressedBytes: rootfs.Size})
	b.log.Info("image committed", "image", b.ref.String()+"@"+string(d), "bytes", rootfs.Size, "dur", time.Since(b.start))
	return m, d, nil
}

// checkSizes reports, by name, a file newc cannot hold: 4 GiB or more.
func checkSizes(t *source.Tree) error {
	for _, e := range t.Entries {
		if e.Size > math.MaxUint32 {
			return fmt.Errorf("%s: %d bytes: the newc format holds files up to 4 GiB - 1 (leave it out with --exclude /%s)",
				describe(t, e), e.Size, e.Name)
		}
	}
	return nil
}

func describe(t *source.Tree, e newc.Entry) string {
	if e.Path != "" {
		return e.Path
	}
	return t.Source + ":/" + e.Name
}

// kernelFile is the kernel Build stores: a host file or a tree entry.
type kernelFile struct {
	hostPath string
	entry    *newc.Entry
	name     string // for kernelVersion: the file name
}

// findKernel returns opt.Kernel, or the tree's newest boot/vmlinuz-*.
func (b *builder) findKernel(t *source.Tree) (kernelFile, error) {
	if b.opt.Kernel != "" {
		fi, err := os.Stat(b.opt.Kernel)
		if err != nil {
			return kernelFile{}, fmt.Errorf("open kernel: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return kernelFile{}, fmt.Errorf("open kernel %s: not a regular file", b.opt.Kernel)
		}
		return kernelFile{hostPath: b.opt.Kernel, name: path.Base(b.opt.Kernel)}, nil
	}
	e := findKernelEntry(t.Entries)
	if e == nil {
		return kernelFile{}, fmt.Errorf("find kernel in %s/boot: %w", t.Source, ErrNoKernel)
	}
	return kernelFile{entry: e, name: path.Base(e.Name)}, nil
}

func (k kernelFile) open() (io.ReadCloser, error) {
	if k.hostPath != "" {
		return os.Open(k.hostPath)
	}
	if k.entry.Open != nil {
		return k.entry.Open()
	}
	return os.Open(k.entry.Path)
}

func (b *builder) putKernel(ctx context.Context, k kernelFile) (images.Artifact, string, error) {
	r, err := k.open()
	if err != nil {
		return images.Artifact{}, "", fmt.Errorf("open kernel: %w", err)
	}
	defer r.Close()
	// The version may sit in the bzImage header: keep the first 64 KiB.
	head := make([]byte, 64<<10)
	n, err := io.ReadFull(r, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return images.Artifact{}, "", fmt.Errorf("read kernel %s: %w", k.name, err)
	}
	head = head[:n]
	version := kernelVersion(k.name, bytesReaderAt(head))
	a, err := b.opt.Store.Put(ctx, io.MultiReader(bytesReader(head), r))
	if err != nil {
		return images.Artifact{}, "", fmt.Errorf("store kernel %s: %w", k.name, err)
	}
	a.MediaType = images.MediaTypeKernel
	return a, version, nil
}

// putRootfs streams the compressed archive into the store: a goroutine
// writes it into a pipe that Put reads.
func (b *builder) putRootfs(ctx context.Context, t *source.Tree) (a images.Artifact, stats newc.TreeStats, content images.Digest, err error) {
	pr, pw := io.Pipe()
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() {
		stats, content, werr = b.writeRootfs(ctx, t, pw)
		pw.CloseWithError(werr) // nil: Put reads EOF
	})
	a, err = b.opt.Store.Put(ctx, pr)
	pr.CloseWithError(errors.New("store stopped reading")) // unblocks the writer if Put failed
	wg.Wait()
	// The first failure is the cause: the store's (a full disk) makes the
	// writer fail on a closed pipe; the writer's (an unreadable file)
	// reaches the store as its read error.
	if err != nil && (werr == nil || !errors.Is(err, werr)) {
		return a, stats, "", fmt.Errorf("store rootfs: %w", err)
	}
	if werr != nil {
		return a, stats, "", werr
	}
	a.MediaType = images.MediaTypeRootfs
	if b.opt.Compression == Gzip {
		a.MediaType = images.MediaTypeRootfsGzip
	}
	return a, stats, content, nil
}

// writeRootfs writes the compressed archive to w and returns its stats
// and content digest.
func (b *builder) writeRootfs(ctx context.Context, t *source.Tree, w io.Writer) (newc.TreeStats, images.Digest, error) {
	extra, err := missingDirs(t, b.addedTime())
	if err != nil {
		return newc.TreeStats{}, "", err
	}
	total := archiveSize(t.Entries)
	zw, err := b.compressor(ctx, w, total)
	if err != nil {
		return newc.TreeStats{}, "", err
	}
	defer zw.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(zw, h), 1<<20)
	cw := newc.NewWriter(bw)

	stats, err := cw.AddEntries(ctx, t.Entries, newc.TreeOptions{
		SourceDateEpoch: b.epoch,
		Append:          extra,
		Progress: func(files int, n int64) {
			b.progress(Progress{Phase: PhaseArchive, Files: files, TotalFiles: len(t.Entries) + len(extra) + 1, Bytes: n, TotalBytes: total})
		},
	})
	if err != nil {
		return stats, "", err
	}
	if err := bw.Flush(); err != nil {
		return stats, "", fmt.Errorf("compress rootfs: %w", err)
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
		return stats, "", fmt.Errorf("write rootfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return stats, "", fmt.Errorf("compress rootfs: %w", err)
	}
	stats.Files++ // the image-id file
	stats.Bytes = cw.Written()
	return stats, content, nil
}

// archiveSize estimates the uncompressed archive's size: headers, names,
// data and padding (symlink targets of directory trees are not known yet).
func archiveSize(entries []newc.Entry) int64 {
	var n int64
	for _, e := range entries {
		n += (110 + int64(len(e.Name)) + 1 + 3) &^ 3
		n += (e.Size + int64(len(e.Linkname)) + 3) &^ 3
	}
	return n
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
func missingDirs(t *source.Tree, mtime time.Time) ([]newc.File, error) {
	var out []newc.File
	for _, d := range []string{"etc", path.Dir(overlay.ImageIDPath)} {
		e := t.Lookup(d)
		switch {
		case e == nil:
			out = append(out, newc.File{Name: d, Mode: fs.ModeDir | 0o755, ModTime: mtime})
		case !e.Mode.IsDir():
			return nil, fmt.Errorf("image tree %s: %s is a %v, not a directory, so %s cannot be added",
				t.Source, d, e.Mode.Type(), overlay.ImageIDPath)
		}
	}
	return out, nil
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func bytesReader(b []byte) io.Reader { return io.NewSectionReader(bytesReaderAt(b), 0, int64(len(b))) }
