package source

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ramboot/ramboot/images/newc"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	maxSymlinks    = 40 // as Linux's path resolution
)

// node is one file of the flattened tree.
type node struct {
	hdr      *tar.Header // nil for a directory no layer listed
	children map[string]*node
	data     *blob // a regular file's data, shared by hard links
	touched  int   // the last layer that wrote this node or anything under it
}

func (n *node) isDir() bool {
	return n.hdr == nil || n.hdr.Typeflag == tar.TypeDir
}

// blob is a regular file's data in the spool file.
type blob struct {
	off, size int64
	id        uint64
}

type flattener struct {
	root   *node
	spool  *os.File
	off    int64
	blobs  uint64
	layer  int
	digest string
	skip   func(string) bool
}

// flatten applies layers in order, bottom first, into one tree.
func flatten(ctx context.Context, layers []v1.Layer, opt Options) (t *Tree, err error) {
	spool, err := os.CreateTemp(opt.TmpDir, "ramboot-layers-*")
	if err != nil {
		return nil, fmt.Errorf("spool layers: %w", err)
	}
	os.Remove(spool.Name()) // unlinked: the space goes when it is closed
	defer func() {
		if err != nil {
			spool.Close()
		}
	}()
	f := &flattener{root: &node{children: map[string]*node{}}, spool: spool, skip: opt.Skip}
	for i, l := range layers {
		f.layer = i + 1
		d, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		f.digest = d.String()
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, f.digest, err)
		}
		err = f.apply(ctx, rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, f.digest, err)
		}
	}
	entries := f.entries()
	return &Tree{Tree: newc.Tree{Entries: entries}, close: spool.Close}, nil
}

// apply reads one layer's tar stream.
func (f *flattener) apply(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		if err := f.entry(h, tr); err != nil {
			return err
		}
	}
}

// cleanName turns a tar name into a clean relative path, "." for the root,
// and refuses names that leave the root.
func cleanName(name string) (string, error) {
	n := path.Clean("/" + name)
	if strings.Contains(name, "..") {
		// "/" + "../x" cleans to "/x": check the name as given.
		c := path.Clean(name)
		if c == ".." || strings.HasPrefix(c, "../") || strings.HasPrefix(c, "/../") {
			return "", fmt.Errorf("entry %q leaves the root", name)
		}
	}
	if n == "/" {
		return ".", nil
	}
	return n[1:], nil
}

func (f *flattener) entry(h *tar.Header, r io.Reader) error {
	name, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if h.Typeflag == tar.TypeDir {
			f.root.hdr = h
			f.root.touched = f.layer
		}
		return nil
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	if base == opaqueMarker {
		d, err := f.dir(dir, true)
		if err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
		for n, c := range d.children {
			f.hide(d, n, c)
		}
		return nil
	}
	if hidden, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		d, err := f.dir(dir, false)
		if err != nil || d == nil {
			return nil // whiteout of something no lower layer has
		}
		if c := d.children[hidden]; c != nil {
			f.hide(d, hidden, c)
		}
		return nil
	}
	if f.skip != nil {
		// A directory left out takes what later entries put in it.
		for p := name; p != "."; p = path.Dir(p) {
			if f.skip(p) {
				return nil
			}
		}
	}
	parent, err := f.dir(dir, true)
	if err != nil {
		return fmt.Errorf("entry %q: %w", h.Name, err)
	}
	n := &node{hdr: h, touched: f.layer}
	switch h.Typeflag {
	case tar.TypeDir:
		if old := parent.children[base]; old != nil && old.isDir() {
			old.hdr = h
			n = old
			n.touched = f.layer
		} else {
			n.children = map[string]*node{}
		}
	case tar.TypeReg: // the reader reports old-style (NUL) regular files as TypeReg too
		b, err := f.store(r, h.Size)
		if err != nil {
			return fmt.Errorf("entry %q: %w", h.Name, err)
		}
		n.data = b
	case tar.TypeLink:
		target, err := cleanName(h.Linkname)
		if err != nil {
			return fmt.Errorf("hard link %q: %w", h.Name, err)
		}
		t, err := f.lookup(target)
		if err != nil || t == nil || t.data == nil {
			return fmt.Errorf("hard link %q: target %q is not a regular file of this or a lower layer", h.Name, h.Linkname)
		}
		hc := *t.hdr
		hc.Name = h.Name
		n.hdr = &hc
		n.data = t.data
	case tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("entry %q: unsupported tar type %q", h.Name, h.Typeflag)
	}
	parent.children[base] = n
	return nil
}

// store copies a regular file's data into the spool.
func (f *flattener) store(r io.Reader, size int64) (*blob, error) {
	n, err := io.Copy(f.spool, io.LimitReader(r, size))
	if err != nil {
		return nil, fmt.Errorf("spool data: %w", err)
	}
	if n != size {
		return nil, fmt.Errorf("data: got %d bytes, header says %d", n, size)
	}
	f.blobs++
	b := &blob{off: f.off, size: size, id: f.blobs}
	f.off += size
	return b, nil
}

// hide removes what lower layers put at parent/name: the node, if nothing
// of this layer is in it, else the lower parts under it.
func (f *flattener) hide(parent *node, name string, n *node) {
	if n.touched < f.layer {
		delete(parent.children, name)
		return
	}
	for cn, c := range n.children {
		f.hide(n, cn, c)
	}
}

// lookup returns the node at name, following symlinks in its parents, or
// nil.
func (f *flattener) lookup(name string) (*node, error) {
	dir, base := path.Split(name)
	d, err := f.dir(strings.TrimSuffix(dir, "/"), false)
	if err != nil || d == nil {
		return nil, err
	}
	return d.children[base], nil
}

// dir returns the directory at name, following symlinks inside the tree,
// and marks it and its parents touched by this layer when create is set;
// missing directories are created when create is set, else it returns nil.
func (f *flattener) dir(name string, create bool) (*node, error) {
	hops := 0
	var walk func(from *node, stack []*node, parts []string) (*node, error)
	walk = func(cur *node, stack []*node, parts []string) (*node, error) {
		for len(parts) > 0 {
			p := parts[0]
			parts = parts[1:]
			switch p {
			case "", ".":
				continue
			case "..":
				if len(stack) > 0 {
					cur = stack[len(stack)-1]
					stack = stack[:len(stack)-1]
				}
				continue
			}
			c := cur.children[p]
			if c != nil && c.hdr != nil && c.hdr.Typeflag == tar.TypeSymlink {
				hops++
				if hops > maxSymlinks {
					return nil, fmt.Errorf("too many levels of symbolic links at %q", p)
				}
				target := c.hdr.Linkname
				rest := append(strings.Split(target, "/"), parts...)
				if strings.HasPrefix(target, "/") {
					return walk(f.root, nil, rest)
				}
				return walk(cur, stack, rest)
			}
			if c == nil || !c.isDir() {
				if !create {
					return nil, nil
				}
				// A missing parent, or a lower layer's non-directory
				// where this layer puts a directory: a directory.
				c = &node{children: map[string]*node{}}
				cur.children[p] = c
			}
			if create {
				c.touched = f.layer
			}
			stack = append(stack, cur)
			cur = c
		}
		return cur, nil
	}
	if create {
		f.root.touched = f.layer
	}
	return walk(f.root, nil, strings.Split(name, "/"))
}

// entries lists the tree in archive order.
func (f *flattener) entries() []newc.Entry {
	links := map[uint64]int{}
	var count func(n *node)
	count = func(n *node) {
		if n.data != nil {
			links[n.data.id]++
		}
		for _, c := range n.children {
			count(c)
		}
	}
	count(f.root)
	var out []newc.Entry
	var walk func(name string, n *node)
	walk = func(name string, n *node) {
		out = append(out, f.entry2(name, n, links))
		names := make([]string, 0, len(n.children))
		for c := range n.children {
			names = append(names, c)
		}
		sort.Strings(names)
		for _, c := range names {
			child := name + "/" + c
			if name == "." {
				child = c
			}
			walk(child, n.children[c])
		}
	}
	walk(".", f.root)
	return out
}

func (f *flattener) entry2(name string, n *node, links map[uint64]int) newc.Entry {
	if n.hdr == nil {
		return newc.Entry{Name: name, Mode: fs.ModeDir | 0o755}
	}
	h := n.hdr
	e := newc.Entry{
		Name:    name,
		Mode:    h.FileInfo().Mode() &^ fs.ModeType,
		UID:     h.Uid,
		GID:     h.Gid,
		ModTime: h.ModTime.Truncate(time.Second),
	}
	switch h.Typeflag {
	case tar.TypeDir:
		e.Mode |= fs.ModeDir
	case tar.TypeSymlink:
		e.Mode |= fs.ModeSymlink
		e.Linkname = h.Linkname
	case tar.TypeChar:
		e.Mode |= fs.ModeDevice | fs.ModeCharDevice
		e.Major, e.Minor = uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeBlock:
		e.Mode |= fs.ModeDevice
		e.Major, e.Minor = uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeFifo:
		e.Mode |= fs.ModeNamedPipe
	}
	if b := n.data; b != nil {
		e.Size = b.size
		spool := f.spool
		e.Open = func() (io.ReadCloser, error) {
			return io.NopCloser(io.NewSectionReader(spool, b.off, b.size)), nil
		}
		if links[b.id] > 1 {
			e.Link = b.id
		}
	}
	return e
}
