package daemon

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/internal/bootrec"
	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
	"github.com/ramboot/ramboot/nodeagent/rootfs"
)

// Status is the daemon's view of the node: GET /v1/status on the local
// API, and `ramboot-agent status`.
type Status struct {
	// Node is the node's name.
	Node string `json:"node"`
	// Head is the head's URL.
	Head string `json:"head"`
	// Image is the image the head assigned.
	Image overlay.ImageRef `json:"image"`
	// AgentVersion is the agent's version.
	AgentVersion string `json:"agentVersion"`
	// Registered is true once the head accepted the registration.
	Registered bool `json:"registered"`
	// Connected is true when the last request to the head succeeded.
	Connected bool `json:"connected"`
	// LastContact is when the head last answered.
	LastContact time.Time `json:"lastContact,omitzero"`
	// LastError is the last failure talking to the head.
	LastError string `json:"lastError,omitempty"`
	// Failures counts the failed requests since the last success.
	Failures int `json:"failures"`
	// Heartbeats counts the requests the head accepted.
	Heartbeats int64 `json:"heartbeats"`
	// IntervalSeconds is the heartbeat interval the head set.
	IntervalSeconds float64 `json:"intervalSeconds"`
	// DownAfterSeconds is how long the head waits before it marks the
	// node down.
	DownAfterSeconds float64 `json:"downAfterSeconds"`
	// HeadSkewSeconds is how far the node's clock was ahead of the head's
	// at the last answer (network delay included).
	HeadSkewSeconds float64 `json:"headSkewSeconds"`
	// PrivilegedPort is true when the last connection to the head left
	// from a privileged port.
	PrivilegedPort bool `json:"privilegedPort"`
	// OverlayGeneration is the overlay the node has applied.
	OverlayGeneration string `json:"overlayGeneration"`
	// OverlayRefreshed is when the daemon last applied a new overlay.
	OverlayRefreshed time.Time `json:"overlayRefreshed,omitzero"`
	// Boot is what init did.
	Boot bootrec.Record `json:"boot"`
	// SystemState is the init system's state ("running"), if known.
	SystemState string `json:"systemState,omitempty"`
	// UptimeSeconds is the node's uptime.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// MemTotalBytes is the node's RAM (MemTotal).
	MemTotalBytes int64 `json:"memTotalBytes"`
	// MemAvailableBytes is the RAM available to start programs
	// (MemAvailable).
	MemAvailableBytes int64 `json:"memAvailableBytes"`
	// Root is the root file system's mode and RAM now.
	Root overlay.RootUsage `json:"root"`
}

// fill adds the node's current figures.
func (s *Status) fill(root string) {
	fsys := os.DirFS(root)
	s.UptimeSeconds = uptime(root)
	s.MemTotalBytes, _ = procfs.ReadMemTotal(fsys)
	s.MemAvailableBytes, _ = procfs.ReadMeminfo(fsys, "MemAvailable")
	s.Root = rootUsage(root, s.Boot.Root.Mode)
}

// report builds the registration from the boot record and the node.
func (d *Daemon) report(root string) overlay.Report {
	st := d.Status()
	rec := st.Boot
	fsys := os.DirFS(root)
	r := overlay.Report{
		State: rec.State, Error: rec.Error, Warnings: rec.Warnings, Steps: rec.Steps,
		MemTotalBytes: st.MemTotalBytes, UptimeSeconds: st.UptimeSeconds,
		CPUs: cpus(root), Init: rec.Init, AgentVersion: d.Version, OverlayGeneration: st.OverlayGeneration,
	}
	if r.State == "" {
		r.State = overlay.StateReady
	}
	boot := rec.Boot
	r.Boot = &boot
	root0 := st.Root
	r.Root = &root0
	if id, err := fs.ReadFile(fsys, overlay.ImageIDPath); err == nil {
		r.ContentDigest = strings.TrimSpace(string(id))
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return r
}

// heartbeat builds a heartbeat. The init system's state is the one
// watchSystem last read: asking systemd can take seconds while it is busy
// starting units, and a heartbeat must not wait for that.
func (d *Daemon) heartbeat(root string) overlay.Heartbeat {
	st := d.Status()
	h := overlay.Heartbeat{
		UptimeSeconds: st.UptimeSeconds, MemAvailableBytes: st.MemAvailableBytes,
		ReadySeconds: st.Boot.Boot.ReadySeconds, OverlayGeneration: st.OverlayGeneration,
		SystemState: st.SystemState,
	}
	h.Load1, _ = procfs.ReadLoad1(os.DirFS(root))
	h.AgentRSSBytes, _ = procfs.ReadSelfRSS(os.DirFS("/"))
	r := st.Root
	h.Root = &r
	d.checkRoot(r)
	if d.Summary != nil {
		h.Workload = d.Summary()
	}
	return h
}

// checkRoot says once, when the root fills up, that writes fail now, and
// again when it has room.
func (d *Daemon) checkRoot(r overlay.RootUsage) {
	full := r.SizeBytes > 0 && r.UsedBytes >= r.SizeBytes/100*98
	d.mu.Lock()
	was := d.rootFull
	d.rootFull = full
	d.mu.Unlock()
	switch {
	case full && !was:
		d.log().Warn("root file system full: writes fail with ENOSPC", "bytes", r.UsedBytes, "size", r.SizeBytes)
		d.say("root file system full (%d of %d MiB): writes fail with ENOSPC", r.UsedBytes>>20, r.SizeBytes>>20)
	case !full && was:
		d.log().Info("root file system has room again", "bytes", r.UsedBytes, "size", r.SizeBytes)
	}
}

func rootUsage(root, mode string) overlay.RootUsage {
	if mode == "" {
		mode = "unknown"
	}
	u := overlay.RootUsage{Mode: mode}
	u.UsedBytes, u.SizeBytes, _ = rootfs.Usage(root)
	// The compressed root: statfs of the overlay is its upper's; the
	// compressed image under it is the lower's loop device.
	if lower, used, size, ok, err := rootfs.Layers(root); ok && err == nil {
		u.LowerBytes, u.UsedBytes, u.SizeBytes = lower, used, size
	}
	return u
}

// uptime reads /proc/uptime under root, or CLOCK_BOOTTIME.
func uptime(root string) float64 {
	if s, err := procfs.ReadUptime(os.DirFS(root)); err == nil {
		return s
	}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return float64(ts.Nano()) / 1e9
}

// cpus counts the online CPUs listed in sys/devices/system/cpu/online
// ("0-3,6"), or the CPUs this process may run on.
func cpus(root string) int {
	b, err := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/online"))
	if err != nil {
		var set unix.CPUSet
		if unix.SchedGetaffinity(0, &set) == nil {
			return set.Count()
		}
		return 0
	}
	n := 0
	for part := range strings.SplitSeq(strings.TrimSpace(string(b)), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		if !isRange {
			if err1 == nil {
				n++
			}
			continue
		}
		z, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && z >= a {
			n += z - a + 1
		}
	}
	return n
}
