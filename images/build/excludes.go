package build

import (
	"fmt"
	"path"
	"strings"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/source"
)

// DefaultExcludes are left out of every image unless
// Options.NoDefaultExcludes: temporary files and package managers'
// download caches, which a node booted into RAM never needs and would pay
// for in memory. Build also leaves out other kernels' files: see
// Options.NoDefaultExcludes.
var DefaultExcludes = []string{
	"tmp/*",
	"var/tmp/*",
	"var/cache/apt/archives/*.deb",
	"var/cache/apt/archives/partial/*",
	"var/cache/apt/*.bin",
	"var/cache/dnf/*",
	"var/cache/yum/*",
	"var/cache/zypp/*",
	"root/.cache/*",
}

// Match reports whether name (an archive name such as "var/cache/x") is
// matched by one of patterns. A pattern is matched with path.Match
// against the whole name (a leading "/" is ignored; "*" does not cross
// "/"), except that a pattern without a "/" is matched against the last
// element at any depth, as in .gitignore. "tmp/*" leaves out what tmp
// holds but keeps tmp; "tmp" leaves out tmp and what it holds.
func Match(patterns []string, name string) bool {
	return compile(patterns).match(name)
}

// matcher is a compiled list of patterns: it is asked about every entry
// of a tree, so it skips the patterns that cannot match cheaply.
type matcher []pattern

type pattern struct {
	p       string
	base    bool   // no "/": matched against the last element
	slashes int    // "/" in p: a name with another count cannot match
	lit     string // p's first element when it has no wildcard
}

func compile(patterns []string) matcher {
	m := make(matcher, 0, len(patterns))
	for _, p := range patterns {
		p = strings.TrimPrefix(p, "/")
		c := pattern{p: p, slashes: strings.Count(p, "/")}
		c.base = c.slashes == 0
		if first, _, _ := strings.Cut(p, "/"); !c.base && !strings.ContainsAny(first, `*?[\`) {
			c.lit = first
		}
		m = append(m, c)
	}
	return m
}

func (m matcher) match(name string) bool {
	var base string
	slashes := -1
	for _, c := range m {
		if c.base {
			if base == "" {
				base = path.Base(name)
			}
			if ok, _ := path.Match(c.p, base); ok {
				return true
			}
			continue
		}
		if c.lit != "" && !(strings.HasPrefix(name, c.lit) && len(name) > len(c.lit) && name[len(c.lit)] == '/') {
			continue
		}
		if slashes < 0 {
			slashes = strings.Count(name, "/")
		}
		if slashes != c.slashes {
			continue
		}
		if ok, _ := path.Match(c.p, name); ok {
			return true
		}
	}
	return false
}

func checkPattern(p string) error {
	if _, err := path.Match(strings.TrimPrefix(p, "/"), ""); err != nil || strings.TrimPrefix(p, "/") == "" {
		return fmt.Errorf("exclude pattern %q: not a valid pattern", p)
	}
	return nil
}

// kernelFilePrefixes are the files Debian and RHEL kernels put in /boot,
// as "<prefix><release>[suffix]".
var kernelFilePrefixes = []string{"vmlinuz-", "vmlinux-", "initrd.img-", "initramfs-", "System.map-", "config-"}

// excludeOtherKernels leaves out the /boot files and module trees of the
// kernels the image does not boot, and records what it left out in the
// builder's excludes. With a kernel whose release is unknown, or a tree
// without modules for it, modules are all kept.
func (b *builder) excludeOtherKernels(t *source.Tree, k kernelFile) {
	rel, ok := strings.CutPrefix(k.name, kernelPrefix)
	if !ok || rel == "" {
		return
	}
	var drop []string
	for _, e := range t.Entries {
		dir, file := path.Split(e.Name)
		switch dir {
		case "boot/":
			for _, p := range kernelFilePrefixes {
				if r, ok := strings.CutPrefix(file, p); ok && r != "" && !strings.HasPrefix(r, rel) {
					drop = append(drop, e.Name)
				}
			}
		case "lib/modules/", "usr/lib/modules/":
			if file != rel && e.Mode.IsDir() && t.Lookup(dir+rel) != nil {
				drop = append(drop, e.Name)
			}
		}
	}
	if len(drop) == 0 {
		return
	}
	b.excludes = append(b.excludes, drop...)
	keep := t.Entries[:0]
	for _, e := range t.Entries {
		if !under(drop, e.Name) {
			keep = append(keep, e)
		}
	}
	// Zero the tail so dropped entries' closures can go.
	for i := len(keep); i < len(t.Entries); i++ {
		t.Entries[i] = newc.Entry{}
	}
	t.Entries = keep
}

// under reports whether name is one of roots or inside one of them.
func under(roots []string, name string) bool {
	for _, r := range roots {
		if name == r || strings.HasPrefix(name, r+"/") {
			return true
		}
	}
	return false
}
