package hostlist_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/hostlist"
)

func TestExpand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // names joined by spaces
	}{
		{"n1", "n1"},
		{"n[1-3]", "n1 n2 n3"},
		{"n[001-003]", "n001 n002 n003"},
		{"n[8-11]", "n8 n9 n10 n11"},
		{"n[08-11]", "n08 n09 n10 n11"},
		{"n[098-101]", "n098 n099 n100 n101"},
		{"n[0-0]", "n0"},
		{"n[007]", "n007"},
		{"n[1,3,5-7]", "n1 n3 n5 n6 n7"},
		{"rack[1-2]n[01-02]", "rack1n01 rack1n02 rack2n01 rack2n02"},
		{"a[1-2]b[1-2]c[1-2]", "a1b1c1 a1b1c2 a1b2c1 a1b2c2 a2b1c1 a2b1c2 a2b2c1 a2b2c2"},
		{"n[1-3],gpu[1-2]", "n1 n2 n3 gpu1 gpu2"},
		{"n[1-2]-ib", "n1-ib n2-ib"},
		{"n[1-2].cluster.local", "n1.cluster.local n2.cluster.local"},
		{"[1-3]", "1 2 3"},
		{"n3,n1,n2", "n3 n1 n2"},
		{"n[1-3],n2", "n1 n2 n3"},
		{"n[1-2] n5\tn6", "n1 n2 n5 n6"},
		{" n1,,n2 ", "n1 n2"},
		{"head", "head"},
	} {
		if tc.want == "" {
			continue
		}
		t.Run(tc.in, func(t *testing.T) {
			got, err := hostlist.Expand(tc.in)
			if err != nil {
				t.Fatalf("Expand(%q): %v", tc.in, err)
			}
			if s := strings.Join(got, " "); s != tc.want {
				t.Errorf("Expand(%q) = %s, want %s", tc.in, s, tc.want)
			}
		})
	}
}

func TestExpandErrors(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", "no names"},
		{" , ", "no names"},
		{"n[1-3", "unclosed '['"},
		{"n1-3]", "']' without '['"},
		{"n[[1-3]]", "nested '['"},
		{"n[]", "empty brackets"},
		{"n[3-1]", `range "3-1": reversed (3 > 1)`},
		{"n[01-3]", `range "01-3": width mismatch`},
		{"n[1-010]", `range "1-010": width mismatch`},
		{"n[001-0100]", "width mismatch"},
		{"n[1-]", "missing number"},
		{"n[-3]", "missing number"},
		{"n[1--3]", "is not a number"},
		{"n[a-b]", `"a" is not a number`},
		{"n[1-3,]", "missing number"},
		{"n[1- 3]", "space inside brackets"},
		{"n[1234567890123456789]", "more than 18 digits"},
		{"n[1-99999999]", "too many names"},
		{"a[1-1000]b[1-1000]", "too many names"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := hostlist.Expand(tc.in)
			if err == nil {
				t.Fatalf("Expand(%q) = %v, want an error", tc.in, got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Expand(%q) error %q, want it to say %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestExpandMax(t *testing.T) {
	e := hostlist.Expander{Max: 10}
	if _, err := e.Expand("n[1-10]"); err != nil {
		t.Fatalf("10 names with Max 10: %v", err)
	}
	for _, s := range []string{"n[1-11]", "n[1-10],m1", "a[1-4]b[1-3]", "n[1-5],n[6-11]"} {
		_, err := e.Expand(s)
		if !errors.Is(err, hostlist.ErrTooMany) {
			t.Errorf("Expand(%q) with Max 10: err %v, want ErrTooMany", s, err)
		}
	}
	// Huge products are refused without overflowing the count.
	_, err := hostlist.Expand("a[0-999999999999999999]b[0-999999999999999999]c[0-999999999999999999]")
	if !errors.Is(err, hostlist.ErrTooMany) {
		t.Errorf("huge product: err %v, want ErrTooMany", err)
	}
}

func TestCompress(t *testing.T) {
	for _, tc := range []struct {
		in   string // names separated by spaces
		want string
	}{
		{"n1", "n1"},
		{"n3 n1 n2", "n[1-3]"},
		{"n1 n1 n2", "n[1-2]"},
		{"n1 n2 n3 n5 n7 n8", "n[1-3,5,7-8]"},
		{"n9 n10 n11", "n[9-11]"},
		{"n08 n09 n10", "n[08-10]"},
		{"n8 n09 n10", "n[8,09-10]"},
		{"n099 n100 n0101", "n[099-100,0101]"},
		{"n8 n08", "n[8,08]"},
		{"b a a1 a2", "a,a[1-2],b"},
		{"n1a n2a", "n[1-2]a"},
		{"n1-1 n1-2", "n1-[1-2]"},
		{"rack1n01 rack1n02 rack2n01 rack2n02", "rack[1-2]n[01-02]"},
		{"rack1n05 rack2n05", "rack[1-2]n[05]"},
		{"rack1n01 rack1n02 rack2n01", "rack1n[01-02],rack2n01"},
		{"row1rack1n1 row1rack1n2 row1rack2n1 row1rack2n2 row2rack1n1 row2rack1n2 row2rack2n1 row2rack2n2", "row[1-2]rack[1-2]n[1-2]"},
		{"n001-ib n002-ib n003-ib", "n[001-003]-ib"},
		{"gpu1 n1 n2 gpu2", "gpu[1-2],n[1-2]"},
		{"head", "head"},
		{"n1234567890123456789 n1234567890123456790", "n1234567890123456789,n1234567890123456790"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := hostlist.Compress(strings.Fields(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Compress(%s) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestCompressErrors(t *testing.T) {
	for _, n := range []string{"", "n[1]", "a,b", "a b", "n]"} {
		if s, err := hostlist.Compress([]string{"n1", n}); err == nil {
			t.Errorf("Compress(%q) = %q, want an error", n, s)
		}
	}
}

func TestCompressLarge(t *testing.T) {
	names, err := hostlist.Expand("n[00001-10000]")
	if err != nil {
		t.Fatal(err)
	}
	rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	got, err := hostlist.Compress(names)
	if err != nil {
		t.Fatal(err)
	}
	if got != "n[00001-10000]" {
		t.Errorf("got %q", got)
	}
}

func TestNatural(t *testing.T) {
	want := []string{"", "0", "00", "1", "01", "2", "10", "a", "n", "n1", "n1a", "n01", "n2", "n9", "n10", "n10a", "n010", "na"}
	got := slices.Clone(want)
	for range 20 {
		rand.Shuffle(len(got), func(i, j int) { got[i], got[j] = got[j], got[i] })
		slices.SortFunc(got, hostlist.Natural)
		if !slices.Equal(got, want) {
			t.Fatalf("sorted %v, want %v", got, want)
		}
	}
}

// randomNames draws a set of names of the shapes clusters use: prefixes,
// one to three numbers, padding or not, suffixes.
func randomNames(r *rand.Rand) []string {
	prefixes := []string{"n", "node", "gpu", "rack", "c", "x-"}
	suffixes := []string{"", "", "-ib", ".local", "a"}
	var names []string
	for range 1 + r.IntN(6) {
		pre := prefixes[r.IntN(len(prefixes))]
		suf := suffixes[r.IntN(len(suffixes))]
		dims := 1 + r.IntN(3)
		count := 1 + r.IntN(40)
		for range count {
			var b strings.Builder
			b.WriteString(pre)
			for d := range dims {
				if d > 0 {
					b.WriteString([]string{"n", "s", "-"}[r.IntN(3)])
				}
				v := r.IntN(120)
				switch r.IntN(3) {
				case 0:
					fmt.Fprintf(&b, "%d", v)
				case 1:
					fmt.Fprintf(&b, "%03d", v)
				default:
					fmt.Fprintf(&b, "%02d", v)
				}
			}
			b.WriteString(suf)
			names = append(names, b.String())
		}
	}
	return names
}

func set(names []string) []string {
	s := slices.Clone(names)
	slices.Sort(s)
	return slices.Compact(s)
}

// TestRoundTrip is the property: Expand(Compress(x)) is the set x, and
// Compress is canonical (compressing that again gives the same list).
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		names := randomNames(r)
		c, err := hostlist.Compress(names)
		if err != nil {
			t.Fatalf("case %d: Compress(%v): %v", i, names, err)
		}
		back, err := hostlist.Expand(c)
		if err != nil {
			t.Fatalf("case %d: Expand(Compress(%v) = %q): %v", i, names, c, err)
		}
		if !slices.Equal(set(back), set(names)) {
			t.Fatalf("case %d: Expand(%q) = %v, want the set %v", i, c, back, set(names))
		}
		if len(back) != len(set(names)) {
			t.Fatalf("case %d: Expand(%q) has duplicates: %v", i, c, back)
		}
		again, err := hostlist.Compress(back)
		if err != nil || again != c {
			t.Fatalf("case %d: Compress(Expand(%q)) = %q, %v", i, c, again, err)
		}
	}
}

// TestExpandCompressRoundTrip: compressing what a list expands to and
// expanding that gives the same names.
func TestExpandCompressRoundTrip(t *testing.T) {
	for _, s := range []string{"n[001-128]", "rack[1-4]n[01-32]", "n[1,3,5-9]", "n[1-3],gpu[01-04]-ib", "a[1-2]b[1-2]c[1-2]"} {
		names, err := hostlist.Expand(s)
		if err != nil {
			t.Fatal(err)
		}
		c, err := hostlist.Compress(names)
		if err != nil {
			t.Fatal(err)
		}
		back, err := hostlist.Expand(c)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(set(back), set(names)) {
			t.Errorf("%s -> %s -> %v", s, c, back)
		}
		if c != s && s != "n[1-3],gpu[01-04]-ib" {
			t.Errorf("Compress(Expand(%q)) = %q, want it back", s, c)
		}
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"n[001-128]", "rack[1-4]n[01-32]", "n[1,3,5-9]", "n[3-1]", "n[", "a,b c", "n[01-3]", "x[0-9]y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		names, err := hostlist.Expander{Max: 5000}.Expand(s)
		if err != nil {
			return
		}
		c, err := hostlist.Compress(names)
		if err != nil {
			return // names with characters Compress refuses
		}
		back, err := hostlist.Expander{Max: 5000}.Expand(c)
		if err != nil {
			t.Fatalf("Expand(Compress(Expand(%q)) = %q): %v", s, c, err)
		}
		if !slices.Equal(set(back), set(names)) {
			t.Fatalf("%q -> %v -> %q -> %v", s, names, c, back)
		}
	})
}

func FuzzCompress(f *testing.F) {
	f.Add("n1 n2 n3 n010")
	f.Add("rack1n1 rack2n1 rack2n2")
	f.Add("a01b a1b a001b")
	f.Fuzz(func(t *testing.T, s string) {
		names := strings.Fields(s)
		if len(names) == 0 {
			return
		}
		c, err := hostlist.Compress(names)
		if err != nil {
			return
		}
		back, err := hostlist.Expand(c)
		if err != nil {
			t.Fatalf("Expand(Compress(%q) = %q): %v", names, c, err)
		}
		if !slices.Equal(set(back), set(names)) {
			t.Fatalf("%q -> %q -> %v", names, c, back)
		}
	})
}
