package state

import (
	"crypto/subtle"
	"fmt"
	"net/netip"
	"time"
)

// The boot secrets:
//
//   - A script carries a boot nonce in its overlay URL. Serving a new
//     script mints a new nonce and revokes the previous boot's token at once.
//   - The first full overlay GET with the nonce consumes it and makes the
//     token in that overlay the node's token for this boot; the nonce is
//     then spent. A new boot (a DHCP offer to firmware) voids an unspent
//     nonce.
//   - A report needs the current token, from the node's reserved address,
//     for the boot the token was minted in. A report repeated word for word
//     (the agent retrying after a lost answer) is accepted and not applied
//     again; a different second report for the same boot is a conflict.

// NewToken returns a new random report token (256 bits, hex).
func NewToken() string { return randomHex(32) }

func equalSecret(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// NewBootNonce mints the nonce that the node's script puts in its overlay
// URL and records e (the script step) in the same write. It replaces the
// previous nonce and revokes the previous boot's report token. A script
// starts a new boot when the current one already had its script, or when
// the head saw no boot start (its DHCP server is off, or another one
// answered).
func (d *DB) NewBootNonce(name string, e Event) (string, error) {
	return d.StartScript(name, e, nil)
}

// StartScript is NewBootNonce that also pins the image the script names,
// when pin is set and differs from the node's pin, in the same write: the
// node boots that digest from then on until an admin moves it (ClearPins).
func (d *DB) StartScript(name string, e Event, pin *Pin) (string, error) {
	nonce := randomHex(16)
	if e.Time.IsZero() {
		e.Time = d.now()
	}
	err := d.update(name, func(r *record, a *archive) error {
		if r.Status.ID == 0 || r.Status.reached(StepScript) {
			d.startBoot(r, a, e.Time)
		}
		r.BootNonce = nonce
		r.TokenHash, r.TokenBoot = "", 0
		r.Status.add(e)
		if pin != nil && (r.Status.Pin == nil || r.Status.Pin.Ref != pin.Ref || r.Status.Pin.Digest != pin.Digest) {
			p := *pin
			p.Boot = r.Status.ID
			r.Status.Pin = &p
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("boot nonce for node %s: %w", name, err)
	}
	return nonce, nil
}

// CheckNonce reports whether nonce is node name's unspent boot nonce,
// changing nothing: an error wrapping ErrBadToken when it is not.
func (d *DB) CheckNonce(name, nonce string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return fmt.Errorf("boot nonce of node %s: %w", name, ErrNotFound)
	}
	if !equalSecret(nonce, r.BootNonce) {
		return fmt.Errorf("boot nonce of node %s: wrong, spent or revoked: %w", name, ErrBadToken)
	}
	return nil
}

// ConsumeNonce spends node name's boot nonce and makes token the node's
// report token for its current boot, recording e (the overlay step) in the
// same write. Call it once the overlay carrying token was sent whole. It
// fails with ErrBadToken when the nonce was spent or replaced meanwhile
// (then token is worth nothing).
func (d *DB) ConsumeNonce(name, nonce, token string, e Event) error {
	if e.Time.IsZero() {
		e.Time = d.now()
	}
	err := d.update(name, func(r *record, _ *archive) error {
		if !equalSecret(nonce, r.BootNonce) {
			return fmt.Errorf("boot nonce spent or replaced meanwhile: %w", ErrBadToken)
		}
		r.BootNonce = ""
		r.TokenHash, r.TokenBoot = hashHex(token), r.Status.ID
		r.Status.add(e)
		return nil
	})
	if err != nil {
		return fmt.Errorf("token for node %s: %w", name, err)
	}
	return nil
}

// SetReport records the agent's report for the node's current boot: the
// boot is booted (or failed) from then on. The report must come from the
// node's reserved address (from) with the current token, minted in this
// boot. It returns false with no error for a report identical to the one
// already recorded for this boot (a retry), which is not applied again.
func (d *DB) SetReport(name, token string, from netip.Addr, rep Report) (applied bool, err error) {
	if rep.Received.IsZero() {
		rep.Received = d.now()
	}
	applied = true
	err = d.update(name, func(r *record, _ *archive) error {
		if !hasIP(&r.Node, from.Unmap()) {
			return fmt.Errorf("from %s, not an address reserved for it: %w", from, ErrWrongAddress)
		}
		if !equalSecret(hashHex(token), r.TokenHash) {
			return ErrBadToken
		}
		st := &r.Status
		if r.TokenBoot != st.ID {
			return fmt.Errorf("the token is of boot %d, and boot %d started since: %w", r.TokenBoot, st.ID, ErrConflict)
		}
		if st.Report != nil {
			if st.Report.sameAs(rep) {
				applied = false
				return errNoChange
			}
			return fmt.Errorf("boot %d already reported %s at %s: %w", st.ID, st.Report.State, st.Report.Received.Format(time.RFC3339), ErrConflict)
		}
		st.Report = &rep
		e := Event{Time: rep.Received, Step: StepReady, Detail: fmt.Sprintf("kernel %s, uptime %.1fs", rep.Kernel, rep.UptimeSeconds)}
		if rep.State != "ready" {
			e.Step, e.Detail = StepFailed, rep.Error
		}
		st.add(e)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("report from node %s: %w", name, err)
	}
	return applied, nil
}

// hasIP reports whether ip is reserved for one of n's interfaces.
func hasIP(n *Node, ip netip.Addr) bool {
	for _, ifc := range n.Interfaces {
		if ifc.IP == ip {
			return true
		}
	}
	return false
}

// ClearPins drops the image pins of the named nodes, so that each boots
// what its image reference resolves to at its next script: how an admin
// moves nodes to a new build of their image. Unknown names are skipped.
func (d *DB) ClearPins(names []string) error {
	for _, name := range names {
		d.post(name, func(r *record, _ *archive) error {
			if r.Status.Pin == nil {
				return errNoChange
			}
			r.Status.Pin = nil
			return nil
		})
	}
	d.Flush()
	return nil
}
