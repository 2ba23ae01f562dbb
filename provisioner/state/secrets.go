package state

import (
	"crypto/subtle"
	"fmt"
	"net/netip"
)

// The boot secrets:
//
//   - A script carries a boot nonce in its overlay URL. Serving a new
//     script mints a new nonce and revokes the previous boot's token at once.
//   - The first full overlay GET with the nonce consumes it and makes the
//     token in that overlay the node's token for this boot; the nonce is
//     then spent. A new boot (a DHCP offer to firmware) voids an unspent
//     nonce.
//   - Every request of the node's agent (registration, heartbeat,
//     shutdown, runtime overlay, images, jobs) needs the current token,
//     from the node's reserved address, for the boot the token was minted
//     in (Authenticate). A second registration in the same boot (the agent
//     daemon restarted, or retried after a lost answer) is accepted and
//     keeps the first one's report; one that contradicts it (failed after
//     ready) is a conflict.

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

// authenticate checks a node's request against r: it must come from the
// node's reserved address (from), with the node's current token, minted in
// the node's current boot. It returns an error wrapping ErrWrongAddress,
// ErrBadToken (a wrong, or a revoked token) or ErrConflict (a token of a
// boot that is no longer current). d.mu must be held.
func (r *record) authenticate(token string, from netip.Addr) error {
	if from.Unmap() != r.Node.IP {
		return fmt.Errorf("from %s, reserved %s: %w", from, r.Node.IP, ErrWrongAddress)
	}
	if !equalSecret(hashHex(token), r.TokenHash) {
		return ErrBadToken
	}
	if r.TokenBoot != r.Status.ID {
		return fmt.Errorf("the token is of boot %d, and boot %d started since: %w", r.TokenBoot, r.Status.ID, ErrConflict)
	}
	return nil
}

// Authenticate checks a request of node name's agent (see the node API):
// from the node's reserved address, with its current token, minted in its
// current boot. It returns the node, or an error wrapping ErrNotFound,
// ErrWrongAddress, ErrBadToken or ErrConflict.
func (d *DB) Authenticate(name, token string, from netip.Addr) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return NodeStatus{}, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	if err := r.authenticate(token, from); err != nil {
		return NodeStatus{}, fmt.Errorf("request of node %s: %w", name, err)
	}
	return d.view(r), nil
}
