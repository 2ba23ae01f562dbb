package hostkeys_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/provisioner/hostkeys"
)

func sshKeygen(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Skip("ssh-keygen not installed (Debian's openssh-client; make deps installs it)")
	}
	return p
}

func fingerprint(t *testing.T, k hostkeys.Key) string {
	t.Helper()
	p, err := k.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(p)
}

// TestOpenSSHReadsStoredKeys checks the files in the store with OpenSSH's
// own ssh-keygen: it reads each private key (and refuses one whose mode is
// too open), derives the same public key, and prints the fingerprint we
// compute.
func TestOpenSSHReadsStoredKeys(t *testing.T) {
	keygen := sshKeygen(t)
	ctx := context.Background()
	store := &hostkeys.Dir{Path: filepath.Join(t.TempDir(), "keys")}
	all, err := hostkeys.Ensure(ctx, store, []string{"n001"}, []hostkeys.Type{hostkeys.ED25519, hostkeys.ECDSA, hostkeys.RSA})
	if err != nil {
		t.Fatal(err)
	}
	wantBits := map[hostkeys.Type]string{hostkeys.ED25519: "256", hostkeys.ECDSA: "256", hostkeys.RSA: "3072"}
	wantName := map[hostkeys.Type]string{hostkeys.ED25519: "(ED25519)", hostkeys.ECDSA: "(ECDSA)", hostkeys.RSA: "(RSA)"}
	for _, k := range all["n001"] {
		priv := filepath.Join(store.Path, "n001", k.FileName())
		fp := fingerprint(t, k)
		for _, f := range []string{priv, priv + ".pub"} {
			out, err := exec.Command(keygen, "-l", "-f", f).CombinedOutput()
			if err != nil {
				t.Fatalf("ssh-keygen -l -f %s: %v: %s", f, err, out)
			}
			fields := strings.Fields(string(out))
			if len(fields) < 4 || fields[0] != wantBits[k.Type] || fields[1] != fp || fields[len(fields)-1] != wantName[k.Type] {
				t.Errorf("ssh-keygen -l -f %s: %q, want %s %s ... %s", f, out, wantBits[k.Type], fp, wantName[k.Type])
			}
		}
		out, err := exec.Command(keygen, "-y", "-f", priv).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen -y -f %s: %v: %s", priv, err, out)
		}
		pub := strings.Fields(string(k.PublicFile("")))
		if got := strings.Fields(string(out)); len(got) < 2 || got[1] != pub[1] {
			t.Errorf("ssh-keygen -y: %q, want %q", out, pub[1])
		}
		fi, err := os.Stat(priv)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", priv, fi.Mode())
		}
	}
	fi, err := os.Stat(store.Path)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("store directory: %v %v, want 0700", fi.Mode(), err)
	}
}

// TestKeysKept: a node's keys survive a new store value (a head restart)
// and a second Ensure; new nodes get new keys.
func TestKeysKept(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	first, err := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: dir}, []string{"n001", "n002", "n001"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2 || len(first["n001"]) != 2 {
		t.Fatalf("Ensure: %d nodes, n001 has %d keys", len(first), len(first["n001"]))
	}
	if fingerprint(t, first["n001"][0]) == fingerprint(t, first["n002"][0]) {
		t.Fatal("two nodes got the same key")
	}
	again, err := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: dir}, []string{"n001", "n002", "n003"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n001", "n002"} {
		for i := range first[n] {
			if a, b := fingerprint(t, first[n][i]), fingerprint(t, again[n][i]); a != b || first[n][i].Type != again[n][i].Type {
				t.Errorf("%s key %d changed: %s -> %s", n, i, a, b)
			}
		}
	}
	if len(again["n003"]) != 2 {
		t.Errorf("n003: %d keys", len(again["n003"]))
	}
	// Deleting makes new keys next time.
	if err := (&hostkeys.Dir{Path: dir}).Delete(ctx, "n001"); err != nil {
		t.Fatal(err)
	}
	if err := (&hostkeys.Dir{Path: dir}).Delete(ctx, "n001"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := (&hostkeys.Dir{Path: dir}).Load(ctx, "n001"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("load after delete: %v", err)
	}
	fresh, err := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: dir}, []string{"n001"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fingerprint(t, fresh["n001"][0]) == fingerprint(t, first["n001"][0]) {
		t.Error("keys after delete are the old ones")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary left behind: %s", e.Name())
		}
	}
}

// TestCreateRace: writers racing for the same node all end with the keys
// of the one that won.
func TestCreateRace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const writers = 8
	got := make([]string, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			ks, err := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: dir}, []string{"n001"}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = fingerprint(t, ks["n001"][0])
		})
	}
	wg.Wait()
	stored, err := (&hostkeys.Dir{Path: dir}).Load(ctx, "n001")
	if err != nil {
		t.Fatal(err)
	}
	want := fingerprint(t, stored[0])
	for i, g := range got {
		if g != want {
			t.Errorf("writer %d got %s, stored %s", i, g, want)
		}
	}
}

func TestStoreErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := &hostkeys.Dir{Path: dir}
	for _, n := range []string{"", ".hidden", "../etc", "a/b", "n 1"} {
		if _, err := d.Load(ctx, n); err == nil || !strings.Contains(err.Error(), "bad node name") {
			t.Errorf("Load(%q): %v", n, err)
		}
		if _, err := hostkeys.Ensure(ctx, d, []string{n}, nil); err == nil {
			t.Errorf("Ensure(%q): no error", n)
		}
	}
	if _, err := hostkeys.Generate([]hostkeys.Type{"dsa"}); err == nil || !strings.Contains(err.Error(), `unknown type "dsa"`) {
		t.Errorf("Generate(dsa): %v", err)
	}
	if _, err := hostkeys.Generate([]hostkeys.Type{hostkeys.ED25519, hostkeys.ED25519}); err == nil {
		t.Error("Generate with a type twice: no error")
	}
	// A damaged key file is an error naming the node and file, not new keys.
	if _, err := hostkeys.Ensure(ctx, d, []string{"n001"}, nil); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "n001", "ssh_host_ed25519_key")
	if err := os.WriteFile(bad, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := hostkeys.Ensure(ctx, d, []string{"n001"}, nil)
	if err == nil || !strings.Contains(err.Error(), "n001") || !strings.Contains(err.Error(), "ssh_host_ed25519_key") {
		t.Errorf("damaged key: %v", err)
	}
	// A key file holding another type is refused.
	ecdsa, err := os.ReadFile(filepath.Join(dir, "n001", "ssh_host_ecdsa_key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, ecdsa, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Load(ctx, "n001"); err == nil || !strings.Contains(err.Error(), "holds a ecdsa key") {
		t.Errorf("wrong type: %v", err)
	}
}

func TestStaleTemporariesRemoved(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	stale := filepath.Join(dir, ".tmp-n009-abc")
	fresh := filepath.Join(dir, ".tmp-n008-def")
	for _, p := range []string{stale, fresh} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: dir}, []string{"n001"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a writer's fresh temporary was removed: %v", err)
	}
}

// TestKnownHosts checks the file with ssh-keygen -F, which looks a host
// up the way ssh does.
func TestKnownHosts(t *testing.T) {
	keygen := sshKeygen(t)
	ctx := context.Background()
	keys, err := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: t.TempDir()}, []string{"n001", "n002"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	err = hostkeys.WriteKnownHosts(&b, []hostkeys.Host{
		{Names: []string{"n001", "n001.cluster", "10.0.0.11"}, Keys: keys["n001"]},
		{Names: []string{"n002", "10.0.0.12"}, Keys: keys["n002"]},
	})
	if err != nil {
		t.Fatal(err)
	}
	kh := filepath.Join(t.TempDir(), "ssh_known_hosts")
	if err := os.WriteFile(kh, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for host, node := range map[string]string{"n001": "n001", "10.0.0.11": "n001", "n001.cluster": "n001", "10.0.0.12": "n002"} {
		out, err := exec.Command(keygen, "-F", host, "-f", kh).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen -F %s: %v: %s", host, err, out)
		}
		for _, k := range keys[node] {
			pub := strings.Fields(string(k.PublicFile("")))[1]
			if !strings.Contains(string(out), pub) {
				t.Errorf("ssh-keygen -F %s: %s key of %s missing:\n%s", host, k.Type, node, out)
			}
		}
	}
	if out, err := exec.Command(keygen, "-F", "n003", "-f", kh).CombinedOutput(); err == nil {
		t.Errorf("ssh-keygen -F n003 found %s", out)
	}
	if err := hostkeys.WriteKnownHosts(&b, []hostkeys.Host{{Keys: keys["n001"]}}); err == nil {
		t.Error("host without names: no error")
	}
}

// TestLargeBatch stores a batch large enough to be synced with one syncfs
// and reads every node back.
func TestLargeBatch(t *testing.T) {
	ctx := context.Background()
	d := &hostkeys.Dir{Path: t.TempDir()}
	var nodes []string
	for i := range 40 {
		nodes = append(nodes, fmt.Sprintf("n%03d", i))
	}
	got, err := hostkeys.Ensure(ctx, d, nodes, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		back, err := d.Load(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if fingerprint(t, back[0]) != fingerprint(t, got[n][0]) || fingerprint(t, back[1]) != fingerprint(t, got[n][1]) {
			t.Errorf("%s: stored keys differ from the returned ones", n)
		}
	}
}
