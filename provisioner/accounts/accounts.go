// Package accounts makes user and group accounts identical across a
// cluster: it selects accounts from the head's /etc/passwd, /etc/group,
// /etc/shadow and /etc/gshadow and merges them into an image's copies of
// those files, which then go into every node's overlay.
//
//	head, err := accounts.ReadFiles(os.DirFS("/"))
//	set, err := accounts.Select(head, accounts.Selection{
//		Users: []string{"alice"},
//		UIDs:  []accounts.IDRange{{First: 1000, Last: 59999}},
//	})
//	img, err := accounts.ReadFiles(imageRoot) // the image's etc/passwd...
//	merged, err := accounts.Merge(img, set)   // merged.Passwd, merged.Shadow...
//
// # Selection
//
// A user is selected by name or by a UID range, a group by name or by a GID
// range. A selected user's primary group comes along (so that its GID has a
// name on the node). Naming a user or group the head does not have is an
// error; a range that selects nothing is not.
//
// # Merge rules
//
// The image's files are kept line for line: lines the merge does not
// touch, including ones it cannot parse (NIS "+" lines, comments), come out
// byte for byte as they went in. A selected account whose name and ID are
// both in the image replaces that line in place with the head's line (the
// head is the truth for shell, home, GECOS, password and members); any
// other selected account is appended, in the head's order. The same name
// with another ID, or the same ID under another name, is a conflict: Merge
// reports every conflict at once and merges nothing, since a node whose
// alice has another UID than the file server's alice is worse than a node
// that does not boot.
//
// shadow lines follow their users: the head's line, or "name:*:::::::"
// (no password login) when the head has none. gshadow is written only
// when the image has one (Debian does; busybox images do not), with the
// head's line or "name:!::members". An image without a shadow file gets one
// holding the selected users only.
package accounts

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// Files are the account databases of one system, as file contents. A nil
// Shadow or GShadow means the system has no such file.
type Files struct {
	// Passwd and Group are etc/passwd and etc/group.
	Passwd, Group []byte
	// Shadow and GShadow are etc/shadow and etc/gshadow; nil when the
	// system has no such file.
	Shadow, GShadow []byte
}

// The files' paths in a root file system, without the leading slash.
const (
	PasswdPath  = "etc/passwd"
	GroupPath   = "etc/group"
	ShadowPath  = "etc/shadow"
	GShadowPath = "etc/gshadow"
)

// ReadFiles reads the account files of the root file system fsys: passwd
// and group must exist, shadow and gshadow may not.
func ReadFiles(fsys fs.FS) (Files, error) {
	var f Files
	var err error
	if f.Passwd, err = fs.ReadFile(fsys, PasswdPath); err != nil {
		return Files{}, fmt.Errorf("read accounts: %w", err)
	}
	if f.Group, err = fs.ReadFile(fsys, GroupPath); err != nil {
		return Files{}, fmt.Errorf("read accounts: %w", err)
	}
	for _, o := range []struct {
		path string
		dst  *[]byte
	}{{ShadowPath, &f.Shadow}, {GShadowPath, &f.GShadow}} {
		b, err := fs.ReadFile(fsys, o.path)
		switch {
		case err == nil:
			if b == nil {
				b = []byte{}
			}
			*o.dst = b
		case !errors.Is(err, fs.ErrNotExist):
			return Files{}, fmt.Errorf("read accounts: %w", err)
		}
	}
	return f, nil
}

// IDRange is an inclusive range of user or group IDs.
type IDRange struct {
	// First and Last are the range's first and last IDs.
	First, Last int
}

// ParseIDRange parses "1000-59999" or a single ID "1001".
func ParseIDRange(s string) (IDRange, error) {
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	first, err1 := parseID(a)
	last, err2 := parseID(b)
	if err := errors.Join(err1, err2); err != nil {
		return IDRange{}, fmt.Errorf("id range %q: %w", s, err)
	}
	if first > last {
		return IDRange{}, fmt.Errorf("id range %q: reversed", s)
	}
	return IDRange{First: first, Last: last}, nil
}

func (r IDRange) has(id int) bool { return id >= r.First && id <= r.Last }

// Selection says which of the head's accounts every node gets.
type Selection struct {
	// Users and Groups name accounts; each must exist on the head.
	Users, Groups []string
	// UIDs and GIDs select every account with an ID in a range.
	UIDs, GIDs []IDRange
}

// line is one line of an account file: its text and, when it parses, its
// name, ID (-1 for shadow files) and fields.
type line struct {
	text   string
	name   string
	id     int
	fields []string
	ok     bool
}

// parse splits an account file into lines. n is the number of fields of
// the format and idField the index of its numeric ID (-1: none).
func parse(b []byte, n, idField int) []line {
	if len(b) == 0 {
		return nil
	}
	s := strings.TrimSuffix(string(b), "\n")
	var out []line
	for t := range strings.SplitSeq(s, "\n") {
		l := line{text: t, id: -1}
		f := strings.Split(t, ":")
		if len(f) == n && f[0] != "" && !strings.ContainsRune("+-#", rune(f[0][0])) {
			l.name, l.fields, l.ok = f[0], f, true
			if idField >= 0 {
				id, err := parseID(f[idField])
				l.id, l.ok = id, err == nil
			}
		}
		out = append(out, l)
	}
	return out
}

func parseID(s string) (int, error) {
	id, err := strconv.Atoi(s)
	if err != nil || id < 0 || id > 1<<32-2 || s != strconv.Itoa(id) {
		return 0, fmt.Errorf("%q is not an ID", s)
	}
	return id, nil
}

func join(lines []line) []byte {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func byName(lines []line) map[string]line {
	m := make(map[string]line, len(lines))
	for _, l := range lines {
		if _, dup := m[l.name]; l.ok && !dup {
			m[l.name] = l
		}
	}
	return m
}

// Set is the accounts selected on the head.
type Set struct {
	users, groups   []line // passwd and group lines, in the head's order
	shadow, gshadow map[string]line
}

// Users returns the names of the selected users, in the head's order.
func (s *Set) Users() []string { return names(s.users) }

// Groups returns the names of the selected groups, in the head's order.
func (s *Set) Groups() []string { return names(s.groups) }

func names(ls []line) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.name
	}
	return out
}

// Select picks the accounts sel names from the head's files.
func Select(head Files, sel Selection) (*Set, error) {
	users := parse(head.Passwd, 7, 2)
	groups := parse(head.Group, 4, 2)
	var errs []error
	pick := func(ls []line, names []string, ranges []IDRange, also map[int]bool, what string) []line {
		want := map[string]bool{}
		for _, n := range names {
			want[n] = true
		}
		found := map[string]bool{}
		var out []line
		for _, l := range ls {
			if !l.ok || found[l.name] {
				continue
			}
			in := want[l.name] || also[l.id]
			for _, r := range ranges {
				in = in || r.has(l.id)
			}
			if in {
				found[l.name] = true
				out = append(out, l)
			}
		}
		for _, n := range names {
			if !found[n] {
				errs = append(errs, fmt.Errorf("select %s %q: not on the head", what, n))
			}
		}
		return out
	}
	s := &Set{}
	s.users = pick(users, sel.Users, sel.UIDs, nil, "user")
	primary := map[int]bool{}
	for _, u := range s.users {
		gid, _ := parseID(u.fields[3])
		primary[gid] = true
	}
	s.groups = pick(groups, sel.Groups, sel.GIDs, primary, "group")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.shadow = byName(parse(head.Shadow, 9, -1))
	s.gshadow = byName(parse(head.GShadow, 4, -1))
	return s, nil
}

// Merge returns the image's files with the selected accounts merged in,
// following the package's rules. A nil set returns img unchanged.
func Merge(img Files, s *Set) (Files, error) {
	if s == nil {
		return img, nil
	}
	var errs []error
	passwd, err := mergeIDs(parse(img.Passwd, 7, 2), s.users, "user", "uid")
	errs = append(errs, err)
	group, err := mergeIDs(parse(img.Group, 4, 2), s.groups, "group", "gid")
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return Files{}, err
	}
	out := Files{Passwd: join(passwd), Group: join(group)}
	out.Shadow = join(mergeNames(parse(img.Shadow, 9, -1), s.users, s.shadow, func(name string) string {
		return name + ":*:::::::"
	}))
	if img.GShadow != nil {
		out.GShadow = join(mergeNames(parse(img.GShadow, 4, -1), s.groups, s.gshadow, func(name string) string {
			return name + ":!::" + groupMembers(s.groups, name)
		}))
	}
	return out, nil
}

func groupMembers(groups []line, name string) string {
	for _, g := range groups {
		if g.name == name {
			return g.fields[3]
		}
	}
	return ""
}

// mergeIDs merges selected passwd or group lines into the image's,
// reporting every name/ID conflict.
func mergeIDs(img, sel []line, what, idName string) ([]line, error) {
	nameAt := map[string]int{}
	idAt := map[int]int{}
	for i, l := range img {
		if !l.ok {
			continue
		}
		if _, dup := nameAt[l.name]; !dup {
			nameAt[l.name] = i
		}
		if _, dup := idAt[l.id]; !dup {
			idAt[l.id] = i
		}
	}
	var errs []error
	out := append([]line(nil), img...)
	for _, h := range sel {
		i, byName := nameAt[h.name]
		j, byID := idAt[h.id]
		switch {
		case byName && img[i].id != h.id:
			errs = append(errs, fmt.Errorf("%s %s: %s %d on the head, %d in the image", what, h.name, idName, h.id, img[i].id))
		case byID && img[j].name != h.name:
			errs = append(errs, fmt.Errorf("%s %d: %s on the head, %s in the image", idName, h.id, h.name, img[j].name))
		case byName:
			out[i] = h
		default:
			out = append(out, h)
		}
	}
	return out, errors.Join(errs...)
}

// mergeNames merges the shadow (or gshadow) lines of the selected accounts
// into the image's: the head's line, or synth(name) when it has none.
func mergeNames(img, sel []line, head map[string]line, synth func(string) string) []line {
	at := map[string]int{}
	for i, l := range img {
		if _, dup := at[l.name]; l.ok && !dup {
			at[l.name] = i
		}
	}
	out := append([]line(nil), img...)
	for _, s := range sel {
		l, ok := head[s.name]
		if !ok {
			l = line{text: synth(s.name), name: s.name, ok: true}
		}
		if i, ok := at[s.name]; ok {
			out[i] = l
		} else {
			out = append(out, l)
		}
	}
	return out
}

// IDs are name-to-ID lookups of one system's accounts.
type IDs struct {
	users, groups map[string]int
}

// IDs indexes f's users and groups by name.
func (f Files) IDs() IDs {
	ids := IDs{users: map[string]int{}, groups: map[string]int{}}
	for _, l := range parse(f.Passwd, 7, 2) {
		if _, dup := ids.users[l.name]; l.ok && !dup {
			ids.users[l.name] = l.id
		}
	}
	for _, l := range parse(f.Group, 4, 2) {
		if _, dup := ids.groups[l.name]; l.ok && !dup {
			ids.groups[l.name] = l.id
		}
	}
	return ids
}

// User returns the UID of the user name.
func (ids IDs) User(name string) (int, bool) {
	id, ok := ids.users[name]
	return id, ok
}

// Group returns the GID of the group name.
func (ids IDs) Group(name string) (int, bool) {
	id, ok := ids.groups[name]
	return id, ok
}
