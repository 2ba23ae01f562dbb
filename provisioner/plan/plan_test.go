package plan_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
)

func str(s string) *string { return &s }

var defaults = plan.Defaults{
	Image: "default", KernelArgs: "console=ttyS0", Modules: []string{"virtio_net"},
	Subnets: []plan.Subnet{
		{Prefix: netip.MustParsePrefix("10.0.0.1/24"), Gateway: netip.MustParseAddr("10.0.0.254"), DNS: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, From: "subnet 10.0.0.0/24"},
		{Prefix: netip.MustParsePrefix("10.8.0.0/16"), Gateway: netip.MustParseAddr("10.8.0.1"), MTU: 2044, From: "config subnets[0]"},
	},
}

func inv() *inventory.Inventory {
	inv := inventory.New()
	inv.Profiles["base"] = &inventory.Profile{Name: "base", Settings: inventory.Settings{
		Image: "debian", KernelArgs: str("console=ttyS0 quiet"), Tags: map[string]string{"rack": "1", "site": "a"},
	}}
	inv.Profiles["compute"] = &inventory.Profile{Name: "compute", Inherits: []string{"base"}, Settings: inventory.Settings{
		Image: "rocky9", Modules: []string{"mlx5_core"}, Network: "networkmanager", Root: inventory.Root{Size: "50%"},
		Tags: map[string]string{"rack": "2"},
	}}
	inv.Nodes["n1"] = &inventory.Node{Name: "n1", Profiles: []string{"compute"}, Interfaces: []inventory.Interface{
		{MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("10.0.0.11")},
		{Name: "ib0", ClientID: "ff:00:01", IP: netip.MustParseAddr("10.8.3.11"), Gateway: netip.MustParseAddr("10.8.0.2")},
	}, Settings: inventory.Settings{BootFile: "snponly.efi", Tags: map[string]string{"gpu": "a100"}}}
	return inv
}

// TestResolve: each value comes from the last of configuration, profile
// chain and node that sets it, and Sources says which.
func TestResolve(t *testing.T) {
	i := inv()
	p, err := defaults.Resolve(i, i.Nodes["n1"], plan.Pin{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct{ got, want, key, from string }{
		{p.Image, "rocky9", "image", "profile compute"},
		{p.KernelArgs, "console=ttyS0 quiet", "kernel_args", "profile base"},
		{strings.Join(p.Modules, ","), "mlx5_core", "modules", "profile compute"},
		{p.BootFile, "snponly.efi", "boot_file", "node"},
		{p.Network, "networkmanager", "network", "profile compute"},
		{p.Root.Mode, "tmpfs", "root.mode", "default"},
		{p.Root.Size, "50%", "root.size", "profile compute"},
		{p.Tags["rack"], "2", "tags.rack", "profile compute"},
		{p.Tags["site"], "a", "tags.site", "profile base"},
		{p.Tags["gpu"], "a100", "tags.gpu", "node"},
		{p.Interfaces[0].Address.String(), "10.0.0.11/24", "interfaces[0].prefix", "subnet 10.0.0.0/24"},
		{p.Interfaces[0].Gateway.String(), "10.0.0.254", "interfaces[0].gateway", "subnet 10.0.0.0/24"},
		{p.Interfaces[1].Address.String(), "10.8.3.11/16", "interfaces[1].prefix", "config subnets[0]"},
		{p.Interfaces[1].Gateway.String(), "10.8.0.2", "interfaces[1].gateway", "node"},
	}
	for _, c := range checks {
		if c.got != c.want || p.Sources[c.key] != c.from {
			t.Errorf("%s = %q from %q, want %q from %q", c.key, c.got, p.Sources[c.key], c.want, c.from)
		}
	}
	if p.Interfaces[1].MTU != 2044 || strings.Join(p.Profiles, ",") != "base,compute" || p.Digest != "" {
		t.Errorf("plan %+v", p)
	}
}

// TestPin: a node keeps the digest it was given while its image
// reference is the one the digest came from; a new reference drops it.
func TestPin(t *testing.T) {
	i := inv()
	p, _ := defaults.Resolve(i, i.Nodes["n1"], plan.Pin{Ref: "rocky9", Digest: "sha256:aa", Boot: 3})
	if p.Digest != "sha256:aa" || p.Sources["digest"] != "pinned at boot 3" {
		t.Fatalf("pinned: %q from %q", p.Digest, p.Sources["digest"])
	}
	n := i.Nodes["n1"].Clone()
	n.Image = "rocky10"
	if p, _ := defaults.Resolve(i, n, plan.Pin{Ref: "rocky9", Digest: "sha256:aa"}); p.Digest != "" || p.Image != "rocky10" {
		t.Fatalf("moved to another image: still pinned %q", p.Digest)
	}
}

// TestOutsideSubnets: an address on no configured subnet has no plan.
func TestOutsideSubnets(t *testing.T) {
	i := inv()
	n := i.Nodes["n1"].Clone()
	n.Interfaces[0].IP = netip.MustParseAddr("192.168.0.5")
	if _, err := defaults.Resolve(i, n, plan.Pin{}); err == nil || !strings.Contains(err.Error(), "outside every configured subnet") {
		t.Fatalf("error %v", err)
	}
}

// BenchmarkResolve is the per-packet cost of the policy seam.
func BenchmarkResolve(b *testing.B) {
	i := inv()
	n := i.Nodes["n1"]
	for b.Loop() {
		if _, err := defaults.Resolve(i, n, plan.Pin{}); err != nil {
			b.Fatal(err)
		}
	}
}
