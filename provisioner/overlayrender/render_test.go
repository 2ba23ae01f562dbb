package overlayrender_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/accounts"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
)

func lines(s ...string) []byte { return []byte(strings.Join(s, "\n") + "\n") }

// debianAccounts are a Debian image's account files (trimmed).
func debianAccounts() *accounts.Files {
	return &accounts.Files{
		Passwd:  lines("root:x:0:0:root:/root:/bin/bash", "munge:x:101:102::/nonexistent:/usr/sbin/nologin"),
		Group:   lines("root:x:0:", "shadow:x:42:", "munge:x:102:"),
		Shadow:  lines("root:*:19000:0:99999:7:::", "munge:!:19000::::::"),
		GShadow: lines("root:*::", "shadow:*::", "munge:!::"),
	}
}

// elAccounts are a Rocky image's: no shadow group, an ssh_keys group.
func elAccounts() *accounts.Files {
	return &accounts.Files{
		Passwd: lines("root:x:0:0:root:/root:/bin/bash", "munge:x:990:990::/run/munge:/sbin/nologin"),
		Group:  lines("root:x:0:", "ssh_keys:x:997:", "munge:x:990:"),
		Shadow: lines("root:*:19000:0:99999:7:::"),
	}
}

func testCluster(n int) *overlayrender.Cluster {
	c := &overlayrender.Cluster{
		Name:   "hpc1",
		Domain: "cluster.local",
		Head: overlayrender.Head{
			Name:      "head",
			Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")},
			URL:       "http://10.0.0.1/",
		},
		Values:  map[string]any{"ntp": "10.0.0.1", "site": "lab"},
		ModTime: time.Unix(1700000000, 0),
	}
	deb := overlayrender.Image{
		Name: "debian-12", Digest: "sha256:" + strings.Repeat("a", 64), ContentDigest: "sha256:" + strings.Repeat("b", 64),
		Accounts: debianAccounts(),
		Dirs:     map[string]overlayrender.Attr{"etc": {Mode: 0o755}, "root": {Mode: 0o700}, "etc/ssh": {Mode: 0o755}},
	}
	for i := range n {
		node := overlayrender.Node{
			Name:     fmt.Sprintf("n%04d", i+1),
			Profiles: []string{"base", "compute"},
			Interfaces: []overlayrender.Interface{{
				Name:    "eth0",
				MAC:     fmt.Sprintf("52:54:00:00:%02x:%02x", (i+1)>>8, (i+1)&0xff),
				Address: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte((i + 11) >> 8), byte((i + 11) & 0xff)}), 16),
				Gateway: netip.MustParseAddr("10.0.0.1"),
				DNS:     []netip.Addr{netip.MustParseAddr("10.0.0.1")},
			}},
			Tags:    map[string]string{"rack": fmt.Sprint(i/32 + 1)},
			Image:   deb,
			Modules: []string{"virtio_net"},
		}
		c.Nodes = append(c.Nodes, node)
	}
	return c
}

func testProfiles() map[string]fs.FS {
	return map[string]fs.FS{
		"base": fstest.MapFS{
			"etc/motd.tmpl":                 {Data: []byte("{{.Hostname}} of {{.Cluster.Name}}\n"), Mode: 0o644},
			"etc/chrony/chrony.conf.tmpl":   {Data: []byte("server {{get .Values \"ntp\" \"pool.ntp.org\"}} iburst\n# {{get .Values \"nothere\" \"default\"}}\n"), Mode: 0o644},
			"etc/profile.d/site.sh":         {Data: []byte("export SITE=lab\n"), Mode: 0o755},
			"etc/localtime":                 {Data: []byte("/usr/share/zoneinfo/UTC"), Mode: fs.ModeSymlink | 0o777},
			"etc/munge/munge.key":           {Data: []byte("secret-munge-key"), Mode: 0o600},
			"etc/munge":                     {Mode: fs.ModeDir | 0o755},
			"usr/local/sbin/healthcheck.sh": {Data: []byte("#!/bin/sh\n"), Mode: fs.ModeSetuid | 0o755},
			"usr":                           {Mode: fs.ModeDir | 0o755},
			"usr/local":                     {Mode: fs.ModeDir | 0o755},
			"usr/local/sbin":                {Mode: fs.ModeDir | 0o750},
			overlayrender.AttrsFile: {Data: []byte(
				"# path mode owner group\n" +
					"etc/munge 0700 munge munge\n" +
					"etc/munge/munge.key 0400 munge munge\n" +
					"etc/profile.d/site.sh - 0 root\n"), Mode: 0o644},
		},
		"compute": fstest.MapFS{
			"etc/motd.tmpl":                    {Data: []byte("compute node {{.Hostname}} ({{.FQDN}}) in rack {{.Tags.rack}}, {{len .Cluster.Nodes}} nodes, site {{.Values.site}}\n"), Mode: 0o644},
			"etc/modules-load.d/gpu.conf.tmpl": {Data: []byte("{{if not (has .Tags \"gpu\")}}{{skip}}{{end}}nvidia\n"), Mode: 0o644},
		},
		"gpu": fstest.MapFS{
			"etc/hosts.tmpl": {Data: []byte("{{skip}}"), Mode: 0o644},
		},
	}
}

func newRenderer(t testing.TB, store hostkeys.Store, set *accounts.Set) *overlayrender.Renderer {
	t.Helper()
	r, err := overlayrender.New(overlayrender.Config{Profiles: testProfiles(), HostKeys: store, Accounts: set})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func headSet(t testing.TB) *accounts.Set {
	t.Helper()
	head := accounts.Files{
		Passwd: lines("root:x:0:0:root:/root:/bin/bash", "alice:x:1001:1001:Alice:/home/alice:/bin/bash"),
		Group:  lines("root:x:0:", "alice:x:1001:"),
		Shadow: lines("alice:$y$hash:19700:0:99999:7:::"),
	}
	set, err := accounts.Select(head, accounts.Selection{Users: []string{"alice"}})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

type want struct {
	mode     fs.FileMode
	uid, gid int
	data     string // "" = don't check
}

func checkFile(t *testing.T, o *overlayrender.Overlay, path string, w want) {
	t.Helper()
	f := o.File(path)
	if f == nil {
		t.Errorf("%s: missing", path)
		return
	}
	if f.Mode != w.mode || f.UID != w.uid || f.GID != w.gid {
		t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d (from %s)", path, f.Mode, f.UID, f.GID, w.mode, w.uid, w.gid, f.Source)
	}
	if w.data != "" && string(f.Data) != w.data {
		t.Errorf("%s:\n%s\nwant:\n%s", path, f.Data, w.data)
	}
}

func TestRender(t *testing.T) {
	ctx := context.Background()
	store := &hostkeys.Dir{Path: t.TempDir()}
	r := newRenderer(t, store, headSet(t))
	c := testCluster(3)
	c.AuthorizedKeys = []byte("# the admins\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXjz9sYl0nN5yJf6c1rmc8ZbOgbUGsqkfdQKqmWRm7W admin@head\n")
	c.Nodes[1].Tags["gpu"] = "a100"
	c.Nodes[2].Profiles = []string{"base", "compute", "gpu"}
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	o1, err := snap.Render(ctx, "n0001", "tok-1")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, o1, "etc/hostname", want{mode: 0o644, data: "n0001\n"})
	checkFile(t, o1, "etc/motd", want{mode: 0o644, data: "compute node n0001 (n0001.cluster.local) in rack 1, 3 nodes, site lab\n"})
	checkFile(t, o1, "etc/chrony/chrony.conf", want{mode: 0o644, data: "server 10.0.0.1 iburst\n# default\n"})
	checkFile(t, o1, "etc/profile.d/site.sh", want{mode: 0o755, data: "export SITE=lab\n"})
	checkFile(t, o1, "usr/local/sbin/healthcheck.sh", want{mode: fs.ModeSetuid | 0o755})
	checkFile(t, o1, "etc/munge", want{mode: fs.ModeDir | 0o700, uid: 101, gid: 102})
	checkFile(t, o1, "etc/munge/munge.key", want{mode: 0o400, uid: 101, gid: 102, data: "secret-munge-key"})
	checkFile(t, o1, "etc/localtime", want{mode: fs.ModeSymlink | 0o777})
	if f := o1.File("etc/localtime"); f == nil || f.Linkname != "/usr/share/zoneinfo/UTC" {
		t.Errorf("etc/localtime: %+v", f)
	}
	if o1.File("etc/modules-load.d/gpu.conf") != nil {
		t.Error("gpu.conf rendered for a node without the gpu tag")
	}
	// Directories: the image's own, the defaults, and the tree's.
	checkFile(t, o1, "etc", want{mode: fs.ModeDir | 0o755})
	checkFile(t, o1, "root", want{mode: fs.ModeDir | 0o700})
	checkFile(t, o1, "root/.ssh", want{mode: fs.ModeDir | 0o700})
	checkFile(t, o1, "usr/local/sbin", want{mode: fs.ModeDir | 0o750})
	checkFile(t, o1, "etc/systemd/network", want{mode: fs.ModeDir | 0o755})
	checkFile(t, o1, "root/.ssh/authorized_keys", want{mode: 0o600, data: string(c.AuthorizedKeys)})
	// Accounts merged; shadow is root:shadow 0640 on Debian.
	checkFile(t, o1, "etc/passwd", want{mode: 0o644, data: "root:x:0:0:root:/root:/bin/bash\nmunge:x:101:102::/nonexistent:/usr/sbin/nologin\nalice:x:1001:1001:Alice:/home/alice:/bin/bash\n"})
	checkFile(t, o1, "etc/shadow", want{mode: 0o640, gid: 42, data: "root:*:19000:0:99999:7:::\nmunge:!:19000::::::\nalice:$y$hash:19700:0:99999:7:::\n"})
	checkFile(t, o1, "etc/gshadow", want{mode: 0o640, gid: 42})
	// Host keys: private 0600, public 0644.
	checkFile(t, o1, "etc/ssh/ssh_host_ed25519_key", want{mode: 0o600})
	checkFile(t, o1, "etc/ssh/ssh_host_ecdsa_key.pub", want{mode: 0o644})
	// The agent's configuration is the images/overlay contract, with the token.
	cfgFile := o1.File(overlay.ConfigPath)
	if cfgFile == nil || cfgFile.Mode != 0o600 {
		t.Fatalf("node.json: %+v", cfgFile)
	}
	cfg, err := overlay.ParseConfig(cfgFile.Data)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node != "n0001" || cfg.Token != "tok-1" || cfg.HeadURL != "http://10.0.0.1" || cfg.Interface.Address != "10.0.0.11/16" ||
		cfg.Interface.MAC != "52:54:00:00:00:01" || cfg.Interface.Gateway != "10.0.0.1" || cfg.Image.Name != "debian-12" || cfg.Modules[0] != "virtio_net" {
		t.Errorf("node config %+v", cfg)
	}
	// It lists the overlay's files, so that the agent leaves them alone.
	if !cfg.Provides("etc/hosts") || !cfg.Provides("etc/hostname") || !cfg.Provides("etc/ssh/ssh_known_hosts") ||
		cfg.Provides(overlay.ConfigPath) || cfg.Provides("etc") || cfg.Provides("etc/resolv.conf") {
		t.Errorf("node config lists overlay files %v", cfg.OverlayFiles)
	}
	// Sorted, every parent before its children.
	seen := map[string]bool{}
	for i, f := range o1.Files {
		if i > 0 && o1.Files[i-1].Path >= f.Path {
			t.Errorf("files not sorted: %s then %s", o1.Files[i-1].Path, f.Path)
		}
		if d := parent(f.Path); d != "" && !seen[d] {
			t.Errorf("%s comes before its directory %s", f.Path, d)
		}
		seen[f.Path] = true
	}

	o2, err := snap.Render(ctx, "n0002", "tok-2")
	if err != nil {
		t.Fatal(err)
	}
	checkFile(t, o2, "etc/modules-load.d/gpu.conf", want{mode: 0o644, data: "nvidia\n"})
	// /etc/hosts is one slice for every node: rendered once.
	if h1, h2 := o1.File("etc/hosts"), o2.File("etc/hosts"); h1 == nil || h2 == nil || &h1.Data[0] != &h2.Data[0] {
		t.Error("etc/hosts is not shared between nodes")
	}
	if string(o1.File("etc/ssh/ssh_host_ed25519_key").Data) == string(o2.File("etc/ssh/ssh_host_ed25519_key").Data) {
		t.Error("two nodes have the same host key")
	}
	// A profile's skip removes a built-in file.
	o3, err := snap.Render(ctx, "n0003", "tok-3")
	if err != nil {
		t.Fatal(err)
	}
	if o3.File("etc/hosts") != nil {
		t.Error("the gpu profile's skip did not remove etc/hosts")
	}
	if o3.Config.Provides("etc/hosts") || !o3.Config.Provides("etc/hostname") {
		t.Errorf("n0003 (no etc/hosts) lists overlay files %v", o3.Config.OverlayFiles)
	}
	if _, err := snap.Render(ctx, "n0009", "t"); err == nil {
		t.Error("render of an unknown node: no error")
	}
}

func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// TestRenderStable: a node's overlay is the same bytes at every boot but
// for its token, also across a head restart (a new renderer and store
// value), so host keys stay and nothing random creeps in.
func TestRenderStable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	render := func() *overlayrender.Overlay {
		r := newRenderer(t, &hostkeys.Dir{Path: dir}, nil)
		snap, err := r.Prepare(ctx, testCluster(2))
		if err != nil {
			t.Fatal(err)
		}
		o, err := snap.Render(ctx, "n0002", "token")
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	a, b := render(), render()
	if len(a.Files) != len(b.Files) {
		t.Fatalf("%d files, then %d", len(a.Files), len(b.Files))
	}
	for i := range a.Files {
		if fmt.Sprint(a.Files[i]) != fmt.Sprint(b.Files[i]) {
			t.Errorf("%s differs between renders", a.Files[i].Path)
		}
	}
}

func TestRenderEL(t *testing.T) {
	ctx := context.Background()
	c := testCluster(1)
	c.Nodes[0].Image.Accounts = elAccounts()
	c.Nodes[0].Image.Digest = "sha256:" + strings.Repeat("e", 64)
	c.Nodes[0].Network = overlayrender.NetworkManager
	r := newRenderer(t, &hostkeys.Dir{Path: t.TempDir()}, headSet(t))
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	o, err := snap.Render(ctx, "n0001", "tok")
	if err != nil {
		t.Fatal(err)
	}
	// EL: host keys root:ssh_keys 0640, shadow root:root 0000, munge's own IDs.
	checkFile(t, o, "etc/ssh/ssh_host_ed25519_key", want{mode: 0o640, gid: 997})
	checkFile(t, o, "etc/shadow", want{mode: 0})
	checkFile(t, o, "etc/munge/munge.key", want{mode: 0o400, uid: 990, gid: 990})
	if o.File("etc/gshadow") != nil {
		t.Error("gshadow written for an image without one")
	}
	checkFile(t, o, "etc/NetworkManager/system-connections/ramboot-eth0.nmconnection", want{mode: 0o600})
	checkFile(t, o, "etc/NetworkManager/system-connections", want{mode: fs.ModeDir | 0o700})
	if o.File("etc/systemd/network/10-ramboot-eth0.network") != nil {
		t.Error("networkd file for a NetworkManager image")
	}
}

// TestTemplateError: a template that fails for one node names the node,
// profile, file and line, and the other nodes render.
func TestTemplateError(t *testing.T) {
	ctx := context.Background()
	profiles := map[string]fs.FS{"p": fstest.MapFS{
		"etc/a.tmpl": {Data: []byte("line 1\n{{if eq .Node.Name \"n0002\"}}\n{{.Values.nope}}\n{{end}}\n"), Mode: 0o644},
		"etc/b.tmpl": {Data: []byte("{{if eq .Node.Name \"n0003\"}}{{fail \"no rack tag\"}}{{end}}"), Mode: 0o644},
	}}
	r, err := overlayrender.New(overlayrender.Config{Profiles: profiles})
	if err != nil {
		t.Fatal(err)
	}
	c := testCluster(3)
	for i := range c.Nodes {
		c.Nodes[i].Profiles = []string{"p"}
	}
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Render(ctx, "n0001", "t"); err != nil {
		t.Errorf("n0001: %v", err)
	}
	_, err = snap.Render(ctx, "n0002", "t")
	var te *overlayrender.TemplateError
	if !errors.As(err, &te) || te.Node != "n0002" || te.Profile != "p" || te.Path != "etc/a.tmpl" || te.Line != 3 {
		t.Fatalf("n0002: %#v", err)
	}
	if !strings.Contains(err.Error(), `render overlay of n0002: profile p: etc/a.tmpl:3: executing "etc/a.tmpl" at <.Values.nope>: map has no entry for key "nope"`) {
		t.Errorf("n0002: %v", err)
	}
	_, err = snap.Render(ctx, "n0003", "t")
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "etc/b.tmpl:1") || !strings.Contains(err.Error(), "no rack tag") {
		t.Errorf("n0003: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	_, err := overlayrender.New(overlayrender.Config{Profiles: map[string]fs.FS{
		"a": fstest.MapFS{
			"etc/x.tmpl":            {Data: []byte("ok\n{{.Node.Name"), Mode: 0o644},
			"etc/y":                 {Data: []byte("1"), Mode: 0o644},
			"etc/y.tmpl":            {Data: []byte("2"), Mode: 0o644},
			"etc/ramboot/node.json": {Data: []byte("{}"), Mode: 0o644},
			"dev/fifo":              {Mode: fs.ModeNamedPipe | 0o644},
			overlayrender.AttrsFile: {Data: []byte("etc/y 0644 root\netc/nothere 0644 root root\netc/y 999 root root\n"), Mode: 0o644},
		},
		"b": fstest.MapFS{"z.tmpl": {Data: []byte("{{nosuchfunc}}"), Mode: 0o644}},
	}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"profile a: template: etc/x.tmpl:2: unclosed action",
		"profile a: etc/y and etc/y.tmpl both make etc/y",
		"profile a: etc/ramboot/node.json: etc/ramboot/node.json is written by the head for every boot and cannot be replaced",
		"profile a: dev/fifo: not a regular file",
		"profile a: .ramboot-attrs:1: want \"PATH MODE OWNER GROUP\", have 3 fields",
		"profile a: .ramboot-attrs:2: etc/nothere is not a file or directory of this template directory",
		`profile a: .ramboot-attrs:3: mode "999": want octal like 0644`,
		`profile b: template: z.tmpl:1: function "nosuchfunc" not defined`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q:\n%v", w, err)
		}
	}
}

// TestAttrsUnknownOwner: an owner the node's accounts lack fails that
// node, naming the attribute file's line.
func TestAttrsUnknownOwner(t *testing.T) {
	ctx := context.Background()
	r, err := overlayrender.New(overlayrender.Config{Profiles: map[string]fs.FS{"p": fstest.MapFS{
		"etc/x":                 {Data: []byte("x"), Mode: 0o644},
		overlayrender.AttrsFile: {Data: []byte("\netc/x 0640 slurm slurm\n"), Mode: 0o644},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	c := testCluster(1)
	c.Nodes[0].Profiles = []string{"p"}
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = snap.Render(ctx, "n0001", "t")
	if err == nil || !strings.Contains(err.Error(), `render overlay of n0001: profile p: .ramboot-attrs:2: owner "slurm": not in the node's accounts`) {
		t.Errorf("%v", err)
	}
}

func TestPrepareErrors(t *testing.T) {
	ctx := context.Background()
	r := newRenderer(t, nil, nil)
	c := testCluster(2)
	c.Nodes[1].Name = "n0001"
	if _, err := r.Prepare(ctx, c); err == nil || !strings.Contains(err.Error(), "node n0001: listed twice") {
		t.Errorf("duplicate: %v", err)
	}
	c = testCluster(1)
	c.AuthorizedKeys = []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXjz9sYl0nN5yJf6c1rmc8ZbOgbUGsqkfdQKqmWRm7W ok\nnot a key\n")
	if _, err := r.Prepare(ctx, c); err == nil || !strings.Contains(err.Error(), "authorized_keys line 2") {
		t.Errorf("bad authorized_keys: %v", err)
	}
	// An invalid agent configuration (no address) fails that node only.
	c = testCluster(2)
	c.Nodes[1].Interfaces = nil
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Render(ctx, "n0002", "t"); err == nil || !strings.Contains(err.Error(), "render overlay of n0002: agent configuration") {
		t.Errorf("no interface: %v", err)
	}
	// Conflicting accounts fail the nodes of that image, naming it.
	set := headSet(t)
	r = newRenderer(t, nil, set)
	c = testCluster(1)
	c.Nodes[0].Image.Accounts.Passwd = lines("root:x:0:0:root:/root:/bin/bash", "alice:x:1500:1500::/:/bin/sh")
	snap, err = r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Render(ctx, "n0001", "t"); err == nil || !strings.Contains(err.Error(), "image debian-12: merge accounts: user alice: uid 1001 on the head, 1500 in the image") {
		t.Errorf("account conflict: %v", err)
	}
}

// TestSharedAndOwn: the snapshot's shared files followed by a node's own
// files give the node's overlay, unless a profile left a shared file out.
func TestSharedAndOwn(t *testing.T) {
	ctx := context.Background()
	profiles := testProfiles()
	profiles["myhosts"] = fstest.MapFS{"etc/hosts.tmpl": {Data: []byte("127.0.0.1 localhost {{.Hostname}}\n"), Mode: 0o644}}
	r, err := overlayrender.New(overlayrender.Config{Profiles: profiles, HostKeys: &hostkeys.Dir{Path: t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	c := testCluster(3)
	c.AuthorizedKeys = []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXjz9sYl0nN5yJf6c1rmc8ZbOgbUGsqkfdQKqmWRm7W admin@head\n")
	c.Nodes[1].Profiles = []string{"base", "myhosts"}
	c.Nodes[2].Profiles = []string{"base", "gpu"} // skips etc/hosts
	snap, err := r.Prepare(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	shared := snap.Shared()
	var paths []string
	for _, f := range shared {
		paths = append(paths, f.Path)
	}
	if got := strings.Join(paths, " "); got != "etc etc/hosts etc/ssh etc/ssh/ssh_known_hosts root root/.ssh root/.ssh/authorized_keys" {
		t.Errorf("shared: %s", got)
	}
	for i, wantShared := range []bool{true, true, false} {
		name := c.Nodes[i].Name
		o, err := snap.Render(ctx, name, "tok")
		if err != nil {
			t.Fatal(err)
		}
		own, withShared := o.Own()
		if withShared != wantShared {
			t.Errorf("%s: withShared %v", name, withShared)
			continue
		}
		if !withShared {
			continue
		}
		// Unpack as the kernel would: shared, then own over it.
		got := map[string]string{}
		for _, f := range append(append([]overlayrender.File{}, shared...), own...) {
			got[f.Path] = fmt.Sprintf("%v %d %d %q %q", f.Mode, f.UID, f.GID, f.Data, f.Linkname)
		}
		if len(got) != len(o.Files) {
			t.Errorf("%s: shared+own has %d paths, the overlay %d", name, len(got), len(o.Files))
		}
		for _, f := range o.Files {
			if w := fmt.Sprintf("%v %d %d %q %q", f.Mode, f.UID, f.GID, f.Data, f.Linkname); got[f.Path] != w {
				t.Errorf("%s: %s is %s after shared+own, want %s", name, f.Path, got[f.Path], w)
			}
		}
		if i == 0 && len(own) >= len(o.Files)-2 {
			t.Errorf("%s: own part holds %d of %d files", name, len(own), len(o.Files))
		}
	}
}
