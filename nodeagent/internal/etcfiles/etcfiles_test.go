package etcfiles_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/ramboot/ramboot/nodeagent/internal/etcfiles"
)

func TestWrite(t *testing.T) {
	tests := []struct {
		name   string
		files  etcfiles.Files
		hosts  string
		resolv string // "" = the file is left alone
	}{
		{
			name:   "full",
			files:  etcfiles.Files{Hostname: "n001", Address: netip.MustParseAddr("10.77.0.10"), DNS: []string{"10.77.0.1", "10.77.0.2"}},
			hosts:  "# Written by ramboot-agent at boot.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.77.0.10\tn001\n",
			resolv: "# Written by ramboot-agent at boot.\nnameserver 10.77.0.1\nnameserver 10.77.0.2\n",
		},
		{
			name:  "fqdn-no-dns",
			files: etcfiles.Files{Hostname: "n002.hpc.example", Address: netip.MustParseAddr("10.77.0.11")},
			hosts: "# Written by ramboot-agent at boot.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.77.0.11\tn002.hpc.example n002\n",
		},
		{
			name:   "no-address",
			files:  etcfiles.Files{Hostname: "n003", DNS: []string{"fd00::1"}},
			hosts:  "# Written by ramboot-agent at boot.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
			resolv: "# Written by ramboot-agent at boot.\nnameserver fd00::1\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			// The image's resolv.conf is a dangling link into /run, as with
			// systemd-resolved.
			os.Mkdir(filepath.Join(root, "etc"), 0o755)
			if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc", "resolv.conf")); err != nil {
				t.Fatal(err)
			}
			if err := etcfiles.Write(root, tt.files); err != nil {
				t.Fatal(err)
			}
			check := func(name, want string) {
				t.Helper()
				b, err := os.ReadFile(filepath.Join(root, "etc", name))
				if err != nil {
					t.Fatal(err)
				}
				if string(b) != want {
					t.Errorf("%s = %q, want %q", name, b, want)
				}
				fi, _ := os.Stat(filepath.Join(root, "etc", name))
				if fi.Mode() != 0o644 {
					t.Errorf("%s mode %v, want 0644", name, fi.Mode())
				}
			}
			check("hostname", tt.files.Hostname+"\n")
			check("hosts", tt.hosts)
			fi, err := os.Lstat(filepath.Join(root, "etc", "resolv.conf"))
			if err != nil {
				t.Fatal(err)
			}
			if tt.resolv == "" {
				if fi.Mode()&os.ModeSymlink == 0 {
					t.Error("resolv.conf replaced although DNS is empty")
				}
			} else {
				check("resolv.conf", tt.resolv)
			}
			left, _ := filepath.Glob(filepath.Join(root, "etc", ".*"))
			if len(left) > 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	if err := etcfiles.Write(t.TempDir(), etcfiles.Files{}); err == nil {
		t.Error("empty host name accepted")
	}
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "etc"), nil, 0o644) // etc is a file
	if err := etcfiles.Write(root, etcfiles.Files{Hostname: "x"}); err == nil {
		t.Error("Write with etc a plain file succeeded")
	}
}

// TestWriteKeeps: the files the overlay provides (Keep) are left as they
// are, the others written.
func TestWriteKeeps(t *testing.T) {
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	os.Mkdir(etc, 0o755)
	const hosts = "# Written by the ramboot head\n10.77.0.1\thead\n10.77.0.10\tn001\n10.77.0.11\tn002\n"
	os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644)
	f := etcfiles.Files{Hostname: "n001", Address: netip.MustParseAddr("10.77.0.10"), DNS: []string{"10.77.0.1"},
		Keep: func(p string) bool { return p == "etc/hosts" }}
	if got := f.Names(root); len(got) != 2 || got[0] != filepath.Join(etc, "hostname") || got[1] != filepath.Join(etc, "resolv.conf") {
		t.Errorf("Names = %v, want hostname and resolv.conf", got)
	}
	if err := etcfiles.Write(root, f); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"hosts": hosts, "hostname": "n001\n", "resolv.conf": string(f.Resolv())} {
		if b, err := os.ReadFile(filepath.Join(etc, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
}
