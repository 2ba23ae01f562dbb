// Package imagecachetest runs a real ramboot head on loopback for the
// agent's tests, the way httptest runs a server: the `ramboot` binary built
// from this module, serving on 127.0.0.1 with DHCP, TFTP and router
// advertisements off, an image store holding images built by `ramboot image
// build` from busybox trees, and one node whose reserved address is
// 127.0.0.2. The node's token is obtained as a node gets it: its boot
// script (for the nonce), then its overlay.
//
//	h := imagecachetest.Start(t)
//	h.BuildImage(t, "busybox", imagecachetest.BusyboxTree(t))
//	c := &imagecache.Cache{Dir: dir, Head: h.Head()}
//
// It needs root (the head's admin socket is root only) and Debian's
// busybox-static for BusyboxTree; tests skip without them.
package imagecachetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/imagecache"
)

// NodeIP is the node's reserved address: requests as the node come from it.
const NodeIP = "127.0.0.2"

// NodeName and NodeMAC name the head's one node.
const (
	NodeName = "n1"
	NodeMAC  = "52:54:00:00:00:01"
)

// Head is a running head.
type Head struct {
	// URL is its HTTP base URL.
	URL string
	// StateDir is its state directory.
	StateDir string
	// Config is the node configuration its overlay gave the node.
	Config overlay.Config
	// Bin is the ramboot binary.
	Bin string
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// Binary builds the ramboot binary once per test process and returns its
// path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		dir, err := os.MkdirTemp("", "ramboot-test-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "ramboot")
		cmd := exec.Command("go", "build", "-o", buildBin, "./provisioner/cmd/ramboot")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ramboot: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// Start runs a head until the test ends.
func Start(t testing.TB) *Head {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the head's admin socket)")
	}
	bin := Binary(t)
	dir := t.TempDir()
	h := &Head{StateDir: filepath.Join(dir, "state"), Bin: bin}
	port := freePort(t)
	cfg := fmt.Sprintf(`interface: lo
state_dir: %s
log_level: debug
dhcp: {enabled: false}
tftp: {enabled: false}
ra: {enabled: false}
sftp: {enabled: false}
http: {port: %d}
boot: {default_image: busybox, modules: []}
agent: {binary: /bin/true, heartbeat_interval: 1s, down_after: 5s}
`, h.StateDir, port)
	cfgPath := filepath.Join(dir, "ramboot.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("ramboot serve log:\n%s", b)
		}
	})
	h.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(h.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-done:
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("ramboot serve exited:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ramboot serve did not answer in 30 s: %v", err)
		}
	}
	h.ramboot(t, "node", "add", NodeName, "--mac", NodeMAC, "--ip", NodeIP)
	return h
}

func (h *Head) ramboot(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(h.Bin, append([]string{"--state-dir", h.StateDir}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ramboot %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// BuildImage builds tree into the head's store as name (`ramboot image
// build`, with any further flags such as --no-compressed-root; the kernel
// is a placeholder: containers do not boot one).
func (h *Head) BuildImage(t testing.TB, name, tree string, flags ...string) {
	t.Helper()
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, []byte("no kernel: a container image"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.ramboot(t, append([]string{"image", "build", tree, "--name", name, "--kernel", kernel}, flags...)...)
}

// Boot gets the node's token as the node does, from its script and
// overlay, and records the node configuration in h.Config.
func (h *Head) Boot(t testing.TB) overlay.Config {
	t.Helper()
	c := NodeClient()
	script := get(t, c, h.URL+"/boot/ipxe?mac="+NodeMAC)
	m := regexp.MustCompile(`(/boot/node/[^ \n]+/overlay\.cpio\.zst)`).FindStringSubmatch(string(script))
	if m == nil {
		t.Fatalf("no overlay in the script:\n%s", script)
	}
	ov := get(t, c, h.URL+m[1])
	dir := t.TempDir()
	if _, err := imagecache.UnpackZstd(context.Background(), bytes.NewReader(ov), dir); err != nil {
		t.Fatalf("unpack overlay: %v", err)
	}
	cfg, err := overlay.ReadConfig(os.DirFS(dir))
	if err != nil {
		t.Fatal(err)
	}
	h.Config = cfg
	return cfg
}

// Head returns the node's client of the head, as the agent daemon has it:
// requests come from NodeIP with the node's token. Boot must have been
// called.
func (h *Head) Head() *headapi.Client {
	return &headapi.Client{Config: h.Config, HTTPClient: NodeClient()}
}

// NodeClient returns an HTTP client whose requests come from NodeIP.
func NodeClient() *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(NodeIP)}, Timeout: 5 * time.Second}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 60 * time.Second}
}

func get(t testing.TB, c *http.Client, url string) []byte {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b
}

// Timeline returns the node's timeline steps and details, as `ramboot
// node show -o json` prints them.
func (h *Head) Timeline(t testing.TB) []string {
	t.Helper()
	var n struct {
		Status struct {
			Timeline []struct{ Step, Detail string }
		}
	}
	if err := json.Unmarshal([]byte(h.ramboot(t, "node", "show", NodeName, "-o", "json")), &n); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range n.Status.Timeline {
		out = append(out, e.Step+": "+e.Detail)
	}
	return out
}

// NodeView is what `ramboot node show -o json` says of the node's state
// and of its agent daemon's last heartbeat.
type NodeView struct {
	// Status is the node's current boot.
	Status struct {
		State string `json:"state"`
	} `json:"status"`
	// Agent is the agent daemon's last heartbeat, nil before the first.
	Agent *struct {
		Heartbeats int `json:"heartbeats"`
		Workload   *struct {
			Jobs []struct {
				ID   string `json:"id"`
				User string `json:"user"`
			} `json:"jobs"`
			Containers []struct {
				ID    string `json:"id"`
				Name  string `json:"name"`
				Image string `json:"image"`
				Job   string `json:"job"`
				State string `json:"state"`
			} `json:"containers"`
		} `json:"workload"`
	} `json:"agent"`
}

// Node returns the head's view of the node.
func (h *Head) Node(t testing.TB) NodeView {
	t.Helper()
	var n NodeView
	if err := json.Unmarshal([]byte(h.ramboot(t, "node", "show", NodeName, "-o", "json")), &n); err != nil {
		t.Fatal(err)
	}
	return n
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// BusyboxApplets are linked to busybox in BusyboxTree.
var BusyboxApplets = []string{"sh", "cat", "echo", "true", "false", "sleep", "dd", "id", "ls", "date", "head", "env", "touch", "rm", "mkdir", "df", "ps", "kill", "wc", "setsid", "nohup", "stat", "grep", "test", "tee", "unshare", "hostname"}

// BusyboxTree writes a minimal root tree: Debian's static busybox with its
// applets, /etc/passwd, /tmp (1777). It skips the test when busybox-static
// is not installed.
func BusyboxTree(t testing.TB) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs Debian's busybox-static (make deps)")
	}
	dir := filepath.Join(t.TempDir(), "tree")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev", "root", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range BusyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
		"etc/motd":   "ramboot test image\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
