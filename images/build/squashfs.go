package build

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/images/source"
)

// The compressed root's squashfs configuration: zstd in 128 KiB blocks, at
// Options.SquashfsLevel (DefaultSquashfsLevel unless set). It depends on
// nothing of the machine, so two builds of one tree are byte-identical.
// On the Debian 12 systemd tree (docs/benchmarks.md, docs/decisions.md)
// zstd is 11% larger than xz but reads 4 times as fast; erofs's lz4hc
// reads 3 times as fast as zstd but is 1.7 times as large, and the RAM is
// what the mode is for. Larger blocks compress a little better and read
// slower.
const (
	SquashfsCompressor = "zstd"
	SquashfsBlockSize  = 128 << 10
)

// DefaultSquashfsLevel is the compressed root's zstd level when
// Options.SquashfsLevel is 0. On the Debian 12 systemd tree level 9 is
// 8% smaller than level 3 for 3.5 times its time (13 s); level 15 saves 5%
// more for another 5 times the time, level 19 under 1% more for 8 times
// again. The level costs build time only: zstd decompresses as fast
// whatever level compressed.
const DefaultSquashfsLevel = 9

// Tar2sqfs is the program that writes the squashfs image, from
// squashfs-tools-ng (Debian package squashfs-tools-ng). It reads a tar
// stream, so every source (a directory, a flattened container image)
// reaches it the same way, with the same excludes as the cpio archive,
// and it writes the same image for the same stream whatever the number
// of threads.
const Tar2sqfs = "tar2sqfs"

// rootModules are the modules the agent needs to mount the compressed
// root before the image's own /lib/modules is reachable.
var rootModules = []string{"loop", "squashfs", "overlay"}

// alignCompressed is the alignment of the squashfs image's data in the
// compressed root's archive: a page, so that a loop device maps it
// straight from the archive with page-aligned offsets.
const alignCompressed = 4096

// putCompressedRoot builds the squashfs image of t (with the same added
// entries as the cpio archive, the image-id file holding content) and
// stores the compressed root archive around it.
func (b *builder) putCompressedRoot(ctx context.Context, t *source.Tree, content images.Digest, kernelVersion string) (images.Artifact, error) {
	tmpDir, err := b.opt.Store.TmpDir()
	if err != nil {
		return images.Artifact{}, err
	}
	sq, err := os.CreateTemp(tmpDir, "squashfs-*")
	if err != nil {
		return images.Artifact{}, fmt.Errorf("compressed root: %w", err)
	}
	defer os.Remove(sq.Name())
	defer sq.Close()
	if err := b.writeSquashfs(ctx, t, content, sq.Name()); err != nil {
		return images.Artifact{}, err
	}
	fi, err := sq.Stat()
	if err != nil {
		return images.Artifact{}, fmt.Errorf("compressed root: %w", err)
	}
	mods, err := moduleEntries(t, kernelVersion, b.addedTime())
	if err != nil {
		return images.Artifact{}, err
	}
	if kernelVersion != "" && len(mods) == 0 {
		b.log.Warn("no loop, squashfs and overlay modules in the image: the compressed root mode needs them built into the kernel",
			"image", b.ref.String())
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := writeCompressedArchive(ctx, pw, mods, sq.Name(), fi.Size(), b.addedTime())
		pw.CloseWithError(err)
		done <- err
	}()
	a, err := b.opt.Store.Put(ctx, pr)
	pr.CloseWithError(errors.New("store stopped reading"))
	if werr := <-done; werr != nil && (err == nil || !errors.Is(err, werr)) {
		return images.Artifact{}, fmt.Errorf("compressed root: %w", werr)
	}
	if err != nil {
		return images.Artifact{}, fmt.Errorf("store compressed root: %w", err)
	}
	a.MediaType = images.MediaTypeCompressedRoot
	return a, nil
}

// writeCompressedArchive writes the compressed root's newc archive: the
// CompressedRootDir, the modules, a padding file that puts the squashfs
// data on a page boundary, and the squashfs image.
func writeCompressedArchive(ctx context.Context, w io.Writer, mods []newc.Entry, squashfs string, size int64, mtime time.Time) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	cw := newc.NewWriter(bw)
	entries := append([]newc.Entry{{Name: images.CompressedRootDir, Mode: fs.ModeDir | 0o700, ModTime: mtime}}, mods...)
	if _, err := cw.AddEntries(ctx, entries, newc.TreeOptions{}); err != nil {
		return err
	}
	// The squashfs entry's header: 110 bytes and its name, padded to 4.
	hdr := (110 + int64(len(images.CompressedRootImage)) + 1 + 3) &^ 3
	padName := images.CompressedRootDir + "/.pad"
	padHdr := (110 + int64(len(padName)) + 1 + 3) &^ 3
	at := cw.Written() + padHdr
	pad := (alignCompressed - (at+hdr)%alignCompressed) % alignCompressed
	if err := cw.WriteFile(newc.File{Name: padName, Mode: 0o600, Data: make([]byte, pad), ModTime: mtime}); err != nil {
		return err
	}
	sq := newc.Entry{
		Name: images.CompressedRootImage, Mode: 0o400, ModTime: mtime, Size: size, Path: squashfs,
	}
	if _, err := cw.AddEntries(ctx, []newc.Entry{sq}, newc.TreeOptions{}); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// writeSquashfs runs tar2sqfs on a tar stream of t written to its stdin.
func (b *builder) writeSquashfs(ctx context.Context, t *source.Tree, content images.Digest, out string) error {
	prog, err := exec.LookPath(Tar2sqfs)
	if err != nil {
		return fmt.Errorf("compressed root: %w (install squashfs-tools-ng, or build without it: --no-compressed-root)", err)
	}
	root := t.Lookup(".")
	defaults := "uid=0,gid=0,mode=0755,mtime=0"
	if root != nil {
		defaults = fmt.Sprintf("uid=%d,gid=%d,mode=0%o,mtime=%d", root.UID, root.GID, unixPerm(root.Mode), b.clamp(root.ModTime).Unix())
	}
	cmd := exec.CommandContext(ctx, prog,
		"--quiet", "--force", "--no-xattr", "--no-skip",
		"--compressor", SquashfsCompressor, "--comp-extra", "level="+strconv.Itoa(b.squashfsLevel),
		"--block-size", strconv.Itoa(SquashfsBlockSize),
		"--defaults", defaults, out)
	// tar2sqfs takes the superblock's time from SOURCE_DATE_EPOCH, else
	// from the defaults: the defaults it is.
	cmd.Env = envWithout(os.Environ(), "SOURCE_DATE_EPOCH")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("compressed root: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("compressed root: start %s: %w", prog, err)
	}
	extra, err := missingDirs(t, b.addedTime())
	if err == nil {
		err = b.writeTar(ctx, stdin, t, extra, content)
	}
	cerr := stdin.Close()
	werr := cmd.Wait()
	if werr != nil {
		msg := strings.TrimSpace(stderr.String())
		return fmt.Errorf("compressed root: %s: %w: %s", Tar2sqfs, werr, msg)
	}
	if err != nil {
		return fmt.Errorf("compressed root: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("compressed root: %w", cerr)
	}
	return nil
}

func envWithout(env []string, key string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, key+"=") {
			out = append(out, e)
		}
	}
	return out
}

// clamp applies SourceDateEpoch to a modification time, in whole seconds,
// as the cpio archive does.
func (b *builder) clamp(t time.Time) time.Time {
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	t = t.Truncate(time.Second)
	if b.epoch != nil && t.After(*b.epoch) {
		return *b.epoch
	}
	return t
}

func unixPerm(m fs.FileMode) int64 {
	p := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// writeTar writes the tree, extra and the image-id file as a tar stream:
// the same entries, owners, modes and times as the cpio archive. A hard
// link group's data goes with its first entry, the others link to it.
// Sockets, which tar cannot hold, are left out (a root tree's sockets are
// made at run time).
func (b *builder) writeTar(ctx context.Context, w io.Writer, t *source.Tree, extra []newc.File, content images.Digest) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	first := map[uint64]string{}
	var files int
	var done int64
	total := archiveSize(t.Entries)
	last := time.Now()
	for i := range t.Entries {
		e := &t.Entries[i]
		if err := ctx.Err(); err != nil {
			return err
		}
		name := e.Name
		if name == "." {
			name = "./" // tar2sqfs makes it the root's inode
		}
		h := &tar.Header{
			Name: name, Mode: unixPerm(e.Mode), Uid: e.UID, Gid: e.GID,
			ModTime: b.clamp(e.ModTime), Format: tar.FormatPAX,
		}
		var body func() (io.ReadCloser, error)
		switch typ := e.Mode.Type(); {
		case typ == fs.ModeDir:
			h.Typeflag = tar.TypeDir
		case typ == fs.ModeSymlink:
			h.Typeflag = tar.TypeSymlink
			h.Linkname = e.Linkname
			if h.Linkname == "" && e.Path != "" {
				target, err := os.Readlink(e.Path)
				if err != nil {
					return fmt.Errorf("read symlink %s: %w", e.Path, err)
				}
				h.Linkname = target
			}
		case typ == fs.ModeDevice|fs.ModeCharDevice:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, int64(e.Major), int64(e.Minor)
		case typ == fs.ModeDevice:
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeBlock, int64(e.Major), int64(e.Minor)
		case typ == fs.ModeNamedPipe:
			h.Typeflag = tar.TypeFifo
		case typ == fs.ModeSocket:
			continue
		case typ == 0:
			if e.Link != 0 {
				if name, ok := first[e.Link]; ok {
					h.Typeflag, h.Linkname = tar.TypeLink, name
					break
				}
				first[e.Link] = e.Name
			}
			h.Typeflag, h.Size = tar.TypeReg, e.Size
			body = func() (io.ReadCloser, error) {
				if e.Open != nil {
					return e.Open()
				}
				return os.Open(e.Path)
			}
		default:
			return fmt.Errorf("%s: unsupported file type %v", describe(t, *e), typ)
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", describe(t, *e), err)
		}
		if body != nil && h.Size > 0 {
			r, err := body()
			if err != nil {
				return fmt.Errorf("open %s: %w", describe(t, *e), err)
			}
			n, err := io.Copy(tw, r)
			r.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", describe(t, *e), err)
			}
			done += n
		}
		files++
		if now := time.Now(); now.Sub(last) > 250*time.Millisecond {
			last = now
			b.progress(Progress{Phase: PhaseCompressedRoot, Files: files, TotalFiles: len(t.Entries), Bytes: done, TotalBytes: total})
		}
	}
	for _, f := range extra {
		h := &tar.Header{Name: f.Name, Typeflag: tar.TypeDir, Mode: unixPerm(f.Mode), ModTime: b.clamp(f.ModTime), Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
	}
	id := []byte(string(content) + "\n")
	h := &tar.Header{Name: overlay.ImageIDPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(id)),
		ModTime: b.clamp(b.addedTime()), Format: tar.FormatPAX}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if _, err := tw.Write(id); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	b.progress(Progress{Phase: PhaseCompressedRoot, Files: len(t.Entries), TotalFiles: len(t.Entries), Bytes: max(done, total), TotalBytes: total})
	return bw.Flush()
}

// moduleEntries returns the archive entries of the image's loop, squashfs
// and overlay modules and their dependencies, under
// CompressedRootModules/<release>/ with a modules.dep of their own lines;
// none when the tree has no modules.dep for the release (or no release is
// known) or the modules are built in.
func moduleEntries(t *source.Tree, release string, mtime time.Time) ([]newc.Entry, error) {
	if release == "" {
		return nil, nil
	}
	var dir string
	for _, d := range []string{"lib/modules/" + release, "usr/lib/modules/" + release} {
		if e := t.Lookup(d + "/modules.dep"); e != nil && e.Mode.IsRegular() {
			dir = d
			break
		}
	}
	if dir == "" {
		return nil, nil
	}
	dep, err := readEntry(t, t.Lookup(dir+"/modules.dep"), 16<<20)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{} // module file (relative) -> its dependencies
	byName := map[string]string{} // module name -> file
	for _, line := range strings.Split(string(dep), "\n") {
		file, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[file] = strings.Fields(rest)
		byName[moduleName(file)] = file
	}
	want := map[string]bool{}
	var add func(file string)
	add = func(file string) {
		if want[file] {
			return
		}
		want[file] = true
		for _, d := range deps[file] {
			add(d)
		}
	}
	for _, m := range rootModules {
		if f, ok := byName[m]; ok {
			add(f)
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	files := make([]string, 0, len(want))
	for f := range want {
		files = append(files, f)
	}
	sort.Strings(files)
	var depOut strings.Builder
	base := path.Join(images.CompressedRootModules, release)
	out := []newc.Entry{}
	dirs := map[string]bool{}
	mkdirs := func(p string) {
		var parts []string
		for d := path.Dir(p); d != images.CompressedRootDir && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parts = append(parts, d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			out = append(out, newc.Entry{Name: parts[i], Mode: fs.ModeDir | 0o755, ModTime: mtime})
		}
	}
	for _, f := range files {
		fmt.Fprintf(&depOut, "%s:", f)
		for _, d := range deps[f] {
			fmt.Fprintf(&depOut, " %s", d)
		}
		depOut.WriteString("\n")
		e := t.Lookup(path.Join(dir, f))
		if e == nil || !e.Mode.IsRegular() {
			return nil, fmt.Errorf("compressed root: module %s in modules.dep is not in the image", path.Join(dir, f))
		}
		name := path.Join(base, f)
		mkdirs(name)
		me := *e
		me.Name, me.Link, me.ModTime = name, 0, mtime
		out = append(out, me)
	}
	depData := []byte(depOut.String())
	mkdirs(path.Join(base, "modules.dep"))
	out = append(out, newc.Entry{
		Name: path.Join(base, "modules.dep"), Mode: 0o644, ModTime: mtime, Size: int64(len(depData)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(string(depData))), nil },
	})
	newc.SortEntries(out)
	return out, nil
}

// moduleName is a module's name from its file: "kernel/fs/overlayfs/overlay.ko.xz" -> "overlay".
func moduleName(file string) string {
	n := path.Base(file)
	if i := strings.Index(n, ".ko"); i >= 0 {
		n = n[:i]
	}
	return strings.ReplaceAll(n, "-", "_")
}

// readEntry reads a regular file of the tree, up to limit bytes.
func readEntry(t *source.Tree, e *newc.Entry, limit int64) ([]byte, error) {
	var r io.ReadCloser
	var err error
	if e.Open != nil {
		r, err = e.Open()
	} else {
		r, err = os.Open(e.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", describe(t, *e), err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", describe(t, *e), err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", describe(t, *e), limit)
	}
	return b, nil
}
