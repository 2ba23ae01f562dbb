// Package workload assembles what the agent daemon serves for the node's
// jobs and containers: the image cache, the probed OCI runtime, the
// container manager and the job registry, wired to the head of the node
// configuration, as local API routes. The agent daemon runs it: the
// workload uses the daemon's client of the head and asks the daemon
// whether it is connected.
//
//	w, err := workload.New(ctx, workload.Config{StateDir: "/run/ramboot", Head: headClient, Connected: d.Connected})
//	defer w.Close()
//	w.Routes(mux)         // the local API's /v1/containers..., /v1/jobs..., /v1/runtime
//	s := w.Summary()      // jobs and containers, for the heartbeat (overlay.Workload)
package workload

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/imagecache"
	"github.com/ramboot/ramboot/nodeagent/job"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/ociruntime"
)

// DefaultStateDir is where the workload keeps its state: RAM on every
// node (/run is a tmpfs).
const DefaultStateDir = "/run/ramboot"

// Config configures the node's workload.
type Config struct {
	// StateDir holds images/, containers/, jobs/, scratch/ and runtime/.
	// Default DefaultStateDir.
	StateDir string
	// Head is the agent daemon's client of the head's node API: images
	// are resolved and fetched, and job events reported, through it. Nil
	// means no head: only cached images run and nothing is reported.
	Head *headapi.Client
	// Connected says whether the agent daemon is registered with the
	// head and heard from it lately: nil, or why not (the prolog's
	// health check). Nil means the check passes.
	Connected func() error
	// CacheBytes caps the image cache. Default: a quarter of the RAM.
	CacheBytes int64
	// ScratchBytes sizes each job's scratch. Default: half the job's
	// memory, else 1 GiB.
	ScratchBytes int64
	// Memory and Tmpfs are containers' default limits (see container).
	Memory, Tmpfs int64
	// AllowRoot lets containers run as root.
	AllowRoot bool
	// Runtimes are the candidate runtimes in order of preference.
	// Default ociruntime.DefaultCandidates.
	Runtimes []string
	// Logger; nil discards.
	Logger *slog.Logger
}

// Workload is the node's jobs and containers service.
type Workload struct {
	cfg Config
	log *slog.Logger
	// Cache is the image cache.
	Cache *imagecache.Cache
	// Ctrs is the container manager.
	Ctrs *container.Manager
	// Jobs is the job registry.
	Jobs *job.Registry

	mu      sync.Mutex
	rt      *ociruntime.Runtime
	report  ociruntime.Report
	rtError error
}

// New probes the runtime and builds the service. A node where no runtime
// works still serves jobs: the prolog then fails with the probe's reason.
func New(ctx context.Context, cfg Config) (*Workload, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Workload{cfg: cfg, log: log}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	w.Cache = &imagecache.Cache{Dir: filepath.Join(cfg.StateDir, "images"), MaxBytes: cfg.CacheBytes, Logger: log}
	if cfg.Head != nil {
		w.Cache.Head = cfg.Head // not a nil *headapi.Client in the interface
	}
	w.probe(ctx)
	ctrs, err := container.New(container.Config{
		Dir: filepath.Join(cfg.StateDir, "containers"), Runtime: runtimeRef{w}, Images: w.Cache,
		AllowRoot: cfg.AllowRoot, Memory: cfg.Memory, Tmpfs: cfg.Tmpfs, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	w.Ctrs = ctrs
	var rep job.Reporter
	if cfg.Head != nil {
		rep = w
	}
	w.Jobs, err = job.New(job.Config{
		Dir: filepath.Join(cfg.StateDir, "jobs"), ScratchDir: filepath.Join(cfg.StateDir, "scratch"),
		ScratchBytes: cfg.ScratchBytes, Containers: ctrs, Health: w, Reporter: rep, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	// The manager asks the registry who may run what.
	ctrs.SetJobs(w.Jobs)
	return w, nil
}

// probe finds the runtime.
func (w *Workload) probe(ctx context.Context) {
	rt, rep, err := ociruntime.Probe(ctx, ociruntime.ProbeOptions{
		Candidates: w.cfg.Runtimes, Dir: w.cfg.StateDir, Root: filepath.Join(w.cfg.StateDir, "runtime"),
	})
	w.mu.Lock()
	w.rt, w.report, w.rtError = rt, rep, err
	w.mu.Unlock()
	if err != nil {
		w.log.Warn("no container runtime works", "err", err)
	} else {
		w.log.Info("container runtime", "runtime", rt.Name, "version", rt.Version, "detail", rep.Summary())
	}
}

// Runtime is the job.Health check of the runtime: it probes again when
// the last probe found none.
func (w *Workload) Runtime(ctx context.Context) error {
	w.mu.Lock()
	err := w.rtError
	w.mu.Unlock()
	if err != nil {
		w.probe(ctx)
		w.mu.Lock()
		err = w.rtError
		w.mu.Unlock()
	}
	return err
}

// Head is the job.Health check of the head: the agent daemon is
// registered with it and heard from it lately.
func (w *Workload) Head(ctx context.Context) error {
	if w.cfg.Connected == nil {
		return nil
	}
	return w.cfg.Connected()
}

// JobEvent reports a job hook to the head.
func (w *Workload) JobEvent(ctx context.Context, ev overlay.JobEvent) error {
	return w.cfg.Head.JobEvent(ctx, ev)
}

// runtimeRef is the current runtime as a container.Runtime.
type runtimeRef struct{ w *Workload }

func (r runtimeRef) get() (*ociruntime.Runtime, error) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	if r.w.rt == nil {
		return nil, r.w.rtError
	}
	return r.w.rt, nil
}

func (r runtimeRef) Run(ctx context.Context, id, bundle string, io ociruntime.IO) (int, error) {
	rt, err := r.get()
	if err != nil {
		return 0, err
	}
	return rt.Run(ctx, id, bundle, io)
}

func (r runtimeRef) Exec(ctx context.Context, id string, p *specs.Process, bundle string, io ociruntime.IO) error {
	rt, err := r.get()
	if err != nil {
		return err
	}
	return rt.Exec(ctx, id, p, bundle, io)
}

func (r runtimeRef) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	rt, err := r.get()
	if err != nil {
		return err
	}
	return rt.Kill(ctx, id, sig)
}

func (r runtimeRef) Delete(ctx context.Context, id string, force bool) error {
	rt, err := r.get()
	if err != nil {
		return nil // nothing can have been run
	}
	return rt.Delete(ctx, id, force)
}

// RuntimeReport is the answer to GET /v1/runtime.
type RuntimeReport struct {
	ociruntime.Report
	// Error says why no runtime works, if none does.
	Error string `json:"error,omitempty"`
}

// Routes adds the container, job and runtime routes to mux.
func (w *Workload) Routes(mux *http.ServeMux) {
	w.Ctrs.Routes(mux)
	w.Jobs.Routes(mux)
	mux.HandleFunc("GET /v1/runtime", func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		rep := RuntimeReport{Report: w.report}
		if w.rtError != nil {
			rep.Error = w.rtError.Error()
		}
		w.mu.Unlock()
		localapi.WriteJSON(rw, http.StatusOK, rep)
	})
	mux.HandleFunc("GET /v1/images", func(rw http.ResponseWriter, r *http.Request) {
		localapi.WriteJSON(rw, http.StatusOK, w.Cache.List())
	})
	mux.HandleFunc("GET /v1/metrics", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.WriteMetrics(rw)
	})
}

// WriteMetrics writes the workload's metrics in the Prometheus text
// format (the agent stays free of the Prometheus client library).
func (w *Workload) WriteMetrics(out io.Writer) {
	st := w.Cache.Stats()
	var lower, blob int64
	for _, im := range w.Cache.List() {
		lower += im.LowerBytes
		blob += im.BlobBytes
	}
	states := map[container.State]int{}
	for _, c := range w.Ctrs.List(localapi.Cred{}) {
		states[c.State]++
	}
	counter := func(name, help string, v int64) {
		fmt.Fprintf(out, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	gauge := func(name, help string, v int64) {
		fmt.Fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", name, help, name, name, v)
	}
	counter("ramboot_agent_image_fetches_total", "Image blobs downloaded from the head.", st.Fetches.Load())
	counter("ramboot_agent_image_fetched_bytes_total", "Bytes of image blobs downloaded.", st.FetchedBytes.Load())
	counter("ramboot_agent_image_refetches_total", "Cached image blobs found corrupt and fetched again.", st.Refetches.Load())
	counter("ramboot_agent_image_unpacks_total", "Image lowers unpacked.", st.Unpacks.Load())
	counter("ramboot_agent_image_mounts_total", "Compressed image lowers mounted (squashfs, not unpacked).", st.Mounts.Load())
	counter("ramboot_agent_image_cache_hits_total", "Container starts served by an unpacked lower.", st.Hits.Load())
	counter("ramboot_agent_image_evictions_total", "Images evicted from the cache to make room.", st.Evictions.Load())
	gauge("ramboot_agent_image_cache_bytes", "RAM the image cache takes (blobs and lowers).", lower+blob)
	fmt.Fprintf(out, "# HELP ramboot_agent_containers Containers on the node by state.\n# TYPE ramboot_agent_containers gauge\n")
	for _, s := range []container.State{container.StateCreated, container.StateRunning, container.StateExited} {
		fmt.Fprintf(out, "ramboot_agent_containers{state=%q} %d\n", s, states[s])
	}
	gauge("ramboot_agent_jobs", "Jobs registered on the node by the prolog.", int64(len(w.Jobs.List())))
}

// Summary returns the node's jobs and containers as the heartbeat carries
// them: at most overlay.MaxWorkloadJobs jobs and MaxWorkloadContainers
// containers (the rest counted), text cut to MaxWorkloadText.
func (w *Workload) Summary() *overlay.Workload {
	s := w.Jobs.Summarize(w.Ctrs)
	out := &overlay.Workload{Jobs: []overlay.WorkloadJob{}, Containers: []overlay.WorkloadContainer{}}
	for i, j := range s.Jobs {
		if i == overlay.MaxWorkloadJobs {
			out.OmittedJobs = len(s.Jobs) - i
			break
		}
		out.Jobs = append(out.Jobs, overlay.WorkloadJob{ID: clip(j.ID), User: clip(j.User), UID: j.UID, MemoryBytes: j.MemoryBytes, Registered: j.Registered})
	}
	for i, c := range s.Containers {
		if i == overlay.MaxWorkloadContainers {
			out.OmittedContainers = len(s.Containers) - i
			break
		}
		out.Containers = append(out.Containers, overlay.WorkloadContainer{
			ID: clip(c.ID), Name: clip(c.Name), Image: clip(c.Image), Job: clip(c.Job), UID: c.UID,
			State: string(c.State), ExitCode: c.ExitCode, Started: c.Started,
		})
	}
	return out
}

// clip cuts s to overlay.MaxWorkloadText bytes.
func clip(s string) string {
	if len(s) <= overlay.MaxWorkloadText {
		return s
	}
	return strings.ToValidUTF8(s[:overlay.MaxWorkloadText], "")
}

// Close releases what the service holds in memory; containers keep
// running and images stay cached for the next daemon.
func (w *Workload) Close() error { return w.Ctrs.Close() }
