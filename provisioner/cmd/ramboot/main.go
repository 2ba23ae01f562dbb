// Command ramboot is the head node's daemon (`ramboot serve`) and the admin
// CLI that talks to it (`ramboot node ...`, `ramboot apply -f`), plus the
// image builder (`ramboot image build`), which works without a daemon.
//
//	ramboot serve --interface eth1
//	ramboot image build ./rootfs --name compute
//	ramboot profile add compute --image compute
//	ramboot node add n[001-128] --mac 52:54:00:00:01:00+ --ip 10.0.0.101+ --profile compute
//	ramboot node show n001
//
// Exit statuses: 0 success, 1 failure, 2 usage, 3 invalid input refused,
// 4 not found, 5 conflict, 6 no daemon reachable, 7 token refused
// (docs/cli.md).
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
		os.Exit(exitCode(err))
	}
}
