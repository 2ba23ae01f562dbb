package hostlist

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Compress returns the shortest host list it finds for names: sorted in
// natural order, duplicates removed, one bracket group for each run of
// numbers, and earlier numbers factored where every name shares the later
// groups. Expand(Compress(names)) returns the same set of names. A name that
// is empty or holds a bracket, a comma or white space is an error.
func Compress(names []string) (string, error) {
	terms, err := compressTerms(names)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for i, t := range terms {
		if i > 0 {
			b.WriteByte(',')
		}
		t.write(&b)
	}
	return b.String(), nil
}

// term is a compressed pattern: literal text and number sets, alternating.
// first is its first name in natural order, which orders the output.
type term struct {
	segs  []cseg
	first string
}

// cseg is literal text, or a number set when set is non-nil.
type cseg struct {
	text string
	set  []run
}

// run is lo..hi written with width digits (0: no padding).
type run struct {
	lo, hi int64
	width  int
}

// num is one number as a name writes it.
type num struct {
	v int64
	s string
}

func compressTerms(names []string) ([]term, error) {
	for _, n := range names {
		if err := checkName(n); err != nil {
			return nil, err
		}
	}
	// One dimension: group the names by the text around their last number.
	type key struct{ pre, suf string }
	groups := map[key][]num{}
	var literal []string
	for _, n := range names {
		pre, d, suf, ok := lastNumber(n)
		if !ok {
			literal = append(literal, n)
			continue
		}
		v, _ := strconv.ParseInt(d, 10, 64)
		k := key{pre, suf}
		groups[k] = append(groups[k], num{v, d})
	}
	terms := make([]term, 0, len(groups)+len(literal))
	for _, n := range uniqueSorted(literal) {
		terms = append(terms, term{segs: []cseg{{text: n}}, first: n})
	}
	for k, nums := range groups {
		t := term{}
		if k.pre != "" {
			t.segs = append(t.segs, cseg{text: k.pre})
		}
		t.segs = append(t.segs, cseg{set: runs(nums)})
		if k.suf != "" {
			t.segs = append(t.segs, cseg{text: k.suf})
		}
		terms = append(terms, t)
	}
	// More dimensions: factor the last number left of the first set.
	for {
		next, changed := factor(terms)
		terms = next
		if !changed {
			break
		}
	}
	for i := range terms {
		terms[i].first = terms[i].firstName()
	}
	slices.SortFunc(terms, func(a, b term) int { return Natural(a.first, b.first) })
	return terms, nil
}

func checkName(n string) error {
	if n == "" {
		return fmt.Errorf("compress: empty name")
	}
	if strings.ContainsAny(n, "[], \t\r\n") {
		return fmt.Errorf("compress: name %q holds a bracket, comma or space", n)
	}
	return nil
}

func uniqueSorted(s []string) []string {
	s = slices.Clone(s)
	slices.SortFunc(s, Natural)
	return slices.Compact(s)
}

// lastNumber splits n around its last run of digits, if it has one of at
// most maxDigits digits.
func lastNumber(n string) (pre, digits, suf string, ok bool) {
	end := len(n)
	for end > 0 && !isDigit(n[end-1]) {
		end--
	}
	if end == 0 {
		return "", "", "", false
	}
	start := end
	for start > 0 && isDigit(n[start-1]) {
		start--
	}
	if end-start > maxDigits {
		return "", "", "", false
	}
	return n[:start], n[start:end], n[end:], true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// runs sorts nums and merges consecutive numbers written alike into runs,
// dropping duplicates.
func runs(nums []num) []run {
	slices.SortFunc(nums, func(a, b num) int {
		return cmp.Or(cmp.Compare(a.v, b.v), cmp.Compare(len(a.s), len(b.s)))
	})
	nums = slices.CompactFunc(nums, func(a, b num) bool { return a.s == b.s })
	var out []run
	used := make([]bool, len(nums))
	for i := range nums {
		if used[i] {
			continue
		}
		used[i] = true
		// A number without leading zeros fits an unpadded run and a run of
		// its own width; one with leading zeros only the latter.
		unpad, pad, w := !padded(nums[i].s), true, len(nums[i].s)
		r := run{lo: nums[i].v, hi: nums[i].v}
		for j := i + 1; j < len(nums); j++ {
			if used[j] || nums[j].v < r.hi+1 {
				continue
			}
			if nums[j].v > r.hi+1 {
				break
			}
			u := unpad && !padded(nums[j].s)
			p := pad && len(nums[j].s) == w
			if !u && !p {
				continue
			}
			unpad, pad = u, p
			r.hi = nums[j].v
			used[j] = true
		}
		if !unpad {
			r.width = w
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b run) int {
		return cmp.Or(cmp.Compare(a.lo, b.lo), cmp.Compare(a.width, b.width))
	})
	return out
}

// factor makes one pass of factoring: terms that differ only in the last
// number before their first set, and whose sets and text are otherwise
// equal, become one term with a set for that number.
func factor(terms []term) ([]term, bool) {
	type slot struct {
		idx  int // index of the literal segment holding the number
		pre  string
		nums []num
		suf  string
		rest []cseg
	}
	byKey := map[string]*slot{}
	var order []string
	var out []term
	for _, t := range terms {
		i, pre, d, suf, ok := t.factorable()
		if !ok {
			out = append(out, t)
			continue
		}
		var kb strings.Builder
		kb.WriteString(strconv.Itoa(i))
		kb.WriteByte(0)
		for j, sg := range t.segs {
			if j == i {
				kb.WriteString(pre)
				kb.WriteByte(1)
				kb.WriteString(suf)
			} else {
				sg.write(&kb, true)
			}
			kb.WriteByte(0)
		}
		k := kb.String()
		v, _ := strconv.ParseInt(d, 10, 64)
		if s, ok := byKey[k]; ok {
			s.nums = append(s.nums, num{v, d})
			continue
		}
		byKey[k] = &slot{idx: i, pre: pre, nums: []num{{v, d}}, suf: suf, rest: t.segs}
		order = append(order, k)
	}
	changed := false
	for _, k := range order {
		s := byKey[k]
		if len(s.nums) == 1 {
			// Nothing to factor: keep the term as it was.
			out = append(out, term{segs: s.rest})
			continue
		}
		changed = true
		var segs []cseg
		segs = append(segs, s.rest[:s.idx]...)
		if s.pre != "" {
			segs = append(segs, cseg{text: s.pre})
		}
		segs = append(segs, cseg{set: runs(s.nums)})
		if s.suf != "" {
			segs = append(segs, cseg{text: s.suf})
		}
		segs = append(segs, s.rest[s.idx+1:]...)
		out = append(out, term{segs: segs})
	}
	return out, changed
}

// factorable finds the number a factoring pass would turn into a set: the
// last number in the last literal segment before the term's first set.
func (t term) factorable() (idx int, pre, digits, suf string, ok bool) {
	first := slices.IndexFunc(t.segs, func(s cseg) bool { return s.set != nil })
	for i := first - 1; i >= 0; i-- {
		if t.segs[i].set != nil {
			continue
		}
		pre, digits, suf, ok = lastNumber(t.segs[i].text)
		if ok {
			return i, pre, digits, suf, true
		}
	}
	return 0, "", "", "", false
}

// firstName returns the first name t expands to in natural order.
func (t term) firstName() string {
	var b strings.Builder
	for _, sg := range t.segs {
		if sg.set == nil {
			b.WriteString(sg.text)
			continue
		}
		b.Write(appendNum(nil, sg.set[0].lo, sg.set[0].width))
	}
	return b.String()
}

// write writes t in host list syntax. A term whose sets are all single
// numbers is a plain name; otherwise every set is bracketed, so that Slurm
// reads the result too ("rack[1-2]n[05]", not "rack[1-2]n05").
func (t term) write(b *strings.Builder) {
	brackets := false
	for _, sg := range t.segs {
		if sg.set != nil && (len(sg.set) > 1 || sg.set[0].lo != sg.set[0].hi) {
			brackets = true
		}
	}
	for _, sg := range t.segs {
		sg.write(b, brackets)
	}
}

func (sg cseg) write(b *strings.Builder, brackets bool) {
	if sg.set == nil {
		b.WriteString(sg.text)
		return
	}
	if brackets {
		b.WriteByte('[')
	}
	for i, r := range sg.set {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(appendNum(nil, r.lo, r.width))
		if r.hi != r.lo {
			b.WriteByte('-')
			b.Write(appendNum(nil, r.hi, r.width))
		}
	}
	if brackets {
		b.WriteByte(']')
	}
}

// Natural compares host names in natural order: runs of digits compare by
// value (n9 before n10), then by length (n8 before n08), other text by
// bytes. It is a total order consistent with string equality.
func Natural(a, b string) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if isDigit(a[i]) && isDigit(b[j]) {
			si, sj := i, j
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			da, db := strings.TrimLeft(a[si:i], "0"), strings.TrimLeft(b[sj:j], "0")
			if c := cmp.Or(cmp.Compare(len(da), len(db)), strings.Compare(da, db), cmp.Compare(i-si, j-sj)); c != 0 {
				return c
			}
			continue
		}
		if a[i] != b[j] {
			return cmp.Compare(a[i], b[j])
		}
		i++
		j++
	}
	return cmp.Compare(len(a)-i, len(b)-j)
}
