package kmod_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/kmod"
	"github.com/ramboot/ramboot/nodeagent/kmod/kmodtest"
)

func TestParseAliases(t *testing.T) {
	a, err := kmod.ParseAliases(strings.NewReader("# Aliases extracted from modules themselves.\n\nalias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias virtio:d00000001v* virtio_net\n"))
	if err != nil || a.Len() != 2 {
		t.Fatalf("ParseAliases = %v, %v", a, err)
	}
	if got := a.Lookup("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"); !slices.Equal(got, []string{"e1000"}) {
		t.Errorf("Lookup(e1000 device) = %v", got)
	}
	for _, bad := range []string{"alias onlyone\n", "options e1000 debug=1\n", "alias a b c\n"} {
		if _, err := kmod.ParseAliases(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("ParseAliases(%q) = %v, want an error naming line 1", bad, err)
		}
	}
}

// aliasTree builds modules with the alias patterns real drivers have
// (Debian 6.1's e1000, e1000e, virtio, xhci, a CPU-feature and an ACPI
// driver, a device-tree one) and returns the tree's directory.
func aliasTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", "6.1.0-kmodtest")
	drv := filepath.Join(dir, "kernel", "drivers")
	kmodtest.Aliased(t, drv, "e1000", "pci:v00008086d0000100Esv*sd*bc*sc*i*", "pci:v00008086d0000100Fsv*sd*bc*sc*i*")
	kmodtest.Aliased(t, drv, "e1000e", "pci:v00008086d000010[DE]3sv*sd*bc*sc*i*", "pci:v00008086d0000153?sv*sd*bc*sc*i*")
	kmodtest.Aliased(t, drv, "virtio_pci", "pci:v00001AF4d*sv*sd*bc*sc*i*")
	kmodtest.Aliased(t, drv, "virtio_net", "virtio:d00000001v*")
	kmodtest.Aliased(t, drv, "xhci_pci", "pci:v*d*sv*sd*bc0Csc03i30*")
	kmodtest.Aliased(t, drv, "aesni_intel", "cpu:type:x86,ven*fam*mod*:feature:*0099*")
	kmodtest.Aliased(t, drv, "8250_pnp", "acpi*:PNP0501:*", "pnp:dPNP0501*")
	kmodtest.Aliased(t, drv, "of_thing", "of:N*T*Cvendor,thing[!x]")
	kmodtest.Aliased(t, drv, "pcspkr", "platform:pcspkr")
	return dir
}

// modaliases are devices as /sys shows them.
var modaliases = []string{
	"pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00",
	"pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00",
	"pci:v00008086d000010F3sv00008086sd0000A01Fbc02sc00i00",
	"pci:v00008086d00001539sv00001849sd00001539bc02sc00i00",
	"pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
	"pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30",
	"virtio:d00000001v00001AF4",
	"virtio:d00000002v00001AF4",
	"cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001,0099,00C0",
	"cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001,0098",
	"acpi:PNP0501:",
	"acpi:PNP0A08:PNP0A03:",
	"of:NfooTbarCvendor,thingy",
	"of:NfooTbarCvendor,thingx",
	"platform:pcspkr",
	"platform:rtc_cmos",
}

// TestAliasesMatchModprobe runs kmod's own depmod on a module tree and
// checks that every device resolves to exactly the modules that
// `modprobe --resolve-alias` names, both from depmod's modules.alias and
// from the modules' own alias= fields.
func TestAliasesMatchModprobe(t *testing.T) {
	for _, tool := range []string{"depmod", "modprobe"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian package kmod)", tool)
		}
	}
	dir := aliasTree(t)
	base := filepath.Dir(filepath.Dir(filepath.Dir(dir)))
	if out, err := exec.Command("depmod", "-b", base, "6.1.0-kmodtest").CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	ix, err := kmod.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fromDepmod, err := ix.Aliases()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "modules.alias")); err != nil {
		t.Fatal(err)
	}
	fromModinfo, err := ix.Aliases()
	if err != nil {
		t.Fatal(err)
	}
	if fromDepmod.Len() != 12 || fromModinfo.Len() != 12 {
		t.Errorf("patterns: %d from modules.alias, %d from modinfo; want 12", fromDepmod.Len(), fromModinfo.Len())
	}
	matched := 0
	for _, ma := range modaliases {
		out, err := exec.Command("modprobe", "-d", base, "-S", "6.1.0-kmodtest", "--resolve-alias", ma).Output()
		want := strings.Fields(string(out))
		if err != nil && len(want) > 0 {
			t.Fatalf("modprobe --resolve-alias %s: %v", ma, err)
		}
		slices.Sort(want)
		for name, a := range map[string]*kmod.Aliases{"modules.alias": fromDepmod, "modinfo": fromModinfo} {
			got := a.Lookup(ma)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: Lookup(%s) = %v, modprobe says %v", name, ma, got, want)
			}
		}
		if len(want) > 0 {
			matched++
		}
	}
	if matched < 10 {
		t.Errorf("only %d of the devices matched a module: the test tree is wrong", matched)
	}
}

func TestFnmatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"abc", "abc", true},
		{"abc", "abcd", false},
		{"a*c", "abbbc", true},
		{"a*c", "ab/bc", true}, // '/' is not special
		{"*", "", true},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"a[bc]d", "acd", true},
		{"a[!bc]d", "acd", false},
		{"a[!bc]d", "axd", true},
		{"a[b-d]e", "ace", true},
		{"a[b-d]e", "aee", false},
		{"a[]]b", "a]b", true},
		{`a\*b`, "a*b", true},
		{`a\*b`, "axb", false},
		{"a[bc", "a[bc", true}, // unterminated bracket: literal
		{"*x*y*", "axbyc", true},
		{"*x*y*", "ayxc", false},
	}
	for _, tt := range tests {
		p, err := kmod.ParseAliases(strings.NewReader("alias " + tt.pattern + " m\n"))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(p.Lookup(tt.name)) == 1; got != tt.want {
			t.Errorf("fnmatch(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

// TestLoadForDevices plays udev's coldplug on a stand-in /sys/devices:
// the PCI virtio device loads virtio_pci, whose "probe" adds a virtio
// device, which loads virtio_net in the next round; a blacklisted match is
// left alone.
func TestLoadForDevices(t *testing.T) {
	dir := aliasTree(t)
	sys := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(sys, rel, "modalias")
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	write("pci0000:00/0000:00:03.0", "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00")
	write("platform/pcspkr", "platform:pcspkr")
	write("platform/serial8250", "platform:serial8250")
	write("system/cpu", "cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0099")
	os.MkdirAll(filepath.Join(sys, "system", "cpu", "cpu0"), 0o755) // a device without a modalias
	var inserted []string
	l := &kmod.Loader{Dir: dir, SysModule: t.TempDir(), Insert: func(path string) error {
		name := strings.TrimSuffix(filepath.Base(path), ".ko")
		inserted = append(inserted, name)
		switch name {
		case "virtio_pci":
			write("pci0000:00/0000:00:03.0/virtio0", "virtio:d00000001v00001AF4")
		case "aesni_intel":
			return fmt.Errorf("insert module %s: %w", path, unix.ENODEV) // no AES-NI here
		}
		return nil
	}}
	mods, err := l.LoadForDevices(context.Background(), kmod.DeviceOptions{SysDevices: sys, Blacklist: kmod.Blacklist{"pcspkr": true}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"aesni_intel", "virtio_pci", "virtio_net"}; !slices.Equal(inserted, want) || !slices.Equal(names(mods), want[1:]) {
		t.Errorf("inserted %v, returned %v; want %v, the first finding no device", inserted, names(mods), want)
	}
	// A device module that fails otherwise is an error.
	l.Insert = func(path string) error { return fmt.Errorf("insert module %s: %w", path, unix.ENOEXEC) }
	if _, err := l.LoadForDevices(context.Background(), kmod.DeviceOptions{SysDevices: sys}); !errors.Is(err, unix.ENOEXEC) {
		t.Errorf("LoadForDevices with a module that cannot load: %v", err)
	}
	if _, err := l.LoadForDevices(context.Background(), kmod.DeviceOptions{SysDevices: filepath.Join(sys, "missing")}); err == nil {
		t.Error("LoadForDevices on a missing /sys/devices: no error")
	}
}

func TestDeviceModaliasesHere(t *testing.T) {
	if _, err := os.Stat("/sys/devices/system"); err != nil {
		t.Skip("no /sys")
	}
	got, err := kmod.DeviceModaliases("/sys/devices")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatal("no device on this machine has a modalias")
	}
	if !slices.IsSorted(got) {
		t.Errorf("not sorted: %v", got)
	}
}

func TestReadBlacklist(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"etc/modprobe.d/local.conf":     "# no nouveau\nblacklist nouveau\noptions e1000 x=1\n",
		"lib/modprobe.d/local.conf":     "blacklist hidden-by-etc\n",
		"usr/lib/modprobe.d/fbdev.conf": "blacklist vesafb\nblacklist  bad extra\n",
		"etc/modprobe.d/ignored.txt":    "blacklist not-a-conf\n",
	}
	for p, c := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(c), 0o644)
	}
	bl := kmod.ReadBlacklist(root, []string{"snd-pcsp,pcspkr", ""})
	want := kmod.Blacklist{"nouveau": true, "vesafb": true, "snd_pcsp": true, "pcspkr": true}
	if len(bl) != len(want) {
		t.Errorf("blacklist %v, want %v", bl, want)
	}
	for m := range want {
		if !bl[m] {
			t.Errorf("blacklist %v lacks %s", bl, m)
		}
	}
}
