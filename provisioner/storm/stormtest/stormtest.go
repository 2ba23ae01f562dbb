// Package stormtest gives tests the boot storm's network and head: New
// creates the two namespaces of lab.StormNet (the head's and the load
// generator's, joined by a veth, the node range routed to the generator)
// and deletes them when the test ends; Binaries builds ramboot and
// ramboot-agent once per test binary; Head starts `ramboot serve` with a
// default image in the head's namespace until the test ends.
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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
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
