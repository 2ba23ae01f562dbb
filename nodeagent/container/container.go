// Package container runs users' containers on a diskless node: each one's
// root file system is an overlayfs of its image's shared read-only lower
// layer (in RAM) and a size-capped tmpfs of its own, and each is run by
// the node's OCI runtime (runc or crun) from a bundle whose config.json
// ocispec writes.
//
// The agent daemon serves a Manager on its local API; users reach it
// through `ramboot-agent run`, `ps`, `logs`, `exec`, `stop` and `rm`:
//
//	m, err := container.New(container.Config{Dir: "/run/ramboot/containers", Runtime: rt, Images: cache, Jobs: jobs})
//	m.Routes(mux)                      // POST /v1/containers, GET /v1/containers, ...
//	c, err := m.Run(ctx, caller, container.RunRequest{Image: "busybox", Args: []string{"echo", "hi"}})
//
// A user may run containers only inside a job the scheduler's prolog
// registered for that user (Config.Jobs decides); the container runs as
// the user, with no capabilities, and its cgroup is a child of the job's
// cgroup, so the job's limits and accounting cover it. The memory limit
// covers the tmpfs layer (its pages are charged to the container), and the
// tmpfs must leave room for the workload under that limit: a container
// that fills its tmpfs gets ENOSPC, not the OOM killer.
//
// Each container's state is a directory under Dir (bundle, mounts, logs,
// state.json) so that a restarted daemon takes its containers over.
package container

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// Defaults.
const (
	// DefaultMemory is a container's memory limit when neither the
	// request nor its job gives one.
	DefaultMemory = 1 << 30
	// DefaultTmpfs is the size of a container's writable layer by default.
	DefaultTmpfs = 256 << 20
	// DefaultPids caps a container's tasks.
	DefaultPids = 32768
	// Headroom is the memory a container's limit must leave above its
	// tmpfs for its processes.
	Headroom = 32 << 20
	// LogBytes caps a container's output kept by the agent (a tmpfs of
	// its own; its pages count against the container's memory).
	LogBytes = 16 << 20
	// DefaultStopGrace is how long Stop waits after SIGTERM before SIGKILL.
	DefaultStopGrace = 10 * time.Second
)

// Errors callers branch on.
var (
	// ErrNotFound means no container has that id or name.
	ErrNotFound = errors.New("no such container")
	// ErrForbidden means the caller may not do that.
	ErrForbidden = errors.New("forbidden")
	// ErrInvalid means a request is malformed.
	ErrInvalid = errors.New("invalid request")
)

// Images is where containers' root file systems come from: the node's
// image cache (imagecache.Cache).
type Images interface {
	// Resolve names the image ref ("name", "name:tag", a digest).
	Resolve(ctx context.Context, ref string) (overlay.NodeImage, error)
	// Lower returns the image's read-only root file system directory and
	// a function to call when the container no longer uses it.
	Lower(ctx context.Context, digest images.Digest) (dir string, release func(), err error)
}

// Job is a scheduler job a container belongs to.
type Job struct {
	// ID is the scheduler's job id.
	ID string
	// UID and GID are the job's user and group.
	UID, GID int
	// MemoryBytes is the job's memory, 0 when unknown.
	MemoryBytes int64
	// Cgroup is the job's cgroup path (relative to the cgroup mount, as
	// in /proc/PID/cgroup), empty when unknown.
	Cgroup string
}

// Jobs decides in which job a caller may run a container.
type Jobs interface {
	// JobFor returns the job the caller's container belongs to: the job
	// named want (may be empty) if the caller may use it. It fails, with a
	// message for the user, when the caller has no such job; root may run
	// containers outside jobs (the zero Job, nil error) when want is empty.
	JobFor(caller localapi.Cred, want string) (Job, error)
}

// Config configures a Manager.
type Config struct {
	// Dir holds the containers' bundles and state; required. It should be
	// on a RAM file system (default in the agent: /run/ramboot/containers).
	Dir string
	// Runtime runs the containers; required.
	Runtime Runtime
	// Images provides root file systems; required.
	Images Images
	// Jobs authorizes callers; nil lets only root run containers.
	Jobs Jobs
	// AllowRoot lets containers run as root (uid 0). Default false: a
	// root caller must name a user (or a job, whose user is taken).
	AllowRoot bool
	// Memory, Tmpfs and Pids are the defaults of RunRequest's fields.
	// Zero means DefaultMemory (or the job's memory), DefaultTmpfs,
	// DefaultPids.
	Memory, Tmpfs, Pids int64
	// PrivateNetwork gives containers a network namespace of their own
	// (only loopback) by default. Default: the host's network, as HPC
	// jobs need.
	PrivateNetwork bool
	// Logger receives container starts and exits at Info; nil discards.
	Logger *slog.Logger
}

// State is a container's life-cycle state.
type State string

// The states.
const (
	StateCreated State = "created" // bundle ready, not run (`bundle`)
	StateRunning State = "running"
	StateExited  State = "exited"
)

// Container is what the agent knows of one container.
type Container struct {
	// ID is the container's id (also the runtime's).
	ID string `json:"id"`
	// Name is its name, unique on the node.
	Name string `json:"name"`
	// Image is the image reference as asked.
	Image string `json:"image"`
	// Digest is the image's manifest digest.
	Digest string `json:"digest"`
	// Job is the scheduler job it belongs to, if any.
	Job string `json:"job,omitempty"`
	// UID is its processes' user.
	UID int `json:"uid"`
	// GID is its processes' group.
	GID int `json:"gid"`
	// Args is its command.
	Args []string `json:"args"`
	// State is created, running or exited.
	State State `json:"state"`
	// Pid is its first process on the host while running.
	Pid int `json:"pid,omitempty"`
	// ExitCode is its exit status once exited; -1 when unknown (the
	// process was not the agent's child), 128+n when killed by signal n.
	ExitCode int `json:"exitCode"`
	// Created is when it was created.
	Created time.Time `json:"created"`
	// Started is when its command started.
	Started time.Time `json:"started,omitzero"`
	// Finished is when its command exited.
	Finished time.Time `json:"finished,omitzero"`
	// MemoryBytes is its memory limit.
	MemoryBytes int64 `json:"memoryBytes"`
	// TmpfsBytes is the size of its writable layer.
	TmpfsBytes int64 `json:"tmpfsBytes"`
	// CPUs is its CPU quota, 0 for none.
	CPUs float64 `json:"cpus,omitempty"`
	// Pids caps its tasks.
	Pids int64 `json:"pids"`
	// TmpfsUsed is what its writable layer holds now.
	TmpfsUsed int64 `json:"tmpfsUsed"`
	// Cgroup is its cgroup path, empty for a bundle.
	Cgroup string `json:"cgroup,omitempty"`
	// Bundle is its bundle directory.
	Bundle string `json:"bundle"`
}

// RunRequest is the body of POST /v1/containers.
type RunRequest struct {
	// Image is the image reference; required.
	Image string `json:"image"`
	// Args is the command; empty means /bin/sh.
	Args []string `json:"args"`
	// Name names the container; default its id.
	Name string `json:"name,omitempty"`
	// Env is KEY=VALUE pairs.
	Env []string `json:"env,omitempty"`
	// Binds are SRC:DST[:ro] host paths to mount.
	Binds []string `json:"binds,omitempty"`
	// TmpfsBytes sizes the writable layer; 0 = the default.
	TmpfsBytes int64 `json:"tmpfsBytes,omitempty"`
	// MemoryBytes caps memory; 0 = the job's memory or the default.
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// CPUs caps CPU time; 0 = no cap beyond the job's.
	CPUs float64 `json:"cpus,omitempty"`
	// Job is the job to run in; empty = the caller's job.
	Job string `json:"job,omitempty"`
	// User is "UID[:GID]" for root callers; ignored otherwise.
	User string `json:"user,omitempty"`
	// Cwd is the working directory in the container.
	Cwd string `json:"cwd,omitempty"`
	// PrivateNetwork gives the container its own network namespace.
	PrivateNetwork bool `json:"privateNetwork,omitempty"`
	// BundleOnly prepares the bundle without running it (`bundle`, for
	// Slurm's own OCI support): the runtime is Slurm's, the cgroup the
	// step's.
	BundleOnly bool `json:"bundleOnly,omitempty"`
	// Rootless makes the bundle for a runtime the user runs (runc
	// --rootless, Slurm's oci.conf): a user namespace, no cgroup
	// settings. Only with BundleOnly.
	Rootless bool `json:"rootless,omitempty"`
}

// ExecRequest is the body of POST /v1/containers/{id}/exec.
type ExecRequest struct {
	// Args is the command; required.
	Args []string `json:"args"`
	// Env is added to the container's environment.
	Env []string `json:"env,omitempty"`
}
