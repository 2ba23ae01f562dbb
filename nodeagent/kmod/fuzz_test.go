package kmod_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/nodeagent/kmod"
)

// Seeds: testdata/fuzz/FuzzParseModinfo.
func FuzzParseModinfo(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m := kmod.ParseModinfo(b)
		for k, vs := range m {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				t.Errorf("bad key %q", k)
			}
			for _, v := range vs {
				if strings.Contains(v, "\x00") {
					t.Errorf("value of %q contains NUL: %q", k, v)
				}
			}
		}
		for _, d := range m.Depends() {
			if d == "" || strings.Contains(d, ",") || strings.TrimSpace(d) != d {
				t.Errorf("bad dependency %q", d)
			}
		}
	})
}

// Seeds: testdata/fuzz/FuzzModinfoFromELF (one is a gcc-built module).
func FuzzModinfoFromELF(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := kmod.ModinfoFromELF(bytes.NewReader(b))
		if err == nil && m == nil {
			t.Error("nil Modinfo without error")
		}
	})
}

// Seeds: testdata/fuzz/FuzzParseAliases. A parsed index must answer any
// modalias without panicking, each module once.
func FuzzParseAliases(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte, modalias string) {
		a, err := kmod.ParseAliases(bytes.NewReader(b))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, m := range a.Lookup(modalias) {
			if seen[m] {
				t.Errorf("Lookup(%q) lists %s twice", modalias, m)
			}
			seen[m] = true
		}
	})
}
