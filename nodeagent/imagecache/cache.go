// Package imagecache keeps container images on the node in RAM: each image
// is fetched once from the head by digest, verified, and unpacked into a
// read-only tmpfs that every container of that image shares as its lower
// layer.
//
//	c := &imagecache.Cache{Dir: "/run/ramboot/images", Head: headClient} // a *headapi.Client
//	img, err := c.Resolve(ctx, "rocky9:latest")   // asks the head: name -> digest
//	dir, release, err := c.Lower(ctx, img.Digest)  // downloads, verifies, unpacks once
//	defer release()                                // the container is gone
//
// # Layout and guarantees
//
// Under Dir (a tmpfs: the cache mounts one there, capped at MaxBytes, when
// Dir is on anything else), blobs/<hex> holds each compressed root file
// system, named by its SHA-256; images/<manifest-hex>.json what the head
// said about the image; lower/<manifest-hex> is a tmpfs of its own holding
// the unpacked image, remounted read-only once complete (marked by
// lower/<manifest-hex>.ok). A blob is written to a temporary name, hashed
// on the way, and renamed only when its digest and size match; a cached
// blob is hashed again as it is unpacked, and one that no longer matches
// is fetched anew. An image in use by a container is never evicted; when
// the cache would pass MaxBytes the least recently used unused images go
// first. A restarted agent finds the lowers already unpacked.
//
// # Compressed lowers
//
// An image with a compressed root (overlay.NodeImage.CompressedRoot, the
// squashfs that the node's compressed root mode boots) is not unpacked: its
// blob is fetched instead of the cpio archive, verified the same way, and
// the squashfs inside it is mounted read-only at lower/<manifest-hex>
// through a loop device, where it lies in the cache's tmpfs. The image then
// takes its compressed size in RAM, once, whatever the number of its
// containers; the pages its containers read are cache the kernel can
// reclaim. Images without one are unpacked as above; Cache.Unpack unpacks
// every image.
package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/internal/loopdev"
)

// ErrNoHead means the cache has no head to ask (no node configuration).
var ErrNoHead = errors.New("no head configured")

// ErrUnknownImage means the head's store has no such image.
var ErrUnknownImage = errors.New("unknown image")

// Head is what the cache asks of the head: the agent daemon's client of
// the head's node API (*headapi.Client) is one.
type Head interface {
	// Image resolves a reference in the head's store; an unknown image
	// is a *headapi.StatusError with Code 404, a head that cannot be
	// reached any other error.
	Image(ctx context.Context, ref string) (overlay.NodeImage, error)
	// Download opens a file of the head's boot routes, such as
	// NodeImage.RootfsPath.
	Download(ctx context.Context, path string) (io.ReadCloser, error)
}

// Cache is the node's RAM cache of container images. Set the exported
// fields before first use and do not change them afterwards.
type Cache struct {
	// Dir is the cache's directory; required.
	Dir string
	// Head resolves references and serves blobs; nil means only images
	// already cached can be used.
	Head Head
	// MaxBytes caps the RAM the cache takes (compressed blobs plus
	// unpacked lowers). Default: a quarter of the node's RAM.
	MaxBytes int64
	// Unpack unpacks every image into a tmpfs lower, also those with a
	// compressed root. Default: an image with a compressed root is
	// mounted from it and stays compressed (see Compressed lowers).
	Unpack bool
	// Logger receives fetches and evictions at Info; nil discards.
	Logger *slog.Logger

	once    sync.Once
	initErr error
	mu      sync.Mutex
	entries map[images.Digest]*entry

	stats Stats
}

// Stats are the cache's counters since the agent started.
type Stats struct {
	// Fetches counts blobs downloaded.
	Fetches atomic.Int64
	// FetchedBytes counts bytes downloaded.
	FetchedBytes atomic.Int64
	// Refetches counts cached blobs found corrupt and fetched again.
	Refetches atomic.Int64
	// Unpacks counts lowers unpacked.
	Unpacks atomic.Int64
	// Mounts counts compressed lowers mounted.
	Mounts atomic.Int64
	// Hits counts Lower calls served by an unpacked lower.
	Hits atomic.Int64
	// Evictions counts images evicted to make room.
	Evictions atomic.Int64
}

// Stats returns the cache's counters.
func (c *Cache) Stats() *Stats { return &c.stats }

// entry is one image in the cache.
type entry struct {
	img     overlay.NodeImage
	mu      sync.Mutex  // held while fetching or unpacking
	refs    int         // containers using the lower; under Cache.mu
	lastUse time.Time   // under Cache.mu
	ready   bool        // lower unpacked and read-only; under mu
	lowerB  int64       // bytes the lower's tmpfs holds
	mounted atomic.Bool // the lower is the compressed root, mounted
}

// Image is what the cache holds of one image.
type Image struct {
	// NodeImage is what the head said about it.
	overlay.NodeImage
	// Unpacked is true when its lower is ready.
	Unpacked bool `json:"unpacked"`
	// Compressed is true when its lower is its compressed root, mounted.
	Compressed bool `json:"compressed,omitempty"`
	// LowerBytes is the RAM its unpacked lower takes (0 for a compressed
	// lower: its blob is its RAM).
	LowerBytes int64 `json:"lowerBytes"`
	// BlobBytes is the RAM its compressed blob takes (0 when not cached).
	BlobBytes int64 `json:"blobBytes"`
	// Users is how many containers use it now.
	Users int `json:"users"`
}

func (c *Cache) log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *Cache) blobPath(d string) string {
	return filepath.Join(c.Dir, "blobs", images.Digest(d).Hex())
}

// compressed reports whether img's lower is its compressed root.
func (c *Cache) compressed(img overlay.NodeImage) bool {
	return img.CompressedRoot != "" && !c.Unpack
}

// blob returns the blob the cache keeps of img: its digest, size and the
// head's route to it.
func (c *Cache) blob(img overlay.NodeImage) (digest string, size int64, route string) {
	if c.compressed(img) {
		return img.CompressedRoot, img.CompressedRootSize, img.CompressedRootPath
	}
	return img.Rootfs, img.RootfsSize, img.RootfsPath
}
func (c *Cache) lowerPath(d images.Digest) string {
	return filepath.Join(c.Dir, "lower", d.Hex())
}
func (c *Cache) imagePath(d images.Digest) string {
	return filepath.Join(c.Dir, "images", d.Hex()+".json")
}

// init makes Dir a RAM file system with its subdirectories, and loads
// what a previous agent left there.
func (c *Cache) init() error {
	c.once.Do(func() {
		c.entries = map[images.Digest]*entry{}
		if c.Dir == "" {
			c.initErr = errors.New("image cache: empty Dir")
			return
		}
		if c.MaxBytes <= 0 {
			c.MaxBytes = memTotal() / 4
		}
		if err := os.MkdirAll(c.Dir, 0o700); err != nil {
			c.initErr = fmt.Errorf("image cache: %w", err)
			return
		}
		if !inRAM(c.Dir) {
			opts := fmt.Sprintf("size=%d,mode=0700", c.MaxBytes)
			if err := unix.Mount("tmpfs", c.Dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
				c.initErr = fmt.Errorf("image cache: mount a tmpfs on %s: %w", c.Dir, err)
				return
			}
		}
		for _, d := range []string{"blobs", "images", "lower"} {
			if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o700); err != nil {
				c.initErr = fmt.Errorf("image cache: %w", err)
				return
			}
		}
		c.load()
	})
	return c.initErr
}

// load takes over the images a previous agent unpacked.
func (c *Cache) load() {
	des, _ := os.ReadDir(filepath.Join(c.Dir, "images"))
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(c.Dir, "images", de.Name()))
		if err != nil {
			continue
		}
		var img overlay.NodeImage
		if json.Unmarshal(b, &img) != nil {
			continue
		}
		d, err := images.ParseDigest(img.Digest)
		if err != nil {
			continue
		}
		e := &entry{img: img, lastUse: time.Now()}
		if _, err := os.Stat(c.lowerPath(d) + ".ok"); err == nil {
			switch {
			case isTmpfs(c.lowerPath(d)):
				e.ready, e.lowerB = true, tmpfsUsed(c.lowerPath(d))
			case isSquashfs(c.lowerPath(d)):
				e.ready = true
				e.mounted.Store(true)
			}
		}
		c.entries[d] = e
	}
}

// Resolve asks the head which image ref names ("name", "name:tag" or a
// manifest digest). An image already cached under its digest needs no
// head, and a name already cached still resolves when the head cannot be
// reached.
func (c *Cache) Resolve(ctx context.Context, ref string) (overlay.NodeImage, error) {
	if err := c.init(); err != nil {
		return overlay.NodeImage{}, err
	}
	if d, err := images.ParseDigest(ref); err == nil {
		c.mu.Lock()
		e, ok := c.entries[d]
		c.mu.Unlock()
		if ok {
			return e.img, nil
		}
	}
	if c.Head == nil {
		return overlay.NodeImage{}, fmt.Errorf("resolve image %q: %w", ref, ErrNoHead)
	}
	img, err := c.Head.Image(ctx, ref)
	var se *headapi.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return overlay.NodeImage{}, fmt.Errorf("%w %q: the head says: %s", ErrUnknownImage, ref, se.Message)
	case errors.As(err, &se):
		return overlay.NodeImage{}, fmt.Errorf("resolve image %q: the head says: %s", ref, se.Message)
	case err != nil:
		// The head is down (restarting, say): a name already cached
		// keeps working, as it resolved last.
		if img, ok := c.cachedByName(ref); ok {
			c.log().Warn("head unreachable: using the cached image", "image", ref, "digest", img.Digest, "err", err)
			return img, nil
		}
		return overlay.NodeImage{}, fmt.Errorf("resolve image %q at the head: %w", ref, err)
	}
	d, err := images.ParseDigest(img.Digest)
	if err != nil {
		return overlay.NodeImage{}, fmt.Errorf("resolve image %q: %w", ref, err)
	}
	if _, err := images.ParseDigest(img.Rootfs); err != nil {
		return overlay.NodeImage{}, fmt.Errorf("resolve image %q: %w", ref, err)
	}
	if img.CompressedRoot != "" {
		if _, err := images.ParseDigest(img.CompressedRoot); err != nil {
			return overlay.NodeImage{}, fmt.Errorf("resolve image %q: compressed root: %w", ref, err)
		}
	}
	c.mu.Lock()
	if _, ok := c.entries[d]; !ok {
		c.entries[d] = &entry{img: img, lastUse: time.Now()}
	}
	c.mu.Unlock()
	return img, nil
}

// cachedByName returns the most recently used cached image that ref
// resolved to.
func (c *Cache) cachedByName(ref string) (overlay.NodeImage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *entry
	for _, e := range c.entries {
		if (e.img.Ref == ref || e.img.Name == ref) && (best == nil || e.lastUse.After(best.lastUse)) {
			best = e
		}
	}
	if best == nil {
		return overlay.NodeImage{}, false
	}
	return best.img, true
}

// Lower returns the directory of the image's unpacked, read-only root file
// system, fetching and unpacking it first if needed, and a release
// function to call once the container using it is gone. The image must
// have been resolved (by this agent or a previous one).
func (c *Cache) Lower(ctx context.Context, digest images.Digest) (string, func(), error) {
	if err := c.init(); err != nil {
		return "", nil, err
	}
	c.mu.Lock()
	e, ok := c.entries[digest]
	if ok {
		e.refs++ // held from now on: not evicted while being prepared
		e.lastUse = time.Now()
	}
	c.mu.Unlock()
	if !ok {
		if _, err := c.Resolve(ctx, string(digest)); err != nil {
			return "", nil, err
		}
		return c.Lower(ctx, digest)
	}
	release := sync.OnceFunc(func() {
		c.mu.Lock()
		e.refs--
		e.lastUse = time.Now()
		c.mu.Unlock()
	})
	if err := c.prepare(ctx, digest, e); err != nil {
		release()
		return "", nil, err
	}
	return c.lowerPath(digest), release, nil
}

// prepare makes e's lower ready.
func (c *Cache) prepare(ctx context.Context, d images.Digest, e *entry) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ready {
		c.stats.Hits.Add(1)
		return nil
	}
	start := time.Now()
	if err := c.writeImage(d, e.img); err != nil {
		return err
	}
	prep, what := c.unpack, "image unpacked"
	if c.compressed(e.img) {
		prep, what = c.mountCompressed, "compressed image mounted"
	}
	for attempt := 0; ; attempt++ {
		if err := c.fetch(ctx, e.img); err != nil {
			return err
		}
		err := prep(ctx, d, e)
		if errors.Is(err, errCorrupt) && attempt == 0 {
			c.stats.Refetches.Add(1)
			bd, _, _ := c.blob(e.img)
			c.log().Warn("cached image blob corrupt: fetching it again", "image", e.img.Name, "digest", bd)
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	c.log().Info(what, "image", e.img.Name, "digest", d, "bytes", e.lowerB, "dur", time.Since(start).Round(time.Millisecond))
	return nil
}

func (c *Cache) writeImage(d images.Digest, img overlay.NodeImage) error {
	b, err := json.Marshal(img)
	if err != nil {
		return err
	}
	tmp := c.imagePath(d) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	return os.Rename(tmp, c.imagePath(d))
}

// fetch downloads img's blob unless it is cached.
func (c *Cache) fetch(ctx context.Context, img overlay.NodeImage) error {
	digest, size, route := c.blob(img)
	dst := c.blobPath(digest)
	if fi, err := os.Stat(dst); err == nil && fi.Size() == size {
		return nil
	}
	if c.Head == nil {
		return fmt.Errorf("fetch image %s: %w", img.Name, ErrNoHead)
	}
	if err := c.makeRoom(size, img.Digest); err != nil {
		return err
	}
	start := time.Now()
	body, err := c.Head.Download(ctx, route)
	if err != nil {
		return fmt.Errorf("fetch image %s: %w", img.Name, err)
	}
	defer body.Close()
	f, err := os.CreateTemp(filepath.Dir(dst), ".fetch-*")
	if err != nil {
		return fmt.Errorf("fetch image %s: %w", img.Name, err)
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(body, size+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fetch image %s: %w", img.Name, err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if n != size || got != digest {
		return fmt.Errorf("fetch image %s: got %d bytes with digest %s, want %d bytes with %s", img.Name, n, got, size, digest)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("fetch image %s: %w", img.Name, err)
	}
	c.stats.Fetches.Add(1)
	c.stats.FetchedBytes.Add(n)
	c.log().Info("image fetched", "image", img.Name, "digest", digest, "bytes", n, "dur", time.Since(start).Round(time.Millisecond))
	return nil
}

var errCorrupt = errors.New("cached blob corrupt")

// unpack unpacks d's cached blob into a fresh tmpfs at its lower path,
// checking the blob's digest on the way, and makes it read-only.
func (c *Cache) unpack(ctx context.Context, d images.Digest, e *entry) (err error) {
	img := e.img
	lower := c.lowerPath(d)
	c.removeLower(d)
	size := 2*img.RootfsUncompressedSize + 16<<20
	if err := c.makeRoom(size, img.Digest); err != nil {
		return err
	}
	if err := os.MkdirAll(lower, 0o755); err != nil {
		return fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	if err := unix.Mount("tmpfs", lower, "tmpfs", unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		return fmt.Errorf("unpack image %s: mount tmpfs on %s: %w", img.Name, lower, err)
	}
	defer func() {
		if err != nil {
			c.removeLower(d)
		}
	}()
	f, err := os.Open(c.blobPath(img.Rootfs))
	if err != nil {
		return fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	defer f.Close()
	h := sha256.New()
	_, uerr := UnpackZstd(ctx, io.TeeReader(f, h), lower)
	// Hash what the decoder did not read (padding, a damaged tail).
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != img.Rootfs {
		os.Remove(c.blobPath(img.Rootfs))
		return fmt.Errorf("unpack image %s: blob has digest %s, want %s: %w", img.Name, got, img.Rootfs, errCorrupt)
	}
	if uerr != nil {
		if errors.Is(uerr, unix.ENOSPC) {
			return fmt.Errorf("unpack image %s: larger than the %d bytes allowed for it: %w", img.Name, size, uerr)
		}
		return fmt.Errorf("unpack image %s: %w", img.Name, uerr)
	}
	if err := unix.Mount("", lower, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("unpack image %s: remount read-only: %w", img.Name, err)
	}
	if err := os.WriteFile(lower+".ok", nil, 0o600); err != nil {
		return fmt.Errorf("unpack image %s: %w", img.Name, err)
	}
	c.stats.Unpacks.Add(1)
	e.ready, e.lowerB = true, tmpfsUsed(lower)
	return nil
}

// mountCompressed mounts d's cached compressed root read-only at its lower
// path, through a loop device on the squashfs inside the blob, after
// checking the blob's digest.
func (c *Cache) mountCompressed(ctx context.Context, d images.Digest, e *entry) (err error) {
	img := e.img
	lower := c.lowerPath(d)
	c.removeLower(d)
	blob := c.blobPath(img.CompressedRoot)
	f, err := os.Open(blob)
	if err != nil {
		return fmt.Errorf("mount image %s: %w", img.Name, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return fmt.Errorf("mount image %s: %w", img.Name, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != img.CompressedRoot {
		os.Remove(blob)
		return fmt.Errorf("mount image %s: blob has digest %s, want %s: %w", img.Name, got, img.CompressedRoot, errCorrupt)
	}
	off, n, err := images.CompressedRootOffset(f, img.CompressedRootSize)
	if err != nil {
		return fmt.Errorf("mount image %s: %w", img.Name, err)
	}
	if err := os.MkdirAll(lower, 0o755); err != nil {
		return fmt.Errorf("mount image %s: %w", img.Name, err)
	}
	dev, err := loopdev.Attach(loopdev.Options{File: blob, Offset: off, Size: n})
	if err != nil {
		return fmt.Errorf("mount image %s: %w", img.Name, err)
	}
	if err := unix.Mount(dev.Path, lower, "squashfs", unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		dev.Detach()
		return fmt.Errorf("mount image %s: squashfs %s on %s: %w", img.Name, dev.Path, lower, err)
	}
	dev.Close() // the mount holds it; it detaches when unmounted
	if err := os.WriteFile(lower+".ok", nil, 0o600); err != nil {
		c.removeLower(d)
		return fmt.Errorf("mount image %s: %w", img.Name, err)
	}
	c.stats.Mounts.Add(1)
	e.ready, e.lowerB = true, 0
	e.mounted.Store(true)
	return nil
}

// ctxReader stops a long read when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// removeLower unmounts and removes d's lower, if any.
func (c *Cache) removeLower(d images.Digest) {
	lower := c.lowerPath(d)
	os.Remove(lower + ".ok")
	for isMountPoint(lower) {
		if err := unix.Unmount(lower, 0); err != nil {
			c.log().Warn("unmount image lower", "path", lower, "err", err)
			_ = unix.Unmount(lower, unix.MNT_DETACH)
			break
		}
	}
	os.Remove(lower)
}

// usage returns the bytes the cache holds.
func (c *Cache) usage() int64 {
	var n int64
	des, _ := os.ReadDir(filepath.Join(c.Dir, "blobs"))
	for _, de := range des {
		if fi, err := de.Info(); err == nil {
			n += fi.Size()
		}
	}
	c.mu.Lock()
	for _, e := range c.entries {
		n += e.lowerB
	}
	c.mu.Unlock()
	return n
}

// makeRoom evicts unused images, least recently used first, until need
// more bytes fit under MaxBytes. The image keep is never evicted.
func (c *Cache) makeRoom(need int64, keep string) error {
	for {
		used := c.usage()
		if used+need <= c.MaxBytes {
			return nil
		}
		c.mu.Lock()
		var victims []images.Digest
		for d, e := range c.entries {
			if e.refs == 0 && string(d) != keep {
				victims = append(victims, d)
			}
		}
		slices.SortFunc(victims, func(a, b images.Digest) int { return c.entries[a].lastUse.Compare(c.entries[b].lastUse) })
		var v *entry
		if len(victims) > 0 {
			v = c.entries[victims[0]]
			delete(c.entries, victims[0])
		}
		c.mu.Unlock()
		if v == nil {
			return fmt.Errorf("image cache full: %d of %d bytes in use by running containers, %d more needed", used, c.MaxBytes, need)
		}
		d := victims[0]
		c.removeLower(d)
		os.Remove(c.blobPath(v.img.Rootfs))
		if v.img.CompressedRoot != "" {
			os.Remove(c.blobPath(v.img.CompressedRoot))
		}
		os.Remove(c.imagePath(d))
		c.stats.Evictions.Add(1)
		c.log().Info("image evicted from the cache", "image", v.img.Name, "digest", d)
	}
}

// List returns the cached images, by name.
func (c *Cache) List() []Image {
	if c.init() != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Image, 0, len(c.entries))
	for _, e := range c.entries {
		im := Image{NodeImage: e.img, LowerBytes: e.lowerB, Users: e.refs, Unpacked: e.lowerB > 0 || e.mounted.Load(), Compressed: e.mounted.Load()}
		bd, _, _ := c.blob(e.img)
		if fi, err := os.Stat(c.blobPath(bd)); err == nil {
			im.BlobBytes = fi.Size()
		}
		out = append(out, im)
	}
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.Name+a.Digest, b.Name+b.Digest) })
	return out
}

// Close unmounts the cache's lowers that no container uses. Nothing is
// lost: a later agent fetches them again.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for d, e := range c.entries {
		if e.refs == 0 {
			c.removeLower(d)
			e.ready, e.lowerB = false, 0
			e.mounted.Store(false)
		}
	}
	return nil
}

func inRAM(dir string) bool {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

func isSquashfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.SQUASHFS_MAGIC && isMountPoint(dir)
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC && isMountPoint(dir)
}

// tmpfsUsed returns the bytes a tmpfs mounted at dir holds.
func tmpfsUsed(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// isMountPoint reports whether dir is the root of a mount (its device
// differs from its parent's, or both are the same directory).
func isMountPoint(dir string) bool {
	var a, b unix.Stat_t
	if unix.Lstat(dir, &a) != nil || unix.Lstat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev || a.Ino == b.Ino
}

// memTotal returns the node's RAM in bytes.
func memTotal() int64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 8 << 30
	}
	return int64(si.Totalram) * int64(si.Unit)
}
