package hostlist_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/hostlist"
)

// BenchmarkExpand expands a 10,000-node list.
func BenchmarkExpand(b *testing.B) {
	for b.Loop() {
		if _, err := hostlist.Expand("rack[01-40]n[001-250]"); err != nil {
			b.Fatal(err)
		}
	}
}

// benchNames are the 10,000 names of rack[01-40]n[001-250] with one in
// seven missing (stragglers to print), shuffled.
func benchNames(b *testing.B) []string {
	all, err := hostlist.Expand("rack[01-40]n[001-250]")
	if err != nil {
		b.Fatal(err)
	}
	var names []string
	for i, n := range all {
		if i%7 != 3 {
			names = append(names, n)
		}
	}
	r := rand.New(rand.NewPCG(1, 1))
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	return names
}

// BenchmarkCompress compresses 8,571 names of a 10,000-node cluster.
func BenchmarkCompress(b *testing.B) {
	names := benchNames(b)
	for b.Loop() {
		if _, err := hostlist.Compress(names); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompressScontrol is the same names through Slurm's `scontrol
// show hostlist`, one process per op (its start-up included), for a ratio
// measured in the same run.
func BenchmarkCompressScontrol(b *testing.B) {
	sc := newScontrol(b)
	names := benchNames(b)
	arg := strings.Join(names, ",")
	for b.Loop() {
		if out, err := sc.run("show", "hostlist", arg); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
}
