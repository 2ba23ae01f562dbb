package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/state"
)

// TestNodeCommands: node add (one, and many from a host list with IP and
// MAC ranges), list, show with every effective value and its source, set
// with before and after, rm of a host list, and the exit statuses scripts
// branch on.
func TestNodeCommands(t *testing.T) {
	dir := t.TempDir()
	rb(t, dir, "node", "list").fails(t, exitUnreachable, "ramboot serve")
	daemon(t, dir, "")
	rb(t, dir, "profile", "add", "base", "--kernel-args", "console=ttyS0 quiet", "--tag", "site=a").ok(t)
	rb(t, dir, "profile", "add", "compute", "--inherit", "base", "--image", "rocky9", "--modules", "mlx5_core,virtio_net", "--tag", "rack=1").ok(t)

	out := rb(t, dir, "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "127.0.0.11").ok(t)
	if !strings.Contains(out, "n1") || !strings.Contains(out, "new") {
		t.Fatalf("node add: %q", out)
	}
	out = rb(t, dir, "node", "add", "n[001-010]", "--ip", "10.1.0.101+", "--mac", "52:54:00:00:01:00+", "--profile", "compute", "-o", "json").ok(t)
	var added []api.NodeStatus
	if err := json.Unmarshal([]byte(out), &added); err != nil || len(added) != 10 {
		t.Fatalf("bulk add: %v %q", err, out)
	}
	if n := added[9]; n.Name != "n010" || n.Interfaces[0].IP != "10.1.0.110" || n.Interfaces[0].MAC != "52:54:00:00:01:09" {
		t.Fatalf("n010: %+v", n.Interfaces)
	}

	// Bad input: each refused with a clear error naming the object, and
	// nothing half-applied (n014 would take n011's MAC: n013 is not added
	// either).
	rb(t, dir, "node", "add", "n[011-012]", "--ip", "10.1.0.150+", "--mac", "52:54:00:00:03:00+").ok(t)
	rb(t, dir, "node", "add", "n[013-014]", "--ip", "10.1.0.160+", "--mac", "52:54:00:00:02:ff+").fails(t, exitConflict, "node n014 interface 0: mac 52:54:00:00:03:00 already exists (node n011)")
	rb(t, dir, "node", "add", "n020", "--ip", "10.1.0.102", "--mac", "52:54:00:00:02:00").fails(t, exitConflict, "ip 10.1.0.102 already exists (node n002)")
	rb(t, dir, "node", "add", "n021", "--ip", "192.168.7.7", "--mac", "52:54:00:00:02:01").fails(t, exitInvalid, "node n021 interface 0: ip 192.168.7.7 is outside every configured subnet")
	rb(t, dir, "node", "add", "n022", "--ip", "10.1.0.200", "--mac", "52:54:00:zz:02:01").fails(t, exitInvalid, "52:54:00:zz:02:01")
	rb(t, dir, "node", "add", "n023", "--ip", "10.1.0.201", "--mac", "52:54:00:00:02:03", "--profile", "gpu").fails(t, exitInvalid, `node n023: unknown profile "gpu"`)
	rb(t, dir, "node", "add", "n024", "--ip", "10.1.0.202", "--mac", "52:54:00:00:02:04", "--root-size", "lots").fails(t, exitInvalid, `node n024: root size "lots"`)
	rb(t, dir, "node", "add", "n030", "--mac", "52:54:00:00:02:05").fails(t, exitUsage, "ip")
	rb(t, dir, "node", "add", "x", "--bogus").fails(t, exitUsage, "bogus")
	if out := rb(t, dir, "node", "list", "n[013-024]", "-o", "json").out; out != "" {
		t.Errorf("refused adds left nodes: %s", out)
	}
	rb(t, dir, "node", "list", "n[013-014]").fails(t, exitNotFound, "n[013-014]")

	out = rb(t, dir, "node", "list").ok(t)
	if lines := strings.Count(out, "\n"); lines != 14 || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "compute") {
		t.Fatalf("node list: %d lines\n%s", lines, out)
	}
	out = rb(t, dir, "node", "list", "-o", "yaml").ok(t)
	if !strings.Contains(out, "- name: n001") || !strings.Contains(out, "ip: 10.1.0.101") {
		t.Fatalf("node list -o yaml:\n%s", out)
	}

	// show: each effective value with where it came from.
	out = rb(t, dir, "node", "show", "n003").ok(t)
	for _, want := range []string{
		"Image:", "rocky9", "(profile compute)",
		"Kernel args:", "console=ttyS0 quiet", "(profile base)",
		"Modules:", "mlx5_core virtio_net",
		"10.1.0.103/24", "(config subnets[0] (10.1.0.0/24))", "gateway:", "10.1.0.254",
		"Tag rack:", "Tag site:", "Profiles:", "base -> compute", "no boot seen yet",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("node show lacks %q:\n%s", want, out)
		}
	}
	var shown api.NodeStatus
	if err := json.Unmarshal([]byte(rb(t, dir, "node", "show", "n1", "-o", "json").ok(t)), &shown); err != nil ||
		shown.Plan == nil || shown.Plan.Image != "default" || shown.Plan.Sources["image"] != "config boot.default_image" || shown.Status.State != "new" {
		t.Fatalf("node show -o json: %+v %v", shown.Plan, err)
	}

	// set: before and after, on a host list, in one transaction.
	out = rb(t, dir, "node", "set", "n[001-002]", "--image", "rocky10", "--tag", "rack=7", "--kernel-args", "quiet").ok(t)
	for _, want := range []string{"n001  image", "rocky10", "n002  tags.rack", "quiet"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("node set lacks %q:\n%s", want, out)
		}
	}
	if out := rb(t, dir, "node", "set", "n001", "--image", "rocky10", "--dry-run").ok(t); !strings.Contains(out, "no change") {
		t.Errorf("set to the same value: %q", out)
	}
	rb(t, dir, "node", "set", "n[001-003]", "--ip", "10.1.0.9").fails(t, exitInvalid, "one node")
	rb(t, dir, "node", "set", "n001", "--ip", "10.1.0.102").fails(t, exitConflict, "already exists (node n002)")
	rb(t, dir, "node", "set", "nope", "--image", "x").fails(t, exitNotFound, "node nope")
	out = rb(t, dir, "node", "show", "n001").ok(t)
	if !strings.Contains(out, "rocky10") || !strings.Contains(out, "(node)") {
		t.Fatalf("after set:\n%s", out)
	}

	// The root mode: a node's own, or its profile's, with its source.
	rb(t, dir, "profile", "set", "base", "--root-mode", "compressed").ok(t)
	rb(t, dir, "node", "set", "n003", "--root-mode", "tmpfs", "--root-size", "8G").ok(t)
	rb(t, dir, "node", "set", "n003", "--root-mode", "squashfs").fails(t, exitInvalid, `node n003: root mode "squashfs": want one of tmpfs, compressed`)
	for name, want := range map[string]string{"n004": "Root mode: compressed (profile base)", "n003": "Root mode: tmpfs (node) Root cap: 8G (node)"} {
		if out := strings.Join(strings.Fields(rb(t, dir, "node", "show", name).ok(t)), " "); !strings.Contains(out, want) {
			t.Errorf("node show %s lacks %q:\n%s", name, want, out)
		}
	}

	rb(t, dir, "profile", "rm", "compute").fails(t, exitInvalid, "unknown profile \"compute\"")
	rb(t, dir, "node", "rm", "n[001-010]").ok(t)
	rb(t, dir, "node", "show", "n005").fails(t, exitNotFound, "n005")
	rb(t, dir, "node", "rm", "n[011-013]").fails(t, exitNotFound, "n013")
	if out := rb(t, dir, "node", "list", "n[011-012]").ok(t); strings.Count(out, "\n") != 3 {
		t.Fatalf("a refused rm removed nodes:\n%s", out)
	}
	rb(t, dir, "node", "list", "-o", "xml").fails(t, exitUsage, "--output")
}

// TestProfileCycle: a profile change that would make a cycle is refused,
// naming it, and changes nothing.
func TestProfileCycle(t *testing.T) {
	dir := t.TempDir()
	daemon(t, dir, "")
	rb(t, dir, "profile", "add", "a").ok(t)
	rb(t, dir, "profile", "add", "b", "--inherit", "a").ok(t)
	rb(t, dir, "profile", "set", "a", "--inherit", "b").fails(t, exitInvalid, "profile cycle: a -> b -> a")
	out := rb(t, dir, "profile", "show", "a", "-o", "json").ok(t)
	if strings.Contains(out, "inherits") {
		t.Fatalf("a refused change was applied: %s", out)
	}
	out = rb(t, dir, "profile", "set", "b", "--image", "x", "--tag", "k=v").ok(t)
	if !strings.Contains(out, "tags.k") || !strings.Contains(out, "image") {
		t.Fatalf("profile set: %s", out)
	}
	if out := rb(t, dir, "profile", "list").ok(t); !strings.Contains(out, "k=v") {
		t.Fatalf("profile list: %s", out)
	}
}

// TestStateDirCreatedOnFirstUse: every command makes the state directory
// when it does not exist yet (before, `ramboot image build` before any
// `serve` failed: "mkdir /var/lib/ramboot/images: no such file or
// directory").
func TestStateDirCreatedOnFirstUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fresh", "ramboot")
	rb(t, dir, "image", "list").ok(t)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory: %v %v", fi, err)
	}
	dir2 := filepath.Join(t.TempDir(), "fresh2")
	rb(t, dir2, "status").fails(t, exitUnreachable)
	if _, err := os.Stat(dir2); err != nil {
		t.Fatalf("status did not make the state directory: %v", err)
	}
}

// TestLockedDatabase: a second daemon on a state directory in use is
// refused with an error that says so, and the first one goes on.
func TestLockedDatabase(t *testing.T) {
	dir := t.TempDir()
	daemon(t, dir, "")
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte(testConfig+"agent: {binary: "+filepath.Join(filepath.Dir(binary), "ramboot-agent")+"}\n"), 0o644)
	r := rb(t, dir, "serve", "--config", cfg)
	r.fails(t, exitFailure, "in use by another process")
	rb(t, dir, "status").ok(t)
}

func TestImageCommands(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"boot", "bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{"boot/vmlinuz-6.1.0-test": "kernel", "bin/hello": "#!/bin/sh\necho hi\n", "etc/hostname": "x\n"} {
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := rb(t, dir, "image", "build", tree, "--name", "test", "-o", "json").ok(t)
	var res imageResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Name != "test" || res.Ref != "test:latest" || res.Manifest.KernelVersion != "6.1.0-test" {
		t.Fatalf("image build -o json: %q %v", out, err)
	}
	if _, err := images.ParseDigest(string(res.Digest)); err != nil {
		t.Fatal(err)
	}
	out = rb(t, dir, "image", "list").ok(t)
	if !strings.Contains(out, "test") || !strings.Contains(out, res.Digest.Hex()[:12]) {
		t.Fatalf("image list: %q", out)
	}
	rb(t, dir, "image", "build", tree).fails(t, exitUsage, "name")
}

func TestServeNeedsInterface(t *testing.T) {
	rb(t, t.TempDir(), "serve").fails(t, exitFailure, "interface: required")
	rb(t, t.TempDir(), "serve", "--interface", "no-such-if0").fails(t, exitFailure, "no-such-if0")
}

// offlineDB writes a state database at dir with node n1 and the given
// boots, for commands that need history before a daemon starts.
func offlineDB(t *testing.T, dir string, boots int) {
	t.Helper()
	db, err := state.Open(filepath.Join(dir, provisioner.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.AddNode(state.Node{Name: "n1", Interfaces: []inventory.Interface{{MAC: "52:54:00:77:00:01", IP: netip.MustParseAddr("127.0.0.11")}}}); err != nil {
		t.Fatal(err)
	}
	for i := range boots {
		if err := db.Record("n1", state.Event{Step: state.StepDHCPOffer, Detail: fmt.Sprintf("boot %d", i+1)}, true); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStateCommands: backup offline and online (through the daemon),
// check, and restore, which refuses while a daemon serves the state
// directory and keeps the file it replaces.
func TestStateCommands(t *testing.T) {
	dir := t.TempDir()
	offlineDB(t, dir, 0)
	offline := filepath.Join(t.TempDir(), "offline.db")
	if out := rb(t, dir, "state", "backup", offline).ok(t); !strings.Contains(out, "1 nodes") {
		t.Fatalf("offline backup: %q", out)
	}

	daemon(t, dir, "")
	rb(t, dir, "node", "add", "n2", "--mac", "52:54:00:77:00:02", "--ip", "127.0.0.12").ok(t)
	online := filepath.Join(t.TempDir(), "online.db")
	var res stateResult
	if out := rb(t, dir, "state", "backup", online, "-o", "json").ok(t); json.Unmarshal([]byte(out), &res) != nil || !res.Online || res.Nodes != 2 {
		t.Fatalf("online backup: %q", out)
	}
	if out := rb(t, dir, "state", "check").ok(t); !strings.Contains(out, "2 nodes") {
		t.Fatalf("check through the daemon: %q", out)
	}
	rb(t, dir, "state", "restore", offline).fails(t, exitFailure, "stop it")

	// Without a daemon: restore the offline copy (1 node); the replaced
	// database (2 nodes) is kept beside it.
	dir2 := t.TempDir()
	rb(t, dir2, "state", "restore", online).ok(t)
	if out := rb(t, dir2, "state", "restore", offline, "-o", "json").ok(t); json.Unmarshal([]byte(out), &res) != nil || res.Nodes != 1 || res.Kept == "" {
		t.Fatalf("restore: %q", out)
	}
	if sum, err := state.Verify(res.Kept); err != nil || sum.Nodes != 2 {
		t.Fatalf("kept database: %+v %v", sum, err)
	}
	if out := rb(t, dir2, "state", "check").ok(t); !strings.Contains(out, "1 nodes") {
		t.Fatalf("check: %q", out)
	}

	// A damaged file is refused by check and restore, naming it.
	bad := filepath.Join(t.TempDir(), "bad.db")
	if err := os.WriteFile(bad, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rb(t, dir2, "state", "check", bad).fails(t, exitFailure, bad)
	rb(t, dir2, "state", "restore", bad).fails(t, exitFailure, "is empty")
	if out := rb(t, dir2, "state", "check").ok(t); !strings.Contains(out, "1 nodes") {
		t.Fatalf("a refused restore changed the database: %q", out)
	}
}

// TestNodeShowBoot: node show lists the earlier boots kept and shows one
// with --boot K; node timeline prints one boot's steps.
func TestNodeShowBoot(t *testing.T) {
	dir := t.TempDir()
	offlineDB(t, dir, 3)
	daemon(t, dir, "")
	if out := rb(t, dir, "node", "show", "n1").ok(t); !strings.Contains(out, "Earlier boots:  2, 1") || !strings.Contains(out, "Boot 3") {
		t.Fatalf("node show: %q", out)
	}
	if out := rb(t, dir, "node", "show", "n1", "--boot", "1").ok(t); !strings.Contains(out, "Boot 1,") || !strings.Contains(out, "boot 1") {
		t.Fatalf("node show --boot 1: %q", out)
	}
	rb(t, dir, "node", "show", "n1", "--boot", "7").fails(t, exitNotFound, "kept: 3, 2, 1")
	if out := rb(t, dir, "node", "timeline", "n1", "--boot", "2").ok(t); !strings.Contains(out, "dhcp-offer") || !strings.Contains(out, "boot 2") {
		t.Fatalf("node timeline: %q", out)
	}
}

// TestOverlayRender: `overlay render` shows a node's overlay from its
// profiles' templates without booting it; a template that fails for one
// node is an error naming the profile, file and line, and the other nodes
// render as before.
func TestOverlayRender(t *testing.T) {
	dir := t.TempDir()
	tmpl := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tmpl, "compute", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmpl, "compute", "etc", "motd.tmpl"), []byte("{{.FQDN}} rack {{.Tags.rack}} of {{.Cluster.Name}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	daemon(t, dir, "overlay: {templates: "+tmpl+", authorized_keys: \"\"}\ncluster: {name: hpc1, domain: cluster.local}\n")
	rb(t, dir, "profile", "add", "compute").ok(t)
	rb(t, dir, "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "10.1.0.11", "--profile", "compute", "--tag", "rack=4").ok(t)
	rb(t, dir, "node", "add", "n2", "--mac", "52:54:00:77:00:02", "--ip", "10.1.0.12", "--profile", "compute").ok(t)
	out := rb(t, dir, "overlay", "render", "n1").ok(t)
	for _, want := range []string{"etc/motd", "profile compute: etc/motd.tmpl", "etc/hosts", "etc/ramboot/node.json", "etc/ssh/ssh_host_ed25519_key", "etc/systemd/network/"} {
		if !strings.Contains(out, want) {
			t.Errorf("overlay render lacks %q:\n%s", want, out)
		}
	}
	if out := rb(t, dir, "overlay", "render", "n1", "etc/motd").ok(t); out != "n1.cluster.local rack 4 of hpc1\n" {
		t.Errorf("etc/motd = %q", out)
	}
	if out := rb(t, dir, "overlay", "render", "n1", "/etc/hosts").ok(t); !strings.Contains(out, "10.1.0.12\tn2.cluster.local n2") {
		t.Errorf("etc/hosts:\n%s", out)
	}
	rb(t, dir, "overlay", "render", "n2").fails(t, exitInvalid, "render overlay of n2: profile compute: etc/motd.tmpl:1:", `map has no entry for key "rack"`)
	rb(t, dir, "overlay", "render", "n1", "etc/nothing").fails(t, exitNotFound, "no file etc/nothing")
	// The host key is kept across renders (and boots).
	k1 := rb(t, dir, "overlay", "render", "n1", "etc/ssh/ssh_host_ed25519_key.pub").ok(t)
	if k2 := rb(t, dir, "overlay", "render", "n1", "etc/ssh/ssh_host_ed25519_key.pub").ok(t); k1 != k2 || !strings.HasPrefix(k1, "ssh-ed25519 ") {
		t.Errorf("host key changed between renders: %q %q", k1, k2)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ramboot head"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestTCPAPI: the admin API over TCP with TLS and bearer tokens: an admin
// token changes the inventory, a read-only token reads it and is refused
// changes (exit 7), no token or a wrong one is refused.
func TestTCPAPI(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t)
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte("# role token\nadmin admin-0123456789abcdef\nread  read-0123456789abcdef\n"), 0o600)
	logPath := daemon(t, dir, fmt.Sprintf("api: {listen: \"127.0.0.1:0\", tls_cert: %s, tls_key: %s, tokens: %s}\n", cert, key, tokens))
	b, _ := os.ReadFile(logPath.log)
	m := regexp.MustCompile(`api=(127\.0\.0\.1:\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no api address in the log:\n%s", b)
	}
	url := "https://" + string(m[1])
	tok := func(s string) string {
		p := filepath.Join(t.TempDir(), "t")
		os.WriteFile(p, []byte(s+"\n"), 0o600)
		return p
	}
	other := t.TempDir() // no socket there: every call goes over TCP
	remote := func(token string, args ...string) result {
		return rb(t, other, append(args, "--api", url, "--token-file", tok(token), "--ca-file", cert)...)
	}
	remote("admin-0123456789abcdef", "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "10.1.0.11").ok(t)
	if out := remote("read-0123456789abcdef", "node", "list").ok(t); !strings.Contains(out, "n1") {
		t.Fatalf("read token: node list %q", out)
	}
	remote("read-0123456789abcdef", "node", "rm", "n1").fails(t, exitDenied, "read-only token cannot DELETE")
	remote("wrong-0123456789abcdef", "node", "list").fails(t, exitDenied, "bearer token")
	if out := rb(t, other, "node", "list", "--api", url, "--ca-file", cert).err; !strings.Contains(out, "bearer token") {
		t.Errorf("no token: %q", out)
	}
	// Without the CA the certificate is not trusted.
	rb(t, other, "node", "list", "--api", url, "--token-file", tok("admin-0123456789abcdef")).fails(t, exitUnreachable, "certificate")
	rb(t, dir, "node", "show", "n1").ok(t)
}

// TestReload: SIGHUP applies a changed configuration without a restart
// (the boot defaults every plan uses), refuses an invalid one whole, and
// names the keys that need a restart.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	d := daemon(t, dir, "")
	rb(t, dir, "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "10.1.0.11").ok(t)
	conf, _ := os.ReadFile(d.config)
	edit := func(from, to string) {
		t.Helper()
		if err := os.WriteFile(d.config, []byte(strings.Replace(string(conf), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(d.pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	waitLog := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if b, _ := os.ReadFile(d.log); strings.Contains(string(b), want) {
				return
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(d.log)
				t.Fatalf("log lacks %q:\n%s", want, b)
			}
		}
	}
	edit(`kernel_args: "console=ttyS0"`, `kernel_args: "console=ttyS1 quiet"`)
	waitLog("configuration reloaded")
	if out := rb(t, dir, "node", "show", "n1").ok(t); !strings.Contains(out, "console=ttyS1 quiet") {
		t.Fatalf("after reload:\n%s", out)
	}
	edit("ra: {enabled: false}", "ra: {enabled: false, bogus: 1}")
	waitLog("configuration not reloaded")
	waitLog("ra.bogus: unknown key")
	if out := rb(t, dir, "node", "show", "n1").ok(t); !strings.Contains(out, "console=ttyS1 quiet") {
		t.Fatalf("a refused reload changed the running configuration:\n%s", out)
	}
	edit("http: {port: 0}", "http: {port: 0, max_conns: 100}")
	waitLog("restart_needed=http.max_conns")
}

// TestApplyExport: apply creates and updates from a cluster file in one
// transaction (host lists with address ranges, profiles inheriting),
// --dry-run shows the diff and changes nothing, an invalid file changes
// nothing, --prune removes what the file does not list, and export writes
// a file that apply takes back without a change (the round trip).
func TestApplyExport(t *testing.T) {
	dir := t.TempDir()
	daemon(t, dir, "")
	rb(t, dir, "node", "add", "old1", "--mac", "52:54:00:99:00:01", "--ip", "10.1.0.99").ok(t)
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	cluster := `profiles:
  - name: base
    kernel_args: console=ttyS0 quiet
    tags: {site: hpc1}
  - name: compute
    inherits: [base]
    image: rocky9
    modules: []
    root: {size: 80%}
nodes:
  - name: n[001-004]
    profiles: [compute]
    tags: {rack: "1"}
    interfaces:
      - {name: eth0, mac: "52:54:00:00:01:00+", ip: 10.1.0.101+}
      - {name: ib0, ip: 10.2.0.101+}
  - name: login1
    hostname: login.hpc1.example.org
    profiles: [base]
    boot_file: snponly.efi
    interfaces:
      - {client_id: "ff:00:00:00:00:00:02:00:00:02:c9:00:00:02:c9:03:00:00:00:01", ip: 10.1.0.5}
`
	os.WriteFile(file, []byte(cluster), 0o644)
	out := rb(t, dir, "apply", "-f", file, "--dry-run").ok(t)
	if !strings.Contains(out, "+ node n004") || !strings.Contains(out, "+ profile compute") || !strings.Contains(out, "dry run, nothing changed: 7 added") {
		t.Fatalf("dry run:\n%s", out)
	}
	rb(t, dir, "node", "show", "n001").fails(t, exitNotFound)
	out = rb(t, dir, "apply", "-f", file).ok(t)
	if !strings.Contains(out, "applied: 7 added, 0 updated, 0 removed") {
		t.Fatalf("apply:\n%s", out)
	}
	show := rb(t, dir, "node", "show", "n003").ok(t)
	for _, want := range []string{"10.2.0.103/16", "Modules:      -", "(profile compute)", "80%", "console=ttyS0 quiet"} {
		if !strings.Contains(show, want) {
			t.Errorf("n003 lacks %q:\n%s", want, show)
		}
	}

	// An invalid file (a duplicate address, and a profile cycle) changes
	// nothing, and names both problems.
	bad := strings.Replace(cluster, "ip: 10.1.0.5", "ip: 10.1.0.101", 1) + "  - name: x1\n    interfaces: [{mac: \"52:54:00:99:00:09\", ip: 10.1.0.77}]\n    profiles: [nope]\n"
	os.WriteFile(file+".bad", []byte(bad), 0o644)
	rb(t, dir, "apply", "-f", file+".bad").fails(t, exitConflict, "node login1 interface 0: ip 10.1.0.101 already exists (node n001)", `node x1: unknown profile "nope"`)
	rb(t, dir, "node", "show", "x1").fails(t, exitNotFound)
	os.WriteFile(file+".typo", []byte("profiles:\n  - name: a\n    imagee: x\n"), 0o644)
	rb(t, dir, "apply", "-f", file+".typo").fails(t, exitUsage, "line 3", "imagee")

	// An update: a field changed shows before and after.
	os.WriteFile(file, []byte(strings.Replace(cluster, `rack: "1"`, `rack: "2"`, 1)), 0o644)
	out = rb(t, dir, "apply", "-f", file, "--dry-run").ok(t)
	if !strings.Contains(out, "~ node n002") || !strings.Contains(out, "tags.rack") || !strings.Contains(out, "-> 2") {
		t.Fatalf("update diff:\n%s", out)
	}
	rb(t, dir, "apply", "-f", file).ok(t)

	// The round trip: export, then apply the export: nothing changes (old1,
	// added by hand, is in the export too).
	exported := rb(t, dir, "export").ok(t)
	os.WriteFile(file+".export", []byte(exported), 0o644)
	out = rb(t, dir, "apply", "-f", file+".export").ok(t)
	if !strings.Contains(out, "applied: 0 added, 0 updated, 0 removed") {
		t.Fatalf("apply of the export changed something:\n%s\nexport:\n%s", out, exported)
	}
	if again := rb(t, dir, "export").ok(t); again != exported {
		t.Fatalf("export not stable:\n%s\n---\n%s", exported, again)
	}
	// --prune removes old1, not in the file; from standard input.
	b, _ := os.ReadFile(file)
	out = rbIn(t, dir, b, "apply", "-f", "-", "--prune").ok(t)
	if !strings.Contains(out, "- node old1") || !strings.Contains(out, "1 removed") {
		t.Fatalf("prune:\n%s", out)
	}
	rb(t, dir, "node", "show", "old1").fails(t, exitNotFound)
}
