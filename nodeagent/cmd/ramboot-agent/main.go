// Command ramboot-agent is the node agent of ramboot. Booted as the
// kernel's /init (PID 1) from the node's RAM root, it mounts the kernel
// file systems, reads etc/ramboot/node.json, sets the host name, loads
// kernel modules, configures the provisioning interface, reports to the
// head and then stays PID 1 (or execs the init that ramboot.exec= on the
// kernel command line names). Run by hand:
//
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
