package api

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// workloadHead is a node API on 127.0.0.1 with one image "busybox" and
// one node "n1" whose reserved address is 127.0.0.1 (the test's own).
func workloadHead(t *testing.T) (url, token string, db *state.DB, m images.Manifest, d images.Digest) {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for _, f := range []struct{ name, data string }{{"bin/sh", "#!"}, {"etc/motd", "hi\n"}} {
		p := filepath.Join(tree, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := &images.Store{Dir: filepath.Join(dir, "store")}
	m, d, err := build.Build(context.Background(), build.Options{RootDir: tree, Name: "busybox", Kernel: kernel, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	db, err = state.Open(filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	token = mintToken(t, db, "n1")
	srv := httptest.NewServer((&Node{DB: db, Images: store}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, token, db, m, d
}

// mintToken gives node name a token as its boot does: a script's nonce,
// spent by the overlay.
func mintToken(t *testing.T, db *state.DB, name string) string {
	t.Helper()
	nonce, err := db.NewBootNonce(name, state.Event{Step: state.StepScript})
	if err != nil {
		t.Fatal(err)
	}
	token := state.NewToken()
	if err := db.ConsumeNonce(name, nonce, token, state.Event{Step: state.StepOverlay}); err != nil {
		t.Fatal(err)
	}
	return token
}

func nodeDo(t *testing.T, method, url, token, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestNodeImage(t *testing.T) {
	url, token, _, m, d := workloadHead(t)
	want := overlay.NodeImage{
		Name: "busybox", Digest: string(d), Rootfs: string(m.Rootfs.Digest), RootfsSize: m.Rootfs.Size,
		RootfsUncompressedSize: m.RootfsUncompressedSize, RootfsPath: "/boot/image/" + d.Hex() + "/rootfs.cpio.zst",
	}
	// The image was built with its compressed root: the node is told
	// where it is, for a compressed container lower.
	if m.CompressedRoot == nil {
		t.Fatal("the test image has no compressed root")
	}
	want.CompressedRoot, want.CompressedRootSize = string(m.CompressedRoot.Digest), m.CompressedRoot.Size
	want.CompressedRootPath = "/boot/image/" + d.Hex() + "/rootfs.squashfs.cpio"
	for _, ref := range []string{"busybox", "busybox:latest", string(d)} {
		t.Run(ref, func(t *testing.T) {
			code, b := nodeDo(t, "GET", url+"/api/v1/nodes/n1/images/"+ref, token, "")
			if code != http.StatusOK {
				t.Fatalf("HTTP %d: %s", code, b)
			}
			var got overlay.NodeImage
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			w := want
			w.Ref = ref
			if got != w {
				t.Errorf("got %+v\nwant %+v", got, w)
			}
		})
	}
	for _, c := range []struct {
		name, node, ref, token string
		code                   int
		msg                    string
	}{
		{"unknown image", "n1", "nosuch", token, http.StatusNotFound, "not in the head's store"},
		{"unknown digest", "n1", "sha256:" + strings.Repeat("0", 64), token, http.StatusNotFound, "unknown image"},
		{"bad digest", "n1", "sha256:xyz", token, http.StatusBadRequest, "parse digest"},
		{"bad name", "n1", "Bad!", token, http.StatusBadRequest, "invalid image name"},
		{"no token", "n1", "busybox", "", http.StatusUnauthorized, "missing bearer token"},
		{"wrong token", "n1", "busybox", "x" + token, http.StatusUnauthorized, "bad token"},
		{"unknown node", "n2", "busybox", token, http.StatusNotFound, "node n2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, b := nodeDo(t, "GET", url+"/api/v1/nodes/"+c.node+"/images/"+c.ref, c.token, "")
			if code != c.code || !strings.Contains(string(b), c.msg) {
				t.Errorf("HTTP %d %s, want %d with %q", code, b, c.code, c.msg)
			}
		})
	}
}

// TestNodeImageOtherAddress: a valid token from an address that is not
// the node's reserved one is refused.
func TestNodeImageOtherAddress(t *testing.T) {
	url, _, db, _, _ := workloadHead(t)
	if err := db.DeleteNode("n1"); err != nil {
		t.Fatal(err)
	}
	if err := db.AddNode(state.Node{Name: "n1", MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("127.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	token := mintToken(t, db, "n1")
	code, b := nodeDo(t, "GET", url+"/api/v1/nodes/n1/images/busybox", token, "")
	if code != http.StatusForbidden || !strings.Contains(string(b), "not from the node's reserved address") {
		t.Errorf("HTTP %d %s, want 403 naming the address", code, b)
	}
	// From 127.0.0.2 it works.
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", url+"/api/v1/nodes/n1/images/busybox", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("from the reserved address: HTTP %d", resp.StatusCode)
	}
}

func TestNodeJobEvent(t *testing.T) {
	url, token, db, _, _ := workloadHead(t)
	code, b := nodeDo(t, "POST", url+"/api/v1/nodes/n1/jobs", token, `{"job":"42","user":"alice","hook":"epilog","ok":false,"detail":"2 processes left"}`)
	if code != http.StatusNoContent {
		t.Fatalf("HTTP %d %s", code, b)
	}
	n, err := db.Get("n1")
	if err != nil {
		t.Fatal(err)
	}
	last := n.Status.Timeline[len(n.Status.Timeline)-1]
	if last.Step != state.StepJobEpilog || last.Detail != "job 42 (alice) failed: 2 processes left" {
		t.Errorf("timeline ends with %+v", last)
	}
	for _, body := range []string{`{"job":"42","hook":"other","ok":true}`, `{"job":"","hook":"prolog","ok":true}`, `{"job":"1","hook":"prolog","extra":1}`} {
		if code, b := nodeDo(t, "POST", url+"/api/v1/nodes/n1/jobs", token, body); code != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d %s, want 400", body, code, b)
		}
	}
	if code, _ := nodeDo(t, "POST", url+"/api/v1/nodes/n1/jobs", "", `{"job":"1","hook":"prolog","ok":true}`); code != http.StatusUnauthorized {
		t.Errorf("no token: HTTP %d, want 401", code)
	}
}
