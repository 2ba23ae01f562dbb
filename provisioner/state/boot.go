package state

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Bounds of what one boot keeps.
const (
	// MaxEvents bounds a boot's timeline; later events replace the last one.
	MaxEvents = 64
	// MaxDetail bounds an event's detail, in bytes.
	MaxDetail = 512
	// DefaultHistory is how many boots a node keeps by default, the
	// current one included.
	DefaultHistory = 10
)

// Boot is one boot of a node, from the DHCP offer that started it to the
// agent's report (or a stall), as the head saw it.
type Boot struct {
	// ID numbers the node's boots from 1; 0 means no boot was seen yet.
	ID int `json:"boot"`
	// Started is when the boot's first event arrived.
	Started time.Time `json:"started,omitzero"`
	// State is where the boot stands.
	State State `json:"state"`
	// Timeline lists the boot's events in order.
	Timeline []Event `json:"timeline"`
	// Report is the agent's report for this boot, if any.
	Report *Report `json:"report,omitempty"`
}

// Event is one step of a boot, seen by the head.
type Event struct {
	// Time is when the head saw the step.
	Time time.Time `json:"time"`
	// Step says what happened.
	Step Step `json:"step"`
	// Detail says more: file names, bytes, reasons.
	Detail string `json:"detail,omitempty"`
	// Head is the head that recorded it, when several share the state
	// (its ID: host:port of its boot URL); empty with one head.
	Head string `json:"head,omitempty"`
	// XID is the DHCP transaction an offer answered (0: none or not
	// known): offers of one transaction, a retransmitted DISCOVER's or
	// several heads' answers to one, belong to one boot (recordFn).
	XID uint32 `json:"xid,omitempty"`
}

// Report is what the head recorded from the agent daemon's first
// registration in a boot.
type Report struct {
	// Received is when the head accepted it.
	Received time.Time `json:"received"`
	// State is the agent's state ("ready", "failed").
	State string `json:"state"`
	// Error is the agent's error, for a failed boot.
	Error string `json:"error,omitempty"`
	// ImageName is the image the node was assigned when it booted.
	ImageName string `json:"imageName"`
	// ImageDigest is the manifest digest of the image the node runs,
	// resolved from ContentDigest; empty when it matches no known image.
	ImageDigest string `json:"imageDigest"`
	// ContentDigest is the image content digest the node read from its root.
	ContentDigest string `json:"contentDigest"`
	// Kernel is the node's kernel release.
	Kernel string `json:"kernel"`
	// MemTotalBytes is the node's RAM.
	MemTotalBytes int64 `json:"memTotalBytes"`
	// UptimeSeconds is the node's uptime at the report.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// The agent daemon's registration adds what follows (heartbeat.go).
	Registration
}

// newBoot returns boot id, started by e.
func newBoot(id int, start time.Time) Boot {
	return Boot{ID: id, Started: start, State: StateBooting}
}

// add appends e to the timeline (replacing the last event once the
// timeline is full) and moves the boot's state as e says.
func (b *Boot) add(e Event) {
	e.Detail = Clip(e.Detail, MaxDetail)
	if len(b.Timeline) >= MaxEvents {
		b.Timeline[len(b.Timeline)-1] = e
	} else {
		b.Timeline = append(b.Timeline, e)
	}
	b.State = next(b, e.Step)
}

// reached reports whether the boot saw step.
func (b *Boot) reached(step Step) bool {
	return slices.ContainsFunc(b.Timeline, func(e Event) bool { return e.Step == step })
}

// offer returns the boot's offer in DHCP transaction xid, if any (0:
// none, never matched).
func (b *Boot) offer(xid uint32) (Event, bool) {
	if xid == 0 {
		return Event{}, false
	}
	for _, x := range b.Timeline {
		if x.Step == StepDHCPOffer && x.XID == xid {
			return x, true
		}
	}
	return Event{}, false
}

// lastProgress returns the time of the boot's last event.
func (b *Boot) lastProgress() time.Time {
	if len(b.Timeline) == 0 {
		return b.Started
	}
	return b.Timeline[len(b.Timeline)-1].Time
}

// clone returns a deep copy of b.
func (b Boot) clone() Boot {
	b.Timeline = slices.Clone(b.Timeline)
	if b.Report != nil {
		r := *b.Report
		r.Steps, r.Warnings = slices.Clone(r.Steps), slices.Clone(r.Warnings)
		b.Report = &r
	}
	return b
}

// Clip shortens s to at most n bytes on a rune boundary, saying so.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "...(truncated)"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// Printable replaces control characters (terminal escapes included) and
// invalid UTF-8 in s, so that text a node sent is safe to print.
func Printable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 || r == utf8.RuneError:
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

// bootKey is the store key of boot id of node name: "boots/NAME/ID" with
// the id in 16 hex digits, so that a node's boots are adjacent and in order.
func bootKey(name string, id int) string {
	return fmt.Sprintf("%s%s/%016x", keyBoots, name, id)
}

// bootPrefix is the prefix of every boot key of node name.
func bootPrefix(name string) string { return keyBoots + name + "/" }
