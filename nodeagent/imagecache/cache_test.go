package imagecache_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/imagecache"
	"github.com/ramboot/ramboot/nodeagent/imagecache/imagecachetest"
)

func cacheDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cache")
	t.Cleanup(func() { unmountAll(dir) })
	return dir
}

// unmountAll unmounts every mount under dir, deepest first.
func unmountAll(dir string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		unix.Unmount(mps[i], unix.MNT_DETACH)
	}
}

// TestCacheFromHead resolves, fetches and unpacks an image from a real
// head, then serves a second user with no download and no unpack; a
// corrupted cached blob is fetched again; an unknown image is a clear
// error. The image has no compressed root, so it is unpacked.
func TestCacheFromHead(t *testing.T) {
	h := imagecachetest.Start(t)
	h.BuildImage(t, "busybox", imagecachetest.BusyboxTree(t), "--no-compressed-root")
	h.Boot(t)
	ctx := context.Background()
	c := &imagecache.Cache{Dir: cacheDir(t), Head: h.Head()}

	img, err := c.Resolve(ctx, "busybox")
	if err != nil {
		t.Fatal(err)
	}
	d := images.Digest(img.Digest)
	dir, release, err := c.Lower(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(b) != "ramboot test image\n" {
		t.Errorf("etc/motd: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into the lower: %v, want EROFS", err)
	}
	dir2, release2, err := c.Lower(ctx, d)
	if err != nil || dir2 != dir {
		t.Fatalf("second Lower: %q %v", dir2, err)
	}
	st := c.Stats()
	if st.Fetches.Load() != 1 || st.Unpacks.Load() != 1 || st.Hits.Load() != 1 {
		t.Errorf("fetches %d unpacks %d hits %d, want 1 1 1", st.Fetches.Load(), st.Unpacks.Load(), st.Hits.Load())
	}
	if l := c.List(); len(l) != 1 || l[0].Users != 2 || l[0].LowerBytes == 0 {
		t.Errorf("List = %+v", l)
	}
	release()
	release2()
	release2() // idempotent

	// A new agent (restart) takes the unpacked lower over, with no head.
	c2 := &imagecache.Cache{Dir: c.Dir}
	if _, err := c2.Resolve(ctx, img.Digest); err != nil {
		t.Fatalf("restarted cache: %v", err)
	}
	if _, rel, err := c2.Lower(ctx, d); err != nil || c2.Stats().Hits.Load() != 1 {
		t.Fatalf("restarted cache Lower: %v, hits %d", err, c2.Stats().Hits.Load())
	} else {
		rel()
	}

	// Corrupt the cached blob and drop the lower: the next Lower notices
	// and fetches the blob again.
	c.Close()
	blob := filepath.Join(c.Dir, "blobs", images.Digest(img.Rootfs).Hex())
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c3 := &imagecache.Cache{Dir: c.Dir, Head: h.Head()}
	if _, err := c3.Resolve(ctx, "busybox"); err != nil {
		t.Fatal(err)
	}
	if _, rel, err := c3.Lower(ctx, d); err != nil {
		t.Fatalf("Lower after corruption: %v", err)
	} else {
		rel()
	}
	if c3.Stats().Refetches.Load() != 1 || c3.Stats().Fetches.Load() != 1 {
		t.Errorf("refetches %d fetches %d, want 1 1", c3.Stats().Refetches.Load(), c3.Stats().Fetches.Load())
	}

	// The head unreachable (restarting): a cached name still resolves.
	deadCfg := h.Config
	deadCfg.HeadURL = "http://127.0.0.1:1"
	dead := &headapi.Client{Config: deadCfg, HTTPClient: imagecachetest.NodeClient()}
	c4 := &imagecache.Cache{Dir: c.Dir, Head: dead}
	if got, err := c4.Resolve(ctx, "busybox"); err != nil || got.Digest != img.Digest {
		t.Errorf("cached name with the head down: %+v, %v", got, err)
	}
	if _, err := c4.Resolve(ctx, "other"); err == nil {
		t.Error("an uncached name resolved with the head down")
	}

	if _, err := c3.Resolve(ctx, "nosuch"); !errors.Is(err, imagecache.ErrUnknownImage) || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("unknown image: %v", err)
	}
	if _, err := (&imagecache.Cache{Dir: cacheDir(t)}).Resolve(ctx, "busybox"); !errors.Is(err, imagecache.ErrNoHead) {
		t.Errorf("no head: %v", err)
	}
}

// TestCacheCompressed: an image with a compressed root is not unpacked: its
// squashfs is mounted read-only from the cached blob, shared by every user,
// taken over by a restarted agent, fetched again when corrupt. With Unpack
// the same image is unpacked into a tmpfs.
func TestCacheCompressed(t *testing.T) {
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices here")
	}
	h := imagecachetest.Start(t)
	h.BuildImage(t, "busybox", imagecachetest.BusyboxTree(t))
	h.Boot(t)
	ctx := context.Background()
	c := &imagecache.Cache{Dir: cacheDir(t), Head: h.Head()}
	img, err := c.Resolve(ctx, "busybox")
	if err != nil {
		t.Fatal(err)
	}
	if img.CompressedRoot == "" || img.CompressedRootSize == 0 || !strings.HasSuffix(img.CompressedRootPath, "/rootfs.squashfs.cpio") {
		t.Fatalf("the head did not name the compressed root: %+v", img)
	}
	d := images.Digest(img.Digest)
	dir, release, err := c.Lower(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(dir, &sf); err != nil || sf.Type != unix.SQUASHFS_MAGIC {
		t.Fatalf("lower %s: type %#x %v, want squashfs", dir, sf.Type, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(b) != "ramboot test image\n" {
		t.Errorf("etc/motd: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/ramboot/image-id")); err != nil || !strings.HasPrefix(string(b), "sha256:") {
		t.Errorf("image-id: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into the lower: %v, want EROFS", err)
	}
	dir2, release2, err := c.Lower(ctx, d)
	if err != nil || dir2 != dir {
		t.Fatalf("second Lower: %q %v", dir2, err)
	}
	st := c.Stats()
	if st.Fetches.Load() != 1 || st.Mounts.Load() != 1 || st.Unpacks.Load() != 0 || st.Hits.Load() != 1 {
		t.Errorf("fetches %d mounts %d unpacks %d hits %d, want 1 1 0 1", st.Fetches.Load(), st.Mounts.Load(), st.Unpacks.Load(), st.Hits.Load())
	}
	l := c.List()
	if len(l) != 1 || !l[0].Compressed || l[0].LowerBytes != 0 || l[0].BlobBytes != img.CompressedRootSize || l[0].Users != 2 {
		t.Errorf("List = %+v", l)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "blobs", images.Digest(img.Rootfs).Hex())); err == nil {
		t.Error("the cpio archive was fetched too")
	}
	release()
	release2()

	// A restarted agent takes the mounted lower over.
	c2 := &imagecache.Cache{Dir: c.Dir}
	if _, err := c2.Resolve(ctx, img.Digest); err != nil {
		t.Fatal(err)
	}
	if _, rel, err := c2.Lower(ctx, d); err != nil || c2.Stats().Hits.Load() != 1 {
		t.Fatalf("restarted cache Lower: %v, hits %d", err, c2.Stats().Hits.Load())
	} else {
		rel()
	}

	// Corrupt the blob and drop the lower: fetched again, mounted again.
	c.Close()
	blob := filepath.Join(c.Dir, "blobs", images.Digest(img.CompressedRoot).Hex())
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-100] ^= 0xff
	if err := os.WriteFile(blob, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c3 := &imagecache.Cache{Dir: c.Dir, Head: h.Head()}
	if _, err := c3.Resolve(ctx, "busybox"); err != nil {
		t.Fatal(err)
	}
	if _, rel, err := c3.Lower(ctx, d); err != nil {
		t.Fatalf("Lower after corruption: %v", err)
	} else {
		rel()
	}
	if c3.Stats().Refetches.Load() != 1 || c3.Stats().Mounts.Load() != 1 {
		t.Errorf("refetches %d mounts %d, want 1 1", c3.Stats().Refetches.Load(), c3.Stats().Mounts.Load())
	}
	c3.Close()

	// Unpack: the tmpfs lower, from the cpio archive.
	c4 := &imagecache.Cache{Dir: cacheDir(t), Head: h.Head(), Unpack: true}
	if _, err := c4.Resolve(ctx, "busybox"); err != nil {
		t.Fatal(err)
	}
	dir4, rel4, err := c4.Lower(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer rel4()
	if err := unix.Statfs(dir4, &sf); err != nil || sf.Type != unix.TMPFS_MAGIC || c4.Stats().Unpacks.Load() != 1 {
		t.Errorf("Unpack: lower type %#x %v, unpacks %d", sf.Type, err, c4.Stats().Unpacks.Load())
	}
}
