package netstack_test

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ramboot/ramboot/nodeagent/netstack"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var ifc = netstack.Interface{
	MAC:     "52:54:00:12:34:56",
	Address: netip.MustParsePrefix("10.77.0.10/24"),
	Gateway: netip.MustParseAddr("10.77.0.1"),
	DNS:     []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")},
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("%s:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestWrite(t *testing.T) {
	tests := []struct {
		name     string
		programs []string
		want     []string
	}{
		{name: "debian", programs: []string{"usr/lib/systemd/systemd-networkd"}, want: []string{netstack.NetworkdPath}},
		{name: "rocky", programs: []string{"usr/lib/systemd/systemd-networkd", "usr/sbin/NetworkManager"}, want: []string{netstack.NetworkdPath, netstack.KeyfilePath}},
		{name: "busybox", programs: nil, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, p := range tt.programs {
				os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
				os.WriteFile(filepath.Join(root, p), []byte("\x7fELF"), 0o755)
			}
			got, err := netstack.Write(root, ifc)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Write = %v, %v; want %v", got, err, tt.want)
			}
			for _, p := range got {
				fi, err := os.Stat(filepath.Join(root, p))
				if err != nil {
					t.Fatal(err)
				}
				if want := os.FileMode(0o644); p == netstack.KeyfilePath && fi.Mode().Perm() != 0o600 || p == netstack.NetworkdPath && fi.Mode().Perm() != want {
					t.Errorf("%s: mode %v", p, fi.Mode())
				}
			}
		})
	}
}

func TestGolden(t *testing.T) {
	golden(t, "10-ramboot.network", netstack.Networkd(ifc))
	golden(t, "ramboot.nmconnection", netstack.Keyfile(ifc))
	noGW := ifc
	noGW.Gateway, noGW.DNS = netip.Addr{}, nil
	golden(t, "no-gateway.network", netstack.Networkd(noGW))
	golden(t, "no-gateway.nmconnection", netstack.Keyfile(noGW))
}
