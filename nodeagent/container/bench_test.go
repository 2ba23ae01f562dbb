package container_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/imagecache/imagecachetest"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/ocispec"
)

// TestStartBench measures, in one run, the start latency of `ramboot-agent
// run` (the real binary against a real daemon, warm cache) to the command
// running, against `runc run` of an already unpacked bundle with the same
// configuration; ten runs each, interleaved; the command prints the
// wall-clock time it started. Run with
//
//	RAMBOOT_BENCH=1 go test -run TestStartBench -v ./nodeagent/container/
func TestStartBench(t *testing.T) {
	if os.Getenv("RAMBOOT_BENCH") == "" {
		t.Skip("set RAMBOOT_BENCH=1")
	}
	h := imagecachetest.Start(t)
	h.BuildImage(t, "busybox", imagecachetest.BusyboxTree(t))
	cfg := h.Boot(t)
	dir := t.TempDir()
	t.Cleanup(func() { unmountUnder(dir) })
	gomod, _ := exec.Command("go", "env", "GOMOD").Output()
	agent := filepath.Join(dir, "ramboot-agent")
	b := exec.Command("go", "build", "-o", agent, "./nodeagent/cmd/ramboot-agent")
	b.Dir, b.Env = filepath.Dir(strings.TrimSpace(string(gomod))), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	// The daemon's node root: only its node configuration, as the
	// node's overlay gave it.
	nodeRoot := filepath.Join(dir, "node")
	nodeCfg := filepath.Join(nodeRoot, overlay.ConfigPath)
	os.MkdirAll(filepath.Dir(nodeCfg), 0o700)
	os.WriteFile(nodeCfg, fmt.Appendf(nil, `{"node":%q,"headURL":%q,"token":%q,"interface":{"mac":%q,"address":"127.0.0.2/8"},"image":{"name":"","digest":"","contentDigest":""}}`,
		cfg.Node, cfg.HeadURL, cfg.Token, cfg.Interface.MAC), 0o600)
	sock := filepath.Join(dir, "agent.sock")
	state := filepath.Join(dir, "state")
	d := exec.Command(agent, "daemon", "--socket", sock, "--state-dir", state, "--root", nodeRoot, "--source-addr", imagecachetest.NodeIP, "--log-level", "warn")
	d.Stderr = os.Stderr
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	env := append(os.Environ(), "RAMBOOT_AGENT_SOCKET="+sock)
	// The command writes to a fifo from the host; the test reads the time
	// it arrives: "the command runs".
	fdir, err := os.MkdirTemp("", "ramboot-bench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(fdir)
	os.Chmod(fdir, 0o755)
	fifo := filepath.Join(fdir, "ready")
	if err := unix.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(fifo, 0o666)
	measure := func(cmd *exec.Cmd) time.Duration {
		arrived := make(chan time.Time, 1)
		go func() {
			f, err := os.Open(fifo) // blocks until the command opens it
			if err != nil {
				arrived <- time.Time{}
				return
			}
			b := make([]byte, 1)
			f.Read(b)
			arrived <- time.Now()
			f.Close()
		}()
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", cmd.Args[0], err, out)
		}
		return (<-arrived).Sub(start)
	}
	args := []string{"sh", "-c", "echo x > /ready"}
	agentRun := func() time.Duration {
		c := exec.Command(agent, append([]string{"run", "--user", "1000", "--rm", "--bind", fifo + ":/ready", "busybox", "--"}, args...)...)
		c.Env = env
		return measure(c)
	}
	agentRun() // warm the cache

	// The baseline: the same image unpacked once, the same config.
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755)
	lower, _ := filepath.Glob(filepath.Join(state, "images", "lower", "*"))
	if cp, err := exec.Command("cp", "-a", lower[0]+"/.", filepath.Join(bundle, "rootfs")).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, cp)
	}
	spec := ocispec.New(ocispec.Options{Args: args, UID: 1000, GID: 1000, MemoryBytes: 1 << 30, Pids: 32768, HostNetwork: true,
		CgroupsPath: "/ramboot/bench", Binds: []ocispec.Bind{{Source: fifo, Destination: "/ready"}}})
	if err := ocispec.Write(bundle, spec); err != nil {
		t.Fatal(err)
	}
	runcRun := func() time.Duration {
		return measure(exec.Command("runc", "--root", filepath.Join(dir, "runc"), "run", "--bundle", bundle, "bench"))
	}
	var ours, base []time.Duration
	for range 10 {
		ours = append(ours, agentRun())
		base = append(base, runcRun())
	}
	slices.Sort(ours)
	slices.Sort(base)
	t.Logf("| start to command running, warm cache | median of 10 | min | max |")
	t.Logf("| ramboot-agent run (client, daemon, overlay, runc run -d) | %s | %s | %s |", ours[5].Round(100*time.Microsecond), ours[0].Round(100*time.Microsecond), ours[9].Round(100*time.Microsecond))
	t.Logf("| runc run, bundle already unpacked | %s | %s | %s |", base[5].Round(100*time.Microsecond), base[0].Round(100*time.Microsecond), base[9].Round(100*time.Microsecond))
	t.Logf("ratio: %.2fx", float64(ours[5])/float64(base[5]))
}

// TestRAMBench measures the RAM that N containers of one image take: one
// lower shared by all, plus N writable layers. Run with
//
//	RAMBOOT_BENCH=1 go test -run TestRAMBench -v ./nodeagent/container/
func TestRAMBench(t *testing.T) {
	if os.Getenv("RAMBOOT_BENCH") == "" {
		t.Skip("set RAMBOOT_BENCH=1")
	}
	// An image of some size: busybox and a copy of Python's library.
	r := newRigWith(t, nil, func(tree string) {
		if out, err := exec.Command("cp", "-a", "/usr/lib/python3.11", filepath.Join(tree, "python")).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	})
	ctx := context.Background()
	t.Logf("| N | lower (shared, once) | writable layers, sum | logs, sum | container cgroups (processes, page cache), sum | total |")
	for _, n := range []int{1, 10, 50} {
		var ids []container.Container
		for range n {
			c, err := r.m.Run(ctx, localapi.Cred{}, container.RunRequest{Image: "busybox", User: "1000", TmpfsBytes: 64 << 20, MemoryBytes: 256 << 20,
				Args: []string{"sh", "-c", "echo state > /tmp/state; exec sleep 600"}})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, c)
		}
		time.Sleep(500 * time.Millisecond) // let every shell write its file
		var uppers, logs, cg int64
		for _, c := range ids {
			uppers += fsUsed(filepath.Join(c.Bundle, "upper"))
			logs += fsUsed(filepath.Join(c.Bundle, "log"))
			b, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", c.Cgroup, "memory.usage_in_bytes"))
			v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			cg += v
		}
		img := r.cache.List()[0]
		t.Logf("| %d | %s | %s | %s | %s | %s |", n, kib(img.LowerBytes), kib(uppers), kib(logs), kib(cg), kib(img.LowerBytes+uppers+logs+cg))
		if d, _ := filepath.Glob(filepath.Join(r.dir, "images", "lower", images.Digest(img.Digest).Hex())); len(d) != 1 {
			t.Errorf("lowers: %v", d)
		}
		for _, c := range ids {
			if err := r.m.Remove(ctx, localapi.Cred{}, c.ID, true); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func fsUsed(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func kib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
