package lab

import (
	"errors"
	"fmt"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/state"
)

// Phases splits one boot into what took its time, in seconds, from the
// head's timeline (the host's clock), the node's boot timings (its clock,
// set from the head's at boot) and QEMU's start.
type Phases struct {
	// Firmware is QEMU's start to the first DHCP offer: the firmware
	// starting and its PXE client.
	Firmware float64
	// Downloads is the first DHCP offer to the overlay fetched: DHCP,
	// iPXE, TFTP, the script, the kernel and the initrds.
	Downloads float64
	// Kernel is the overlay fetched to the agent starting as /init: the
	// kernel decompressing itself, booting and unpacking the initrds.
	Kernel float64
	// Init is the agent's init, up to its hand-over to the image's init
	// (or to staying PID 1).
	Init float64
	// Ready is the hand-over to the node being ready: systemd finished
	// starting, or the agent daemon started.
	Ready float64
	// Total is QEMU's start to ready.
	Total float64
}

// String formats the phases as a table row.
func (p Phases) String() string {
	return fmt.Sprintf("firmware %.1fs, downloads %.1fs, kernel %.1fs, init %.1fs, to ready %.1fs: total %.1fs",
		p.Firmware, p.Downloads, p.Kernel, p.Init, p.Ready, p.Total)
}

// BootPhases computes the phases of node n's current boot, whose QEMU
// started at vmStart.
func BootPhases(vmStart time.Time, n api.NodeStatus) (Phases, error) {
	r := n.Status.Report
	if r == nil || r.KernelStart.IsZero() || r.InitSeconds == 0 || r.ReadySeconds == 0 {
		return Phases{}, errors.New("the node has not reported its boot timings yet")
	}
	var dhcp, overlay time.Time
	for _, e := range n.Status.Timeline {
		if e.Step == string(state.StepDHCPOffer) && dhcp.IsZero() {
			dhcp = e.Time
		}
		if e.Step == string(state.StepOverlay) {
			overlay = e.Time
		}
	}
	if dhcp.IsZero() || overlay.IsZero() {
		return Phases{}, errors.New("the timeline lacks the DHCP offer or the overlay")
	}
	at := func(uptime float64) time.Time { return r.KernelStart.Add(time.Duration(uptime * float64(time.Second))) }
	ready := at(r.ReadySeconds)
	return Phases{
		Firmware:  dhcp.Sub(vmStart).Seconds(),
		Downloads: overlay.Sub(dhcp).Seconds(),
		Kernel:    at(r.InitSeconds).Sub(overlay).Seconds(),
		Init:      r.HandoverSeconds - r.InitSeconds,
		Ready:     r.ReadySeconds - r.HandoverSeconds,
		Total:     ready.Sub(vmStart).Seconds(),
	}, nil
}
