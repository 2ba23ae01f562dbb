package state

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// States a registered node moves between after its boot.
const (
	// StateDown: the node's agent daemon stopped heartbeating.
	StateDown = "down"
	// StateOff: the node's agent daemon said the node shuts down.
	StateOff = "off"
)

// Steps of the timeline after the boot.
const (
	StepDown     = "down"     // no heartbeat for the down timeout
	StepUp       = "up"       // heartbeats again after being down
	StepShutdown = "shutdown" // the agent said the node goes down
	StepSystem   = "system"   // the node's init system finished starting
)

// ErrNotRegistered means a heartbeat came for a node whose agent daemon
// has not registered in this boot (or whose boot the head no longer
// knows): the daemon should register again.
var ErrNotRegistered = errors.New("not registered in this boot")

// Registration is what the agent daemon's registration adds to a Report.
type Registration struct {
	// Warnings are problems that failed no boot step.
	Warnings []string `json:"warnings,omitempty"`
	// Steps are the agent's boot steps, with the node's uptime at which
	// each finished.
	Steps []Step `json:"steps,omitempty"`
	// CPUs is the number of CPUs online.
	CPUs int `json:"cpus,omitempty"`
	// RootMode is the root's mode (tmpfs, or rootfs when it could not
	// move); RootSizeBytes its cap and RootUsedBytes the RAM it takes.
	RootMode      string `json:"rootMode,omitempty"`
	RootSizeBytes int64  `json:"rootSizeBytes,omitempty"`
	RootUsedBytes int64  `json:"rootUsedBytes,omitempty"`
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

// Step is one of the agent's boot steps.
type Step struct {
	// Name is the step's name (mounts, root, modules, network, ...).
	Name string `json:"name"`
	// UptimeSeconds is the node's uptime when it finished.
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// Agent is the agent daemon's last heartbeat. The head keeps it in memory
// only: a heartbeat every few seconds from every node must not cost a
// disk write, and a restarted head learns it again within one interval.
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
	// RootUsedBytes and RootSizeBytes are the root's RAM and its cap.
	RootUsedBytes int64 `json:"rootUsedBytes"`
	RootSizeBytes int64 `json:"rootSizeBytes"`
	// SystemState is the node's init system's state ("running").
	SystemState string `json:"systemState,omitempty"`
	// ReadySeconds is the node's uptime when it became ready.
	ReadySeconds float64 `json:"readySeconds,omitempty"`
	// OverlayGeneration is the overlay the node has applied.
	OverlayGeneration string `json:"overlayGeneration,omitempty"`
	// AgentRSSBytes is the agent daemon's resident memory.
	AgentRSSBytes int64 `json:"agentRSSBytes,omitempty"`
}

// authed returns node name's record when token is its current token;
// what names the request in errors. d.mu must be held.
func (d *DB) authed(name, token, what string) (*record, error) {
	r, ok := d.nodes[name]
	if !ok {
		return nil, fmt.Errorf("%s of node %s: %w", what, name, ErrNotFound)
	}
	if !r.tokenOK(token) {
		return nil, fmt.Errorf("%s of node %s: %w", what, name, ErrBadToken)
	}
	return r, nil
}

// tokenOK reports whether token is the node's current token.
func (r *record) tokenOK(token string) bool {
	return r.TokenHash != "" && subtle.ConstantTimeCompare([]byte(hashHex(token)), []byte(r.TokenHash)) == 1
}

// change applies f to a copy of the record, writes the copy and only then
// makes it the record: memory never shows what the disk does not hold.
// d.mu must be held.
func (d *DB) change(r *record, f func(nr *record)) error {
	nr := *r
	nr.Status.Timeline = slices.Clone(r.Status.Timeline)
	f(&nr)
	if err := d.put(&nr); err != nil {
		return err
	}
	*r = nr
	return nil
}

// CheckToken returns ErrBadToken unless token is node name's current
// token.
func (d *DB) CheckToken(name, token string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, err := d.authed(name, token, "request")
	return err
}

// Register checks the node's token and records its agent daemon's
// registration: the boot's report (the node is booted, or failed) and a
// first heartbeat from remote.
func (d *DB) Register(name, token string, rep Report, a Agent) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, err := d.authed(name, token, "registration")
	if err != nil {
		return err
	}
	now := d.now()
	if rep.Received.IsZero() {
		rep.Received = now
	}
	if a.LastSeen.IsZero() {
		a.LastSeen = now
	}
	return d.change(r, func(nr *record) {
		st := &nr.Status
		st.Report = &rep
		step, detail := StepReady, registrationDetail(rep)
		st.State = StateBooted
		if rep.State != "ready" {
			step, detail, st.State = StepFailed, rep.Error, StateFailed
		}
		if len(rep.Warnings) > 0 {
			detail += "; " + strings.Join(rep.Warnings, "; ")
		}
		st.add(Event{Time: rep.Received, Step: step, Detail: detail})
		nr.live = &a
	})
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
	}
	return b.String()
}

// Heartbeat checks the node's token and records a heartbeat. A node the
// head had marked down is up again (booted, or failed as its report
// said). It returns ErrNotRegistered when the node's agent has not
// registered in the boot the head knows of.
func (d *DB) Heartbeat(name, token string, a Agent) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, err := d.authed(name, token, "heartbeat")
	if err != nil {
		return err
	}
	switch r.Status.State {
	case StateBooted, StateFailed, StateDown:
	default:
		return fmt.Errorf("heartbeat of node %s (%s): %w", name, r.Status.State, ErrNotRegistered)
	}
	if r.Status.Report == nil {
		return fmt.Errorf("heartbeat of node %s: %w", name, ErrNotRegistered)
	}
	now := d.now()
	if a.LastSeen.IsZero() {
		a.LastSeen = now
	}
	if r.live != nil {
		a.Heartbeats = r.live.Heartbeats
	}
	a.Heartbeats++
	if a.ReadySeconds > 0 && r.Status.Report.ReadySeconds == 0 {
		// Once per boot: the node finished starting; keep when.
		return d.change(r, func(nr *record) {
			rep := *nr.Status.Report
			rep.ReadySeconds = a.ReadySeconds
			nr.Status.Report = &rep
			detail := fmt.Sprintf("ready at %.1fs node uptime", a.ReadySeconds)
			if a.SystemState != "" {
				detail = a.SystemState + ", " + detail
			}
			nr.Status.add(Event{Time: now, Step: StepSystem, Detail: detail})
			if nr.Status.State == StateDown {
				nr.Status.State = StateBooted
				if rep.State != "ready" {
					nr.Status.State = StateFailed
				}
			}
			nr.live = &a
		})
	}
	if r.Status.State != StateDown {
		r.live = &a // memory only: no write per heartbeat
		return nil
	}
	last := "the head's start"
	if r.live != nil {
		last = now.Sub(r.live.LastSeen).Round(time.Second).String() + " without"
	}
	return d.change(r, func(nr *record) {
		nr.Status.State = StateBooted
		if nr.Status.Report.State != "ready" {
			nr.Status.State = StateFailed
		}
		nr.Status.add(Event{Time: now, Step: StepUp, Detail: "heartbeats again after " + last + ", node uptime " + fmt.Sprintf("%.0fs", a.UptimeSeconds)})
		nr.live = &a
	})
}

// Shutdown checks the node's token and records that the node goes down:
// action is what it does (poweroff, reboot, halt, or stop when only the
// agent daemon stops). The node is off until its next boot or
// registration.
func (d *DB) Shutdown(name, token, action string, uptime float64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, err := d.authed(name, token, "shutdown")
	if err != nil {
		return err
	}
	now := d.now()
	return d.change(r, func(nr *record) {
		nr.Status.State = StateOff
		nr.Status.add(Event{Time: now, Step: StepShutdown, Detail: fmt.Sprintf("%s, node uptime %.0fs", action, uptime)})
		nr.live = nil
	})
}

// MarkDown marks down every registered node (booted or failed) whose
// agent daemon has not been heard from for after: since its last
// heartbeat, or since since (when the head started) for nodes it has not
// heard from at all. It returns the nodes it marked.
func (d *DB) MarkDown(now, since time.Time, after time.Duration) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var (
		down []string
		errs []error
	)
	for name, r := range d.nodes {
		if r.Status.State != StateBooted && r.Status.State != StateFailed {
			continue
		}
		last, what := since, "since the head started"
		if r.live != nil {
			last, what = r.live.LastSeen, "since "+r.live.LastSeen.Format(time.TimeOnly)
		}
		if now.Sub(last) <= after {
			continue
		}
		err := d.change(r, func(nr *record) {
			nr.Status.State = StateDown
			nr.Status.add(Event{Time: now, Step: StepDown, Detail: fmt.Sprintf("no heartbeat for %s (%s)", now.Sub(last).Round(time.Second), what)})
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		down = append(down, name)
	}
	slices.Sort(down)
	return down, errors.Join(errs...)
}
