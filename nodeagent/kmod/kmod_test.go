package kmod_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/ramboot/ramboot/nodeagent/kmod"
	"github.com/ramboot/ramboot/nodeagent/kmod/kmodtest"
)

// virtioTree builds the Debian 6.1 virtio networking modules with their
// real depends= fields under dir/kernel/drivers and returns dir.
func virtioTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	drv := filepath.Join(dir, "kernel", "drivers")
	kmodtest.Module(t, filepath.Join(drv, "virtio"), "virtio_ring")
	kmodtest.Module(t, filepath.Join(drv, "virtio"), "virtio", "virtio_ring")
	kmodtest.Module(t, filepath.Join(drv, "virtio"), "virtio_pci_legacy_dev")
	kmodtest.Module(t, filepath.Join(drv, "virtio"), "virtio_pci_modern_dev")
	kmodtest.Module(t, filepath.Join(drv, "virtio"), "virtio_pci", "virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci_legacy_dev")
	kmodtest.Module(t, filepath.Join(drv, "net"), "failover")
	kmodtest.Module(t, filepath.Join(drv, "net"), "net_failover", "failover")
	kmodtest.Module(t, filepath.Join(drv, "net"), "virtio_net", "net_failover", "virtio_ring", "virtio")
	return dir
}

func names(mods []kmod.Module) []string {
	var s []string
	for _, m := range mods {
		n := m.Name
		if m.Builtin {
			n += "(builtin)"
		}
		s = append(s, n)
	}
	return s
}

func TestResolveVirtio(t *testing.T) {
	dir := virtioTree(t)
	ix, err := kmod.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Len() != 8 {
		t.Errorf("Len() = %d, want 8", ix.Len())
	}
	tests := []struct {
		name string
		ask  []string
		want []string
	}{
		{
			name: "lab-order",
			ask:  []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net"},
			want: []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover", "virtio_net"},
		},
		{
			name: "deps-first",
			ask:  []string{"virtio_net", "virtio_pci"},
			want: []string{"failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci"},
		},
		{
			name: "no-duplicates",
			ask:  []string{"virtio", "virtio_ring", "virtio-net", "virtio", "virtio_net"},
			want: []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net"},
		},
		{
			name: "empty",
			ask:  nil,
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mods, err := ix.Resolve(tt.ask, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := names(mods); !slices.Equal(got, tt.want) {
				t.Errorf("Resolve(%v) = %v, want %v", tt.ask, got, tt.want)
			}
			for _, m := range mods {
				if filepath.Base(m.Path) != m.Name+".ko" {
					t.Errorf("module %s has path %s", m.Name, m.Path)
				}
			}
		})
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "snd-dummy", "snd_pcm")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "snd_pcm", "snd-timer")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "snd_timer")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "cyc_a", "cyc_b")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "cyc_b", "cyc_c")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "cyc_c", "cyc-a")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "self", "self")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "needs_missing", "no_such_dep")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "needs_builtin", "loop", "sysmod")
	kmodtest.Module(t, filepath.Join(dir, "kernel"), "dup", "snd_timer")
	kmodtest.Module(t, filepath.Join(dir, "updates"), "dup")
	kmodtest.Module(t, filepath.Join(dir, "weird"), "dup", "cyc_a")
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/block/loop.ko\nkernel/fs/ext4/ext4.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ix, err := kmod.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	present := func(name string) bool { return name == "sysmod" }
	tests := []struct {
		name    string
		ask     []string
		want    []string
		wantErr error
		errHas  []string
	}{
		{name: "dash-underscore", ask: []string{"snd_dummy"}, want: []string{"snd_timer", "snd_pcm", "snd_dummy"}},
		{name: "dash-asked", ask: []string{"snd-dummy", "snd-timer"}, want: []string{"snd_timer", "snd_pcm", "snd_dummy"}},
		{name: "builtin", ask: []string{"needs_builtin", "ext4"}, want: []string{"loop(builtin)", "sysmod(builtin)", "needs_builtin", "ext4(builtin)"}},
		{name: "updates-wins", ask: []string{"dup"}, want: []string{"dup"}},
		{name: "cycle", ask: []string{"cyc_a"}, wantErr: kmod.ErrCycle, errHas: []string{"cyc_a -> cyc_b -> cyc_c -> cyc_a"}},
		{name: "cycle-entered-late", ask: []string{"snd_timer", "cyc_b"}, wantErr: kmod.ErrCycle, errHas: []string{"cyc_b -> cyc_c -> cyc_a -> cyc_b"}},
		{name: "self-cycle", ask: []string{"self"}, wantErr: kmod.ErrCycle, errHas: []string{"self -> self"}},
		{name: "not-found", ask: []string{"snd_timer", "no_such_module"}, wantErr: kmod.ErrNotFound, errHas: []string{"no_such_module"}},
		{name: "dep-not-found", ask: []string{"needs_missing"}, wantErr: kmod.ErrNotFound, errHas: []string{"no_such_dep", "needed by needs_missing"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mods, err := ix.Resolve(tt.ask, present)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%v) error = %v, want %v", tt.ask, err, tt.wantErr)
				}
				for _, s := range tt.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := names(mods); !slices.Equal(got, tt.want) {
				t.Errorf("Resolve(%v) = %v, want %v", tt.ask, got, tt.want)
			}
		})
	}
	if p, _ := ix.Lookup("dup"); !strings.Contains(p, "/updates/") {
		t.Errorf("Lookup(dup) = %s, want the file under updates/", p)
	}
	if p, ok := ix.Lookup("snd-dummy"); !ok || filepath.Base(p) != "snd-dummy.ko" {
		t.Errorf("Lookup(snd-dummy) = %s, %v", p, ok)
	}
	if !ix.Builtin("loop") || ix.Builtin("snd_pcm") {
		t.Errorf("Builtin(loop), Builtin(snd_pcm) = %v, %v; want true, false", ix.Builtin("loop"), ix.Builtin("snd_pcm"))
	}
}

func TestOpenMissingDir(t *testing.T) {
	ix, err := kmod.Open(filepath.Join(t.TempDir(), "no", "such"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.Resolve([]string{"virtio_net"}, nil); !errors.Is(err, kmod.ErrNotFound) || !strings.Contains(err.Error(), "virtio_net") {
		t.Errorf("Resolve in empty tree: %v, want not-found naming virtio_net", err)
	}
}

func TestReadModinfoCompressed(t *testing.T) {
	dir := t.TempDir()
	src := kmodtest.Module(t, dir, "net_failover", "failover")
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	compress := map[string]func([]byte) []byte{
		".ko": func(b []byte) []byte { return b },
		".ko.gz": func(b []byte) []byte {
			var buf bytes.Buffer
			w := gzip.NewWriter(&buf)
			w.Write(b)
			w.Close()
			return buf.Bytes()
		},
		".ko.xz": func(b []byte) []byte {
			var buf bytes.Buffer
			w, err := xz.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			w.Close()
			return buf.Bytes()
		},
		".ko.zst": func(b []byte) []byte {
			e, err := zstd.NewWriter(nil)
			if err != nil {
				t.Fatal(err)
			}
			return e.EncodeAll(b, nil)
		},
	}
	for suffix, fn := range compress {
		t.Run(strings.TrimPrefix(suffix, "."), func(t *testing.T) {
			tree := t.TempDir()
			path := filepath.Join(tree, "kernel", "net-failover"+suffix)
			os.MkdirAll(filepath.Dir(path), 0o755)
			if err := os.WriteFile(path, fn(raw), 0o644); err != nil {
				t.Fatal(err)
			}
			mi, err := kmod.ReadModinfo(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := mi.Depends(); !slices.Equal(got, []string{"failover"}) {
				t.Errorf("Depends() = %v, want [failover]", got)
			}
			if got := mi.Get("name"); got != "net_failover" {
				t.Errorf("name = %q", got)
			}
			ix, err := kmod.Open(tree)
			if err != nil {
				t.Fatal(err)
			}
			if p, ok := ix.Lookup("net_failover"); !ok || p != path {
				t.Errorf("Lookup(net_failover) = %q, %v; want %q", p, ok, path)
			}
		})
	}
}

func TestReadModinfoErrors(t *testing.T) {
	dir := t.TempDir()
	noinfo := filepath.Join(dir, "noinfo.ko")
	kmodtest.Build(t, noinfo)
	junk := filepath.Join(dir, "junk.ko")
	os.WriteFile(junk, []byte("not an ELF file"), 0o644)
	badxz := filepath.Join(dir, "bad.ko.xz")
	os.WriteFile(badxz, []byte("not xz"), 0o644)
	for _, path := range []string{noinfo, junk, badxz, filepath.Join(dir, "missing.ko")} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			_, err := kmod.ReadModinfo(path)
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("ReadModinfo(%s) = %v, want an error naming the file", path, err)
			}
		})
	}
}

func TestParseModinfo(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		depends []string
		get     map[string]string
	}{
		{name: "plain", in: "license=GPL\x00depends=a,b\x00name=x\x00", depends: []string{"a", "b"}, get: map[string]string{"name": "x", "license": "GPL"}},
		{name: "padding", in: "\x00\x00depends=\x00\x00\x00name=y\x00\x00", depends: nil, get: map[string]string{"name": "y"}},
		{name: "repeated", in: "alias=p\x00alias=q\x00depends=c,,d ,\x00", depends: []string{"c", "d"}, get: map[string]string{"alias": "p"}},
		{name: "value-with-equals", in: "parm=debug:level=1 (int)\x00", get: map[string]string{"parm": "debug:level=1 (int)"}},
		{name: "garbage", in: "noequals\x00=novalue\x00", get: map[string]string{"noequals": ""}},
		{name: "unterminated", in: "depends=z", depends: []string{"z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := kmod.ParseModinfo([]byte(tt.in))
			if got := m.Depends(); !slices.Equal(got, tt.depends) {
				t.Errorf("Depends() = %q, want %q", got, tt.depends)
			}
			for k, v := range tt.get {
				if got := m.Get(k); got != v {
					t.Errorf("Get(%q) = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestLoaderLoad(t *testing.T) {
	dir := virtioTree(t)
	sys := t.TempDir()
	os.Mkdir(filepath.Join(sys, "virtio_ring"), 0o755)
	var inserted []string
	l := &kmod.Loader{
		Dir:       dir,
		SysModule: sys,
		Insert: func(path string) error {
			inserted = append(inserted, strings.TrimSuffix(filepath.Base(path), ".ko"))
			if strings.HasSuffix(path, "/net_failover.ko") {
				return errors.New("insert module " + path + ": exec format error")
			}
			return nil
		},
	}
	mods, err := l.Load(context.Background(), []string{"virtio", "virtio_net"})
	if err == nil || !strings.Contains(err.Error(), "net_failover") {
		t.Fatalf("Load error = %v, want the failing net_failover", err)
	}
	if want := []string{"virtio_ring", "virtio", "failover", "net_failover"}; !slices.Equal(inserted, want) {
		t.Errorf("inserted %v, want %v", inserted, want)
	}
	if want := []string{"virtio_ring", "virtio", "failover"}; !slices.Equal(names(mods), want) {
		t.Errorf("Load returned %v, want the modules before the failure %v", names(mods), want)
	}

	// Modules in the tree are loaded even when /sys/module lists them
	// (insert treats EEXIST as success); names missing from the tree
	// resolve through /sys/module.
	inserted = nil
	l.Insert = func(path string) error { inserted = append(inserted, filepath.Base(path)); return nil }
	os.Mkdir(filepath.Join(sys, "virtio_blk"), 0o755)
	mods, err = l.Load(context.Background(), []string{"virtio_blk", "virtio"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"virtio_blk(builtin)", "virtio_ring", "virtio"}; !slices.Equal(names(mods), want) {
		t.Errorf("Load = %v, want %v", names(mods), want)
	}
	if want := []string{"virtio_ring.ko", "virtio.ko"}; !slices.Equal(inserted, want) {
		t.Errorf("inserted %v, want %v", inserted, want)
	}

	// A missing or failing module does not stop the others.
	inserted = nil
	l.Insert = func(path string) error {
		inserted = append(inserted, filepath.Base(path))
		if strings.HasSuffix(path, "/failover.ko") {
			return errors.New("insert module " + path + ": no such device")
		}
		return nil
	}
	mods, err = l.Load(context.Background(), []string{"no_such", "virtio_net", "net_failover", "virtio_pci"})
	if err == nil || !strings.Contains(err.Error(), "find module no_such") || !strings.Contains(err.Error(), "failover.ko: no such device") {
		t.Errorf("Load error = %v, want the missing and the failing module", err)
	}
	if strings.Count(err.Error(), "no such device") != 1 {
		t.Errorf("failover reported more than once: %v", err)
	}
	if want := []string{"virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci"}; !slices.Equal(names(mods), want) {
		t.Errorf("Load = %v, want %v", names(mods), want)
	}
	if want := []string{"failover.ko", "virtio_pci_modern_dev.ko", "virtio_ring.ko", "virtio.ko", "virtio_pci_legacy_dev.ko", "virtio_pci.ko"}; !slices.Equal(inserted, want) {
		t.Errorf("inserted %v, want %v", inserted, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Load(ctx, []string{"virtio"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Load with canceled ctx: %v", err)
	}
	if mods, err := l.Load(ctx, nil); err != nil || mods != nil {
		t.Errorf("Load(nil) = %v, %v; want nothing", mods, err)
	}
}
