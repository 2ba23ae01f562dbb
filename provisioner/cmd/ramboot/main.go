// Command ramboot is the head node's daemon (`ramboot serve`) and the admin
// CLI that talks to it (`ramboot node ...`), plus the image builder
// (`ramboot image build`), which works without a daemon.
//
//	ramboot serve --interface eth1
//	ramboot image build ./rootfs --name compute
//	ramboot node add n001 --mac 52:54:00:00:00:01 --ip 10.0.0.11 --image compute
//	ramboot node show n001
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ramboot:", err)
		os.Exit(1)
	}
}
