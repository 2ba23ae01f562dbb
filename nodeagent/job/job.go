// Package job is the node's side of the scheduler's jobs: the Slurm prolog
// registers a job (its RAM scratch, its user's right to run containers)
// after checking the node's health, and the epilog gives the node back
// clean (every process of the job killed, its containers, bundles and
// scratch removed, the RAM checked) or says why not.
//
//	r, err := job.New(job.Config{Dir: "/run/ramboot/jobs", Containers: mgr, Health: checks})
//	r.Routes(mux)                 // POST /v1/jobs/prolog, /v1/jobs/epilog; GET /v1/jobs
//	j, err := r.Prolog(ctx, job.EnvFrom(os.Environ()))
//	res, err := r.Epilog(ctx, env)
//
// Slurm runs `ramboot-agent prolog` and `ramboot-agent epilog` as root on
// every node of the job with SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_USER,
// SLURM_JOB_GID and SLURMD_NODENAME in the environment; a prolog or
// epilog that fails drains the node with the reason (docs/slurm.md). The
// registry is kept as one file per job under Dir (RAM), so a restarted
// agent keeps its jobs and a retried epilog finds what is left.
package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
)

// Defaults.
const (
	// DefaultScratch is a job's scratch tmpfs size when neither the
	// configuration nor the job's memory gives one.
	DefaultScratch = 1 << 30
	// DefaultKillTimeout bounds the epilog's wait for the job's processes
	// to die.
	DefaultKillTimeout = 10 * time.Second
)

// ErrNoJob means the caller has no job that allows the request.
var ErrNoJob = errors.New("no job")

// Env is what Slurm tells a prolog or epilog, from its environment.
type Env struct {
	// JobID is SLURM_JOB_ID; required.
	JobID string
	// UID and GID are SLURM_JOB_UID and SLURM_JOB_GID (the GID is looked
	// up from the user when Slurm does not set it).
	UID, GID int
	// User is SLURM_JOB_USER.
	User string
	// Node is SLURMD_NODENAME, the node's name in Slurm (for scontrol).
	Node string
	// MemoryBytes is the job's memory on this node (SLURM_MEM_PER_NODE in
	// MiB when set; else asked of scontrol), 0 when unknown.
	MemoryBytes int64
}

// EnvFrom parses Slurm's prolog/epilog environment (os.Environ form).
func EnvFrom(environ []string) (Env, error) {
	m := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	var e Env
	var errs []error
	e.JobID = m["SLURM_JOB_ID"]
	if e.JobID == "" {
		e.JobID = m["SLURM_JOBID"]
	}
	if e.JobID == "" || strings.ContainsAny(e.JobID, "/ \n") {
		errs = append(errs, fmt.Errorf("SLURM_JOB_ID %q: not a job id (run by Slurm's Prolog/Epilog?)", e.JobID))
	}
	uid, err := strconv.Atoi(m["SLURM_JOB_UID"])
	if err != nil || uid < 0 {
		errs = append(errs, fmt.Errorf("SLURM_JOB_UID %q: not a uid", m["SLURM_JOB_UID"]))
	}
	e.UID = uid
	e.User = m["SLURM_JOB_USER"]
	e.Node = m["SLURMD_NODENAME"]
	e.GID = -1
	if g := m["SLURM_JOB_GID"]; g != "" {
		if e.GID, err = strconv.Atoi(g); err != nil {
			errs = append(errs, fmt.Errorf("SLURM_JOB_GID %q: not a gid", g))
		}
	}
	if mb := m["SLURM_MEM_PER_NODE"]; mb != "" {
		if n, err := strconv.ParseInt(mb, 10, 64); err == nil {
			e.MemoryBytes = n << 20
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Env{}, err
	}
	if e.GID < 0 {
		e.GID = e.UID
		if u, err := user.LookupId(strconv.Itoa(e.UID)); err == nil {
			if g, err := strconv.Atoi(u.Gid); err == nil {
				e.GID = g
			}
		}
	}
	return e, nil
}

// Job is a job registered on the node.
type Job struct {
	// ID is the scheduler's job id.
	ID string `json:"id"`
	// User is its user's name.
	User string `json:"user"`
	// UID is its user's id.
	UID int `json:"uid"`
	// GID is its group's id.
	GID int `json:"gid"`
	// MemoryBytes is its memory on the node, 0 when unknown.
	MemoryBytes int64 `json:"memoryBytes"`
	// Scratch is its scratch directory (a tmpfs).
	Scratch string `json:"scratch"`
	// ScratchBytes is the scratch's size.
	ScratchBytes int64 `json:"scratchBytes"`
	// Registered is when the prolog registered it.
	Registered time.Time `json:"registered"`
	// MemAvailable is the node's available RAM at the prolog.
	MemAvailable int64 `json:"memAvailable"`
}

// Containers removes a job's containers (container.Manager).
type Containers interface {
	RemoveJob(ctx context.Context, job string) (int, error)
}

// Health checks what a job needs of the node besides RAM; each returns nil
// or why the node cannot take jobs.
type Health interface {
	// Runtime checks that an OCI runtime works.
	Runtime(ctx context.Context) error
	// Head checks that the agent reaches the head (nil when no head is
	// configured).
	Head(ctx context.Context) error
}

// Reporter tells the head about a job's hooks (nil: no head).
type Reporter interface {
	JobEvent(ctx context.Context, ev overlay.JobEvent) error
}

// Config configures a Registry.
type Config struct {
	// Dir holds the registry, one file per job; required (RAM).
	Dir string
	// ScratchDir holds each job's scratch tmpfs as ScratchDir/<job>.
	// Default /run/ramboot/scratch.
	ScratchDir string
	// ScratchBytes sizes each job's scratch. Default: half the job's
	// memory when known, else DefaultScratch.
	ScratchBytes int64
	// CleanDirs are RAM directories where the epilog removes what the
	// job's user left when the user has no other job on the node.
	// Default /dev/shm, /tmp and /var/tmp.
	CleanDirs []string
	// Containers removes the job's containers; nil: none to remove.
	Containers Containers
	// Health checks the node at the prolog; nil: only RAM is checked.
	Health Health
	// Reporter tells the head; nil: nothing is reported.
	Reporter Reporter
	// KillTimeout bounds the wait for the job's processes to die.
	// Default DefaultKillTimeout.
	KillTimeout time.Duration
	// Scontrol is Slurm's scontrol (to ask a job's memory). Default
	// "scontrol" on $PATH.
	Scontrol string
	// Logger receives registrations and clean-ups at Info; nil discards.
	Logger *slog.Logger
}

// Registry is the node's registry of jobs. Its methods are safe for
// concurrent use.
type Registry struct {
	cfg Config
	log *slog.Logger
	mu  sync.Mutex
}

// New returns a registry on cfg.Dir.
func New(cfg Config) (*Registry, error) {
	if cfg.Dir == "" {
		return nil, errors.New("job registry: empty Dir")
	}
	if cfg.ScratchDir == "" {
		cfg.ScratchDir = "/run/ramboot/scratch"
	}
	if cfg.CleanDirs == nil {
		cfg.CleanDirs = []string{"/dev/shm", "/tmp", "/var/tmp"}
	}
	if cfg.KillTimeout <= 0 {
		cfg.KillTimeout = DefaultKillTimeout
	}
	if cfg.Scontrol == "" {
		cfg.Scontrol = "scontrol"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{cfg.Dir, cfg.ScratchDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("job registry: %w", err)
		}
	}
	return &Registry{cfg: cfg, log: log}, nil
}

func (r *Registry) path(id string) string { return filepath.Join(r.cfg.Dir, id+".json") }

// Get returns the registered job id.
func (r *Registry) Get(id string) (Job, error) {
	b, err := os.ReadFile(r.path(id))
	if err != nil {
		return Job{}, fmt.Errorf("job %s: not registered on this node: %w", id, ErrNoJob)
	}
	var j Job
	if err := json.Unmarshal(b, &j); err != nil {
		return Job{}, fmt.Errorf("job %s: %w", id, err)
	}
	return j, nil
}

// List returns the registered jobs, by id.
func (r *Registry) List() []Job {
	des, _ := os.ReadDir(r.cfg.Dir)
	var out []Job
	for _, de := range des {
		if id, ok := strings.CutSuffix(de.Name(), ".json"); ok {
			if j, err := r.Get(id); err == nil {
				out = append(out, j)
			}
		}
	}
	slices.SortFunc(out, func(a, b Job) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func (r *Registry) save(j Job) error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	tmp := r.path(j.ID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("register job %s: %w", j.ID, err)
	}
	return os.Rename(tmp, r.path(j.ID))
}

// jobMemory asks scontrol for the job's memory per node.
func (r *Registry) jobMemory(ctx context.Context, id string) int64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.cfg.Scontrol, "show", "job", "-o", id).Output()
	if err != nil {
		return 0
	}
	for _, f := range strings.Fields(string(out)) {
		// AllocTRES=cpu=1,mem=50M,node=1 (per job; one node here) or
		// MinMemoryNode=50M.
		if v, ok := strings.CutPrefix(f, "MinMemoryNode="); ok {
			return parseSlurmSize(v)
		}
	}
	return 0
}

// parseSlurmSize parses Slurm's 50M, 2G, 1024K (default unit M).
func parseSlurmSize(s string) int64 {
	mult := int64(1 << 20)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		s = s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, s[:len(s)-1]
	case strings.HasSuffix(s, "T"):
		mult, s = 1<<40, s[:len(s)-1]
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0
	}
	return int64(f * float64(mult))
}

// Prolog registers the job after checking the node can run it, and
// creates its scratch tmpfs. It is idempotent (a job registered already
// keeps its scratch). On error nothing of the job is left.
func (r *Registry) Prolog(ctx context.Context, env Env) (Job, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if j, err := r.Get(env.JobID); err == nil {
		return j, nil
	}
	if env.MemoryBytes == 0 {
		env.MemoryBytes = r.jobMemory(ctx, env.JobID)
	}
	avail := memAvailable()
	j := Job{ID: env.JobID, User: env.User, UID: env.UID, GID: env.GID, MemoryBytes: env.MemoryBytes,
		Registered: time.Now().UTC(), MemAvailable: avail, Scratch: filepath.Join(r.cfg.ScratchDir, env.JobID)}
	j.ScratchBytes = r.cfg.ScratchBytes
	if j.ScratchBytes <= 0 {
		j.ScratchBytes = DefaultScratch
		if j.MemoryBytes > 0 {
			j.ScratchBytes = j.MemoryBytes / 2
		}
	}
	if err := r.health(ctx, j, avail); err != nil {
		r.report(ctx, j, "prolog", false, err.Error())
		return Job{}, err
	}
	if err := os.MkdirAll(j.Scratch, 0o700); err != nil {
		return Job{}, fmt.Errorf("job %s: scratch: %w", j.ID, err)
	}
	opts := fmt.Sprintf("size=%d,mode=0700,uid=%d,gid=%d", j.ScratchBytes, j.UID, j.GID)
	if err := unix.Mount("tmpfs", j.Scratch, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		os.Remove(j.Scratch)
		return Job{}, fmt.Errorf("job %s: mount scratch tmpfs on %s: %w", j.ID, j.Scratch, err)
	}
	if err := r.save(j); err != nil {
		unix.Unmount(j.Scratch, unix.MNT_DETACH)
		os.Remove(j.Scratch)
		return Job{}, err
	}
	r.log.Info("job registered", "job", j.ID, "user", j.User, "uid", j.UID, "path", j.Scratch, "bytes", j.ScratchBytes)
	r.report(ctx, j, "prolog", true, fmt.Sprintf("scratch %s (%d MiB)", j.Scratch, j.ScratchBytes>>20))
	return j, nil
}

// health checks RAM, the runtime and the head; the error is the reason
// the node is drained with.
func (r *Registry) health(ctx context.Context, j Job, avail int64) error {
	var errs []error
	if j.MemoryBytes > 0 && avail > 0 && avail < j.MemoryBytes {
		errs = append(errs, fmt.Errorf("only %d MiB of RAM available, job %s needs %d MiB", avail>>20, j.ID, j.MemoryBytes>>20))
	}
	if h := r.cfg.Health; h != nil {
		if err := h.Runtime(ctx); err != nil {
			errs = append(errs, fmt.Errorf("container runtime: %w", err))
		}
		if err := h.Head(ctx); err != nil {
			errs = append(errs, fmt.Errorf("head unreachable: %w", err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	return fmt.Errorf("node unhealthy: %s", strings.Join(msgs, "; "))
}

func (r *Registry) report(ctx context.Context, j Job, hook string, ok bool, detail string) {
	if r.cfg.Reporter == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.cfg.Reporter.JobEvent(ctx, overlay.JobEvent{Job: j.ID, User: j.User, Hook: hook, OK: ok, Detail: detail}); err != nil {
		r.log.Warn("report job hook to the head", "job", j.ID, "hook", hook, "err", err)
	}
}

// memAvailable returns MemAvailable from /proc/meminfo in bytes.
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// findScontrol finds scontrol on $PATH or where packages install it:
// Slurm runs the prolog and epilog with an environment that may have no
// PATH.
func findScontrol() string {
	if p, err := exec.LookPath("scontrol"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/scontrol", "/usr/local/bin/scontrol", "/opt/slurm/bin/scontrol"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "scontrol"
}

// Drain drains node in Slurm with reason, as the prolog and epilog do when
// they fail (Slurm's own reason would only say "Prolog error").
func Drain(ctx context.Context, scontrol, node, reason string) error {
	if scontrol == "" {
		scontrol = findScontrol()
	}
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		node, _, _ = strings.Cut(h, ".")
	}
	if len(reason) > 200 {
		reason = reason[:200]
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, scontrol, "update", "nodename="+node, "state=drain", "reason="+reason).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scontrol update nodename=%s state=drain: %w: %s", node, err, strings.TrimSpace(string(out)))
	}
	return nil
}
