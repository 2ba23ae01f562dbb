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

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
	"github.com/ramboot/ramboot/provisioner/state"
)

// serve runs the admin API on a real unix socket and returns a client.
func serve(t *testing.T) *apiclient.Client {
	t.Helper()
	dir := t.TempDir()
	db, err := state.Open(filepath.Join(dir, "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	admin := &api.Admin{DB: db, Images: &images.Store{Dir: filepath.Join(dir, "images")}, Subnet: netip.MustParsePrefix("10.77.0.1/24")}
	srv := &http.Server{Handler: admin.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return apiclient.New(sock)
}

func TestNodes(t *testing.T) {
	ctx := context.Background()
	c := serve(t)
	n, err := c.AddNode(ctx, api.AddNodeRequest{Name: "n1", MAC: "52:54:00:AA:BB:01", IP: "10.77.0.10", Image: "compute"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Interfaces[0].MAC != "52:54:00:aa:bb:01" || n.Status.State != state.StateNew || n.Image != "compute" {
		t.Fatalf("added %+v", n)
	}
	bad := []struct {
		name string
		req  api.AddNodeRequest
		want string
	}{
		{"duplicate name", api.AddNodeRequest{Name: "n1", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.11"}, "already exists"},
		{"duplicate mac", api.AddNodeRequest{Name: "n2", MAC: "52:54:00:aa:bb:01", IP: "10.77.0.11"}, "node n1"},
		{"outside subnet", api.AddNodeRequest{Name: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.1.0.11"}, "not in the provisioning subnet 10.77.0.0/24"},
		{"head address", api.AddNodeRequest{Name: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.1"}, "head"},
		{"bad ip", api.AddNodeRequest{Name: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0"}, "not an IPv4 address"},
		{"bad mac", api.AddNodeRequest{Name: "n2", MAC: "52:54", IP: "10.77.0.12"}, "mac"},
		{"bad name", api.AddNodeRequest{Name: "-n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.12"}, "node name"},
		{"bad image", api.AddNodeRequest{Name: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.12", Image: "../x"}, "image"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.AddNode(ctx, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := c.AddNode(ctx, api.AddNodeRequest{Name: "n0", MAC: "52:54:00:aa:bb:03", IP: "10.77.0.13"}); err != nil {
		t.Fatal(err)
	}
	ns, err := c.ListNodes(ctx)
	if err != nil || len(ns) != 2 || ns[0].Name != "n0" || ns[1].Name != "n1" {
		t.Fatalf("list: %+v %v", ns, err)
	}
	if got, err := c.GetNode(ctx, "n1"); err != nil || got.Interfaces[0].IP.String() != "10.77.0.10" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if err := c.DeleteNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetNode(ctx, "n1"); !errors.Is(err, apiclient.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if imgs, err := c.ListImages(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("images of an empty store: %v %v", imgs, err)
	}
}

func TestNoDaemon(t *testing.T) {
	c := apiclient.New(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.ListNodes(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is `ramboot serve` running") {
		t.Fatalf("error %v", err)
	}
}
