package overlayrender

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"text/template"

	"github.com/ramboot/ramboot/images/overlay"
)

// AttrsFile is the name of a template tree's attribute file, at the root of
// the tree. Each line is "PATH MODE OWNER GROUP" ("-" keeps the default);
// PATH is the output path (without ".tmpl") of a file or directory of the
// same tree; OWNER and GROUP are names (looked up in the node's own
// accounts: the image's merged with the head's) or numbers. "#" starts a
// comment line.
//
//	# path               mode  owner  group
//	etc/munge            0700  munge  munge
//	etc/munge/munge.key  0400  munge  munge
const AttrsFile = ".ramboot-attrs"

// TemplateSuffix marks a file of a template tree that is rendered; other
// files are copied as they are.
const TemplateSuffix = ".tmpl"

// reserved are output paths a template tree may not replace: the agent's
// configuration carries this boot's token and is the head/node contract.
var reserved = map[string]bool{overlay.ConfigPath: true}

// tree is one profile's template directory, loaded and parsed.
type tree struct {
	profile string
	entries map[string]*entry      // by output path
	dirs    map[string]fs.FileMode // directories of the tree: their permissions
	attrs   []attrRule
}

// entry is one file of a tree.
type entry struct {
	out  string      // output path
	src  string      // path in the tree
	perm fs.FileMode // permission bits with setuid, setgid, sticky
	data []byte      // static content
	link string      // symbolic link target, for links
	tmpl *template.Template
}

// attrRule is one line of an attribute file.
type attrRule struct {
	path         string
	mode         fs.FileMode
	keepMode     bool
	owner, group string
	line         int
}

// loadTree reads and parses a profile's template tree, reporting every
// problem at once.
func loadTree(profile string, fsys fs.FS) (*tree, error) {
	t := &tree{profile: profile, entries: map[string]*entry{}, dirs: map[string]fs.FileMode{}}
	var errs []error
	fail := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("profile %s: "+format, append([]any{profile}, a...)...))
	}
	var attrs []byte
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fail("%w", err)
			return nil
		}
		if p == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			fail("%w", err)
			return nil
		}
		perm := info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch {
		case d.IsDir():
			t.dirs[p] = perm
		case d.Type()&fs.ModeSymlink != 0:
			rl, ok := fsys.(fs.ReadLinkFS)
			if !ok {
				fail("%s: a symbolic link, and the template directory cannot read links", p)
				return nil
			}
			target, err := rl.ReadLink(p)
			if err != nil {
				fail("%w", err)
				return nil
			}
			t.add(&entry{out: p, src: p, perm: 0o777, link: target}, fail)
		case !d.Type().IsRegular():
			fail("%s: not a regular file, directory or symbolic link (%v)", p, d.Type())
		case p == AttrsFile:
			if attrs, err = fs.ReadFile(fsys, p); err != nil {
				fail("%w", err)
			}
		default:
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				fail("%w", err)
				return nil
			}
			e := &entry{out: p, src: p, perm: perm, data: b}
			if out, ok := strings.CutSuffix(p, TemplateSuffix); ok && out != "" && !strings.HasSuffix(out, "/") {
				e.out, e.data = out, nil
				e.tmpl, err = template.New(p).Funcs(funcs).Option("missingkey=error").Parse(string(b))
				if err != nil {
					fail("%w", err)
					return nil
				}
			}
			t.add(e, fail)
		}
		return nil
	})
	if err != nil {
		fail("%w", err)
	}
	if attrs != nil {
		t.attrs = t.parseAttrs(attrs, fail)
	}
	return t, errors.Join(errs...)
}

func (t *tree) add(e *entry, fail func(string, ...any)) {
	if reserved[e.out] {
		fail("%s: %s is written by the head for every boot and cannot be replaced", e.src, e.out)
		return
	}
	if prev, dup := t.entries[e.out]; dup {
		fail("%s and %s both make %s", prev.src, e.src, e.out)
		return
	}
	t.entries[e.out] = e
}

func (t *tree) parseAttrs(b []byte, fail func(string, ...any)) []attrRule {
	var rules []attrRule
	for i, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		where := fmt.Sprintf("%s:%d", AttrsFile, i+1)
		if len(f) != 4 {
			fail("%s: want \"PATH MODE OWNER GROUP\", have %d fields", where, len(f))
			continue
		}
		r := attrRule{path: strings.Trim(f[0], "/"), keepMode: f[1] == "-", owner: f[2], group: f[3], line: i + 1}
		if !r.keepMode {
			m, err := strconv.ParseInt(f[1], 8, 32)
			if err != nil || m < 0 || m > 0o7777 {
				fail("%s: mode %q: want octal like 0644", where, f[1])
				continue
			}
			r.mode = goMode(uint32(m))
		}
		if _, isFile := t.entries[r.path]; !isFile {
			if _, isDir := t.dirs[r.path]; !isDir {
				fail("%s: %s is not a file or directory of this template directory", where, r.path)
				continue
			}
		}
		rules = append(rules, r)
	}
	return rules
}

// goMode converts Unix permission bits (with setuid 0o4000, setgid 0o2000,
// sticky 0o1000) to an fs.FileMode.
func goMode(unix uint32) fs.FileMode {
	m := fs.FileMode(unix & 0o777)
	if unix&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if unix&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if unix&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}
