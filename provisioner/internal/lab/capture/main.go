// Command capture records the DHCP packets of real network boots for the
// golden tests of pxe/dhcp: it starts `ramboot serve` in a lab namespace
// and boots QEMU nodes from it, each with tcpdump recording UDP ports 67,
// 68 and 4011 on the lab bridge into OUT/NAME.pcap:
//
//   - bios: SeaBIOS with the NIC's iPXE ROM (iPXE's DHCP);
//   - uefi: OVMF's own PXE client, then the snponly.efi it fetched over
//     TFTP (the chained iPXE's DHCP).
//
// Each boot is stopped once iPXE asked for its script: the DHCP steps are
// over by then. It needs root, QEMU and tcpdump:
//
//	go run ./provisioner/internal/lab/capture -out pxe/dhcp/testdata/capture
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
)

func main() {
	out := flag.String("out", "pxe/dhcp/testdata/capture", "directory for the pcap files")
	only := flag.String("only", "", "capture only this boot (bios or uefi)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *out, *only)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		os.Exit(1)
	}
}

// boot is one capture: a node booted by one firmware.
type boot struct {
	name string
	mode lab.Mode
	mac  string
	ip   string
}

var boots = []boot{
	{"bios", lab.BIOS, "52:54:00:77:c0:0a", "10.77.0.20"},
	{"uefi", lab.UEFI, "52:54:00:77:c0:0b", "10.77.0.21"},
}

// scriptAsked is iPXE's console line when it fetches its script.
var scriptAsked = regexp.MustCompile(`http://[0-9.]+(:[0-9]+)?/boot/ipxe\?mac=`)

func run(ctx context.Context, out, only string) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	l, err := lab.New(ctx, lab.Options{Log: os.Stderr})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	if err := l.Serve(ctx); err != nil {
		return err
	}
	for _, b := range boots {
		if only != "" && b.name != only {
			continue
		}
		if err := l.AddNode(ctx, "cap-"+b.name, b.mac, b.ip, ""); err != nil {
			return err
		}
		if err := capture(ctx, l, b, filepath.Join(out, b.name+".pcap")); err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
	}
	return nil
}

func capture(ctx context.Context, l *lab.Lab, b boot, path string) error {
	stop, err := l.Capture(ctx, path)
	if err != nil {
		return err
	}
	vm, err := l.Boot(ctx, lab.VMOptions{Mode: b.mode, MAC: b.mac})
	if err != nil {
		stop()
		return err
	}
	_, werr := vm.WaitSerialMatch(ctx, scriptAsked, 5*time.Minute)
	vm.Stop()
	// Retransmissions still in flight land in the capture too.
	time.Sleep(time.Second)
	if err := stop(); err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("%w; serial log %s", werr, vm.SerialLog)
	}
	fmt.Fprintf(os.Stderr, "capture: %s boot recorded in %s\n", b.name, path)
	return nil
}
