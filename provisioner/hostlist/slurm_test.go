package hostlist_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/hostlist"
)

// scontrol runs Slurm's scontrol (Debian's slurm-client) with a minimal
// configuration of its own; `show hostnames` and `show hostlist` need no
// controller.
type scontrol struct {
	t    testing.TB
	bin  string
	conf string
}

func newScontrol(t testing.TB) scontrol {
	t.Helper()
	bin, err := exec.LookPath("scontrol")
	if err != nil {
		t.Skip("scontrol not installed (Debian's slurm-client; make deps installs it)")
	}
	conf := filepath.Join(t.TempDir(), "slurm.conf")
	body := "ClusterName=ramboot-test\nSlurmctldHost=localhost\nNodeName=localhost\nPartitionName=p Nodes=localhost\n"
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return scontrol{t: t, bin: bin, conf: conf}
}

func (s scontrol) run(args ...string) (string, error) {
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "SLURM_CONF="+s.conf)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (s scontrol) hostnames(list string) []string {
	s.t.Helper()
	out, err := s.run("show", "hostnames", list)
	if err != nil {
		s.t.Fatalf("scontrol show hostnames %q: %v: %s", list, err, out)
	}
	return strings.Fields(out)
}

// slurmPatterns are lists in the syntax both accept (Slurm takes no text
// after the last bracket group).
var slurmPatterns = []string{
	"n[001-128]",
	"rack[1-4]n[01-32]",
	"n[1,3,5-9]",
	"n[8-11],m[08-11]",
	"n[098-101]",
	"gpu[1-2],n[1-3],login1",
	"n1-[1-4]",
	"x[0-0]",
	"rack[1-2]n[05]",
}

func TestSlurmExpand(t *testing.T) {
	sc := newScontrol(t)
	r := rand.New(rand.NewPCG(3, 4))
	patterns := slices.Clone(slurmPatterns)
	for range 30 {
		patterns = append(patterns, randomSlurmPattern(r))
	}
	for _, p := range patterns {
		// Slurm keeps duplicates; Expand lists each name once.
		var want []string
		for _, n := range sc.hostnames(p) {
			if !slices.Contains(want, n) {
				want = append(want, n)
			}
		}
		got, err := hostlist.Expand(p)
		if err != nil {
			t.Errorf("Expand(%q): %v (Slurm: %v)", p, err, want)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("Expand(%q) = %v, Slurm %v", p, got, want)
		}
	}
}

// randomSlurmPattern draws a list of one- and two-dimensional patterns.
func randomSlurmPattern(r *rand.Rand) string {
	var items []string
	for range 1 + r.IntN(3) {
		var b strings.Builder
		b.WriteString([]string{"n", "node", "rack"}[r.IntN(3)])
		for d := range 1 + r.IntN(2) {
			if d > 0 {
				b.WriteString("n")
			}
			w := r.IntN(4)
			b.WriteByte('[')
			lo := r.IntN(50)
			for k := range 1 + r.IntN(3) {
				if k > 0 {
					b.WriteByte(',')
				}
				hi := lo + r.IntN(6)
				if w > 0 {
					fmt.Fprintf(&b, "%0*d-%0*d", w, lo, w, hi)
				} else {
					fmt.Fprintf(&b, "%d-%d", lo, hi)
				}
				lo = hi + 2 + r.IntN(5)
			}
			b.WriteByte(']')
		}
		items = append(items, b.String())
	}
	return strings.Join(items, ",")
}

var trailingText = regexp.MustCompile(`\][^\[,]+(,|$)`)

func TestSlurmCompress(t *testing.T) {
	sc := newScontrol(t)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 40 {
		// One dimension, one width per prefix (names mixing n5 and n005
		// group differently, both correct): the same output as Slurm for
		// the same sorted names.
		names := oneDimNames(r)
		slices.SortFunc(names, hostlist.Natural)
		names = slices.Compact(names)
		want, err := sc.run("show", "hostlist", strings.Join(names, ","))
		if err != nil {
			t.Fatalf("scontrol show hostlist: %v: %s", err, want)
		}
		got, err := hostlist.Compress(names)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("case %d: Compress(%v) = %q, Slurm %q", i, names, got, want)
		}
		// Any shape, any widths: Slurm reads what Compress writes, when it has no text
		// after a bracket group, as the same names.
		names = randomNames(r)
		c, err := hostlist.Compress(names)
		if err != nil {
			t.Fatal(err)
		}
		if trailingText.MatchString(c) {
			continue
		}
		if back := sc.hostnames(c); !slices.Equal(set(back), set(names)) {
			t.Errorf("case %d: Slurm expands Compress(%v) = %q to %v", i, names, c, back)
		}
	}
}

func oneDimNames(r *rand.Rand) []string {
	var names []string
	prefixes := []string{"n", "gpu", "c-"}
	r.Shuffle(len(prefixes), func(i, j int) { prefixes[i], prefixes[j] = prefixes[j], prefixes[i] })
	for _, pre := range prefixes[:1+r.IntN(3)] {
		w := r.IntN(4)
		for range 1 + r.IntN(30) {
			v := r.IntN(150)
			if w > 0 {
				names = append(names, fmt.Sprintf("%s%0*d", pre, w, v))
			} else {
				names = append(names, fmt.Sprintf("%s%d", pre, v))
			}
		}
	}
	return names
}
