// Package bootrec is the record of a node's boot that the agent's init
// leaves for the agent daemon in /run: what each boot step did, the
// timings, the root, and what PID 1 became. The daemon sends it to the head
// when it registers and shows it in `ramboot-agent status`.
//
//	err := bootrec.Write("/", bootrec.Record{State: overlay.StateReady, ...})
//	rec, err := bootrec.Read("/")
package bootrec

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ramboot/ramboot/images/overlay"
)

// Path is the record's place under the node's root; /run is a tmpfs the
// agent mounts and systemd keeps.
const Path = "run/ramboot/boot.json"

// Record is what init did.
type Record struct {
	// State is StateReady when every step succeeded, else StateFailed.
	State overlay.State `json:"state"`
	// Error lists the failed steps and their errors, one line.
	Error string `json:"error,omitempty"`
	// Warnings are problems that did not fail a step (the head could not
	// be asked for the time, say).
	Warnings []string `json:"warnings,omitempty"`
	// Steps are the steps that succeeded, with the uptime at which each
	// finished.
	Steps []overlay.Step `json:"steps"`
	// Boot are the boot's timings; ReadySeconds is the daemon's to fill.
	Boot overlay.BootTimes `json:"boot"`
	// Root is the root's mode and cap ("rootfs" when it could not move).
	Root overlay.RootUsage `json:"root"`
	// Modules are the modules loaded, in order.
	Modules []string `json:"modules,omitempty"`
	// Init is what PID 1 became: the image's init's name ("systemd") or
	// "ramboot-agent".
	Init string `json:"init"`
	// ClockOffsetSeconds is how far the agent moved the clock to the
	// head's (positive: forward).
	ClockOffsetSeconds float64 `json:"clockOffsetSeconds"`
}

// Write writes r to Path under root (mode 0644, through a renamed
// temporary file).
func Write(root string, r Record) error {
	p := filepath.Join(root, Path)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write boot record: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("write boot record: %w", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write boot record: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write boot record: %w", err)
	}
	return nil
}

// Read reads the record at Path under root.
func Read(root string) (Record, error) {
	b, err := os.ReadFile(filepath.Join(root, Path))
	if err != nil {
		return Record{}, fmt.Errorf("read boot record: %w", err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("read boot record %s: %w", filepath.Join(root, Path), err)
	}
	return r, nil
}
