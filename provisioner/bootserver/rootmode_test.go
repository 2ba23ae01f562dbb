package bootserver_test

import (
	"bytes"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/state"
)

// TestRootModePerNode: the root mode is chosen per node. A node in the
// compressed mode gets the image's compressed root as its root initrd and
// a configuration that says compressed; the node beside it, without a
// mode of its own, boots the configured tmpfs mode; an image without a
// compressed root boots such a node in the tmpfs mode, saying why in the
// timeline.
func TestRootModePerNode(t *testing.T) {
	f := newFixture(t)
	compressed := bytes.Repeat([]byte("squashfs"), 30000)
	m, _, err := f.store.Resolve("default")
	if err != nil {
		t.Fatal(err)
	}
	a := put(t, f.store, compressed, images.MediaTypeCompressedRoot)
	m.SchemaVersion, m.Tag, m.Files, m.CompressedRoot = images.SchemaVersion, "latest", 1, &a
	if _, err := f.store.Commit("small", m); err != nil {
		t.Fatal(err)
	}
	for _, n := range []state.Node{
		{Name: "c1", MAC: "52:54:00:00:00:11", IP: netip.MustParseAddr("127.0.0.11"), Settings: inventory.Settings{Image: "small", Root: inventory.Root{Mode: "compressed"}}},
		{Name: "t1", MAC: "52:54:00:00:00:12", IP: netip.MustParseAddr("127.0.0.12"), Settings: inventory.Settings{Image: "small"}},
		{Name: "c2", MAC: "52:54:00:00:00:13", IP: netip.MustParseAddr("127.0.0.13"), Settings: inventory.Settings{Root: inventory.Root{Mode: "compressed"}}}, // the default image has none
	} {
		if err := f.db.AddNode(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.db.AddNode(state.Node{Name: "bad", MAC: "52:54:00:00:00:14", IP: netip.MustParseAddr("127.0.0.14"), Settings: inventory.Settings{Root: inventory.Root{Mode: "squashfs"}}}); err == nil ||
		!strings.Contains(err.Error(), `root mode "squashfs"`) {
		t.Errorf("a node with an unknown root mode: %v", err)
	}

	boot := func(name, ip, mac string) (urls []string, cfg overlay.Config) {
		t.Helper()
		c := client(ip)
		resp, script := get(t, c, f.srv.URL+"/boot/ipxe?mac="+mac)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: script %d %s", name, resp.StatusCode, script)
		}
		urls = scriptURLs(string(script))
		if len(urls) != 4 {
			t.Fatalf("%s: script:\n%s", name, script)
		}
		resp, b := get(t, c, urls[3])
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: overlay %d", name, resp.StatusCode)
		}
		cfg, err := overlay.ParseConfig(unpack(t, b)[overlay.ConfigPath])
		if err != nil {
			t.Fatal(err)
		}
		return urls, cfg
	}

	urls, cfg := boot("c1", "127.0.0.11", "52:54:00:00:00:11")
	if !strings.HasSuffix(urls[1], "/rootfs.squashfs.cpio") || cfg.Root.ModeOrDefault() != overlay.RootCompressed {
		t.Errorf("compressed node: root initrd %s, config mode %q", urls[1], cfg.Root.Mode)
	}
	resp, b := get(t, client("127.0.0.11"), urls[1])
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, compressed) || resp.Header.Get("ETag") != `"`+string(a.Digest)+`"` {
		t.Errorf("compressed root: %d, %d bytes, ETag %s", resp.StatusCode, len(b), resp.Header.Get("ETag"))
	}
	resp, b = get(t, client("127.0.0.11"), urls[1], "Range", "bytes=8-15")
	if resp.StatusCode != http.StatusPartialContent || string(b) != "squashfs" {
		t.Errorf("compressed root Range: %d %q", resp.StatusCode, b)
	}

	urls, cfg = boot("t1", "127.0.0.12", "52:54:00:00:00:12")
	if !strings.HasSuffix(urls[1], "/rootfs.cpio.zst") || cfg.Root.ModeOrDefault() != overlay.RootTmpfs {
		t.Errorf("tmpfs node: root initrd %s, config mode %q", urls[1], cfg.Root.Mode)
	}

	urls, cfg = boot("c2", "127.0.0.13", "52:54:00:00:00:13")
	if !strings.HasSuffix(urls[1], "/rootfs.cpio.zst") || cfg.Root.ModeOrDefault() != overlay.RootTmpfs {
		t.Errorf("compressed node, image without a compressed root: root initrd %s, config mode %q", urls[1], cfg.Root.Mode)
	}
	// Its compressed root URL is a clear 404.
	resp, b = get(t, client("127.0.0.13"), strings.Replace(urls[1], "rootfs.cpio.zst", "rootfs.squashfs.cpio", 1))
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "no compressed root") {
		t.Errorf("compressed root of an image without one: %d %s", resp.StatusCode, b)
	}
	n, err := f.db.Get("c2")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range n.Status.Timeline {
		if e.Step == state.StepScript && strings.Contains(e.Detail, "root tmpfs (compressed root mode, but the image has no compressed root: tmpfs)") {
			found = true
		}
	}
	if !found {
		t.Errorf("timeline does not say why c2 boots tmpfs: %+v", n.Status.Timeline)
	}
}
