// Package hostlist expands and compresses host lists in the bracket syntax
// HPC tools share (Slurm, pdsh, ClusterShell): "n[001-128]" is n001 to
// n128, "rack[1-4]n[01-32]" is 128 names, "n[1,3,5-9]" is a list, and a
// comma separates host lists: "n[1-4],gpu[1-2]".
//
//	names, err := hostlist.Expand("rack[1-2]n[01-02]")
//	// [rack1n01 rack1n02 rack2n01 rack2n02]
//	s, err := hostlist.Compress([]string{"n3", "n1", "n2", "n7"})
//	// "n[1-3,7]"
//
// It also allocates addresses for bulk adds: [IPs] turns "10.0.0.101+" (the
// next n addresses from 10.0.0.101), "10.0.0.101-10.0.0.228" or a list into
// n addresses checked against the subnets they must lie in, and [MACs] does
// the same for MAC addresses ("52:54:00:00:01:00+").
//
// # Syntax
//
// A host list is a list of patterns separated by commas (or white space) at
// bracket depth zero; empty items are ignored, as Slurm does. A pattern is
// text with any number of bracket groups; a group is a comma-separated list
// of numbers and ranges "lo-hi" (lo <= hi). Every group multiplies the
// names: the leftmost group varies slowest. A bound with a leading zero
// ("001") fixes the width of every number of its range, and then both
// bounds must have that width: "n[01-3]" and "n[1-010]" are errors (Slurm
// pads the first one silently; an admin who typed it probably meant
// something else). Text may follow the last group ("n[001-128]-ib", which
// Slurm does not accept but pdsh and ClusterShell do).
//
// Expand returns names in the order the list writes them, each once. It
// counts the names before it makes any and refuses a list of more than
// [DefaultMax] names (or Expander.Max), so "n[1-99999999]" is an error, not
// an exhausted head.
//
// Compress is the inverse: it sorts names in natural order (n9 before n10)
// and writes the shortest list it finds, one bracket group per number run,
// then factors a name's earlier numbers into groups where every such name
// has the same later groups: rack1n[01-32],rack2n[01-32] becomes
// rack[1-2]n[01-32]. For names that differ in one number its output is what
// Slurm's `scontrol show hostlist` prints for the same sorted names.
package hostlist

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultMax is the most names Expand returns: ten times a 10,000-node
// cluster.
const DefaultMax = 100_000

// maxDigits is the most digits of a number in a bracket group, so that any
// number and the count of a range fit in an int64.
const maxDigits = 18

// ErrTooMany is returned (wrapped) when a list expands to more names than
// the limit.
var ErrTooMany = errors.New("too many names")

// Expander expands host lists with a limit. The zero value uses DefaultMax.
type Expander struct {
	// Max is the most names one list may expand to; 0 means DefaultMax.
	Max int
}

// Expand expands the host list s with the default limit; see
// [Expander.Expand].
func Expand(s string) ([]string, error) {
	return Expander{}.Expand(s)
}

// Expand returns the names of the host list s in the order it writes them,
// duplicates removed. An error names the pattern and what is wrong with it.
func (e Expander) Expand(s string) ([]string, error) {
	max := e.Max
	if max <= 0 {
		max = DefaultMax
	}
	items, err := split(s)
	if err != nil {
		return nil, err
	}
	pats := make([]pattern, 0, len(items))
	total := 0
	for _, it := range items {
		p, err := parsePattern(it)
		if err != nil {
			return nil, err
		}
		n := p.count(max + 1)
		total += n
		if total > max {
			return nil, fmt.Errorf("expand %q: %w: more than %d", s, ErrTooMany, max)
		}
		pats = append(pats, p)
	}
	out := make([]string, 0, total)
	seen := make(map[string]struct{}, total)
	var buf []byte
	for _, p := range pats {
		p.each(buf[:0], func(name []byte) {
			if _, dup := seen[string(name)]; dup {
				return
			}
			n := string(name)
			seen[n] = struct{}{}
			out = append(out, n)
		})
	}
	return out, nil
}

// split cuts s into items at commas and white space outside brackets, and
// checks that brackets balance.
func split(s string) ([]string, error) {
	var items []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '[':
			if depth > 0 {
				return nil, fmt.Errorf("hostlist %q: nested '[' at offset %d", s, i)
			}
			depth++
		case c == ']':
			if depth == 0 {
				return nil, fmt.Errorf("hostlist %q: ']' without '[' at offset %d", s, i)
			}
			depth--
		case depth == 0 && (c == ',' || isSpace(c)):
			if i > start {
				items = append(items, s[start:i])
			}
			start = i + 1
		case depth > 0 && isSpace(c):
			return nil, fmt.Errorf("hostlist %q: space inside brackets at offset %d", s, i)
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("hostlist %q: unclosed '['", s)
	}
	if len(s) > start {
		items = append(items, s[start:])
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("hostlist %q: no names", s)
	}
	return items, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// pattern is one item: literal text and bracket groups, alternating.
type pattern struct {
	segs []segment
}

// segment is literal text, or a bracket group when ranges is non-nil.
type segment struct {
	text   string
	ranges []rng
}

// rng is lo..hi inclusive, each number written with at least width digits.
type rng struct {
	lo, hi int64
	width  int
}

func parsePattern(item string) (pattern, error) {
	var p pattern
	rest := item
	for rest != "" {
		open := strings.IndexByte(rest, '[')
		if open < 0 {
			p.segs = append(p.segs, segment{text: rest})
			break
		}
		if open > 0 {
			p.segs = append(p.segs, segment{text: rest[:open]})
		}
		end := strings.IndexByte(rest, ']') // split checked the balance
		rs, err := parseGroup(rest[open+1 : end])
		if err != nil {
			return pattern{}, fmt.Errorf("hostlist pattern %q: %w", item, err)
		}
		p.segs = append(p.segs, segment{ranges: rs})
		rest = rest[end+1:]
	}
	return p, nil
}

func parseGroup(g string) ([]rng, error) {
	if g == "" {
		return nil, errors.New("empty brackets")
	}
	var rs []rng
	for part := range strings.SplitSeq(g, ",") {
		r, err := parseRange(part)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

func parseRange(s string) (rng, error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	if !isRange {
		hiS = loS
	}
	lo, err := parseNum(loS)
	if err != nil {
		return rng{}, fmt.Errorf("range %q: %w", s, err)
	}
	hi, err := parseNum(hiS)
	if err != nil {
		return rng{}, fmt.Errorf("range %q: %w", s, err)
	}
	if lo > hi {
		return rng{}, fmt.Errorf("range %q: reversed (%d > %d)", s, lo, hi)
	}
	width := 0
	if padded(loS) || padded(hiS) {
		if len(loS) != len(hiS) {
			return rng{}, fmt.Errorf("range %q: width mismatch: %q has %d digits, %q has %d (write both with the same width)", s, loS, len(loS), hiS, len(hiS))
		}
		width = len(loS)
	}
	return rng{lo: lo, hi: hi, width: width}, nil
}

// padded reports whether the number s is written with leading zeros.
func padded(s string) bool { return len(s) > 1 && s[0] == '0' }

func parseNum(s string) (int64, error) {
	if s == "" {
		return 0, errors.New("missing number")
	}
	if len(s) > maxDigits {
		return 0, fmt.Errorf("number %q has more than %d digits", s, maxDigits)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not a number", s)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// count returns the number of names p expands to, or limit if that is
// more.
func (p pattern) count(limit int) int {
	n := 1
	for _, sg := range p.segs {
		if sg.ranges == nil {
			continue
		}
		k := 0
		for _, r := range sg.ranges {
			size := r.hi - r.lo + 1
			if size >= int64(limit) || k+int(size) >= limit {
				return limit
			}
			k += int(size)
		}
		if n > limit/k {
			return limit
		}
		n *= k
	}
	return min(n, limit)
}

// each calls f with every name of p, in order; f must not keep name.
func (p pattern) each(buf []byte, f func(name []byte)) {
	var rec func(i int, b []byte)
	rec = func(i int, b []byte) {
		if i == len(p.segs) {
			f(b)
			return
		}
		sg := p.segs[i]
		if sg.ranges == nil {
			rec(i+1, append(b, sg.text...))
			return
		}
		for _, r := range sg.ranges {
			for v := r.lo; v <= r.hi; v++ {
				rec(i+1, appendNum(b, v, r.width))
			}
		}
	}
	rec(0, buf)
}

// appendNum appends v in decimal, zero-padded to width digits.
func appendNum(b []byte, v int64, width int) []byte {
	var tmp [20]byte
	d := strconv.AppendInt(tmp[:0], v, 10)
	for i := len(d); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, d...)
}
