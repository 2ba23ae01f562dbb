package procfs_test

import (
	"testing"

	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
)

// initramfs is the mount table of PID 1 on a node just after the agent
// mounted /proc, as the kernel shows it.
const initramfs = `1 1 0:2 / / rw - rootfs none rw,size=1010456k,nr_inodes=252614
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
23 1 0:22 / /mnt/with\040space rw,relatime shared:1 master:2 - tmpfs tmp\134fs rw
`

func TestParseMountinfo(t *testing.T) {
	ms, err := procfs.ParseMountinfo([]byte(initramfs))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("%d mounts, want 3", len(ms))
	}
	want := procfs.Mount{ID: 23, Parent: 1, Root: "/", Point: "/mnt/with space", FSType: "tmpfs", Source: `tmp\fs`, Options: "rw,relatime"}
	if ms[2] != want {
		t.Errorf("mount 3 = %+v, want %+v", ms[2], want)
	}
	root, ok := procfs.RootMount(ms)
	if !ok || root.FSType != "rootfs" || root.ID != 1 {
		t.Errorf("RootMount = %+v, %v", root, ok)
	}
	// After a switch, the new root is mounted over the old on "/".
	ms = append(ms, procfs.Mount{ID: 30, Parent: 1, Point: "/", FSType: "tmpfs"})
	if root, _ := procfs.RootMount(ms); root.ID != 30 {
		t.Errorf("RootMount after a switch = %+v", root)
	}
	for _, bad := range []string{"1 1 0:2 / /", "x 1 0:2 / / rw - rootfs none rw", "1 1 0:2 / / rw shared:1 rootfs none", "1 1 0:2 / / rw -"} {
		if _, err := procfs.ParseMountinfo([]byte(bad + "\n")); err == nil {
			t.Errorf("ParseMountinfo(%q) accepted", bad)
		}
	}
}

// Seeds: testdata/fuzz/FuzzParseMountinfo.
func FuzzParseMountinfo(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := procfs.ParseMountinfo(b)
		if err != nil && ms != nil {
			t.Errorf("mounts %v with error %v", ms, err)
		}
	})
}
