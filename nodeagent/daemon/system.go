package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ramboot/ramboot/images/overlay"
)

// systemdBooted reports whether systemd runs the node: it creates
// /run/systemd/system early at boot (sd_booted(3)).
func systemdBooted(root string) bool {
	fi, err := os.Stat(filepath.Join(root, "run/systemd/system"))
	return err == nil && fi.IsDir()
}

// systemd is System through systemctl, which talks to PID 1 over its
// private socket (no D-Bus needed).
type systemd struct{}

// State returns `systemctl is-system-running`.
func (systemd) State(ctx context.Context) string {
	// It exits non-zero for every state but "running": read its output.
	out, _ := exec.CommandContext(ctx, "systemctl", "is-system-running").Output()
	return strings.TrimSpace(string(out))
}

// WaitReady runs `systemctl is-system-running --wait`, which returns once
// start-up has finished.
func (systemd) WaitReady(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "systemctl", "is-system-running", "--wait").Output()
	if s := strings.TrimSpace(string(out)); s == "running" || s == "degraded" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("systemctl is-system-running --wait: %s: %w", strings.TrimSpace(string(out)), err)
	}
	return nil
}

// ShutdownAction finds the shutdown target systemd has a job for. The
// jobs are read first: while systemd works through a poweroff, `systemctl
// is-system-running` can still answer "running" or be slow to answer on a
// loaded node, and a stop of this service alone has no target job.
func (s systemd) ShutdownAction(ctx context.Context) overlay.ShutdownAction {
	out, _ := exec.CommandContext(ctx, "systemctl", "list-jobs", "--no-legend", "--no-pager").Output()
	if a, ok := actionFromJobs(string(out)); ok {
		return a
	}
	if s.State(ctx) == "stopping" {
		return overlay.ActionPoweroff // stopping, with the job already gone
	}
	return overlay.ActionStop
}

// actionFromJobs maps the output of `systemctl list-jobs` to the shutdown
// it is running, if any.
func actionFromJobs(jobs string) (overlay.ShutdownAction, bool) {
	switch {
	case strings.Contains(jobs, "poweroff.target"):
		return overlay.ActionPoweroff, true
	case strings.Contains(jobs, "reboot.target"), strings.Contains(jobs, "kexec.target"):
		return overlay.ActionReboot, true
	case strings.Contains(jobs, "halt.target"):
		return overlay.ActionHalt, true
	}
	return "", false
}

// sdNotify sends state to the service manager's $NOTIFY_SOCKET, as
// sd_notify(3) does; without the variable it does nothing.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}
