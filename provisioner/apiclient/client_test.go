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
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

// serve runs the admin API on a real unix socket, with the daemon's
// inventory check (subnet 10.77.0.1/24), and returns a client.
func serve(t *testing.T) *apiclient.Client {
	t.Helper()
	dir := t.TempDir()
	heads := provisioner.NewNodes(nil, &plan.Defaults{Image: "default", Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24")}}}, "http://10.77.0.1")
	db, err := state.OpenWith(filepath.Join(dir, "s.db"), state.Options{Check: heads.Check})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	admin := &api.Admin{DB: db, Images: &images.Store{Dir: filepath.Join(dir, "images")}}
	srv := &http.Server{Handler: admin.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return apiclient.New(sock)
}

func TestNodes(t *testing.T) {
	ctx := context.Background()
	c := serve(t)
	ns, err := c.AddNodes(ctx, api.AddNodesRequest{Names: "n1", MAC: "52:54:00:AA:BB:01", IP: "10.77.0.10", Settings: api.Settings{Image: "compute"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := ns[0]; n.Interfaces[0].MAC != "52:54:00:aa:bb:01" || n.Status.State != "new" || n.Image != "compute" {
		t.Fatalf("added %+v", n)
	}
	bad := []struct {
		name string
		req  api.AddNodesRequest
		want string
		is   error
	}{
		{"duplicate name", api.AddNodesRequest{Names: "n1", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.11"}, "already exists", apiclient.ErrConflict},
		{"duplicate mac", api.AddNodesRequest{Names: "n2", MAC: "52:54:00:aa:bb:01", IP: "10.77.0.11"}, "node n1", apiclient.ErrConflict},
		{"outside subnet", api.AddNodesRequest{Names: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.1.0.11"}, "outside every configured subnet (10.77.0.0/24)", apiclient.ErrInvalid},
		{"head address", api.AddNodesRequest{Names: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.1"}, "head", apiclient.ErrInvalid},
		{"bad ip", api.AddNodesRequest{Names: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0"}, "10.77.0", apiclient.ErrInvalid},
		{"bad mac", api.AddNodesRequest{Names: "n2", MAC: "52:54", IP: "10.77.0.12"}, "52:54", apiclient.ErrInvalid},
		{"bad name", api.AddNodesRequest{Names: "-n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.12"}, "node name", apiclient.ErrInvalid},
		{"bad image", api.AddNodesRequest{Names: "n2", MAC: "52:54:00:aa:bb:02", IP: "10.77.0.12", Settings: api.Settings{Image: "../x"}}, "image", apiclient.ErrInvalid},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.AddNodes(ctx, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %q and %v", err, tc.want, tc.is)
			}
		})
	}
	if _, err := c.AddNodes(ctx, api.AddNodesRequest{Names: "n0", MAC: "52:54:00:aa:bb:03", IP: "10.77.0.13"}); err != nil {
		t.Fatal(err)
	}
	list, err := c.ListNodes(ctx, "")
	if err != nil || len(list) != 2 || list[0].Name != "n0" || list[1].Name != "n1" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if got, err := c.GetNode(ctx, "n1"); err != nil || got.Interfaces[0].IP != "10.77.0.10" {
		t.Fatalf("get: %+v %v", got, err)
	}
	if err := c.DeleteNodes(ctx, "n1"); err != nil {
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
	_, err := c.ListNodes(context.Background(), "")
	if err == nil || !strings.Contains(err.Error(), "is `ramboot serve` running") || !errors.Is(err, apiclient.ErrUnreachable) {
		t.Fatalf("error %v", err)
	}
}
