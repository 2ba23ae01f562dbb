package kmod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Aliases maps device modaliases to the modules that drive them, from the
// "alias PATTERN MODULE" lines of depmod's modules.alias or, in a tree
// without one, from the alias= fields of every module's .modinfo.
// Patterns are shell globs (*, ?, [...]) matched as fnmatch(3) does with no
// flags, as kmod does.
type Aliases struct {
	// byBus holds the patterns by the text before their first ':' ("pci",
	// "usb", "virtio", "cpu", ...), each with its literal prefix so that
	// most patterns are rejected with a string comparison.
	byBus map[string][]alias
	n     int
}

type alias struct {
	pattern string
	literal string // the pattern up to its first wildcard
	module  string
}

// Len returns the number of patterns.
func (a *Aliases) Len() int { return a.n }

func (a *Aliases) add(pattern, module string) {
	if a.byBus == nil {
		a.byBus = map[string][]alias{}
	}
	lit := pattern
	if i := strings.IndexAny(pattern, `*?[\`); i >= 0 {
		lit = pattern[:i]
	}
	bus, _, ok := strings.Cut(lit, ":")
	if !ok {
		bus = "" // a wildcard before the bus's ':': tried for every modalias
	}
	a.byBus[bus] = append(a.byBus[bus], alias{pattern: pattern, literal: lit, module: Normalize(module)})
	a.n++
}

// ParseAliases reads modules.alias content: "alias PATTERN MODULE" lines;
// comments (#) and blank lines are skipped, other lines are errors.
func ParseAliases(r io.Reader) (*Aliases, error) {
	a := &Aliases{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("parse modules.alias line %d: want \"alias PATTERN MODULE\"", n)
		}
		a.add(f[1], f[2])
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.alias: %w", err)
	}
	return a, nil
}

// Aliases returns the tree's alias index: its modules.alias when it has
// one, else one built from every module's alias= fields (slower: it reads
// every module file).
func (ix *Index) Aliases() (*Aliases, error) {
	f, err := os.Open(filepath.Join(ix.dir, "modules.alias"))
	if err == nil {
		defer f.Close()
		return ParseAliases(f)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open modules.alias: %w", err)
	}
	a := &Aliases{}
	names := make([]string, 0, len(ix.files))
	for name := range ix.files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		info, err := ReadModinfo(ix.files[name])
		if err != nil {
			return nil, err
		}
		for _, p := range info["alias"] {
			a.add(p, name)
		}
	}
	return a, nil
}

// Lookup returns the modules whose patterns match modalias, each once, in
// index order.
func (a *Aliases) Lookup(modalias string) []string {
	var out []string
	bus, _, _ := strings.Cut(modalias, ":")
	for _, set := range [][]alias{a.byBus[bus], a.byBus[""]} {
		for _, e := range set {
			if strings.HasPrefix(modalias, e.literal) && fnmatch(e.pattern, modalias) && !slices.Contains(out, e.module) {
				out = append(out, e.module)
			}
		}
	}
	return out
}

// fnmatch reports whether name matches the shell pattern, with '*', '?',
// bracket expressions ("[abc]", "[a-z]", "[!x]") and backslash escapes,
// and no special meaning for '/' or a leading '.'.
func fnmatch(pattern, name string) bool {
	// Iterative with one backtrack point: the last '*' seen.
	px, nx := 0, 0
	starPx, starNx := -1, -1
	for nx < len(name) || px < len(pattern) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				starPx, starNx = px, nx
				px++
				continue
			case '?':
				if nx < len(name) {
					px++
					nx++
					continue
				}
			case '[':
				if nx < len(name) {
					if ok, width := matchClass(pattern[px:], name[nx]); width > 0 {
						if ok {
							px += width
							nx++
							continue
						}
						break
					}
				}
				if nx < len(name) && name[nx] == '[' { // unterminated: a literal '['
					px++
					nx++
					continue
				}
			case '\\':
				if px+1 < len(pattern) {
					if nx < len(name) && name[nx] == pattern[px+1] {
						px += 2
						nx++
						continue
					}
					break
				}
				fallthrough
			default:
				if nx < len(name) && name[nx] == c {
					px++
					nx++
					continue
				}
			}
		}
		if starPx >= 0 && starNx < len(name) {
			starNx++
			px, nx = starPx+1, starNx
			continue
		}
		return false
	}
	return true
}

// matchClass matches c against the bracket expression at the start of p
// and returns whether it matched and the expression's length (0 when p
// holds no complete expression).
func matchClass(p string, c byte) (matched bool, width int) {
	i := 1
	negate := false
	if i < len(p) && (p[i] == '!' || p[i] == '^') {
		negate = true
		i++
	}
	first := true
	for i < len(p) {
		if p[i] == ']' && !first {
			return matched != negate, i + 1
		}
		first = false
		lo := p[i]
		if lo == '\\' && i+1 < len(p) {
			i++
			lo = p[i]
		}
		hi := lo
		if i+2 < len(p) && p[i+1] == '-' && p[i+2] != ']' {
			hi = p[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			matched = true
		}
		i++
	}
	return false, 0
}

// DeviceModaliases returns the modalias of every device under sysDevices
// (normally /sys/devices), sorted and each once. Devices without one are
// skipped.
func DeviceModaliases(sysDevices string) ([]string, error) {
	seen := map[string]bool{}
	err := filepath.WalkDir(sysDevices, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == sysDevices {
				return err
			}
			return nil // a device that went away, a file we may not read
		}
		if d.Name() != "modalias" || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		if s := strings.TrimSpace(string(b)); s != "" {
			seen[s] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list device modaliases in %s: %w", sysDevices, err)
	}
	out := make([]string, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// Blacklist is the set of modules that must not be loaded for a device
// alias: "blacklist NAME" lines of modprobe.d files and the kernel command
// line's modprobe.blacklist=A,B. As with modprobe, it does not stop a
// module that is named directly or needed by another.
type Blacklist map[string]bool

// ReadBlacklist reads the blacklist lines of every *.conf file in the
// modprobe.d directories under root (/etc, /run, /usr/lib, /lib; a file
// name earlier in that order hides the same name later), plus the names
// in cmdline (the values of modprobe.blacklist=).
func ReadBlacklist(root string, cmdline []string) Blacklist {
	bl := Blacklist{}
	seen := map[string]bool{}
	for _, dir := range []string{"etc/modprobe.d", "run/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d"} {
		files, _ := filepath.Glob(filepath.Join(root, dir, "*.conf"))
		for _, f := range files {
			if seen[filepath.Base(f)] {
				continue
			}
			seen[filepath.Base(f)] = true
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for line := range strings.Lines(string(b)) {
				if fl := strings.Fields(line); len(fl) == 2 && fl[0] == "blacklist" {
					bl[Normalize(fl[1])] = true
				}
			}
		}
	}
	for _, v := range cmdline {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				bl[Normalize(name)] = true
			}
		}
	}
	return bl
}

// DeviceOptions configure Loader.LoadForDevices.
type DeviceOptions struct {
	// SysDevices is the device tree; empty means "/sys/devices".
	SysDevices string
	// Blacklist names modules never loaded for a device alias.
	Blacklist Blacklist
	// Rounds bounds the scans: loading a bus driver makes new devices
	// appear (virtio_pci adds virtio devices), so the loader scans again
	// after each round that loaded something. Zero means 8.
	Rounds int
}

// LoadForDevices loads the modules that drive the devices present, as
// udev's coldplug would: it reads every device's modalias, matches it
// against the tree's aliases, loads each match that is not blacklisted
// (with its dependencies), and scans again while that made new devices
// appear. It returns the modules it loaded; a module that finds no device
// (NoDevice) is skipped quietly, one that fails otherwise does not stop
// the others, and every such error is returned, joined.
func (l *Loader) LoadForDevices(ctx context.Context, o DeviceOptions) ([]Module, error) {
	ix, err := Open(l.Dir)
	if err != nil {
		return nil, err
	}
	aliases, err := ix.Aliases()
	if err != nil {
		return nil, err
	}
	sys := o.SysDevices
	if sys == "" {
		sys = "/sys/devices"
	}
	rounds := o.Rounds
	if rounds <= 0 {
		rounds = 8
	}
	var (
		done   []Module
		errs   []error
		tried  = map[string]bool{}
		loaded = map[string]bool{}
	)
	for range rounds {
		devs, err := DeviceModaliases(sys)
		if err != nil {
			return done, errors.Join(append(errs, err)...)
		}
		var want []string
		for _, ma := range devs {
			for _, m := range aliases.Lookup(ma) {
				if tried[m] || o.Blacklist[m] {
					continue
				}
				tried[m] = true
				if _, ok := ix.Lookup(m); !ok {
					continue // in modules.alias but not in this tree
				}
				want = append(want, m)
			}
		}
		if len(want) == 0 {
			break
		}
		mods, err := l.load(ctx, ix, want, loaded, true)
		done = append(done, mods...)
		if err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return done, errors.Join(errs...)
}
