package state

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The boot secrets:
//
//   - A script carries a boot nonce in its overlay URL. Serving a new
//     script mints a new nonce and revokes the previous boot's token at once.
//   - An overlay GET with the nonce mints a token and makes it the node's
//     token for this boot before the overlay is sent (ReserveToken), so
//     that a node that has its overlay has a token every head takes, even
//     if the head that sent it dies before it records anything more. The
//     first overlay sent whole spends the nonce (ConsumeNonce); a GET
//     that did not send it whole leaves it for iPXE's retry, whose new
//     token replaces the first. A new boot (a DHCP offer to firmware)
//     voids an unspent nonce.
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
//
// With a shared store the script may have come from another head a moment
// ago: a nonce memory does not know makes the head catch up with the store
// (Sync) and look again before it refuses.
func (d *DB) CheckNonce(name, nonce string) error {
	err := d.checkNonce(name, nonce)
	if err != nil && d.shared() && d.Sync() == nil {
		err = d.checkNonce(name, nonce)
	}
	return err
}

func (d *DB) checkNonce(name, nonce string) error {
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

// shared reports whether other heads write the store too.
func (d *DB) shared() bool { return d.bolt == nil }

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

// ReserveToken makes token node name's report token for its current boot
// if nonce is still its unspent boot nonce, and leaves the nonce unspent.
// Call it before the overlay carrying token is sent: once the node has the
// overlay's last byte its token is good on every head, whatever becomes
// of the head that sent it. (Committed only after the send, a head killed
// between the two left the node with a token no head would ever take.)
// It fails with ErrBadToken when the nonce was spent or replaced.
func (d *DB) ReserveToken(name, nonce, token string) error {
	err := d.update(name, func(r *record, _ *archive) error {
		if !equalSecret(nonce, r.BootNonce) {
			return fmt.Errorf("boot nonce spent or replaced meanwhile: %w", ErrBadToken)
		}
		r.TokenHash, r.TokenBoot = hashHex(token), r.Status.ID
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
	if !hasIP(&r.Node, from.Unmap()) {
		return fmt.Errorf("from %s, not an address reserved for it: %w", from, ErrWrongAddress)
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
// ErrWrongAddress, ErrBadToken or ErrConflict. A token whose overlay is
// still being committed (ExpectToken) waits for the outcome, at most
// tokenWait.
//
// With a shared store the token may have been minted by another head a
// moment ago: a token memory does not know makes the head catch up with
// the store (Sync) and look again before it refuses.
func (d *DB) Authenticate(name, token string, from netip.Addr) (NodeStatus, error) {
	// The token's overlay still being sent by this head: its request
	// waits for the overlay step to be recorded, so that the boot's
	// timeline has the overlay before what the node says next.
	d.mu.Lock()
	p := d.pending[name]
	d.mu.Unlock()
	if p != nil && equalSecret(hashHex(token), p.hash) {
		t := time.NewTimer(tokenWait)
		select {
		case <-p.done:
		case <-t.C:
		}
		t.Stop()
	}
	// Past that wait the token is committed (ReserveToken commits it
	// before the overlay goes), so a refusal is final, unless this head's
	// memory is behind a shared store: then it catches up once.
	synced := !d.shared()
	for {
		d.mu.Lock()
		r, ok := d.nodes[name]
		if !ok || r.Node.Name == "" {
			d.mu.Unlock()
			// Another head may have added the node a moment ago.
			if !synced {
				synced = true
				if d.Sync() == nil {
					continue
				}
			}
			return NodeStatus{}, fmt.Errorf("node %s: %w", name, ErrNotFound)
		}
		err := r.authenticate(token, from)
		if err == nil {
			v := d.view(r)
			d.mu.Unlock()
			return v, nil
		}
		d.mu.Unlock()
		if !synced && (errors.Is(err, ErrBadToken) || errors.Is(err, ErrConflict)) {
			synced = true
			if d.Sync() == nil {
				continue
			}
		}
		return NodeStatus{}, fmt.Errorf("request of node %s: %w", name, err)
	}
}

// tokenWait bounds how long a request waits for its token's commit.
const tokenWait = 10 * time.Second

// pendingToken is a token on its way to its node in an overlay: it
// becomes the node's once the overlay was sent whole (ConsumeNonce).
type pendingToken struct {
	hash string
	done chan struct{}
}

// ExpectToken tells the database that an overlay carrying token is being
// sent to node name. Until release is called (after ConsumeNonce, or when
// the overlay was not sent whole), a request of the node with that token
// waits for the outcome instead of failing: a node may use its token as
// soon as it has the overlay's last byte, before the head committed it.
func (d *DB) ExpectToken(name, token string) (release func()) {
	p := &pendingToken{hash: hashHex(token), done: make(chan struct{})}
	d.mu.Lock()
	if d.pending == nil {
		d.pending = map[string]*pendingToken{}
	}
	d.pending[name] = p
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		if d.pending[name] == p {
			delete(d.pending, name)
		}
		d.mu.Unlock()
		close(p.done)
	}
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
