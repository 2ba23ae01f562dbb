package overlayrender_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
)

// TestArchiveUnpacked writes a node's overlay as a newc archive, unpacks it
// with GNU cpio as root (which keeps owners, as the kernel does), and
// checks the tree: modes, owners, links, and the host keys with OpenSSH's
// ssh-keygen.
func TestArchiveUnpacked(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed")
	}
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("ssh-keygen not installed (Debian's openssh-client; make deps installs it)")
	}
	if os.Geteuid() != 0 {
		t.Skip("unpacking with owners needs root")
	}
	ctx := context.Background()
	r := newRenderer(t, &hostkeys.Dir{Path: t.TempDir()}, headSet(t))
	c := testCluster(2)
	c.AuthorizedKeys = []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXjz9sYl0nN5yJf6c1rmc8ZbOgbUGsqkfdQKqmWRm7W admin@head\n")
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	o, err := snap.Render(ctx, "n0002", "tok")
	if err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := newc.WriteFiles(&archive, o.NewcFiles()); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	cmd := exec.Command(cpio, "-idm", "--no-absolute-filenames", "--quiet")
	cmd.Dir, cmd.Stdin = root, &archive
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	for _, c := range []struct {
		path     string
		mode     uint32 // st_mode
		uid, gid uint32
	}{
		{"etc/munge", syscall.S_IFDIR | 0o700, 101, 102},
		{"etc/munge/munge.key", syscall.S_IFREG | 0o400, 101, 102},
		{"etc/shadow", syscall.S_IFREG | 0o640, 0, 42},
		{"etc/ssh/ssh_host_ed25519_key", syscall.S_IFREG | 0o600, 0, 0},
		{"etc/ssh/ssh_host_ed25519_key.pub", syscall.S_IFREG | 0o644, 0, 0},
		{"etc/ramboot/node.json", syscall.S_IFREG | 0o600, 0, 0},
		{"usr/local/sbin/healthcheck.sh", syscall.S_IFREG | syscall.S_ISUID | 0o755, 0, 0},
		{"etc/localtime", syscall.S_IFLNK | 0o777, 0, 0},
		{"root", syscall.S_IFDIR | 0o700, 0, 0},
		{"root/.ssh/authorized_keys", syscall.S_IFREG | 0o600, 0, 0},
	} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(root, c.path), &st); err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		if st.Mode != c.mode || st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", c.path, st.Mode, st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	if l, err := os.Readlink(filepath.Join(root, "etc/localtime")); err != nil || l != "/usr/share/zoneinfo/UTC" {
		t.Errorf("etc/localtime -> %q, %v", l, err)
	}
	for _, k := range []string{"ssh_host_ed25519_key", "ssh_host_ecdsa_key"} {
		p := filepath.Join(root, "etc/ssh", k)
		priv, err := exec.Command(keygen, "-l", "-f", p).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen -l -f %s: %v: %s", k, err, priv)
		}
		pub, err := exec.Command(keygen, "-l", "-f", p+".pub").CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen -l -f %s.pub: %v: %s", k, err, pub)
		}
		if f := strings.Fields(string(pub)); len(f) < 3 || !strings.Contains(string(priv), f[1]) || f[2] != "root@n0002" {
			t.Errorf("%s: private %q, public %q", k, priv, pub)
		}
		// The node's key is in the cluster's known_hosts under its names.
		out, err := exec.Command(keygen, "-F", "n0002.cluster.local", "-f", filepath.Join(root, "etc/ssh/ssh_known_hosts")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), strings.Fields(string(mustRead(t, p+".pub")))[1]) {
			t.Errorf("known_hosts lookup of n0002.cluster.local: %v\n%s", err, out)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
