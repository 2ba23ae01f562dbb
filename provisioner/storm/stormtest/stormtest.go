// Package stormtest gives tests the boot storm's network and head: New
// creates the two namespaces of lab.StormNet (the head's and the load
// generator's, joined by a veth, the node range routed to the generator)
// and deletes them when the test ends; Binaries builds ramboot and
// ramboot-agent once per test binary; Head starts `ramboot serve` with a
// default image in the head's namespace until the test ends; EtcdHeads
// starts an etcd cluster and several heads on it, on the same link.
//
//	n := stormtest.New(t) // skips unless root
//	ramboot := stormtest.Binaries(t)
//	h := stormtest.Head(t, n, lab.StormHeadOptions{Ramboot: ramboot, ImageMiB: 8, KernelMiB: 2})
//	out := stormtest.Output(t, n.Command(ctx, n.Gen, ramboot, "bench", "storm", ...))
//
// Every process started in the namespaces is stopped by its pid, and the
// namespaces are deleted, even when the test fails.
package stormtest

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// New creates the storm's namespaces and deletes them when t ends. It
// skips t unless it runs as root with ip(8).
func New(t testing.TB) *lab.StormNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
	n, err := lab.NewStormNet(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds ramboot and ramboot-agent once per test binary and
// returns ramboot's path (ramboot-agent is next to it).
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "ramboot-storm-bin-"); buildErr != nil {
			return
		}
		_, _, buildErr = lab.BuildBinaries(context.Background(), buildDir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "ramboot")
}

// Head starts a head in n's head namespace and stops it when t ends; its
// log is printed if t failed.
func Head(t testing.TB, n *lab.StormNet, opt lab.StormHeadOptions) *lab.StormHead {
	t.Helper()
	if opt.Dir == "" {
		opt.Dir = t.TempDir()
	}
	h, err := lab.StartStormHead(context.Background(), n, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(h.Log); err == nil {
				t.Logf("ramboot serve's log:\n%s", lastLines(b, 60))
			}
		}
	})
	return h
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// Output runs cmd and returns its standard output and its exit error;
// standard error goes to the test's log.
func Output(t testing.TB, cmd *exec.Cmd) ([]byte, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if errb.Len() > 0 {
		t.Logf("%s: stderr:\n%s", strings.Join(cmd.Args[3:], " "), lastLines(errb.Bytes(), 40))
	}
	return out.Bytes(), err
}

// EtcdHeads starts an etcd cluster of members members and heads heads
// sharing it, all on the storm's link (lab.StormNet.AddHost): members at
// 10.88.0.241 and up, heads at n.HeadIP and then 10.88.0.3 and up. The
// first head builds the image; the others fetch it from it on first use
// (image replication by digest). opt.Config is appended to every head's
// configuration after the state section. Everything is stopped, by pid,
// when t ends.
func EtcdHeads(t testing.TB, n *lab.StormNet, members, heads int, opt lab.StormHeadOptions) ([]*lab.StormHead, *etcdtest.Cluster) {
	t.Helper()
	ctx := context.Background()
	var ens, eips []string
	for i := range members {
		ip := netip.AddrFrom4([4]byte{10, 88, 0, byte(241 + i)})
		ns, _, err := n.AddHost(ctx, fmt.Sprintf("e%d", i+1), ip)
		if err != nil {
			t.Fatal(err)
		}
		ens, eips = append(ens, ns), append(eips, ip.String())
	}
	c := etcdtest.Start(t, etcdtest.Options{Members: members, Netns: ens, IPs: eips,
		Args: []string{"--auto-compaction-mode=revision", "--auto-compaction-retention=10000"}})
	opt.Config = "state: {backend: etcd, etcd: {endpoints: [" + strings.Join(c.Endpoints(), ", ") + "], prefix: /storm/}}\n" + opt.Config
	var hs []*lab.StormHead
	for i := range heads {
		o := opt
		o.Dir = ""
		if i > 0 {
			ip := netip.AddrFrom4([4]byte{10, 88, 0, byte(2 + i)})
			ns, iface, err := n.AddHost(ctx, fmt.Sprintf("h%d", i+1), ip)
			if err != nil {
				t.Fatal(err)
			}
			o.Netns, o.Iface, o.Addr, o.NoImage = ns, iface, ip, true
		}
		hs = append(hs, Head(t, n, o))
	}
	return hs, c
}
