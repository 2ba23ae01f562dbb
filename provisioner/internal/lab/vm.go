package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// Mode is how a VM's firmware network-boots.
type Mode string

// The firmware modes.
const (
	// BIOS is SeaBIOS with the NIC's iPXE option ROM (Debian's ipxe-qemu):
	// the firmware's PXE client is already iPXE.
	BIOS Mode = "bios"
	// UEFI is OVMF with no option ROM: the firmware's own PXE client gets
	// snponly.efi over TFTP, which then chains to the script.
	UEFI Mode = "uefi"
	// UEFIHTTP is OVMF booting by UEFI HTTP boot: PXE is switched off
	// (fw_cfg opt/org.tianocore/IPv4PXESupport and IPv6PXESupport), so the
	// firmware's first network boot option is HTTPv4: it sends option 60
	// HTTPClient and arch 16, fetches the iPXE binary from the URL in the
	// answer over HTTP, and that chains to the script.
	UEFIHTTP Mode = "uefi-http"
)

// OVMF firmware images (Debian's ovmf package, 4 MiB, no Secure Boot).
var (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VMOptions describe one VM.
type VMOptions struct {
	// Mode is BIOS or UEFI.
	Mode Mode
	// MAC is the NIC's MAC address.
	MAC string
	// MemMiB is the VM's RAM; default 1024.
	MemMiB int
	// NIC is the QEMU network device: "virtio-net-pci" (default) or
	// "e1000". In UEFI mode an e1000 boots through its iPXE option ROM
	// (OVMF has no e1000 driver), a virtio NIC through OVMF's own PXE.
	NIC string
	// LinkMbit, when set, shapes the head-to-VM direction of the VM's link
	// to that rate (a token bucket on its tap), like a slow provisioning
	// network; default unlimited.
	LinkMbit int
	// Reboot lets a guest reset start the firmware again; by default
	// (QEMU's -no-reboot) a reset ends QEMU.
	Reboot bool
}

// VM is a running QEMU.
type VM struct {
	// SerialLog is the file the VM's serial console is written to.
	SerialLog string
	// QMP is the unix socket of QEMU's machine protocol (see QMP).
	QMP     string
	proc    *proc
	started time.Time
}

// Pid returns QEMU's process id.
func (v *VM) Pid() int { return v.proc.cmd.Process.Pid }

// Exited reports whether QEMU has exited.
func (v *VM) Exited() bool { return v.proc.exited() }

// Started returns when QEMU was started.
func (v *VM) Started() time.Time { return v.started }

// Serial returns the serial console output so far.
func (v *VM) Serial() []byte {
	b, _ := os.ReadFile(v.SerialLog)
	return b
}

// Boot starts QEMU (software emulation: KVM guests hang on these machines)
// inside the namespace on a new tap on the lab bridge.
func (l *Lab) Boot(ctx context.Context, opt VMOptions) (*VM, error) {
	if opt.MemMiB == 0 {
		opt.MemMiB = 1024
	}
	if opt.NIC == "" {
		opt.NIC = "virtio-net-pci"
	}
	id := len(l.procs)
	tap := fmt.Sprintf("rbtap%d", id)
	for _, args := range [][]string{
		{"-n", l.ns, "tuntap", "add", "dev", tap, "mode", "tap"},
		{"-n", l.ns, "link", "set", tap, "master", l.bridge, "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return nil, err
		}
	}
	if opt.LinkMbit > 0 {
		rate := fmt.Sprintf("%dmbit", opt.LinkMbit)
		if _, err := run(ctx, "ip", "netns", "exec", l.ns, "tc", "qdisc", "add", "dev", tap, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "200ms"); err != nil {
			return nil, fmt.Errorf("shape %s to %s: %w", tap, rate, err)
		}
	}
	serial := filepath.Join(l.work, fmt.Sprintf("serial-%s-%d.log", opt.Mode, id))
	qmp := filepath.Join(l.work, fmt.Sprintf("qmp-%d.sock", id))
	q := []string{
		"-qmp", "unix:" + qmp + ",server=on,wait=off",
		"-name", "ramboot-lab-" + string(opt.Mode), "-accel", "tcg", "-m", fmt.Sprint(opt.MemMiB), "-smp", "1",
		"-display", "none", "-vga", "none", "-monitor", "none", "-nodefaults",
		"-chardev", "file,id=ser0,path=" + serial, "-serial", "chardev:ser0",
		"-netdev", "tap,id=net0,ifname=" + tap + ",script=no,downscript=no",
	}
	if !opt.Reboot {
		q = append(q, "-no-reboot")
	}
	switch opt.Mode {
	case BIOS:
		sercon := filepath.Join(l.work, "sercon-port")
		// SeaBIOS "sercon": mirror BIOS and iPXE ROM text to COM1 (0x3f8).
		if err := os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644); err != nil {
			return nil, err
		}
		q = append(q, "-machine", "pc", "-boot", "n", "-fw_cfg", "name=etc/sercon-port,file="+sercon,
			"-device", opt.NIC+",netdev=net0,mac="+opt.MAC+",bootindex=1")
	case UEFI, UEFIHTTP:
		vars := filepath.Join(l.work, fmt.Sprintf("ovmf-vars-%d.fd", id))
		if _, err := run(ctx, "cp", OVMFVars, vars); err != nil {
			return nil, err
		}
		nic := opt.NIC + ",netdev=net0,mac=" + opt.MAC + ",bootindex=1"
		if opt.NIC == "virtio-net-pci" {
			nic += ",romfile=" // OVMF's own PXE client, then snponly.efi over TFTP
		}
		q = append(q, "-machine", "q35",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars,
			"-device", nic)
		if opt.Mode == UEFIHTTP {
			q = append(q, "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
				"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no")
		}
	default:
		return nil, fmt.Errorf("unknown VM mode %q", opt.Mode)
	}
	p, err := l.start(filepath.Join(l.work, fmt.Sprintf("qemu-%d.log", id)), "qemu-system-x86_64", q...)
	if err != nil {
		return nil, err
	}
	vm := &VM{SerialLog: serial, QMP: qmp, proc: p, started: time.Now()}
	l.logf("QEMU %s (%s, %d MiB) booting MAC %s on %s (pid %d), serial %s", opt.Mode, opt.NIC, opt.MemMiB, opt.MAC, tap, p.cmd.Process.Pid, serial)
	return vm, nil
}

// WaitSerial waits until the VM's serial log contains marker.
func (v *VM) WaitSerial(ctx context.Context, marker string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !bytes.Contains(v.Serial(), []byte(marker)) {
		if v.Exited() {
			return fmt.Errorf("QEMU exited before %q appeared on its console", marker)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%q not on the console after %s", marker, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// WaitSerialMatch waits until the VM's serial log matches re and returns
// the match.
func (v *VM) WaitSerialMatch(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		if m := re.Find(v.Serial()); m != nil {
			return m, nil
		}
		if v.Exited() {
			return nil, fmt.Errorf("QEMU exited before %q appeared on its console", re)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%q not on the console after %s", re, timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops QEMU and waits for it to exit.
func (v *VM) Stop() { v.proc.stop(5 * time.Second) }
