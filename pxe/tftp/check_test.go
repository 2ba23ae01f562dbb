package tftp

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
)

// FuzzCheck checks the name judgement, the only request parsing this
// package does itself: whatever the client sends, only catalogue names
// pass, and a refusal says why. Seeds: testdata/fuzz/FuzzCheck.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"undionly.kpxe", "/undionly.kpxe", "../etc/passwd", "", "/", "efi/x64/ipxe.efi", `\x`, "a/../b"} {
		f.Add(s)
	}
	st := &state{catalogue: map[string]bool{"undionly.kpxe": true, "efi/x64/ipxe.efi": true}}
	f.Fuzz(func(t *testing.T, raw string) {
		name := normalise(raw)
		if strings.HasPrefix(name, "/") || !strings.HasSuffix(raw, name) {
			t.Fatalf("normalise(%q) = %q", raw, name)
		}
		err := st.check(name)
		switch {
		case err == nil:
			if !st.catalogue[name] || !fs.ValidPath(name) {
				t.Fatalf("check(%q) accepted a name outside the catalogue", name)
			}
		case errors.Is(err, ErrAccessViolation):
			if fs.ValidPath(name) {
				t.Fatalf("check(%q) = %v for a valid path", name, err)
			}
		case errors.Is(err, ErrNotFound):
			if st.catalogue[name] {
				t.Fatalf("check(%q) = %v for a catalogue name", name, err)
			}
		default:
			t.Fatalf("check(%q) = %v, want ErrNotFound or ErrAccessViolation", name, err)
		}
	})
}
