package ociruntime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go/features"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/ocispec"
)

// DefaultCandidates are the runtimes Probe tries, in order of preference.
var DefaultCandidates = []string{"crun", "runc"}

// CgroupMode is how the host's cgroup file systems are laid out.
type CgroupMode string

// The cgroup layouts.
const (
	// CgroupUnified is cgroup v2 only (RHEL 9, Debian 12 with systemd).
	CgroupUnified CgroupMode = "v2"
	// CgroupHybrid is v1 controllers plus a v2 hierarchy at
	// /sys/fs/cgroup/unified.
	CgroupHybrid CgroupMode = "hybrid"
	// CgroupLegacy is v1 controllers only.
	CgroupLegacy CgroupMode = "v1"
	// CgroupNone means no cgroup file system is mounted.
	CgroupNone CgroupMode = "none"
)

// DetectCgroupMode returns the layout of the cgroup file systems mounted
// at root (normally /sys/fs/cgroup).
func DetectCgroupMode(root string) CgroupMode {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return CgroupNone
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return CgroupUnified
	}
	var u unix.Statfs_t
	if unix.Statfs(filepath.Join(root, "unified"), &u) == nil && u.Type == unix.CGROUP2_SUPER_MAGIC {
		return CgroupHybrid
	}
	var m unix.Statfs_t
	if unix.Statfs(filepath.Join(root, "memory"), &m) == nil && m.Type == unix.CGROUP_SUPER_MAGIC {
		return CgroupLegacy
	}
	return CgroupNone
}

// ProbeOptions configures Probe.
type ProbeOptions struct {
	// Candidates are runtime names (looked up on $PATH) or paths, in order
	// of preference. Default DefaultCandidates.
	Candidates []string
	// Dir is a scratch directory for the trial bundles; required.
	Dir string
	// Root is the runtimes' state directory. Default DefaultRoot.
	Root string
	// Timeout bounds each candidate's trial. Default 60 s: a node under
	// load (or an emulated one) may take seconds to start a runtime's
	// Go binary twice; a working runtime must not be judged broken.
	Timeout time.Duration
}

// Candidate is what Probe found out about one runtime.
type Candidate struct {
	// Name is the candidate as given.
	Name string `json:"name"`
	// Path is the executable found, if any.
	Path string `json:"path,omitempty"`
	// Version is its version line.
	Version string `json:"version,omitempty"`
	// Works is true when its trial container ran.
	Works bool `json:"works"`
	// Reason says why it does not work.
	Reason string `json:"reason,omitempty"`
	// Trial is how long the trial container took.
	Trial time.Duration `json:"trialNanos,omitempty"`
}

// Report is the outcome of a probe.
type Report struct {
	// Cgroups is the host's cgroup layout.
	Cgroups CgroupMode `json:"cgroups"`
	// Candidates are the runtimes tried, in order.
	Candidates []Candidate `json:"candidates"`
	// Chosen is the name of the runtime chosen, empty when none works.
	Chosen string `json:"chosen,omitempty"`
}

// ErrNoRuntime means no candidate runtime works on this host.
var ErrNoRuntime = errors.New("no working OCI runtime")

// Summary returns one line: the chosen runtime, or why each failed.
func (r Report) Summary() string {
	var parts []string
	for _, c := range r.Candidates {
		if c.Works {
			parts = append(parts, fmt.Sprintf("%s works (%s, trial %s)", c.Name, c.Version, c.Trial.Round(time.Millisecond)))
		} else {
			parts = append(parts, fmt.Sprintf("%s: %s", c.Name, c.Reason))
		}
	}
	return fmt.Sprintf("cgroups %s; %s", r.Cgroups, strings.Join(parts, "; "))
}

// Probe tries each candidate in order and returns the first that runs a
// trial container, with the report of every candidate tried. The error
// wraps ErrNoRuntime when none works.
func Probe(ctx context.Context, o ProbeOptions) (*Runtime, Report, error) {
	cands := o.Candidates
	if len(cands) == 0 {
		cands = DefaultCandidates
	}
	rep := Report{Cgroups: DetectCgroupMode("/sys/fs/cgroup")}
	var chosen *Runtime
	for _, name := range cands {
		c := Candidate{Name: name}
		rt, err := probeOne(ctx, name, o, &c)
		if err != nil {
			c.Reason = err.Error()
		} else {
			c.Works = true
		}
		rep.Candidates = append(rep.Candidates, c)
		if err == nil {
			chosen = rt
			rep.Chosen = rt.Name
			break
		}
	}
	if chosen == nil {
		return nil, rep, fmt.Errorf("%w: %s", ErrNoRuntime, rep.Summary())
	}
	return chosen, rep, nil
}

func probeOne(ctx context.Context, name string, o ProbeOptions, c *Candidate) (*Runtime, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, errors.New("not installed")
	}
	c.Path = path
	rt := &Runtime{Name: filepath.Base(name), Path: path, Root: o.Root}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", path, err)
	}
	rt.Version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	c.Version = rt.Version
	if out, err := exec.CommandContext(ctx, path, "features").Output(); err == nil {
		var f features.Features
		if json.Unmarshal(out, &f) == nil {
			rt.Features = &f
		}
	}
	if !rt.Seccomp() {
		return nil, errors.New("built without seccomp")
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	if err := rt.trial(tctx, o.Dir); err != nil {
		return nil, err
	}
	c.Trial = time.Since(start)
	return rt, nil
}

// trial runs /bin/true from the host's own /usr in a container with the
// limits and seccomp profile every agent container gets.
func (r *Runtime) trial(ctx context.Context, dir string) error {
	if dir == "" {
		return errors.New("probe: no scratch directory")
	}
	bundle, err := os.MkdirTemp(dir, "probe-"+r.Name+"-")
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer os.RemoveAll(bundle)
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	var binds []ocispec.Bind
	for _, d := range []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr"} {
		host := "/" + d
		fi, err := os.Lstat(host)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(host)
			if err != nil {
				return fmt.Errorf("probe: %w", err)
			}
			if err := os.Symlink(target, filepath.Join(rootfs, d)); err != nil {
				return fmt.Errorf("probe: %w", err)
			}
		case fi.IsDir():
			binds = append(binds, ocispec.Bind{Source: host, Destination: host, ReadOnly: true})
		}
	}
	id := fmt.Sprintf("ramboot-probe-%d-%s", os.Getpid(), r.Name)
	spec := ocispec.New(ocispec.Options{
		Args: []string{"/bin/true"}, Hostname: "probe", HostNetwork: true,
		MemoryBytes: 64 << 20, Pids: 64, Binds: binds,
		CgroupsPath: "/ramboot/" + id,
	})
	if err := ocispec.Write(bundle, spec); err != nil {
		return err
	}
	var stderr bytes.Buffer
	// --debug: when the trial fails, its log says where (TrialLog).
	cmd := r.command(ctx, append([]string{"--debug"}, "run", "--bundle", bundle, id)...)
	cmd.Stderr = &stderr
	err = cmd.Run()
	var events []byte
	if err != nil { // before the runtime removes the cgroup
		events, _ = os.ReadFile(filepath.Join("/sys/fs/cgroup", spec.Linux.CgroupsPath, "memory.events"))
	}
	_ = r.Delete(context.WithoutCancel(ctx), id, true)
	if err != nil {
		log := TrialLog(dir, r.Name)
		_ = os.WriteFile(log, fmt.Appendf(nil, "%s --debug run: %v\n%s\nmemory.events of %s:\n%s", r.Name, err, stderr.Bytes(), spec.Linux.CgroupsPath, events), 0o644)
		msg := trialError(stderr.String(), err)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = "no end within the time limit (killed): " + msg
		}
		return fmt.Errorf("trial container failed: %s (log: %s)", msg, log)
	}
	return nil
}

// trialError is what a failed trial's runtime said went wrong: runc's last
// error line, crun's last line, or, when the runtime logged no error (it
// was killed), err.
func trialError(stderr string, err error) string {
	stderr = strings.TrimSpace(stderr)
	switch {
	case stderr == "":
		return err.Error()
	case !strings.Contains(stderr, "level="): // crun, or a runtime without logrus
		return LastLine(stderr)
	case strings.Contains(stderr, "level=error") || strings.Contains(stderr, "level=fatal"):
		return LastLine(stderr)
	}
	return err.Error()
}

// TrialLog is where a failed trial of runtime name leaves the runtime's
// debug output, under the probe's Dir.
func TrialLog(dir, name string) string {
	return filepath.Join(dir, "probe-"+name+".log")
}
