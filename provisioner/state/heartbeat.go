package state

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// ErrNotRegistered means a heartbeat came for a node whose agent daemon
// has not registered in this boot (or that said it shut down): the daemon
// should register again.
var ErrNotRegistered = errors.New("not registered in this boot")

// Registration is what the agent daemon's registration adds to a Report.
type Registration struct {
	// Warnings are problems that failed no boot step.
	Warnings []string `json:"warnings,omitempty"`
	// Steps are the agent's boot steps, with the node's uptime at which
	// each finished.
	Steps []AgentStep `json:"steps,omitempty"`
	// CPUs is the number of CPUs online.
	CPUs int `json:"cpus,omitempty"`
	// RootMode is the root's mode (tmpfs, compressed, or rootfs when it
	// could not move); RootSizeBytes its cap and RootUsedBytes the RAM its
	// files take (in the compressed mode, the writable upper's).
	RootMode      string `json:"rootMode,omitempty"`
	RootSizeBytes int64  `json:"rootSizeBytes,omitempty"`
	RootUsedBytes int64  `json:"rootUsedBytes,omitempty"`
	// RootLowerBytes is the RAM of the compressed image under a
	// compressed root (0 in the tmpfs mode).
	RootLowerBytes int64 `json:"rootLowerBytes,omitempty"`
	// KernelStart is the wall-clock time the node's uptime counts from.
	KernelStart time.Time `json:"kernelStart,omitzero"`
	// InitSeconds, HandoverSeconds and ReadySeconds are the node's uptime
	// when the agent started as /init, when it handed over, and when the
	// node was ready (see overlay.BootTimes).
	InitSeconds     float64 `json:"initSeconds,omitempty"`
	HandoverSeconds float64 `json:"handoverSeconds,omitempty"`
	ReadySeconds    float64 `json:"readySeconds,omitempty"`
	// Init is PID 1 after the hand-over ("systemd", "ramboot-agent").
	Init string `json:"init,omitempty"`
	// AgentVersion is the agent's version.
	AgentVersion string `json:"agentVersion,omitempty"`
}

// AgentStep is one of the agent's boot steps on the node.
type AgentStep struct {
	// Name is the step's name (mounts, root, modules, network, ...).
	Name string `json:"name"`
	// UptimeSeconds is the node's uptime when it finished.
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// Agent is the agent daemon's last registration or heartbeat. The head
// keeps it in memory only: a heartbeat every few seconds from every node
// must not cost a disk write, and a restarted head learns it again within
// one interval.
type Agent struct {
	// LastSeen is when the head accepted the last registration or
	// heartbeat.
	LastSeen time.Time `json:"lastSeen"`
	// Remote is the address (ip:port) it came from.
	Remote string `json:"remote"`
	// PrivilegedPort is true when that port is below 1024.
	PrivilegedPort bool `json:"privilegedPort"`
	// Heartbeats counts the heartbeats accepted since the head started.
	Heartbeats int64 `json:"heartbeats"`
	// UptimeSeconds is the node's uptime.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// Load1 is the node's one-minute load average.
	Load1 float64 `json:"load1"`
	// MemAvailableBytes is the node's available RAM.
	MemAvailableBytes int64 `json:"memAvailableBytes"`
	// RootUsedBytes and RootSizeBytes are the root's RAM and its cap (in
	// the compressed mode, the writable upper's), RootLowerBytes the
	// compressed image's under a compressed root.
	RootUsedBytes  int64 `json:"rootUsedBytes"`
	RootSizeBytes  int64 `json:"rootSizeBytes"`
	RootLowerBytes int64 `json:"rootLowerBytes,omitempty"`
	// SystemState is the node's init system's state ("running").
	SystemState string `json:"systemState,omitempty"`
	// ReadySeconds is the node's uptime when it became ready.
	ReadySeconds float64 `json:"readySeconds,omitempty"`
	// OverlayGeneration is the overlay the node has applied.
	OverlayGeneration string `json:"overlayGeneration,omitempty"`
	// AgentRSSBytes is the agent daemon's resident memory.
	AgentRSSBytes int64 `json:"agentRSSBytes,omitempty"`
	// Workload is the node's jobs and containers as the last heartbeat
	// listed them; nil when the daemon sent none.
	Workload *Workload `json:"workload,omitempty"`
}

// Workload is a node's jobs and containers, as its agent daemon listed
// them in a heartbeat.
type Workload struct {
	// Jobs are the scheduler jobs the prolog registered.
	Jobs []WorkloadJob `json:"jobs"`
	// Containers are the node's containers.
	Containers []WorkloadContainer `json:"containers"`
	// OmittedJobs and OmittedContainers count those the node left out
	// to keep its heartbeat within bounds.
	OmittedJobs       int `json:"omittedJobs,omitempty"`
	OmittedContainers int `json:"omittedContainers,omitempty"`
}

// WorkloadJob is one job on a node.
type WorkloadJob struct {
	// ID is the scheduler's job id.
	ID string `json:"id"`
	// User is the job's user.
	User string `json:"user"`
	// UID is the user's id.
	UID int `json:"uid"`
	// MemoryBytes is the job's memory on the node, 0 when unknown.
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// Registered is when the prolog registered it.
	Registered time.Time `json:"registered,omitzero"`
}

// WorkloadContainer is one container on a node.
type WorkloadContainer struct {
	// ID is the container's id.
	ID string `json:"id"`
	// Name is its name on the node.
	Name string `json:"name"`
	// Image is its image reference.
	Image string `json:"image"`
	// Job is its job, if any.
	Job string `json:"job,omitempty"`
	// UID is its processes' user.
	UID int `json:"uid"`
	// State is created, running or exited.
	State string `json:"state"`
	// ExitCode is its exit status once exited.
	ExitCode int `json:"exitCode"`
	// Started is when its command started.
	Started time.Time `json:"started,omitzero"`
}

// clone returns a deep copy of a.
func (a *Agent) clone() *Agent {
	c := *a
	if a.Workload != nil {
		w := *a.Workload
		w.Jobs, w.Containers = slices.Clone(w.Jobs), slices.Clone(w.Containers)
		c.Workload = &w
	}
	return &c
}

// Register records the agent daemon's registration of node name's current
// boot, sent from from with token (see Authenticate). The first one in a
// boot is the boot's report: the boot is booted, or failed, from then on.
// A later one in the same boot (the daemon restarted, or retried after a
// lost answer) keeps that report and returns applied false; it brings a
// node that was down or off back, and is a conflict when it contradicts
// the report (failed after ready). Either way a is the node's live view
// from then on.
func (d *DB) Register(name, token string, from netip.Addr, rep Report, a Agent) (applied bool, err error) {
	now := d.now()
	if rep.Received.IsZero() {
		rep.Received = now
	}
	if a.LastSeen.IsZero() {
		a.LastSeen = now
	}
	err = d.update(name, func(r *record, ar *archive) error {
		if err := r.authenticate(token, from); err != nil {
			return err
		}
		ar.live = func() { d.live[name] = &a }
		st := &r.Status
		if st.Report != nil {
			if st.Report.State != rep.State {
				return fmt.Errorf("boot %d registered %s at %s: %w", st.ID, st.Report.State, st.Report.Received.Format(time.RFC3339), ErrConflict)
			}
			if st.State != StateDown && st.State != StateOff {
				return errNoChange
			}
			st.add(Event{Time: now, Step: StepUp, Detail: fmt.Sprintf("the agent daemon registered again, node uptime %.0fs", rep.UptimeSeconds)})
			return nil
		}
		applied = true
		st.Report = &rep
		e := Event{Time: rep.Received, Step: StepReady, Detail: registrationDetail(rep)}
		if rep.State != "ready" {
			e.Step, e.Detail = StepFailed, rep.Error
		}
		if len(rep.Warnings) > 0 {
			e.Detail += "; " + strings.Join(rep.Warnings, "; ")
		}
		st.add(e)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("registration of node %s: %w", name, err)
	}
	return applied, nil
}

// registrationDetail sums a registration up for the timeline.
func registrationDetail(rep Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel %s", rep.Kernel)
	if rep.Init != "" {
		fmt.Fprintf(&b, ", PID 1 %s", rep.Init)
	}
	if rep.InitSeconds > 0 {
		fmt.Fprintf(&b, ", init at %.1fs, handed over at %.1fs", rep.InitSeconds, rep.HandoverSeconds)
	}
	fmt.Fprintf(&b, ", uptime %.1fs", rep.UptimeSeconds)
	if rep.RootMode != "" {
		fmt.Fprintf(&b, ", root %s %d MiB of %d MiB", rep.RootMode, rep.RootUsedBytes>>20, rep.RootSizeBytes>>20)
		if rep.RootLowerBytes > 0 {
			fmt.Fprintf(&b, " over a %d MiB compressed image", rep.RootLowerBytes>>20)
		}
	}
	return b.String()
}

// Heartbeat records a heartbeat of node name's agent daemon, sent from
// from with token (see Authenticate). It costs no disk write unless the
// node changes state: a node the head had marked down is up again, and
// the first heartbeat that says the node's init system finished starting
// is kept in the timeline. It returns ErrNotRegistered when the daemon
// has not registered in the current boot, or said it shut down.
func (d *DB) Heartbeat(name, token string, from netip.Addr, a Agent) error {
	now := d.now()
	if a.LastSeen.IsZero() {
		a.LastSeen = now
	}
	err := d.update(name, func(r *record, ar *archive) error {
		if err := r.authenticate(token, from); err != nil {
			return err
		}
		st := &r.Status
		switch {
		case st.Report == nil:
			return fmt.Errorf("%s: %w", st.State, ErrNotRegistered)
		case st.State != StateBooted && st.State != StateFailed && st.State != StateDown:
			return fmt.Errorf("%s: %w", st.State, ErrNotRegistered)
		}
		prev := d.live[name]
		if prev != nil {
			a.Heartbeats = prev.Heartbeats
		}
		a.Heartbeats++
		ar.live = func() { d.live[name] = &a }
		write := false
		if st.State == StateDown {
			last := "the head's start"
			if prev != nil {
				last = now.Sub(prev.LastSeen).Round(time.Second).String() + " without"
			}
			st.add(Event{Time: now, Step: StepUp, Detail: fmt.Sprintf("heartbeats again after %s, node uptime %.0fs", last, a.UptimeSeconds)})
			write = true
		}
		if a.ReadySeconds > 0 && st.Report.ReadySeconds == 0 {
			// Once per boot: the node finished starting; keep when.
			st.Report.ReadySeconds = a.ReadySeconds
			detail := fmt.Sprintf("ready at %.1fs node uptime", a.ReadySeconds)
			if a.SystemState != "" {
				detail = a.SystemState + ", " + detail
			}
			st.add(Event{Time: now, Step: StepSystem, Detail: detail})
			write = true
		}
		if !write {
			return errNoChange // memory only: no write per heartbeat
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("heartbeat of node %s: %w", name, err)
	}
	return nil
}

// Shutdown records that node name goes down, sent from from with token
// (see Authenticate): action is what it does (poweroff, reboot, halt, or
// stop when only the agent daemon stops). A registered node is off until
// its next boot or registration.
func (d *DB) Shutdown(name, token string, from netip.Addr, action string, uptime float64) error {
	now := d.now()
	err := d.update(name, func(r *record, ar *archive) error {
		if err := r.authenticate(token, from); err != nil {
			return err
		}
		r.Status.add(Event{Time: now, Step: StepShutdown, Detail: fmt.Sprintf("%s, node uptime %.0fs", action, uptime)})
		ar.live = func() { delete(d.live, name) }
		return nil
	})
	if err != nil {
		return fmt.Errorf("shutdown of node %s: %w", name, err)
	}
	return nil
}

// MarkDown marks down every registered node (booted or failed) whose
// agent daemon has not been heard from for after: since its last
// registration or heartbeat, or since since (when the head started) for
// nodes it has not heard from at all. It returns the nodes it marked.
func (d *DB) MarkDown(now, since time.Time, after time.Duration) ([]string, error) {
	quiet := func(r *record) (time.Time, string, bool) {
		if r.Status.State != StateBooted && r.Status.State != StateFailed {
			return time.Time{}, "", false
		}
		last, what := since, "since the head started"
		if a := d.live[r.Node.Name]; a != nil {
			last, what = a.LastSeen, "since "+a.LastSeen.Format(time.TimeOnly)
		}
		// Another head may hear it (shared store: heads.go).
		if peer := d.heardLast(r.Node.Name); peer.After(last) {
			last, what = peer, "since "+peer.Format(time.TimeOnly)+", heard by another head"
		}
		return last, what, now.Sub(last) > after
	}
	d.mu.Lock()
	var cands []string
	for name, r := range d.nodes {
		if _, _, ok := quiet(r); ok {
			cands = append(cands, name)
		}
	}
	d.mu.Unlock()
	slices.Sort(cands)
	var (
		down []string
		errs []error
	)
	for _, name := range cands {
		marked := false
		err := d.update(name, func(r *record, _ *archive) error {
			last, what, ok := quiet(r)
			if !ok {
				return errNoChange
			}
			r.Status.add(Event{Time: now, Step: StepDown, Detail: fmt.Sprintf("no heartbeat for %s (%s)", now.Sub(last).Round(time.Second), what)})
			marked = true
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("mark node %s down: %w", name, err))
		} else if marked {
			down = append(down, name)
		}
	}
	return down, errors.Join(errs...)
}
