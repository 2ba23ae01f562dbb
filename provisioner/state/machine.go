package state

import "slices"

// State is where a node's current boot stands.
type State string

// Node states.
const (
	StateNew     State = "new"     // never seen
	StateBooting State = "booting" // a boot is under way
	StateStalled State = "stalled" // a boot made no progress for the stall timeout
	StateBooted  State = "booted"  // the agent registered the node ready
	StateFailed  State = "failed"  // the agent registered a failed boot
	StateDown    State = "down"    // the agent daemon stopped heartbeating
	StateOff     State = "off"     // the agent daemon said the node shuts down
)

// States lists every state, in the order a boot normally meets them.
func States() []State {
	return slices.Clone(allStates)
}

var allStates = []State{StateNew, StateBooting, StateStalled, StateBooted, StateFailed, StateDown, StateOff}

// Step is one kind of event in a boot's timeline.
type Step string

// Steps of a node's boot timeline, in the order a boot normally sees them.
const (
	StepDHCPOffer Step = "dhcp-offer"   // the head offered the node its address
	StepDHCPAck   Step = "dhcp-ack"     // the node took it
	StepTFTP      Step = "tftp"         // firmware fetched the iPXE binary
	StepScript    Step = "script"       // iPXE fetched the node's boot script
	StepKernel    Step = "kernel"       // iPXE fetched the kernel
	StepImage     Step = "image"        // iPXE fetched the image's root file system
	StepAgent     Step = "agent"        // iPXE fetched the agent archive
	StepOverlay   Step = "overlay"      // iPXE fetched the node's overlay
	StepReady     Step = "ready"        // the agent daemon registered the node ready
	StepFailed    Step = "failed"       // the agent daemon registered a failed boot step
	StepIgnored   Step = "dhcp-ignored" // a DHCP packet from the node got no answer
	StepStalled   Step = "stalled"      // the head saw no progress for the stall timeout
	StepLease     Step = "dhcp-lease"   // the node's own OS got or renewed its address: no boot
)

// Steps of the timeline once the agent daemon registered (heartbeat.go).
const (
	StepSystem    Step = "system"     // the node's init system finished starting
	StepDown      Step = "down"       // no heartbeat for the down timeout
	StepUp        Step = "up"         // heartbeats (or a registration) again after down or off
	StepShutdown  Step = "shutdown"   // the agent daemon said the node goes down
	StepJobProlog Step = "job-prolog" // a scheduler job's prolog ran on the node
	StepJobEpilog Step = "job-epilog" // a job's epilog ran: the node is clean, or why not
)

// moves lists, for each state, the states a boot may move to without a new
// boot starting. A new boot always starts in StateBooting, whatever the
// previous one reached. Within a boot the boot's part only moves forward:
// booted and failed are never left for booting, and stalled only goes back
// to booting when the boot makes progress again (say, iPXE retried a
// download). Once the agent daemon registered, the node moves between its
// registered state (booted or failed) and down (no heartbeat) or off (a
// clean shutdown), and back when the daemon is heard from again.
var moves = map[State][]State{
	StateNew:     {StateBooting},
	StateBooting: {StateStalled, StateBooted, StateFailed},
	StateStalled: {StateBooting, StateBooted, StateFailed},
	StateBooted:  {StateDown, StateOff},
	StateFailed:  {StateDown, StateOff},
	StateDown:    {StateBooted, StateFailed, StateOff},
	StateOff:     {StateBooted, StateFailed},
}

// CanMove reports whether a boot in state s may move to state to.
func (s State) CanMove(to State) bool { return slices.Contains(moves[s], to) }

// next is the one place that decides how a boot's state follows its
// events: the state boot b is in after an event of step. Events that the
// table does not allow (a late download after the registration, a second
// registration, a shutdown before any) leave it where it is.
func next(b *Boot, step Step) State {
	s := b.State
	to := s
	switch step {
	case StepReady:
		to = StateBooted
	case StepFailed:
		to = StateFailed
	case StepStalled:
		to = StateStalled
	case StepLease:
		return s // the running OS: no boot progress either way
	case StepDown:
		to = StateDown
	case StepShutdown:
		to = StateOff
	case StepUp:
		to = b.registered()
	default:
		if s == StateStalled {
			to = StateBooting // progress again
		}
	}
	if to != s && s.CanMove(to) {
		return to
	}
	return s
}

// registered returns the state the agent daemon's registration put b in:
// booted or failed, or b's state when it has none.
func (b *Boot) registered() State {
	switch {
	case b.Report == nil:
		return b.State
	case b.Report.State == "ready":
		return StateBooted
	default:
		return StateFailed
	}
}
