// Command demo is `make demo`: it network-boots one BIOS node from
// `ramboot serve` on its embedded default configuration, inside a network
// namespace of its own, and prints the node's boot timeline as the head
// recorded it. It exits 0 when the node's agent reported it booted with
// the image the demo built.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/state"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: FAIL:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Options{Log: os.Stderr, Keep: true})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
		fmt.Fprintf(os.Stderr, "demo: logs (daemon, serial console) kept in %s\n", l.WorkDir())
	}()
	if err := l.Serve(ctx); err != nil {
		return err
	}
	digest, err := l.BuildImage(ctx, "default")
	if err != nil {
		return err
	}
	const node, mac, ip = "node1", "52:54:00:77:00:01", "10.77.0.11"
	if err := l.AddNode(ctx, node, mac, ip, ""); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "demo: ramboot node add %s --mac %s --ip %s; booting it (software emulation, expect 15-60 s)\n", node, mac, ip)
	vm, err := l.Boot(ctx, lab.VMOptions{Mode: lab.BIOS, MAC: mac})
	if err != nil {
		return err
	}
	defer vm.Stop()
	// When /init (the agent) started, from its first console line; for
	// comparing boot chains, not for deciding success.
	initAt := make(chan time.Duration, 1)
	go func() {
		if vm.WaitSerial(ctx, "ramboot-agent: file systems mounted", 10*time.Minute) == nil {
			initAt <- time.Since(vm.Started())
		}
		close(initAt)
	}()
	n, err := l.WaitBooted(ctx, node, vm, 10*time.Minute)
	if err != nil {
		return err
	}
	took := time.Since(vm.Started())
	out, err := l.CLI(ctx, "node", "show", node)
	if err != nil {
		return err
	}
	fmt.Printf("\n$ ramboot node show %s\n%s\n", node, out)
	if n.Status.State != string(state.StateBooted) {
		return fmt.Errorf("node %s is %s, not booted", node, n.Status.State)
	}
	if r := n.Status.Report; r == nil || r.ImageDigest != string(digest) {
		return fmt.Errorf("node %s runs %+v, want image default %s", node, n.Status.Report, digest)
	}
	if d, ok := <-initAt; ok {
		fmt.Printf("init (the agent) started %.1f s after QEMU started\n", d.Seconds())
	}
	fmt.Printf("PASS: %s booted image default (%s) %.1f s after QEMU started\n", node, digest, took.Seconds())
	return nil
}
