package bootserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

type fixture struct {
	boot    *bootserver.Server
	db      *state.DB
	store   *images.Store
	srv     *httptest.Server
	digest  images.Digest
	kernel  []byte
	rootfs  []byte
	content images.Digest
}

func put(t *testing.T, s *images.Store, b []byte, mediaType string) images.Artifact {
	t.Helper()
	a, err := s.Put(context.Background(), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	a.MediaType = mediaType
	return a
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	db, err := state.Open(filepath.Join(dir, "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &fixture{db: db, store: &images.Store{Dir: filepath.Join(dir, "images")}}
	f.kernel = bytes.Repeat([]byte("kernel"), 50000)
	f.rootfs = bytes.Repeat([]byte("rootfs"), 70000)
	f.content = images.DigestOf([]byte("content"))
	m := images.Manifest{
		SchemaVersion: 1, Name: "default", Created: time.Unix(1700000000, 0).UTC(), Source: "/test",
		Kernel: put(t, f.store, f.kernel, images.MediaTypeKernel), Rootfs: put(t, f.store, f.rootfs, images.MediaTypeRootfs),
		RootfsUncompressedSize: 1, ContentDigest: f.content,
	}
	if f.digest, err = f.store.Commit("default", m); err != nil {
		t.Fatal(err)
	}
	agentBin := filepath.Join(dir, "ramboot-agent")
	if err := os.WriteFile(agentBin, []byte("#!agent binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	agent, err := bootserver.NewAgentArchive(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	f.srv = httptest.NewUnstartedServer(mux)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Listener = ln
	heads := provisioner.NewNodes(db, &plan.Defaults{
		Image: "default", KernelArgs: "console=ttyS0,115200", Modules: []string{"virtio_net"},
		Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("127.0.0.1/8")}},
	}, "http://"+ln.Addr().String())
	boot := &bootserver.Server{Nodes: heads, Images: f.store, Agent: agent, BaseURL: "http://" + ln.Addr().String()}
	f.boot = boot
	mux.Handle("/boot/", boot.Handler())
	mux.Handle("/api/", (&api.Node{DB: db, Images: f.store, Plan: heads.Plan, Overlays: boot, Interval: time.Second, DownAfter: 4 * time.Second}).Handler())
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

// client returns an HTTP client whose connections come from local address
// src (any 127/8 address works on Linux loopback).
func client(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// unpack decompresses a zstd newc archive and returns its files.
func unpack(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	zr, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(raw)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("GNU cpio -t rejects the archive: %v: %s", err, out)
		}
	}
	files := map[string][]byte{}
	r := cpio.NewReader(bytes.NewReader(raw))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		files[h.Name] = data
	}
	return files
}

// scriptURLs returns the URLs a script fetches: the kernel's, then the
// initrds', in order.
func scriptURLs(script string) []string {
	var urls []string
	for _, m := range regexp.MustCompile(`(?m)^(?:kernel|initrd) (http://\S+)`).FindAllStringSubmatch(script, -1) {
		urls = append(urls, m[1])
	}
	return urls
}

func TestBootFlow(t *testing.T) {
	f := newFixture(t)
	if err := f.db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := f.db.AddNode(state.Node{Name: "n2", MAC: "52:54:00:00:00:02", IP: netip.MustParseAddr("127.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	n1, n2 := client("127.0.0.1"), client("127.0.0.2")
	scriptURL := f.srv.URL + "/boot/ipxe?mac=52:54:00:00:00:01"

	t.Run("script refused to another address", func(t *testing.T) {
		if resp, _ := get(t, n2, scriptURL); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
		if resp, _ := get(t, n1, f.srv.URL+"/boot/ipxe?mac=zz"); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("bad mac: status %d, want 400", resp.StatusCode)
		}
	})

	resp, script := get(t, n1, scriptURL)
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(script, []byte("#!ipxe\n")) {
		t.Fatalf("script: %d %q", resp.StatusCode, script)
	}
	urls := scriptURLs(string(script))
	if len(urls) != 4 {
		t.Fatalf("script has %d URLs, want kernel + 3 initrds:\n%s", len(urls), script)
	}
	for _, want := range []string{"initrd=rootfs.cpio.zst", "initrd=agent.cpio.zst", "initrd=overlay.cpio.zst", "ramboot.node=n1", "console=ttyS0,115200"} {
		if !bytes.Contains(script, []byte(want)) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}

	t.Run("kernel and rootfs", func(t *testing.T) {
		resp, b := get(t, n1, urls[0])
		if resp.StatusCode != 200 || !bytes.Equal(b, f.kernel) {
			t.Fatalf("kernel: %d, %d bytes", resp.StatusCode, len(b))
		}
		resp, b = get(t, n1, urls[1])
		if resp.StatusCode != 200 || !bytes.Equal(b, f.rootfs) {
			t.Fatalf("rootfs: %d, %d bytes", resp.StatusCode, len(b))
		}
		etag := resp.Header.Get("ETag")
		if resp, _ := get(t, n1, urls[1], "If-None-Match", etag); resp.StatusCode != http.StatusNotModified {
			t.Errorf("If-None-Match: status %d, want 304", resp.StatusCode)
		}
		resp, b = get(t, n1, urls[1], "Range", "bytes=10-19")
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, f.rootfs[10:20]) {
			t.Errorf("Range: %d %q", resp.StatusCode, b)
		}
		if resp, _ := get(t, n1, strings.Replace(urls[1], f.digest.Hex(), strings.Repeat("0", 64), 1)); resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown image: status %d, want 404", resp.StatusCode)
		}
	})

	t.Run("agent archive", func(t *testing.T) {
		resp, b := get(t, n1, urls[2])
		if resp.StatusCode != 200 {
			t.Fatalf("agent: %d", resp.StatusCode)
		}
		files := unpack(t, b)
		if got := files["init"]; string(got) != "#!agent binary" {
			t.Fatalf("agent archive /init = %q", got)
		}
		for _, dev := range []string{"dev/console", "dev/null"} {
			if _, ok := files[dev]; !ok {
				t.Errorf("agent archive lacks %s", dev)
			}
		}
	})

	var cfg overlay.Config
	t.Run("overlay", func(t *testing.T) {
		if resp, _ := get(t, n2, urls[3]); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("overlay to another node: status %d, want 403", resp.StatusCode)
		}
		bad := strings.Replace(urls[3], "/n1/", "/n1/00", 1)
		if resp, _ := get(t, n1, bad); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("overlay with a wrong nonce: status %d, want 403", resp.StatusCode)
		}
		resp, b := get(t, n1, urls[3])
		if resp.StatusCode != 200 {
			t.Fatalf("overlay: %d", resp.StatusCode)
		}
		files := unpack(t, b)
		var err error
		if cfg, err = overlay.ParseConfig(files[overlay.ConfigPath]); err != nil {
			t.Fatal(err)
		}
		if cfg.Node != "n1" || cfg.Interface.Address != "127.0.0.1/8" || cfg.Image.Digest != string(f.digest) || cfg.Token == "" || !slices.Equal(cfg.Modules, []string{"virtio_net"}) {
			t.Fatalf("node config %+v", cfg)
		}
		if string(files["etc/hostname"]) != "n1\n" {
			t.Errorf("hostname %q", files["etc/hostname"])
		}
	})

	report := func(token string, r overlay.Report) int {
		b, _ := json.Marshal(r)
		req, _ := http.NewRequest(http.MethodPost, cfg.URL(overlay.RegisterPath), bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := n1.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	t.Run("report", func(t *testing.T) {
		if code := report("wrong", overlay.Report{State: overlay.StateReady}); code != http.StatusUnauthorized {
			t.Fatalf("wrong token: %d, want 401", code)
		}
		if code := report(cfg.Token, overlay.Report{State: "dancing"}); code != http.StatusBadRequest {
			t.Fatalf("bad state: %d, want 400", code)
		}
		if code := report(cfg.Token, overlay.Report{State: overlay.StateReady, ContentDigest: string(f.content), Kernel: "6.1.0-test", MemTotalBytes: 1 << 30, UptimeSeconds: 9.5}); code != http.StatusOK {
			t.Fatalf("report: %d, want 200", code)
		}
		n, err := f.db.Get("n1")
		if err != nil {
			t.Fatal(err)
		}
		if n.Status.State != state.StateBooted || n.Status.Report.ImageDigest != string(f.digest) || n.Status.Report.ImageName != "default" {
			t.Fatalf("status %+v report %+v", n.Status, n.Status.Report)
		}
		var steps []state.Step
		for _, e := range n.Status.Timeline {
			steps = append(steps, e.Step)
		}
		want := []state.Step{state.StepScript, state.StepKernel, state.StepImage, state.StepAgent, state.StepOverlay, state.StepReady}
		for _, w := range want {
			if !slices.Contains(steps, w) {
				t.Errorf("timeline %v lacks %s", steps, w)
			}
		}
	})

	t.Run("unknown content is not called the image", func(t *testing.T) {
		// A new script mints a new nonce; the old overlay URL is dead.
		_, script := get(t, n1, scriptURL)
		if resp, _ := get(t, n1, urls[3]); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("old overlay URL after a new script: %d, want 403", resp.StatusCode)
		}
		ov := scriptURLs(string(script))[3]
		_, b := get(t, n1, ov)
		c, err := overlay.ParseConfig(unpack(t, b)[overlay.ConfigPath])
		if err != nil {
			t.Fatal(err)
		}
		if code := report(c.Token, overlay.Report{State: overlay.StateReady, ContentDigest: string(images.DigestOf([]byte("other")))}); code != http.StatusOK {
			t.Fatalf("report: %d", code)
		}
		n, _ := f.db.Get("n1")
		if n.Status.Report.ImageDigest != "" {
			t.Fatalf("node running unknown content reported as image %s", n.Status.Report.ImageDigest)
		}
	})
}

// TestScriptRetry: the head's retry schedule (boot.retry) reaches the
// script; the defaults are ipxe's.
func TestScriptRetry(t *testing.T) {
	f := newFixture(t)
	if err := f.db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	n1 := client("127.0.0.1")
	url := f.srv.URL + "/boot/ipxe?mac=52:54:00:00:00:01"
	if _, script := get(t, n1, url); !bytes.Contains(script, []byte("after 8 attempts")) || !bytes.Contains(script, []byte("rebooting in 30s")) {
		t.Errorf("default schedule:\n%s", script)
	}
	f.boot.Retry = bootserver.Retry{Attempts: 2, MaxWait: time.Second, FailPause: 2 * time.Second}
	_, script := get(t, n1, url)
	for _, want := range []string{"after 2 attempts", "iseq ${ramboot-wait} 1 ||", "rebooting in 2s\nsleep 2\nreboot\n"} {
		if !bytes.Contains(script, []byte(want)) {
			t.Errorf("short schedule lacks %q:\n%s", want, script)
		}
	}
}
