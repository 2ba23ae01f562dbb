// Command ramboot-agent is the node agent of ramboot. Booted as the
// kernel's /init (PID 1) from the node's RAM root, it prepares the node
// (kernel file systems, the root moved into a capped tmpfs, host name,
// modules for the devices present, the provisioning interface, the clock)
// and hands PID 1 to the image's init, with `ramboot-agent daemon`
// installed as a systemd service; in an image without an init it stays
// PID 1, reaps orphans and runs the daemon itself. The daemon registers
// with the head, heartbeats and serves the node's local API, containers
// and Slurm's prolog and epilog included. Run by hand:
//
//	ramboot-agent status            # the node's view (root)
//	ramboot-agent run busybox -- echo hi
//	ramboot-agent ps
//	ramboot-agent init --root /srv/images/n001 --dry-run
//	ramboot-agent version
//
// See docs/agent.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Stdout, os.Stderr); err != nil {
		// A container's or command's exit status becomes ours.
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "ramboot-agent:", err)
		os.Exit(1)
	}
}
