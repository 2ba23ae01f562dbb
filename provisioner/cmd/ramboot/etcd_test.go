package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// TestMoveToEtcdAndTwoHeads: a single-head bbolt site moves to etcd with
// `ramboot state export | ramboot state import` (the export taken through
// the running daemon), then two `ramboot serve` heads on that etcd serve
// the same inventory: a node added on one is shown by the other within a
// second. The export of etcd's state holds the same keys as bbolt's, and
// a second import into etcd is refused.
func TestMoveToEtcdAndTwoHeads(t *testing.T) {
	if etcdtest.Binary() == "" {
		t.Skip("no etcd (Debian's etcd-server; `make deps` installs it)")
	}
	bolt := t.TempDir()
	offlineDB(t, bolt, 2) // n1: its current boot and one earlier
	daemon(t, bolt, "")
	rb(t, bolt, "node", "add", "n2", "--mac", "52:54:00:77:00:02", "--ip", "127.0.0.12").ok(t)
	r := rb(t, bolt, "state", "export")
	stream := r.ok(t)
	if !strings.Contains(r.err, "exported") || !strings.Contains(r.err, "2 nodes") || !strings.Contains(r.err, "(bolt)") {
		t.Fatalf("export summary: %q", r.err)
	}
	exported := filepath.Join(t.TempDir(), "state.jsonl")
	if err := os.WriteFile(exported, []byte(stream), 0o600); err != nil {
		t.Fatal(err)
	}

	c := etcdtest.Start(t, etcdtest.Options{Members: 1})
	etcdConf := "state: {backend: etcd, etcd: {endpoints: [" + strings.Join(c.Endpoints(), ", ") + "], prefix: /site/}}\n"
	cfg := filepath.Join(t.TempDir(), "etcd.yaml")
	if err := os.WriteFile(cfg, []byte(etcdConf), 0o600); err != nil {
		t.Fatal(err)
	}
	a, b := t.TempDir(), t.TempDir()
	var res exportResult
	if out := rbIn(t, a, []byte(stream), "state", "import", "--config", cfg, "-o", "json").ok(t); json.Unmarshal([]byte(out), &res) != nil ||
		res.Nodes != 2 || res.Boots != 1 || res.Backend != "etcd" {
		t.Fatalf("import: %q", out)
	}
	rb(t, a, "state", "import", exported, "--config", cfg).fails(t, exitFailure, "already holds state")

	daemon(t, a, etcdConf)
	hb := daemon(t, b, etcdConf)
	if out := rb(t, b, "node", "list").ok(t); !strings.Contains(out, "n1") || !strings.Contains(out, "n2") {
		t.Fatalf("head b after the import: %q", out)
	}
	if out := rb(t, b, "node", "show", "n1").ok(t); !strings.Contains(out, "boot 2") {
		t.Fatalf("n1's boot history on head b: %q", out)
	}
	rb(t, a, "node", "add", "n3", "--mac", "52:54:00:77:00:03", "--ip", "127.0.0.13").ok(t)
	start := time.Now()
	for rb(t, b, "node", "show", "n3").code != 0 {
		if time.Since(start) > time.Second {
			t.Fatal("a node added on head a is not shown by head b within a second")
		}
	}
	t.Logf("a node added on head a shown by head b after %s (CLI runs included)", time.Since(start).Round(time.Millisecond))
	rb(t, b, "node", "delete", "n3").ok(t)

	// Each head registered itself under a lease: the peers know it.
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for start := time.Now(); ; {
		resp, err := cli.Get(t.Context(), "/site/heads/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 2 && resp.Kvs[0].Lease != 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d heads registered in etcd, want 2 under a lease", len(resp.Kvs))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// An image only head a has: head b fetches it from a, verified, to
	// serve a node's script.
	if _, _, err := cliErr(t, a, "image", "build", rootTree(t), "--name", "default"); err != nil {
		t.Fatal(err)
	}
	rb(t, b, "node", "add", "n5", "--mac", "52:54:00:77:00:05", "--ip", "127.0.0.15").ok(t)
	if status, script := nodeScript(t, hb, "127.0.0.15", "52:54:00:77:00:05"); status != http.StatusOK || !strings.Contains(script, "/boot/image/") {
		t.Fatalf("script from head b for an image only head a had: %d\n%s", status, script)
	}
	if out := rb(t, b, "image", "list").ok(t); !strings.Contains(out, "default") {
		t.Fatalf("head b's images after the fetch: %q", out)
	}
	if lb, _ := os.ReadFile(hb.log); !strings.Contains(string(lb), "image fetched from a peer head") {
		t.Fatalf("head b did not log the fetch:\n%s", lb)
	}
	rb(t, b, "node", "delete", "n5").ok(t)

	again := rb(t, a, "state", "export", "--config", cfg).ok(t)
	body := func(s string) string {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		return strings.Join(lines[1:len(lines)-1], "\n")
	}
	if body(again) != body(stream) {
		t.Fatalf("etcd's export differs from bbolt's:\n%s\n---\n%s", again, stream)
	}
}

// nodeScript fetches the iPXE script of the node with mac from head s, as
// the node does (from its address ip, on loopback), and returns the HTTP
// status and the script.
func nodeScript(t *testing.T, s *served, ip, mac string) (int, string) {
	t.Helper()
	node := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
	resp, err := node.Get(headURL(t, s) + "/boot/ipxe?mac=" + mac)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	script, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(script)
}

// headURL returns the boot URL a running daemon logged.
func headURL(t *testing.T, s *served) string {
	t.Helper()
	b, err := os.ReadFile(s.log)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`ramboot serving.* http=(http://\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no boot URL in the daemon's log:\n%s", b)
	}
	return string(m[1])
}
