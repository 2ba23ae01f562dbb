package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/config"
)

// TestSystemdUnit: the unit `make install` installs passes systemd's own
// check (systemd-analyze verify: sections, keys, the executables), runs
// `serve --config` on the example configuration, and reloads with SIGHUP;
// the example configuration decodes.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("ramboot.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(b), "@BINDIR@", filepath.Dir(binary))
	for _, want := range []string{"Type=notify", "ExecStart=" + binary + " serve --config /etc/ramboot/ramboot.yaml", "ExecReload=/bin/kill -HUP $MAINPID", "ReadWritePaths=/var/lib/ramboot"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if _, err := config.Load("ramboot.yaml"); err != nil {
		t.Errorf("example configuration: %v", err)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	p := filepath.Join(t.TempDir(), "ramboot.service")
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
