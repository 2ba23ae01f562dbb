package overlayrender_test

import (
	"context"
	"io/fs"
	"net/netip"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

// render renders one template for node n0001 of testCluster(1).
func render(t *testing.T, tmpl string, edit func(*overlayrender.Cluster)) (string, error) {
	t.Helper()
	r, err := overlayrender.New(overlayrender.Config{Profiles: map[string]fs.FS{"p": fstest.MapFS{"out.tmpl": {Data: []byte(tmpl), Mode: 0o644}}}})
	if err != nil {
		return "", err
	}
	c := testCluster(1)
	c.Nodes[0].Profiles = []string{"p"}
	if edit != nil {
		edit(c)
	}
	snap, err := r.Prepare(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	o, err := snap.Render(context.Background(), "n0001", "t")
	if err != nil {
		return "", err
	}
	return string(o.File("out").Data), nil
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestFuncs(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{`{{addr .Interface.Address}} {{prefixLen .Interface.Address}} {{netmask .Interface.Address}} {{network .Interface.Address}}`, "10.0.0.11 16 255.255.0.0 10.0.0.0/16"},
		{`{{join "," .Node.Modules}} {{join " " .Interface.DNS}}`, "virtio_net 10.0.0.1"},
		{`{{.Values.site}} {{.Values.ntp}}`, "node-site 10.0.0.1"}, // the node's value wins
		{`{{get .Values "x" "dflt"}} {{get .Tags "rack" "?"}} {{has .Tags "gpu"}}`, "dflt 1 false"},
		{`{{"" | default "d"}} {{"v" | default "d"}}`, "d v"},
		{`{{upper "a"}}{{lower "B"}}{{trim " c "}}{{replace "x" "y" "axb"}}{{quote "q"}}`, `Abcayb"q"`},
		{`{{contains "b" "abc"}} {{hasPrefix "a" "abc"}} {{hasSuffix "c" "abc"}} {{split "," "a,b"}}`, "true true true [a b]"},
		{`{{indent 2 "a\nb"}}`, "  a\n  b"},
		{`{{toJSON .Tags}}`, `{"rack":"1"}`},
		{`{{.Head.Name}} {{.Image.Name}} {{.Hostname}} {{.FQDN}} {{len .Cluster.Nodes}}`, "head debian-12 n0001 n0001.cluster.local 1"},
	} {
		got, err := render(t, tc.tmpl, func(c *overlayrender.Cluster) { c.Nodes[0].Values = map[string]any{"site": "node-site"} })
		if err != nil {
			t.Errorf("%s: %v", tc.tmpl, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s = %q, want %q", tc.tmpl, got, tc.want)
		}
	}
	for _, tc := range []struct{ tmpl, want string }{
		{`{{netmask .Interface.Address}}`, "is not IPv4"},
		{`{{join "," 3}}`, "cannot join int"},
		{`{{get 3 "a" "b"}}`, "is not a map"},
	} {
		_, err := render(t, tc.tmpl, func(c *overlayrender.Cluster) {
			if strings.Contains(tc.tmpl, "netmask") {
				c.Nodes[0].Interfaces[0].Address = mustPrefix("fd00::11/64")
			}
		})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.tmpl, err, tc.want)
		}
	}
}

func TestParseNetworkStack(t *testing.T) {
	for in, want := range map[string]overlayrender.NetworkStack{"": "networkd", "networkd": "networkd", "networkmanager": "networkmanager", "ifupdown": "ifupdown", "none": "none"} {
		if got, err := overlayrender.ParseNetworkStack(in); err != nil || got != want {
			t.Errorf("ParseNetworkStack(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := overlayrender.ParseNetworkStack("netplan"); err == nil || !strings.Contains(err.Error(), `network stack "netplan": want networkd, networkmanager, ifupdown or none`) {
		t.Errorf("netplan: %v", err)
	}
}

// TestForget: after a node's keys are deleted from the store (rotation)
// and the renderer forgets them, the next snapshot has new keys.
func TestForget(t *testing.T) {
	ctx := context.Background()
	store := &hostkeys.Dir{Path: t.TempDir()}
	r, err := overlayrender.New(overlayrender.Config{HostKeys: store})
	if err != nil {
		t.Fatal(err)
	}
	key := func() string {
		snap, err := r.Prepare(ctx, testCluster(1))
		if err != nil {
			t.Fatal(err)
		}
		o, err := snap.Render(ctx, "n0001", "t")
		if err != nil {
			t.Fatal(err)
		}
		return string(o.File("etc/ssh/ssh_host_ed25519_key.pub").Data)
	}
	before := key()
	if err := store.Delete(ctx, "n0001"); err != nil {
		t.Fatal(err)
	}
	if key() != before {
		t.Fatal("keys changed before Forget: the renderer should keep its copy")
	}
	r.Forget("n0001")
	if key() == before {
		t.Error("keys after Delete and Forget are the old ones")
	}
}
