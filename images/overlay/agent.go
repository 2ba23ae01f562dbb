package overlay

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
)

// Node API routes the agent daemon calls, relative to Config.HeadURL;
// "{node}" is replaced by Config.Node (see Config.URL). All but TimePath
// need "Authorization: Bearer <Config.Token>" and are answered only to the
// node's reserved address.
const (
	// RegisterPath takes a POST of a Report when the daemon starts; the
	// node is booted (or failed) from then on. The answer is a Schedule.
	RegisterPath = "/api/v1/nodes/{node}/register"
	// HeartbeatPath takes a POST of a Heartbeat every
	// Schedule.IntervalSeconds; the answer is a Schedule.
	HeartbeatPath = "/api/v1/nodes/{node}/heartbeat"
	// ShutdownPath takes a POST of a Shutdown when the node goes down
	// cleanly; the answer is 204.
	ShutdownPath = "/api/v1/nodes/{node}/shutdown"
	// OverlayPath answers a GET with the node's current RuntimeOverlay.
	OverlayPath = "/api/v1/nodes/{node}/overlay"
	// TimePath answers a GET with the head's clock (HeadTime), to anyone.
	TimePath = "/api/v1/time"
)

// RootMode is how the agent sets up the node's root file system.
type RootMode string

// The root modes.
const (
	// RootTmpfs unpacks the image into a size-capped tmpfs: every file of
	// the image takes RAM. The default.
	RootTmpfs RootMode = "tmpfs"
	// RootCompressed keeps the image compressed in RAM, a read-only
	// squashfs (the image's compressed root, images.MediaTypeCompressedRoot)
	// under an overlayfs whose upper layer is a tmpfs capped at Root.Size:
	// the image costs its compressed size, and what the node writes the
	// upper's.
	RootCompressed RootMode = "compressed"
)

// RootModes are the root modes, in the order documentation lists them.
var RootModes = []RootMode{RootTmpfs, RootCompressed}

// Valid reports whether m is a root mode.
func (m RootMode) Valid() bool {
	for _, v := range RootModes {
		if m == v {
			return true
		}
	}
	return false
}

// DefaultRootSize is the root tmpfs's cap when Root.Size is empty: the
// kernel's own default for a tmpfs.
const DefaultRootSize = "50%"

// Root says how the agent sets up the node's root file system.
type Root struct {
	// Mode is the root mode; empty means RootTmpfs.
	Mode RootMode `json:"mode,omitempty"`
	// Size caps the root's writable RAM, in tmpfs's syntax: bytes with an
	// optional k, m, g, t suffix (powers of 1024), or a percentage of the
	// node's RAM ("50%"). Empty means DefaultRootSize.
	Size string `json:"size,omitempty"`
}

// ModeOrDefault returns Mode, or RootTmpfs when it is empty.
func (r Root) ModeOrDefault() RootMode {
	if r.Mode == "" {
		return RootTmpfs
	}
	return r.Mode
}

// SizeOrDefault returns Size, or DefaultRootSize when it is empty.
func (r Root) SizeOrDefault() string {
	if r.Size == "" {
		return DefaultRootSize
	}
	return r.Size
}

// Validate reports every problem with r.
func (r Root) Validate() error {
	var errs []error
	if m := r.ModeOrDefault(); !m.Valid() {
		errs = append(errs, fmt.Errorf("mode: %q is not a root mode (tmpfs, compressed)", m))
	}
	if _, err := SizeBytes(r.SizeOrDefault(), 1<<30); err != nil {
		errs = append(errs, fmt.Errorf("size: %w", err))
	}
	return errors.Join(errs...)
}

// SizeBytes converts a tmpfs size ("512m", "4g", "1073741824", "50%") to
// bytes, taking percentages of memTotal. Like the kernel it rounds nothing
// and refuses zero, fractions, negative numbers and percentages above 100.
func SizeBytes(s string, memTotal int64) (int64, error) {
	num, pct := strings.CutSuffix(s, "%")
	mult := int64(1)
	if !pct && num != "" {
		switch num[len(num)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	switch {
	case err != nil || n <= 0:
		return 0, fmt.Errorf("%q is not a size like 512m, 4g or 50%%", s)
	case pct && n > 100:
		return 0, fmt.Errorf("%q: more than 100%% of RAM", s)
	case pct:
		return memTotal/100*n + memTotal%100*n/100, nil
	case n > (1<<62)/mult:
		return 0, fmt.Errorf("%q: too large", s)
	}
	return n * mult, nil
}

// RootUsage is the root file system's mode and the RAM it takes.
type RootUsage struct {
	// Mode is the root mode in use, or "rootfs" when the agent could not
	// move the root off the kernel's initramfs (see the boot's errors).
	Mode string `json:"mode"`
	// SizeBytes is the root's cap: in the compressed mode, the writable
	// upper layer's.
	SizeBytes int64 `json:"sizeBytes"`
	// UsedBytes is the RAM its files take: in the compressed mode, what the
	// node wrote (the upper layer).
	UsedBytes int64 `json:"usedBytes"`
	// LowerBytes is, in the compressed mode, the RAM the compressed image
	// takes (the read-only lower layer's squashfs); 0 in the tmpfs mode.
	// The root's RAM is UsedBytes + LowerBytes.
	LowerBytes int64 `json:"lowerBytes,omitempty"`
}

// TotalBytes is the RAM the root takes: its files, and the compressed
// image under them in the compressed mode.
func (u RootUsage) TotalBytes() int64 { return u.UsedBytes + u.LowerBytes }

// BootTimes are a boot's timings as the node measured them: uptimes on
// the node's CLOCK_BOOTTIME, which starts when the kernel's timekeeping
// does, early in the kernel's start.
type BootTimes struct {
	// KernelStart is the wall-clock time the node's uptime counts from,
	// read after the agent set the clock from the head (zero when it
	// could not), so the head can line it up with its own timeline.
	KernelStart time.Time `json:"kernelStart,omitzero"`
	// InitSeconds is the uptime at which the agent started as /init: the
	// kernel's own boot, initramfs unpacking included.
	InitSeconds float64 `json:"initSeconds"`
	// HandoverSeconds is the uptime at which the agent's init was done and
	// handed over to the image's init (or started its daemon).
	HandoverSeconds float64 `json:"handoverSeconds"`
	// ReadySeconds is the uptime at which the node was ready: systemd
	// finished starting up, or, without systemd, the daemon started. Zero
	// while systemd is still starting.
	ReadySeconds float64 `json:"readySeconds,omitempty"`
}

// Heartbeat is the body of the agent daemon's POST to HeartbeatPath.
type Heartbeat struct {
	// UptimeSeconds is the node's uptime.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// Load1 is the one-minute load average.
	Load1 float64 `json:"load1"`
	// MemAvailableBytes is MemAvailable from /proc/meminfo.
	MemAvailableBytes int64 `json:"memAvailableBytes"`
	// Root is the root file system's RAM.
	Root *RootUsage `json:"root,omitempty"`
	// SystemState is systemd's state (`systemctl is-system-running`:
	// starting, running, degraded, stopping), empty without systemd.
	SystemState string `json:"systemState,omitempty"`
	// ReadySeconds is BootTimes.ReadySeconds, once known.
	ReadySeconds float64 `json:"readySeconds,omitempty"`
	// OverlayGeneration is the generation of the overlay the node has
	// applied.
	OverlayGeneration string `json:"overlayGeneration,omitempty"`
	// AgentRSSBytes is the agent daemon's resident memory.
	AgentRSSBytes int64 `json:"agentRSSBytes,omitempty"`
	// Workload is the node's jobs and containers; nil when the daemon
	// runs no workload service.
	Workload *Workload `json:"workload,omitempty"`
}

// Schedule is the head's answer to a registration or a heartbeat.
type Schedule struct {
	// IntervalSeconds is how often the head wants a heartbeat.
	IntervalSeconds float64 `json:"intervalSeconds"`
	// DownAfterSeconds is how long the head waits without a heartbeat
	// before it marks the node down.
	DownAfterSeconds float64 `json:"downAfterSeconds"`
	// OverlayGeneration is the generation of the node's overlay as the
	// head would render it now; when it differs from the node's, the
	// daemon fetches the RuntimeOverlay.
	OverlayGeneration string `json:"overlayGeneration"`
	// HeadTime is the head's clock when it answered.
	HeadTime time.Time `json:"headTime"`
}

// Interval returns IntervalSeconds as a duration.
func (s Schedule) Interval() time.Duration { return seconds(s.IntervalSeconds) }

// DownAfter returns DownAfterSeconds as a duration.
func (s Schedule) DownAfter() time.Duration { return seconds(s.DownAfterSeconds) }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// ShutdownAction is what a node does when it goes down.
type ShutdownAction string

// The shutdown actions.
const (
	ActionPoweroff ShutdownAction = "poweroff"
	ActionReboot   ShutdownAction = "reboot"
	ActionHalt     ShutdownAction = "halt"
	// ActionStop means the agent daemon alone stops, the node stays up:
	// an admin stopped the service.
	ActionStop ShutdownAction = "stop"
)

// Shutdown is the body of the agent daemon's POST to ShutdownPath.
type Shutdown struct {
	// Action is what the node is doing.
	Action ShutdownAction `json:"action"`
	// UptimeSeconds is the node's uptime.
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// HeadTime is the answer to a GET of TimePath.
type HeadTime struct {
	// Time is the head's clock.
	Time time.Time `json:"time"`
}

// RuntimeOverlay is the answer to a GET of OverlayPath: the node's overlay
// as the head renders it now, for the daemon to apply without a reboot.
type RuntimeOverlay struct {
	// Generation identifies the content: Config without its Token, and
	// every file.
	Generation string `json:"generation"`
	// Config is the node configuration with an empty Token (the head keeps
	// only the token's hash; the node keeps its own).
	Config Config `json:"config"`
	// Files are the overlay's other files.
	Files []File `json:"files"`
}

// File is one file of a RuntimeOverlay.
type File struct {
	// Path is relative to the node's root, slash-separated, clean, with no
	// ".." element.
	Path string `json:"path"`
	// Mode is the file's permission bits (e.g. 0644).
	Mode uint32 `json:"mode"`
	// Data is the file's content.
	Data []byte `json:"data"`
}

// ValidPath checks that p can be a File's Path: relative, clean, no "..",
// and not the node configuration (that travels as RuntimeOverlay.Config).
func ValidPath(p string) error {
	switch {
	case p == "" || path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("overlay file %q: not a clean relative path", p)
	case p == ConfigPath:
		return fmt.Errorf("overlay file %q: the node configuration is not a plain file", p)
	}
	return nil
}
