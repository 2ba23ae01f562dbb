package build

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/source"
)

// cacheKey is the identity of what a build would produce: the tree's
// content key (the digest of a directory's metadata, or a container
// image's digest), the kernel (a host file's metadata), every option that
// changes the output, and the builder's version.
func (b *builder) cacheKey(t *source.Tree, k kernelFile) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "ramboot build cache 1\n%s\n%s\n", b.builderName(), t.CacheKey)
	if k.hostPath != "" {
		abs, _ := filepath.Abs(k.hostPath)
		fi, err := os.Stat(abs)
		if err != nil {
			return "", fmt.Errorf("open kernel: %w", err)
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st == nil {
			return "", fmt.Errorf("stat kernel %s: no stat fields", abs)
		}
		fmt.Fprintf(h, "kernel %s %d %d.%d %d.%d %d %d\n", abs, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Ino, st.Dev)
	} else {
		fmt.Fprintf(h, "kernel in tree %s\n", k.entry.Name)
	}
	epoch := "none"
	if b.epoch != nil {
		epoch = fmt.Sprint(b.epoch.Unix())
	}
	fmt.Fprintf(h, "%s %d epoch=%s cross=%t\n%s\n", b.opt.Compression, b.level, epoch, b.opt.CrossFilesystems, strings.Join(b.excludes, "\x00"))
	if !b.opt.NoCompressedRoot {
		fmt.Fprintf(h, "compressed root %s %d %d\n", SquashfsCompressor, b.squashfsLevel, SquashfsBlockSize)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// cached returns the manifest the cache has for key, committed under the
// build's reference, if its blobs are all still stored. A manifest built
// under another reference is committed again with this one's name and tag
// (and the time now); one under this reference is only re-pointed to, so a
// no-op rebuild writes nothing when the reference already points to it.
func (b *builder) cached(key string) (images.Manifest, images.Digest, bool) {
	st := b.opt.Store
	d, ok := st.CacheGet(key)
	if !ok {
		return images.Manifest{}, "", false
	}
	m, err := st.ReadManifest(d)
	if err != nil {
		return images.Manifest{}, "", false
	}
	for _, a := range m.Artifacts() {
		if !st.HasBlob(a) {
			return images.Manifest{}, "", false
		}
	}
	if m.Name == b.ref.Name && m.Tag == b.ref.Tag {
		if _, cur, err := st.Resolve(b.ref.String()); err == nil && cur == d {
			return m, d, true
		}
		if _, err := st.Tag(string(d), b.ref.String()); err != nil {
			return images.Manifest{}, "", false
		}
		return m, d, true
	}
	m.Name, m.Tag = b.ref.Name, b.ref.Tag
	m.Created = time.Now().UTC().Truncate(time.Second)
	nd, err := st.Commit(b.ref.String(), m)
	if err != nil {
		return images.Manifest{}, "", false
	}
	b.saveCache(key, nd)
	return m, nd, true
}

// saveCache records d for key; a failure only costs a rebuild later.
func (b *builder) saveCache(key string, d images.Digest) {
	if err := b.opt.Store.CachePut(key, d); err != nil {
		b.log.Warn("build cache not written", "image", b.ref.String(), "err", err)
	}
}
