package overlayrender_test

import (
	"context"
	"flag"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestNetworkGolden renders a node with an Ethernet and an InfiniBand
// interface for every network stack and compares the files with
// testdata/network/<stack>/ (rewrite with -update). The hosts file of the
// same cluster is testdata/hosts.
func TestNetworkGolden(t *testing.T) {
	ctx := context.Background()
	r, err := overlayrender.New(overlayrender.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, stack := range []overlayrender.NetworkStack{overlayrender.Networkd, overlayrender.NetworkManager, overlayrender.Ifupdown, overlayrender.NoNetwork} {
		t.Run(string(stack), func(t *testing.T) {
			c := testCluster(2)
			c.Nodes[0].Network = stack
			c.Nodes[0].Hostname = "n0001.hpc"
			c.Nodes[0].Interfaces = append(c.Nodes[0].Interfaces, overlayrender.Interface{
				Name:    "ib0",
				MAC:     "80:00:02:08:fe:80:00:00:00:00:00:00:02:c9:03:00:0a:0b:0c:0d",
				Address: netip.MustParsePrefix("10.10.0.11/16"),
				MTU:     65520,
			}, overlayrender.Interface{
				MAC:     "52:54:00:aa:bb:cc",
				Address: netip.MustParsePrefix("192.168.7.11/24"),
			})
			snap, err := r.Prepare(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			o, err := snap.Render(ctx, "n0001", "tok")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]byte{}
			for _, f := range o.Files {
				if strings.HasPrefix(f.Path, "etc/systemd/network/") || strings.HasPrefix(f.Path, "etc/NetworkManager/system-connections/") || strings.HasPrefix(f.Path, "etc/network/") {
					if f.Mode.IsRegular() {
						got[f.Path] = f.Data
					}
				}
			}
			if stack == overlayrender.NoNetwork && len(got) != 0 {
				t.Fatalf("stack none wrote %d files", len(got))
			}
			golden(t, filepath.Join("testdata", "network", string(stack)), got)
			if stack == overlayrender.Networkd {
				golden(t, "testdata", map[string][]byte{"hosts": o.File("etc/hosts").Data})
				if f := o.File("etc/systemd/system/multi-user.target.wants/systemd-networkd.service"); f == nil || f.Mode&fs.ModeSymlink == 0 || f.Linkname != "/lib/systemd/system/systemd-networkd.service" {
					t.Errorf("networkd not enabled: %+v", f)
				}
			}
		})
	}
}

// golden compares files (relative paths) with the tree under dir.
func golden(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for p, b := range files {
		g := filepath.Join(dir, filepath.FromSlash(p))
		if *update {
			if err := os.MkdirAll(filepath.Dir(g), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(g, b, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(g)
		if err != nil {
			t.Errorf("%s: %v (run with -update)", p, err)
			continue
		}
		if string(want) != string(b) {
			t.Errorf("%s differs from %s:\n%s\nwant:\n%s", p, g, b, want)
		}
	}
}
