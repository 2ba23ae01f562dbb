package container_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/imagecache"
	"github.com/ramboot/ramboot/nodeagent/imagecache/imagecachetest"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/ociruntime"
)

// rig is a container manager on a real head, cache and runtime, served
// on a local API socket.
type rig struct {
	m      *container.Manager
	c      *container.Client
	cache  *imagecache.Cache
	dir    string
	rtRoot string
}

type jobsFunc func(localapi.Cred, string) (container.Job, error)

func (f jobsFunc) JobFor(c localapi.Cred, want string) (container.Job, error) { return f(c, want) }

func newRig(t *testing.T, jobs jobsFunc) *rig {
	t.Helper()
	return newRigWith(t, jobs, nil)
}

// newRigWith is newRig with an image whose tree grow adds to.
func newRigWith(t *testing.T, jobs jobsFunc, grow func(tree string)) *rig {
	t.Helper()
	h := imagecachetest.Start(t)
	tree := imagecachetest.BusyboxTree(t)
	if grow != nil {
		grow(tree)
	}
	h.BuildImage(t, "busybox", tree)
	h.Boot(t)
	dir := t.TempDir()
	t.Cleanup(func() { unmountUnder(dir) })
	cache := &imagecache.Cache{Dir: filepath.Join(dir, "images"), Head: h.Head()}
	rt, rep, err := ociruntime.Probe(context.Background(), ociruntime.ProbeOptions{Dir: dir, Root: filepath.Join(dir, "runtime")})
	if err != nil {
		t.Skipf("no OCI runtime works here: %v", err)
	}
	t.Logf("runtime: %s", rep.Summary())
	cfg := container.Config{Dir: filepath.Join(dir, "containers"), Runtime: rt, Images: cache}
	if jobs != nil {
		cfg.Jobs = jobs
	}
	m, err := container.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	m.Routes(mux)
	sock := filepath.Join(dir, "agent.sock")
	ln, err := localapi.Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&localapi.Server{Handler: mux}).Serve(ctx, ln) }()
	r := &rig{m: m, c: &container.Client{API: localapi.NewClient(sock)}, cache: cache, dir: dir, rtRoot: rt.Root}
	t.Cleanup(func() {
		for _, c := range m.List(localapi.Cred{}) {
			m.Remove(context.Background(), localapi.Cred{}, c.ID, true)
		}
		cancel()
		<-done
	})
	return r
}

func unmountUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		unix.Unmount(mps[i], unix.MNT_DETACH)
	}
}

func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mps = append(mps, f[4])
		}
	}
	return mps
}

// run runs a container to its end through the local API, as
// `ramboot-agent run` does, and returns its output and exit status.
func (r *rig) run(t *testing.T, req container.RunRequest) (string, string, int) {
	t.Helper()
	ctx := context.Background()
	ct, err := r.c.Run(ctx, req)
	if err != nil {
		t.Fatalf("run %v: %v", req.Args, err)
	}
	var out, errb bytes.Buffer
	code, err := r.c.Logs(ctx, ct.ID, true, &out, &errb)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	return out.String(), errb.String(), code
}

func TestRunIsolated(t *testing.T) {
	r := newRig(t, nil)
	out, errs, code := r.run(t, container.RunRequest{
		Image: "busybox", User: "1000:1000",
		Args: []string{"sh", "-c", "id -u; id -g; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; cat /etc/motd; hostname"},
		Name: "iso",
	})
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	for _, want := range []string{"1000\n1000\n", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2", "ramboot test image", "iso\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The seccomp profile refuses what capabilities would not: an
	// unprivileged user namespace.
	_, errs, code = r.run(t, container.RunRequest{Image: "busybox", User: "1000", Args: []string{"unshare", "-U", "true"}})
	if code == 0 || !strings.Contains(errs, "Operation not permitted") {
		t.Errorf("unshare -U in a container: exit %d, %q; want EPERM from seccomp", code, errs)
	}
	_, errs, code = r.run(t, container.RunRequest{Image: "busybox", User: "1000", Args: []string{"sh", "-c", "exit 3"}})
	if code != 3 {
		t.Errorf("exit status %d, want 3 (%s)", code, errs)
	}
}

func TestRunRefusals(t *testing.T) {
	r := newRig(t, func(c localapi.Cred, want string) (container.Job, error) {
		if c.UID == 1000 {
			return container.Job{ID: "7", UID: 1000, GID: 1000}, nil
		}
		if c.Root() {
			return container.Job{}, nil
		}
		return container.Job{}, errors.New("uid 1001 has no job on this node: containers run only inside a job")
	})
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		caller localapi.Cred
		req    container.RunRequest
		msg    string
	}{
		{"no job", localapi.Cred{UID: 1001, GID: 1001, PID: os.Getpid()}, container.RunRequest{Image: "busybox"}, "has no job"},
		{"root as root", localapi.Cred{}, container.RunRequest{Image: "busybox"}, "do not run as root"},
		{"unknown image", localapi.Cred{UID: 1000, GID: 1000, PID: os.Getpid()}, container.RunRequest{Image: "nosuch"}, "unknown image"},
		{"tmpfs too big", localapi.Cred{UID: 1000, GID: 1000, PID: os.Getpid()}, container.RunRequest{Image: "busybox", MemoryBytes: 64 << 20, TmpfsBytes: 60 << 20}, "OOM-killed instead of ENOSPC"},
		{"bad bind", localapi.Cred{UID: 1000, GID: 1000, PID: os.Getpid()}, container.RunRequest{Image: "busybox", Binds: []string{"relative:/x"}}, "must be absolute"},
		{"hidden bind", localapi.Cred{UID: 1000, GID: 1000, PID: os.Getpid()}, container.RunRequest{Image: "busybox", Binds: []string{"/root/.bashrc:/x"}}, "may not reach"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := r.m.Run(ctx, c.caller, c.req)
			if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("Run = %v, want an error with %q", err, c.msg)
			}
		})
	}
	if n := len(r.m.List(localapi.Cred{})); n != 0 {
		t.Errorf("%d containers left by refused runs", n)
	}
}

// TestTmpfsFull: a container that fills its writable layer gets ENOSPC;
// another container of the same image, running meanwhile, does not
// notice; both share one lower.
func TestTmpfsFull(t *testing.T) {
	r := newRig(t, nil)
	ctx := context.Background()
	other, err := r.c.Run(ctx, container.RunRequest{Image: "busybox", User: "1000", Args: []string{"sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	_, errs, code := r.run(t, container.RunRequest{
		Image: "busybox", User: "1000", TmpfsBytes: 8 << 20, MemoryBytes: 128 << 20,
		Args: []string{"dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=32"},
	})
	if code == 0 || !strings.Contains(errs, "No space left on device") {
		t.Errorf("dd past the cap: exit %d, stderr %q; want ENOSPC", code, errs)
	}
	var out, eb bytes.Buffer
	code, err = r.c.Exec(ctx, other.ID, container.ExecRequest{Args: []string{"sh", "-c", "echo fine > /tmp/f && cat /tmp/f"}}, &out, &eb)
	if err != nil || code != 0 || out.String() != "fine\n" {
		t.Errorf("the other container: exit %d %v, out %q err %q", code, err, out.String(), eb.String())
	}
	if l := r.cache.List(); len(l) != 1 || l[0].Users != 2 {
		t.Errorf("cache %+v, want one image used by two containers", l)
	}
	st, err := r.c.Stop(ctx, other.ID, 5*time.Second)
	// sleep is the pid namespace's init, which ignores SIGTERM: SIGKILL
	// after the grace.
	if err != nil || st.State != container.StateExited || st.ExitCode != 128+int(unix.SIGKILL) {
		t.Errorf("stop: %+v %v", st, err)
	}
	for _, c := range r.m.List(localapi.Cred{}) {
		if err := r.c.Remove(ctx, c.ID, false); err != nil {
			t.Errorf("rm %s: %v", c.Name, err)
		}
	}
	if m := mountsUnder(filepath.Join(r.dir, "containers")); len(m) != 0 {
		t.Errorf("mounts left after rm: %v", m)
	}
	if des, _ := os.ReadDir(filepath.Join(r.dir, "containers")); len(des) != 0 {
		t.Errorf("bundles left after rm: %v", des)
	}
}

// TestMemoryLimit: the cgroup's limit is the one asked for.
func TestMemoryLimit(t *testing.T) {
	r := newRig(t, nil)
	out, errs, code := r.run(t, container.RunRequest{
		Image: "busybox", User: "1000", MemoryBytes: 96 << 20, TmpfsBytes: 16 << 20,
		Args: []string{"sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"},
	})
	if code != 0 || strings.TrimSpace(out) != "100663296" {
		t.Errorf("limit %q (exit %d, %s), want 100663296", out, code, errs)
	}
}

func TestBindAndExec(t *testing.T) {
	r := newRig(t, nil)
	src := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(src, []byte("shared\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errs, code := r.run(t, container.RunRequest{
		Image: "busybox", User: "1000", Binds: []string{src + ":/data:ro"},
		Args: []string{"sh", "-c", "cat /data; echo x > /data"},
	})
	if !strings.Contains(out, "shared") || code == 0 || !strings.Contains(errs, "Read-only") {
		t.Errorf("ro bind: out %q err %q exit %d", out, errs, code)
	}
}

// TestBundle: a bundle for Slurm's own OCI support has no cgroup of its
// own (the runtime nests it under the step that runs it), is the user's,
// and runs with the runtime as it is.
func TestBundle(t *testing.T) {
	r := newRig(t, nil)
	ct, err := r.c.Run(context.Background(), container.RunRequest{Image: "busybox", User: "1000", BundleOnly: true, Args: []string{"cat", "/etc/motd"}})
	if err != nil {
		t.Fatal(err)
	}
	if ct.State != container.StateCreated || ct.Cgroup != "" {
		t.Errorf("bundle %+v", ct)
	}
	b, err := os.ReadFile(filepath.Join(ct.Bundle, "config.json"))
	if err != nil || strings.Contains(string(b), "cgroupsPath") {
		t.Errorf("config.json: %v, cgroupsPath set: %s", err, b)
	}
	var st unix.Stat_t
	if unix.Stat(ct.Bundle, &st) != nil || st.Uid != 1000 {
		t.Errorf("bundle owner %d, want 1000", st.Uid)
	}
	out, err := exec.Command("runc", "--root", filepath.Join(r.dir, "slurm-runc"), "run", "--bundle", ct.Bundle, "slurmstep").CombinedOutput()
	if err != nil || string(out) != "ramboot test image\n" {
		t.Errorf("runc run of the bundle: %v %q", err, out)
	}
	if err := r.c.Remove(context.Background(), ct.ID, false); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(filepath.Join(r.dir, "containers")); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// TestBundleRootless: a rootless bundle runs with runc --rootless as its
// user, as Slurm's oci.conf runs it.
func TestBundleRootless(t *testing.T) {
	r := newRig(t, nil)
	ct, err := r.c.Run(context.Background(), container.RunRequest{Image: "busybox", User: "1000", BundleOnly: true, Rootless: true, Args: []string{"sh", "-c", "id -u; cat /etc/motd"}})
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp("", "ramboot-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	os.Chown(state, 1000, 1000)
	// The bundle's parents must be reachable by the user, as Slurm's
	// spool is: here they are the test's 0700 temporary directories.
	for p := filepath.Dir(ct.Bundle); p != "/" && p != "/tmp"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	cmd := exec.Command("runc", "--rootless=true", "--root", state, "run", "--bundle", ct.Bundle, "slurmstep")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "XDG_RUNTIME_DIR=" + state, "HOME=" + state}
	out, err := cmd.CombinedOutput()
	// Root of its own user namespace, uid 1000 on the host.
	if err != nil || string(out) != "0\nramboot test image\n" {
		t.Errorf("runc --rootless run of the bundle as uid 1000: %v %q", err, out)
	}
}
