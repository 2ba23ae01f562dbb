package container

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/ociruntime"
	"github.com/ramboot/ramboot/nodeagent/ocispec"
)

// Runtime is the OCI runtime (ociruntime.Runtime).
type Runtime interface {
	Run(ctx context.Context, id, bundle string, io ociruntime.IO) (pid int, err error)
	Exec(ctx context.Context, id string, p *specs.Process, bundle string, io ociruntime.IO) error
	Kill(ctx context.Context, id string, sig syscall.Signal) error
	Delete(ctx context.Context, id string, force bool) error
}

// Manager runs the node's containers. Its methods are safe for concurrent
// use.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	ctrs  map[string]*ctr // by id
	names map[string]string
}

// ctr is one container and what the manager holds for it.
type ctr struct {
	mu      sync.Mutex // serializes life-cycle operations
	c       Container  // under Manager.mu
	release func()     // the image's lower
	exited  chan struct{}
}

// New returns a Manager and takes over the containers a previous agent
// left in cfg.Dir.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" || cfg.Runtime == nil || cfg.Images == nil {
		return nil, errors.New("container manager: Dir, Runtime and Images are required")
	}
	if cfg.Memory <= 0 {
		cfg.Memory = DefaultMemory
	}
	if cfg.Tmpfs <= 0 {
		cfg.Tmpfs = DefaultTmpfs
	}
	if cfg.Pids <= 0 {
		cfg.Pids = DefaultPids
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("container manager: %w", err)
	}
	// Containers run detached: once the runtime exits, their first
	// process is re-parented to the nearest subreaper. Being it lets the
	// agent wait for them and learn their exit status.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("container manager: become a subreaper: %w", err)
	}
	m := &Manager{cfg: cfg, log: log, ctrs: map[string]*ctr{}, names: map[string]string{}}
	m.load()
	return m, nil
}

// SetJobs sets the job registry that authorizes callers, for a registry
// built after the manager (it removes the manager's containers).
func (m *Manager) SetJobs(j Jobs) {
	m.mu.Lock()
	m.cfg.Jobs = j
	m.mu.Unlock()
}

// load takes over the containers described under Dir.
func (m *Manager) load() {
	des, _ := os.ReadDir(m.cfg.Dir)
	for _, de := range des {
		b, err := os.ReadFile(filepath.Join(m.cfg.Dir, de.Name(), "state.json"))
		if err != nil {
			continue
		}
		var c Container
		if json.Unmarshal(b, &c) != nil || c.ID != de.Name() {
			continue
		}
		x := &ctr{c: c, exited: make(chan struct{})}
		if _, release, err := m.cfg.Images.Lower(context.Background(), images.Digest(c.Digest)); err == nil {
			x.release = release
		}
		m.ctrs[c.ID] = x
		m.names[c.Name] = c.ID
		if c.State == StateRunning {
			go m.watch(x, c.Pid)
		} else {
			close(x.exited)
		}
	}
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// parseUser parses "UID[:GID]".
func parseUser(s string) (uid, gid int, err error) {
	u, g, hasG := strings.Cut(s, ":")
	if uid, err = strconv.Atoi(u); err != nil || uid < 0 {
		return 0, 0, fmt.Errorf("user %q: want UID[:GID]: %w", s, ErrInvalid)
	}
	gid = uid
	if hasG {
		if gid, err = strconv.Atoi(g); err != nil || gid < 0 {
			return 0, 0, fmt.Errorf("user %q: want UID[:GID]: %w", s, ErrInvalid)
		}
	}
	return uid, gid, nil
}

// identity decides the job and the user a container runs as.
func (m *Manager) identity(caller localapi.Cred, req RunRequest) (Job, int, int, []uint32, error) {
	var job Job
	var err error
	m.mu.Lock()
	jobs := m.cfg.Jobs
	m.mu.Unlock()
	if jobs != nil {
		job, err = jobs.JobFor(caller, req.Job)
		if err != nil {
			return Job{}, 0, 0, nil, err
		}
	} else if !caller.Root() {
		return Job{}, 0, 0, nil, fmt.Errorf("uid %d: containers can be run only by root on this node (no scheduler hooks configured): %w", caller.UID, ErrForbidden)
	} else if req.Job != "" {
		return Job{}, 0, 0, nil, fmt.Errorf("job %s: this node has no scheduler hooks: %w", req.Job, ErrInvalid)
	}
	uid, gid := caller.UID, caller.GID
	var groups []uint32
	switch {
	case !caller.Root():
		groups = callerGroups(caller.PID, gid)
	case req.User != "":
		if uid, gid, err = parseUser(req.User); err != nil {
			return Job{}, 0, 0, nil, err
		}
	case job.ID != "":
		uid, gid = job.UID, job.GID
	}
	if uid == 0 && !m.cfg.AllowRoot {
		return Job{}, 0, 0, nil, fmt.Errorf("containers do not run as root on this node (containers.allow_root is off): give --user UID[:GID] or --job JOBID: %w", ErrForbidden)
	}
	return job, uid, gid, groups, nil
}

// callerGroups returns the supplementary groups of process pid.
func callerGroups(pid, gid int) []uint32 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Groups:"); ok {
			var gs []uint32
			for _, f := range strings.Fields(rest) {
				if g, err := strconv.ParseUint(f, 10, 32); err == nil && int(g) != gid {
					gs = append(gs, uint32(g))
				}
			}
			return gs
		}
	}
	return nil
}

// Run starts a container for caller and returns once its command runs (or,
// with req.BundleOnly, once its bundle is ready).
func (m *Manager) Run(ctx context.Context, caller localapi.Cred, req RunRequest) (Container, error) {
	if req.Image == "" {
		return Container{}, fmt.Errorf("no image: %w", ErrInvalid)
	}
	job, uid, gid, groups, err := m.identity(caller, req)
	if err != nil {
		return Container{}, err
	}
	mem := req.MemoryBytes
	if mem <= 0 {
		mem = job.MemoryBytes
	}
	if mem <= 0 {
		mem = m.cfg.Memory
	}
	tmpfs := req.TmpfsBytes
	if tmpfs <= 0 {
		tmpfs = min(m.cfg.Tmpfs, mem/2)
	}
	if tmpfs+Headroom > mem {
		return Container{}, fmt.Errorf("tmpfs of %d MiB leaves less than %d MiB of the %d MiB memory limit for the processes (its pages count against the limit: a full tmpfs would get the container OOM-killed instead of ENOSPC): %w",
			tmpfs>>20, Headroom>>20, mem>>20, ErrInvalid)
	}
	args := req.Args
	if len(args) == 0 {
		args = []string{"/bin/sh"}
	}
	binds, err := parseBinds(req.Binds, caller)
	if err != nil {
		return Container{}, err
	}
	img, err := m.cfg.Images.Resolve(ctx, req.Image)
	if err != nil {
		return Container{}, err
	}
	id := newID()
	name := req.Name
	if name == "" {
		name = id
	}
	if err := validName(name); err != nil {
		return Container{}, err
	}
	c := Container{
		ID: id, Name: name, Image: req.Image, Digest: img.Digest, Job: job.ID, UID: uid, GID: gid,
		Args: args, State: StateCreated, ExitCode: -1, Created: time.Now().UTC(),
		MemoryBytes: mem, TmpfsBytes: tmpfs, CPUs: req.CPUs, Pids: m.cfg.Pids,
		Bundle: filepath.Join(m.cfg.Dir, id),
	}
	if !req.BundleOnly {
		parent := "/ramboot"
		if job.Cgroup != "" {
			parent = job.Cgroup
		}
		c.Cgroup = strings.TrimRight(parent, "/") + "/ramboot_" + id
	}
	x := &ctr{c: c, exited: make(chan struct{})}
	m.mu.Lock()
	if _, taken := m.names[name]; taken {
		m.mu.Unlock()
		return Container{}, fmt.Errorf("container name %q is taken: %w", name, ErrInvalid)
	}
	m.names[name] = id
	m.ctrs[id] = x
	m.mu.Unlock()
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := m.start(ctx, x, img.Digest, req, groups, binds); err != nil {
		m.cleanup(context.WithoutCancel(ctx), x)
		m.forget(x)
		return Container{}, err
	}
	return m.snapshot(x), nil
}

func validName(n string) error {
	if len(n) > 64 {
		return fmt.Errorf("container name %q: longer than 64: %w", n, ErrInvalid)
	}
	for i, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && (r == '-' || r == '_' || r == '.')) {
			return fmt.Errorf("container name %q: want letters, digits and -_. : %w", n, ErrInvalid)
		}
	}
	return nil
}

// start prepares x's bundle and runs it.
func (m *Manager) start(ctx context.Context, x *ctr, digest string, req RunRequest, groups []uint32, binds []ocispec.Bind) error {
	c := &x.c
	lower, release, err := m.cfg.Images.Lower(ctx, images.Digest(digest))
	if err != nil {
		return err
	}
	x.release = release
	if err := os.Mkdir(c.Bundle, 0o711); err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	if err := mountLayers(c.Bundle, lower, c.TmpfsBytes, c.UID, c.GID); err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	env := append([]string{"HOME=/", "TERM=xterm"}, req.Env...)
	if c.Job != "" {
		env = append(env, "SLURM_JOB_ID="+c.Job)
	}
	spec := ocispec.New(ocispec.Options{
		Hostname: c.Name, Args: c.Args, Env: env, Cwd: req.Cwd,
		UID: uint32(c.UID), GID: uint32(c.GID), AdditionalGIDs: groups,
		MemoryBytes: c.MemoryBytes, CPUs: c.CPUs, Pids: c.Pids, CgroupsPath: c.Cgroup,
		HostNetwork: !(req.PrivateNetwork || m.cfg.PrivateNetwork), Binds: binds,
		Rootless: req.Rootless && req.BundleOnly,
	})
	if err := ocispec.Write(c.Bundle, spec); err != nil {
		return err
	}
	if req.BundleOnly {
		// Slurm runs the runtime as the job's user: the bundle is theirs.
		for _, p := range []string{c.Bundle, filepath.Join(c.Bundle, "config.json")} {
			if err := os.Chown(p, c.UID, c.GID); err != nil {
				return fmt.Errorf("container %s: %w", c.Name, err)
			}
		}
		return m.save(x)
	}
	stdout, err := os.OpenFile(logPath(c.Bundle, "stdout"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	defer stdout.Close()
	stderr, err := os.OpenFile(logPath(c.Bundle, "stderr"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	defer stderr.Close()
	pid, err := m.cfg.Runtime.Run(ctx, c.ID, c.Bundle, ociruntime.IO{Stdout: stdout, Stderr: stderr})
	if err != nil {
		// The runtime writes why to the container's stderr.
		if b, rerr := os.ReadFile(logPath(c.Bundle, "stderr")); rerr == nil && len(b) > 0 {
			err = fmt.Errorf("%w: %s", err, ociruntime.LastLine(string(b)))
		}
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	m.mu.Lock()
	c.State, c.Pid, c.Started = StateRunning, pid, time.Now().UTC()
	m.mu.Unlock()
	if err := m.save(x); err != nil {
		return err
	}
	m.log.Info("container started", "container", c.Name, "id", c.ID, "image", c.Image, "job", c.Job, "uid", c.UID, "pid", pid)
	go m.watch(x, pid)
	return nil
}

// watch waits for the container's first process to exit and records its
// status.
func (m *Manager) watch(x *ctr, pid int) {
	code := waitExit(pid)
	m.mu.Lock()
	if x.c.State == StateRunning {
		x.c.State, x.c.ExitCode, x.c.Finished, x.c.Pid = StateExited, code, time.Now().UTC(), 0
	}
	c := x.c
	m.mu.Unlock()
	if err := m.save(x); err != nil {
		m.log.Warn("save container state", "container", c.Name, "err", err)
	}
	m.log.Info("container exited", "container", c.Name, "id", c.ID, "code", code)
	close(x.exited)
}

// waitExit waits for process pid to end and returns its exit status, or
// -1 when it is not the agent's child (a previous agent started it).
func waitExit(pid int) int {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1 // already gone
	}
	defer unix.Close(fd)
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED, nil)
		if err == unix.EINTR {
			continue
		}
		if err == nil {
			return exitCode(info)
		}
		break // ECHILD: not our child
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err == unix.EINTR {
			continue
		}
		return -1
	}
}

func exitCode(info unix.Siginfo) int {
	// si_code and si_status follow si_signo, si_errno, si_code and the
	// pid and uid in the kernel's siginfo for SIGCHLD.
	type sigchld struct {
		Signo, Errno, Code int32
		_                  int32
		Pid                int32
		UID                uint32
		Status             int32
	}
	s := (*sigchld)(unsafePointer(&info))
	if s.Code == 1 { // CLD_EXITED
		return int(s.Status)
	}
	return 128 + int(s.Status)
}

func logPath(bundle, stream string) string {
	return filepath.Join(bundle, "log", stream)
}

func (m *Manager) save(x *ctr) error {
	m.mu.Lock()
	c := x.c
	m.mu.Unlock()
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(c.Bundle, "state.json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("save container %s: %w", c.Name, err)
	}
	return os.Rename(p+".tmp", p)
}

func (m *Manager) snapshot(x *ctr) Container {
	m.mu.Lock()
	c := x.c
	m.mu.Unlock()
	c.TmpfsUsed = tmpfsUsed(filepath.Join(c.Bundle, "upper"))
	return c
}

func (m *Manager) forget(x *ctr) {
	m.mu.Lock()
	delete(m.ctrs, x.c.ID)
	if m.names[x.c.Name] == x.c.ID {
		delete(m.names, x.c.Name)
	}
	m.mu.Unlock()
}

// cleanup kills what runs of x and removes its runtime state, mounts and
// bundle. It is safe to repeat.
func (m *Manager) cleanup(ctx context.Context, x *ctr) error {
	c := x.c
	var errs []error
	if c.State != StateCreated || c.Cgroup != "" {
		if err := m.cfg.Runtime.Delete(ctx, c.ID, true); err != nil {
			errs = append(errs, err)
		}
	}
	if c.State == StateRunning {
		select {
		case <-x.exited:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("container %s: its first process did not exit after SIGKILL", c.Name))
		}
	}
	if err := unmountLayers(c.Bundle); err != nil {
		errs = append(errs, fmt.Errorf("container %s: %w", c.Name, err))
	} else if err := os.RemoveAll(c.Bundle); err != nil {
		errs = append(errs, fmt.Errorf("container %s: %w", c.Name, err))
	}
	if x.release != nil {
		x.release()
	}
	return errors.Join(errs...)
}

// find returns the container called idOrName that caller may see.
func (m *Manager) find(caller localapi.Cred, idOrName string) (*ctr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	x, ok := m.ctrs[idOrName]
	if !ok {
		if id, ok2 := m.names[idOrName]; ok2 {
			x, ok = m.ctrs[id]
		}
	}
	if !ok || (!caller.Root() && x.c.UID != caller.UID) {
		return nil, fmt.Errorf("container %q: %w", idOrName, ErrNotFound)
	}
	return x, nil
}

// List returns the containers caller may see (root: all), oldest first.
func (m *Manager) List(caller localapi.Cred) []Container {
	m.mu.Lock()
	var xs []*ctr
	for _, x := range m.ctrs {
		if caller.Root() || x.c.UID == caller.UID {
			xs = append(xs, x)
		}
	}
	m.mu.Unlock()
	out := make([]Container, 0, len(xs))
	for _, x := range xs {
		out = append(out, m.snapshot(x))
	}
	slices.SortFunc(out, func(a, b Container) int { return a.Created.Compare(b.Created) })
	return out
}

// Get returns one container.
func (m *Manager) Get(caller localapi.Cred, id string) (Container, error) {
	x, err := m.find(caller, id)
	if err != nil {
		return Container{}, err
	}
	return m.snapshot(x), nil
}

// Wait waits until the container exits (or ctx ends) and returns it.
func (m *Manager) Wait(ctx context.Context, caller localapi.Cred, id string) (Container, error) {
	x, err := m.find(caller, id)
	if err != nil {
		return Container{}, err
	}
	if m.snapshot(x).State == StateCreated {
		return Container{}, fmt.Errorf("container %s: not running (a bundle): %w", id, ErrInvalid)
	}
	select {
	case <-x.exited:
	case <-ctx.Done():
		return Container{}, ctx.Err()
	}
	return m.snapshot(x), nil
}

// Stop sends SIGTERM to the container's processes, then SIGKILL after
// grace (0 means DefaultStopGrace).
func (m *Manager) Stop(ctx context.Context, caller localapi.Cred, id string, grace time.Duration) (Container, error) {
	x, err := m.find(caller, id)
	if err != nil {
		return Container{}, err
	}
	if grace <= 0 {
		grace = DefaultStopGrace
	}
	if m.snapshot(x).State != StateRunning {
		return m.snapshot(x), nil
	}
	if err := m.cfg.Runtime.Kill(ctx, x.c.ID, unix.SIGTERM); err != nil && !errors.Is(err, ociruntime.ErrNotExist) {
		m.log.Debug("stop: SIGTERM", "container", x.c.Name, "err", err)
	}
	select {
	case <-x.exited:
	case <-time.After(grace):
		if err := m.cfg.Runtime.Kill(ctx, x.c.ID, unix.SIGKILL); err != nil && !errors.Is(err, ociruntime.ErrNotExist) {
			return Container{}, err
		}
		select {
		case <-x.exited:
		case <-ctx.Done():
			return Container{}, ctx.Err()
		}
	case <-ctx.Done():
		return Container{}, ctx.Err()
	}
	return m.snapshot(x), nil
}

// Remove removes a container; a running one only with force (killed).
func (m *Manager) Remove(ctx context.Context, caller localapi.Cred, id string, force bool) error {
	x, err := m.find(caller, id)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if m.snapshot(x).State == StateRunning && !force {
		return fmt.Errorf("container %s is running: stop it first, or remove it with --force: %w", id, ErrInvalid)
	}
	err = m.cleanup(ctx, x)
	m.forget(x)
	if err == nil {
		m.log.Info("container removed", "container", x.c.Name, "id", x.c.ID)
	}
	return err
}

// RemoveJob removes every container of job, killing those that run. The
// epilog calls it.
func (m *Manager) RemoveJob(ctx context.Context, job string) (int, error) {
	m.mu.Lock()
	var ids []string
	for id, x := range m.ctrs {
		if x.c.Job == job {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := m.Remove(ctx, localapi.Cred{}, id, true); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return len(ids), errors.Join(errs...)
}

// Close stops watching; containers keep running and a later Manager takes
// them over.
func (m *Manager) Close() error { return nil }
