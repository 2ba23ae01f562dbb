// Package kmod finds Linux kernel modules in a module tree, orders them so
// that every module comes after the modules it depends on, and loads them.
//
// Dependencies come from each module's own ".modinfo" ELF section (its
// "depends=" field), so a tree without depmod's modules.dep works, like the
// handful of .ko files a node image carries. Usage:
//
//	l := &kmod.Loader{Dir: "/lib/modules/" + release}
//	mods, err := l.Load(ctx, []string{"virtio_net"})
//	// mods: virtio_ring virtio ... net_failover virtio_net, in load order
//
// [Index] and [Index.Resolve] give the load order without loading anything.
package kmod

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound means a module is neither in the module tree nor built into
// (or already loaded by) the running kernel.
var ErrNotFound = errors.New("module not found")

// ErrCycle means the modules' depends= fields form a cycle.
var ErrCycle = errors.New("dependency cycle")

// suffixes are the file name endings of module files, longest first.
var suffixes = []string{".ko.zst", ".ko.xz", ".ko.gz", ".ko"}

// Normalize returns the canonical form of a module name: the kernel treats
// '-' and '_' in module names as equal, and so does this package, which
// uses '_'.
func Normalize(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// moduleName returns the normalised module name of a module file name and
// whether the file is a module at all.
func moduleName(file string) (string, bool) {
	for _, s := range suffixes {
		if base, ok := strings.CutSuffix(file, s); ok && base != "" {
			return Normalize(base), true
		}
	}
	return "", false
}

// Module is one entry of a load order.
type Module struct {
	// Name is the module's normalised name.
	Name string
	// Path is the module file; empty when Builtin.
	Path string
	// Builtin is true when the module is not in the tree but the running
	// kernel already has it: built in, or loaded before.
	Builtin bool
}

// Index maps module names to the files of one module tree. Build it with
// Open; it is read-only afterwards and safe for concurrent use.
type Index struct {
	dir     string
	files   map[string]string
	builtin map[string]bool
}

// Open walks the module tree dir once and indexes every module file (.ko,
// .ko.xz, .ko.zst, .ko.gz) by its normalised base name, and reads
// dir/modules.builtin if it exists. When two files have the same name, the
// one under dir/updates wins (as with depmod), otherwise the first in
// lexical order. A missing dir gives an empty index.
func Open(dir string) (*Index, error) {
	ix := &Index{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		name, ok := moduleName(d.Name())
		if !ok {
			return nil
		}
		if old, dup := ix.files[name]; dup && (ix.isUpdate(old) || !ix.isUpdate(path)) {
			return nil
		}
		ix.files[name] = path
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read built-in modules: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if name, ok := moduleName(filepath.Base(strings.TrimSpace(line))); ok {
			ix.builtin[name] = true
		}
	}
	return ix, nil
}

func (ix *Index) isUpdate(path string) bool {
	rel, err := filepath.Rel(ix.dir, path)
	return err == nil && strings.HasPrefix(rel, "updates"+string(filepath.Separator))
}

// Lookup returns the file of module name ('-' and '_' are equal).
func (ix *Index) Lookup(name string) (path string, ok bool) {
	path, ok = ix.files[Normalize(name)]
	return path, ok
}

// Builtin reports whether the tree's modules.builtin lists module name.
func (ix *Index) Builtin(name string) bool {
	return ix.builtin[Normalize(name)]
}

// Len returns the number of module files in the index.
func (ix *Index) Len() int { return len(ix.files) }

// Resolve returns the load order for names: every module after the modules
// its depends= field names (recursively), each module once, in the order
// names asks for them otherwise. A module that is not in the tree is fine,
// and appears with Builtin set, when modules.builtin lists it or when
// present (which may be nil) says the running kernel has it; otherwise the
// error wraps ErrNotFound and names the module. A cycle gives an error
// wrapping ErrCycle that shows it.
func (ix *Index) Resolve(names []string, present func(name string) bool) ([]Module, error) {
	r := resolver{ix: ix, present: present, state: map[string]visit{}}
	for _, n := range names {
		if err := r.visit(Normalize(n), nil); err != nil {
			return nil, err
		}
	}
	return r.order, nil
}

type visit int

const (
	unvisited visit = iota
	visiting
	done
)

type resolver struct {
	ix      *Index
	present func(string) bool
	state   map[string]visit
	order   []Module
}

// visit appends name's dependencies and then name to r.order; chain is the
// path of modules that led to name, for error messages.
func (r *resolver) visit(name string, chain []string) error {
	switch r.state[name] {
	case done:
		return nil
	case visiting:
		return fmt.Errorf("resolve module %s: %w: %s -> %s", name, ErrCycle, strings.Join(chain, " -> "), name)
	}
	path, ok := r.ix.files[name]
	if !ok {
		if r.ix.builtin[name] || r.present != nil && r.present(name) {
			r.state[name] = done
			r.order = append(r.order, Module{Name: name, Builtin: true})
			return nil
		}
		if len(chain) > 0 {
			return fmt.Errorf("find module %s (needed by %s): %w", name, chain[len(chain)-1], ErrNotFound)
		}
		return fmt.Errorf("find module %s: %w", name, ErrNotFound)
	}
	r.state[name] = visiting
	info, err := ReadModinfo(path)
	if err != nil {
		return err
	}
	chain = append(chain, name)
	for _, dep := range info.Depends() {
		if err := r.visit(Normalize(dep), chain); err != nil {
			return err
		}
	}
	r.state[name] = done
	r.order = append(r.order, Module{Name: name, Path: path})
	return nil
}
