package provisioner

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

// testImage commits an image named default whose root archive has account
// files and a 0700 /root, and returns its manifest digest.
func testImage(t *testing.T, st *images.Store) images.Digest {
	t.Helper()
	var raw bytes.Buffer
	err := newc.WriteFiles(&raw, []newc.File{
		{Name: "etc", Mode: os.ModeDir | 0o755},
		{Name: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{Name: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\n")},
		{Name: "root", Mode: os.ModeDir | 0o700},
	})
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte, mt string) images.Artifact {
		a, err := st.Put(context.Background(), bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		a.MediaType = mt
		return a
	}
	m := images.Manifest{SchemaVersion: 1, Name: "default", Created: time.Unix(1700000000, 0).UTC(), Source: "/test",
		Kernel: put([]byte("kernel"), images.MediaTypeKernel), Rootfs: put(mustCompress(t, raw.Bytes()), images.MediaTypeRootfs),
		RootfsUncompressedSize: int64(raw.Len()), ContentDigest: images.DigestOf([]byte("content"))}
	d, err := st.Commit("default", m)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// unpackAll decompresses every zstd frame of b and reads every newc
// archive in the stream, in order, as the kernel does with concatenated
// initrds: later entries replace earlier ones.
func unpackAll(t *testing.T, b []byte) (map[string][]byte, int) {
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
	files := map[string][]byte{}
	archives := 0
	rd := bytes.NewReader(raw)
	for rd.Len() > 0 {
		// Skip the padding between archives (NULs), as the kernel does.
		if c, _ := rd.ReadByte(); c == 0 {
			continue
		}
		rd.UnreadByte()
		archives++
		r := cpio.NewReader(rd)
		for {
			h, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("archive %d: %v", archives, err)
			}
			data, _ := io.ReadAll(r)
			files[h.Name] = data
		}
	}
	return files, archives
}

// TestOverlayBoot: the boot server serves each node's overlay rendered
// from its profiles' templates: the shared entries (hosts, known_hosts)
// compressed once, then the node's own entries, in two zstd frames of one
// newc archive; the token in node.json becomes the node's. A template that fails
// for one node fails only its overlay, with the reason in its timeline.
func TestOverlayBoot(t *testing.T) {
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "templates")
	os.MkdirAll(filepath.Join(tmpl, "compute", "etc"), 0o755)
	os.WriteFile(filepath.Join(tmpl, "compute", "etc", "motd.tmpl"), []byte("{{.Hostname}} rack {{.Tags.rack}}\n"), 0o644)

	defaults := &plan.Defaults{Image: "default", Modules: []string{"virtio_net"}, Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("127.0.0.1/8")}}}
	heads := NewNodes(nil, defaults, "")
	db, err := state.OpenWith(filepath.Join(dir, DBFile), state.Options{Check: heads.Check})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	heads.db = db
	st := &images.Store{Dir: filepath.Join(dir, ImagesDir)}
	digest := testImage(t, st)
	_, err = db.ChangeInventory(false, func(inv *inventory.Inventory) error {
		// The compressed root mode, on an image that has no compressed
		// root: n1 boots tmpfs, and its overlay says so.
		inv.Profiles["compute"] = &inventory.Profile{Name: "compute", Settings: inventory.Settings{Root: inventory.Root{Mode: "compressed", Size: "256m"}}}
		for i, rack := range []string{"7", ""} {
			n := &inventory.Node{Name: []string{"n1", "n2"}[i], Profiles: []string{"compute"},
				Interfaces: []inventory.Interface{{MAC: []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}[i], IP: netip.MustParseAddr([]string{"127.0.0.21", "127.0.0.22"}[i])}}}
			if rack != "" {
				n.Tags = map[string]string{"rack": rack}
			}
			inv.Nodes[n.Name] = n
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	heads.baseURL = base
	cfg, _ := config.Load("")
	cfg.StateDir, cfg.Overlay.Templates, cfg.Overlay.AuthorizedKeys, cfg.Cluster.Domain = dir, tmpl, "", "cluster.local"
	ovl := &overlays{db: db, nodes: heads, images: st, log: nil}
	ovl.log = discard()
	ovl.setSetup(newOverlaySetup(cfg, overlayrender.Head{Name: "head", Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, URL: base}, []string{"compute"}, ovl.log))
	agentBin := filepath.Join(dir, "agent")
	os.WriteFile(agentBin, []byte("agent"), 0o755)
	agent, err := bootserver.NewAgentArchive(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	boot := &bootserver.Server{Nodes: heads, Images: st, Agent: agent, Overlays: ovl, BaseURL: base}
	srv := httptest.NewUnstartedServer(boot.Handler())
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	as := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	fetch := func(c *http.Client, url string) (int, []byte) {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	rootInitrd, agentURL := "", ""
	overlayURL := func(c *http.Client, mac string) string {
		t.Helper()
		code, script := fetch(c, base+"/boot/ipxe?mac="+mac)
		if code != 200 {
			t.Fatalf("script: %d %s", code, script)
		}
		m := regexp.MustCompile(`initrd (http://\S+/overlay\.cpio\.(zst|gz))`).FindSubmatch(script)
		if m == nil {
			t.Fatalf("no overlay in script:\n%s", script)
		}
		if r := regexp.MustCompile(`initrd http://\S+/(rootfs\.[a-z.]+)`).FindSubmatch(script); r != nil {
			rootInitrd = string(r[1])
		}
		if a := regexp.MustCompile(`initrd (http://\S+/agent\.cpio\.[a-z]+)`).FindSubmatch(script); a != nil {
			agentURL = string(a[1])
		}
		return string(m[1])
	}

	n1 := as("127.0.0.21")
	code, body := fetch(n1, overlayURL(n1, "52:54:00:00:00:01"))
	if code != 200 {
		t.Fatalf("overlay of n1: %d %s", code, body)
	}
	if frames := bytes.Count(body, []byte{0x28, 0xb5, 0x2f, 0xfd}); frames < 2 {
		t.Errorf("overlay is %d zstd frames, want 2 (the shared entries compressed once, then the node's own)", frames)
	}
	files, archives := unpackAll(t, body)
	if archives != 1 {
		t.Errorf("overlay is %d newc archives, want 1 (any cpio reader takes it whole)", archives)
	}
	if got := string(files["etc/motd"]); got != "n1 rack 7\n" {
		t.Errorf("etc/motd = %q", got)
	}
	if !strings.Contains(string(files["etc/hosts"]), "127.0.0.22\tn2.cluster.local n2") {
		t.Errorf("etc/hosts:\n%s", files["etc/hosts"])
	}
	var nc overlay.Config
	if err := json.Unmarshal(files[overlay.ConfigPath], &nc); err != nil || nc.Node != "n1" || nc.Image.Digest != string(digest) || nc.Interface.Address != "127.0.0.21/8" {
		t.Fatalf("node.json: %+v %v", nc, err)
	}
	if nc.Root != (overlay.Root{Mode: overlay.RootTmpfs, Size: "256m"}) || rootInitrd != bootserver.RootfsName {
		t.Errorf("compressed mode on an image without a compressed root: node.json root %+v, root initrd %s; want tmpfs, 256m, %s", nc.Root, rootInitrd, bootserver.RootfsName)
	}
	if _, ok := files["etc/ssh/ssh_host_ed25519_key"]; !ok {
		t.Error("no host key in the overlay")
	}
	// The token in node.json is the node's once the head saw the overlay
	// sent whole (it commits that after the response).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n, _ := db.Get("n1")
		if tl := n.Status.Timeline; len(tl) > 0 && strings.Contains(tl[len(tl)-1].Detail, "token minted") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the overlay's token was not made n1's: %+v", n.Status.Timeline)
		}
	}
	if _, err := db.Register("n1", nc.Token, netip.MustParseAddr("127.0.0.21"), state.Report{State: "ready"}, state.Agent{}); err != nil {
		t.Fatalf("report with the overlay's token: %v", err)
	}

	n2 := as("127.0.0.22")
	if code, body := fetch(n2, overlayURL(n2, "52:54:00:00:00:02")); code != http.StatusInternalServerError || !strings.Contains(string(body), "etc/motd.tmpl:1") {
		t.Fatalf("overlay of n2 (its template fails): %d %s", code, body)
	}
	db.Flush()
	got, _ := db.Get("n2")
	last := got.Status.Timeline[len(got.Status.Timeline)-1]
	if last.Step != state.StepOverlay || !strings.Contains(last.Detail, `map has no entry for key "rack"`) {
		t.Errorf("n2's timeline ends with %+v", last)
	}
	if err := db.CheckNonce("n2", "x"); err == nil {
		t.Error("nonce check passed")
	}

	// An image with a compressed root: n1, moved to it, gets the
	// compressed root as its root initrd and a node.json that says
	// compressed.
	m, _, err := st.Resolve("default")
	if err != nil {
		t.Fatal(err)
	}
	sq, err := st.Put(context.Background(), bytes.NewReader([]byte("squashfs")))
	if err != nil {
		t.Fatal(err)
	}
	sq.MediaType = images.MediaTypeCompressedRoot
	m.SchemaVersion, m.Tag, m.Files, m.CompressedRoot = images.SchemaVersion, "latest", 1, &sq
	if _, err := st.Commit("small", m); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ChangeInventory(false, func(inv *inventory.Inventory) error {
		n := inv.Nodes["n1"].Clone()
		n.Image = "small"
		inv.Nodes["n1"] = n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.ClearPins([]string{"n1"}); err != nil {
		t.Fatal(err)
	}
	code, body = fetch(n1, overlayURL(n1, "52:54:00:00:00:01"))
	if code != 200 {
		t.Fatalf("overlay of n1 on small: %d %s", code, body)
	}
	files, _ = unpackAll(t, body)
	nc = overlay.Config{}
	if err := json.Unmarshal(files[overlay.ConfigPath], &nc); err != nil || nc.Image.Name != "small" ||
		nc.Root != (overlay.Root{Mode: overlay.RootCompressed, Size: "256m"}) || rootInitrd != bootserver.CompressedRootName {
		t.Errorf("compressed mode on an image with a compressed root: node.json %+v (%v), root initrd %s", nc, err, rootInitrd)
	}
	if !strings.HasSuffix(agentURL, "/"+bootserver.AgentName) {
		t.Errorf("agent of a zstd image: %s", agentURL)
	}

	// An image built with --gzip (for kernels older than 5.9, which
	// unpack no zstd): the agent and the overlay come gzip-compressed too,
	// the overlay as two gzip members (the shared entries, then the
	// node's own) of one newc archive.
	gzRoot, err := bootserver.Compress([]byte("a root"), bootserver.Gzip)
	if err != nil {
		t.Fatal(err)
	}
	old := m
	old.CompressedRoot = nil
	if old.Rootfs, err = st.Put(context.Background(), bytes.NewReader(gzRoot)); err != nil {
		t.Fatal(err)
	}
	old.Rootfs.MediaType = images.MediaTypeRootfsGzip
	if _, err := st.Commit("old", old); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ChangeInventory(false, func(inv *inventory.Inventory) error {
		n := inv.Nodes["n1"].Clone()
		n.Image, n.Root = "old", inventory.Root{Mode: "tmpfs"}
		inv.Nodes["n1"] = n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.ClearPins([]string{"n1"}); err != nil {
		t.Fatal(err)
	}
	ovURL := overlayURL(n1, "52:54:00:00:00:01")
	if !strings.HasSuffix(ovURL, "/"+bootserver.OverlayGzipName) || !strings.HasSuffix(agentURL, "/"+bootserver.AgentGzipName) {
		t.Fatalf("a gzip image's script: overlay %s, agent %s", ovURL, agentURL)
	}
	code, body = fetch(n1, ovURL)
	if code != 200 {
		t.Fatalf("gzip overlay of n1: %d %s", code, body)
	}
	if members := gzipMembers(t, body); members < 2 {
		t.Errorf("gzip overlay is %d members, want 2 (the shared entries, then the node's own)", members)
	}
	files, archives = unpackGzip(t, body)
	nc = overlay.Config{}
	if err := json.Unmarshal(files[overlay.ConfigPath], &nc); err != nil || nc.Image.Name != "old" || archives != 1 ||
		!strings.Contains(string(files["etc/hosts"]), "127.0.0.22\tn2.cluster.local n2") {
		t.Errorf("gzip overlay: %d archives, node.json %+v (%v), hosts %q", archives, nc, err, files["etc/hosts"])
	}
	code, body = fetch(n1, agentURL)
	if code != 200 {
		t.Fatalf("gzip agent: %d", code)
	}
	if files, _ := unpackGzip(t, body); string(files["init"]) != "agent" {
		t.Errorf("gzip agent archive: init = %q", files["init"])
	}
}

// gzipMembers counts the gzip members of b.
func gzipMembers(t *testing.T, b []byte) int {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(b))
	zr, err := gzip.NewReader(br)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		zr.Multistream(false)
		if _, err := io.Copy(io.Discard, zr); err != nil {
			t.Fatal(err)
		}
		n++
		if err := zr.Reset(br); errors.Is(err, io.EOF) {
			return n
		} else if err != nil {
			t.Fatal(err)
		}
	}
}

// unpackGzip is unpackAll for gzip members.
func unpackGzip(t *testing.T, b []byte) (map[string][]byte, int) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	z, err := bootserver.Compress(raw, bootserver.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	return unpackAll(t, z)
}

func mustCompress(t *testing.T, b []byte) []byte {
	t.Helper()
	z, err := bootserver.Compress(b, bootserver.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	return z
}
