package apiclient_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

// serveImages runs the admin API with a store holding one image "compute"
// and a node assigned it, and a default image "default".
func serveImages(t *testing.T) (*apiclient.Client, *images.Store, images.Digest) {
	t.Helper()
	dir := t.TempDir()
	db, err := state.Open(filepath.Join(dir, "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st := &images.Store{Dir: filepath.Join(dir, "images")}
	ctx := context.Background()
	k, _ := st.Put(ctx, strings.NewReader("kernel"))
	k.MediaType = images.MediaTypeKernel
	r, _ := st.Put(ctx, strings.NewReader("rootfs"))
	r.MediaType = images.MediaTypeRootfs
	d, err := st.Commit("compute:v1", images.Manifest{SchemaVersion: images.SchemaVersion, Created: time.Now().UTC().Truncate(time.Second),
		Source: "/x", Kernel: k, Rootfs: r, RootfsUncompressedSize: 1, Files: 1, ContentDigest: images.DigestOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	heads := provisioner.NewNodes(db, &plan.Defaults{Image: "default", Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24")}}}, "http://10.77.0.1")
	admin := &api.Admin{DB: db, Images: st, Plan: heads.Plan}
	srv := &http.Server{Handler: admin.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := apiclient.New(sock)
	if _, err := c.AddNodes(ctx, api.AddNodesRequest{Names: "n1", MAC: "52:54:00:aa:bb:01", IP: "10.77.0.10", Settings: api.Settings{Image: "compute:v1"}}); err != nil {
		t.Fatal(err)
	}
	return c, st, d
}

func TestImages(t *testing.T) {
	ctx := context.Background()
	c, st, d := serveImages(t)
	img, err := c.GetImage(ctx, "compute:v1")
	if err != nil || img.Digest != string(d) || img.Ref != "compute:v1" || len(img.Nodes) != 1 || img.Nodes[0] != "n1" {
		t.Fatalf("GetImage = %+v, %v", img, err)
	}
	if _, err := c.GetImage(ctx, "compute"); !errors.Is(err, apiclient.ErrNotFound) {
		t.Errorf("GetImage(missing) = %v", err)
	}
	if _, err := c.GetImage(ctx, "Bad"); err == nil || !strings.Contains(err.Error(), "invalid image name") {
		t.Errorf("GetImage(bad) = %v", err)
	}
	if img, err := c.TagImage(ctx, "compute:v1", "default"); err != nil || img.Ref != "default:latest" || img.Digest != string(d) {
		t.Fatalf("TagImage = %+v, %v", img, err)
	}
	// n1 is assigned compute:v1; the default image is every node's without one.
	if err := c.DeleteImage(ctx, "compute:v1", false); err == nil || !strings.Contains(err.Error(), "n1") {
		t.Errorf("DeleteImage of an assigned image = %v", err)
	}
	if err := c.DeleteImage(ctx, "compute:v1", true); err != nil {
		t.Errorf("forced DeleteImage = %v", err)
	}
	imgs, err := c.ListImages(ctx)
	if err != nil || len(imgs) != 1 || imgs[0].Ref != "default:latest" {
		t.Fatalf("ListImages = %+v, %v", imgs, err)
	}
	// gc keeps what default points to; a dry run removes nothing.
	if _, err := st.Remove("default"); err != nil {
		t.Fatal(err)
	}
	res, err := c.GCImages(ctx, api.GCRequest{DryRun: true, MinAge: "0s"})
	if err != nil || len(res.Removed) != 3 || !res.DryRun {
		t.Fatalf("dry-run gc = %+v, %v", res, err)
	}
	if bs, _ := st.Blobs(); len(bs) != 3 {
		t.Errorf("dry run removed blobs")
	}
	if _, err := c.GCImages(ctx, api.GCRequest{MinAge: "soon"}); err == nil || !strings.Contains(err.Error(), "minAge") {
		t.Errorf("bad minAge: %v", err)
	}
}

// TestGCKeepsWhatNodesRun: a node that reported running an image keeps its
// blobs through gc after its reference is gone.
func TestGCKeepsWhatNodesRun(t *testing.T) {
	nodes := []state.NodeStatus{{Node: state.Node{Name: "n1"}, Status: state.Status{Boot: state.Boot{Report: &state.Report{ImageDigest: string(images.DigestOf([]byte("m")))}}}}}
	st := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
	got := api.InUse(nodes, st, func(state.NodeStatus) string { return "default" })
	if len(got) != 1 || got[0] != images.DigestOf([]byte("m")) {
		t.Errorf("InUse = %v", got)
	}
}
