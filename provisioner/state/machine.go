package state

import "slices"

// State is where a node's current boot stands.
type State string

// Node states.
const (
	StateNew     State = "new"     // never seen
	StateBooting State = "booting" // a boot is under way
	StateStalled State = "stalled" // a boot made no progress for the stall timeout
	StateBooted  State = "booted"  // the agent reported ready
	StateFailed  State = "failed"  // the agent reported a failure
)

// States lists every state, in the order a boot normally meets them.
func States() []State {
	return slices.Clone(allStates)
}

var allStates = []State{StateNew, StateBooting, StateStalled, StateBooted, StateFailed}

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
	StepReady     Step = "ready"        // the agent reported the node ready
	StepFailed    Step = "failed"       // the agent reported a failed boot step
	StepIgnored   Step = "dhcp-ignored" // a DHCP packet from the node got no answer
	StepStalled   Step = "stalled"      // the head saw no progress for the stall timeout
	StepLease     Step = "dhcp-lease"   // the node's own OS got or renewed its address: no boot
)

// moves lists, for each state, the states a boot may move to without a new
// boot starting. A new boot always starts in StateBooting, whatever the
// previous one reached; within a boot a state only moves forward: booted
// and failed are final, and stalled only goes back to booting when the boot
// makes progress again (say, iPXE retried a download).
var moves = map[State][]State{
	StateNew:     {StateBooting},
	StateBooting: {StateStalled, StateBooted, StateFailed},
	StateStalled: {StateBooting, StateBooted, StateFailed},
	StateBooted:  nil,
	StateFailed:  nil,
}

// CanMove reports whether a boot in state s may move to state to.
func (s State) CanMove(to State) bool { return slices.Contains(moves[s], to) }

// next is the one place that decides how a boot's state follows its
// events: the state a boot in state s is in after an event of step.
// Events that would move it backwards (a late download after the report,
// a second report) leave it where it is.
func next(s State, step Step) State {
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
