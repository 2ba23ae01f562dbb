package overlayrender_test

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"testing/fstest"

	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

// exampleCluster is the cluster of the examples and of docs/overlays.md.
func exampleCluster() *overlayrender.Cluster {
	return &overlayrender.Cluster{
		Name:   "hpc1",
		Domain: "cluster.local",
		Head:   overlayrender.Head{Name: "head", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, URL: "http://10.0.0.1"},
		Values: map[string]any{"ntp": "10.0.0.1"},
		Nodes: []overlayrender.Node{
			{
				Name:     "n001",
				Profiles: []string{"compute"},
				Interfaces: []overlayrender.Interface{{
					Name: "eth0", MAC: "52:54:00:00:00:01",
					Address: netip.MustParsePrefix("10.0.0.11/24"),
					Gateway: netip.MustParseAddr("10.0.0.1"),
					DNS:     []netip.Addr{netip.MustParseAddr("10.0.0.1")},
				}},
				Tags:  map[string]string{"rack": "1", "gpu": "a100"},
				Image: overlayrender.Image{Name: "debian-12", Digest: "sha256:" + fmt.Sprintf("%064d", 1)},
			},
			{
				Name:     "n002",
				Profiles: []string{"compute"},
				Interfaces: []overlayrender.Interface{{
					Name: "eth0", MAC: "52:54:00:00:00:02",
					Address: netip.MustParsePrefix("10.0.0.12/24"),
				}},
				Tags:  map[string]string{"rack": "1"},
				Image: overlayrender.Image{Name: "debian-12", Digest: "sha256:" + fmt.Sprintf("%064d", 1)},
			},
		},
	}
}

func ExampleSnapshot_Render() {
	ctx := context.Background()
	// The compute profile's template directory (os.DirFS on a head).
	compute := fstest.MapFS{
		"etc/motd.tmpl": {Mode: 0o644, Data: []byte(
			"{{.Hostname}} ({{.FQDN}}), rack {{.Tags.rack}} of {{.Cluster.Name}}, image {{.Image.Name}}\n")},
		"etc/chrony/sources.d/head.sources.tmpl": {Mode: 0o644, Data: []byte(
			"server {{get .Values \"ntp\" \"pool.ntp.org\"}} iburst\n")},
		"etc/modules-load.d/nvidia.conf.tmpl": {Mode: 0o644, Data: []byte(
			"{{if not (has .Tags \"gpu\")}}{{skip}}{{end}}nvidia\n")},
	}
	r, err := overlayrender.New(overlayrender.Config{Profiles: map[string]fs.FS{"compute": compute}})
	if err != nil {
		fmt.Println(err)
		return
	}
	snap, err := r.Prepare(ctx, exampleCluster())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, node := range []string{"n001", "n002"} {
		o, err := snap.Render(ctx, node, "token-of-this-boot")
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, p := range []string{"etc/hostname", "etc/motd", "etc/chrony/sources.d/head.sources", "etc/modules-load.d/nvidia.conf"} {
			if f := o.File(p); f != nil {
				fmt.Printf("%s %v %s", p, f.Mode, f.Data)
			}
		}
	}
	// Output:
	// etc/hostname -rw-r--r-- n001
	// etc/motd -rw-r--r-- n001 (n001.cluster.local), rack 1 of hpc1, image debian-12
	// etc/chrony/sources.d/head.sources -rw-r--r-- server 10.0.0.1 iburst
	// etc/modules-load.d/nvidia.conf -rw-r--r-- nvidia
	// etc/hostname -rw-r--r-- n002
	// etc/motd -rw-r--r-- n002 (n002.cluster.local), rack 1 of hpc1, image debian-12
	// etc/chrony/sources.d/head.sources -rw-r--r-- server 10.0.0.1 iburst
}

func ExampleSnapshot_Render_builtin() {
	ctx := context.Background()
	r, _ := overlayrender.New(overlayrender.Config{})
	snap, _ := r.Prepare(ctx, exampleCluster())
	o, _ := snap.Render(ctx, "n001", "token-of-this-boot")
	for _, p := range []string{"etc/hosts", "etc/systemd/network/10-ramboot-eth0.network", "etc/ramboot/node.json"} {
		fmt.Printf("--- %s %v\n%s", p, o.File(p).Mode, o.File(p).Data)
	}
	// Output:
	// --- etc/hosts -rw-r--r--
	// # Written by the ramboot head; changes made on the node are lost at reboot.
	// 127.0.0.1	localhost
	// ::1	localhost ip6-localhost ip6-loopback
	// 10.0.0.1	head.cluster.local head
	// 10.0.0.11	n001.cluster.local n001
	// 10.0.0.12	n002.cluster.local n002
	// --- etc/systemd/network/10-ramboot-eth0.network -rw-r--r--
	// # Written by the ramboot head; changes made on the node are lost at reboot.
	// [Match]
	// MACAddress=52:54:00:00:00:01
	//
	// [Network]
	// Address=10.0.0.11/24
	// Gateway=10.0.0.1
	// DNS=10.0.0.1
	// Domains=cluster.local
	// KeepConfiguration=static
	// --- etc/ramboot/node.json -rw-------
	// {
	//   "node": "n001",
	//   "headURL": "http://10.0.0.1",
	//   "token": "token-of-this-boot",
	//   "interface": {
	//     "mac": "52:54:00:00:00:01",
	//     "address": "10.0.0.11/24",
	//     "gateway": "10.0.0.1",
	//     "dns": [
	//       "10.0.0.1"
	//     ]
	//   },
	//   "image": {
	//     "name": "debian-12",
	//     "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000001",
	//     "contentDigest": ""
	//   },
	//   "overlayGeneration": "b4c77311f8f91434",
	//   "overlayFiles": [
	//     "etc/hostname",
	//     "etc/hosts",
	//     "etc/systemd/network/10-ramboot-eth0.network"
	//   ]
	// }
}

func ExampleTemplateError() {
	ctx := context.Background()
	r, _ := overlayrender.New(overlayrender.Config{Profiles: map[string]fs.FS{"compute": fstest.MapFS{
		"etc/slurm/node.conf.tmpl": {Mode: 0o644, Data: []byte("# slurm\nNodeName={{.Hostname}} Gres=gpu:{{.Tags.gpu}}\n")},
	}}})
	snap, _ := r.Prepare(ctx, exampleCluster())
	_, err := snap.Render(ctx, "n002", "token") // n002 has no gpu tag
	fmt.Println(err)
	_, err = snap.Render(ctx, "n001", "token") // n001 renders
	fmt.Println(err)
	// Output:
	// render overlay of n002: profile compute: etc/slurm/node.conf.tmpl:2: executing "etc/slurm/node.conf.tmpl" at <.Tags.gpu>: map has no entry for key "gpu"
	// <nil>
}
