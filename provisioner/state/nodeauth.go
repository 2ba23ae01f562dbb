package state

import (
	"crypto/subtle"
	"fmt"
)

// CheckToken returns nil when token is node name's current token (the one
// minted with its last overlay), an error wrapping ErrBadToken when it is
// not, and one wrapping ErrNotFound when there is no such node. Node API
// routes other than the report use it to authenticate the node.
func (d *DB) CheckToken(name, token string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	if token == "" || r.TokenHash == "" || subtle.ConstantTimeCompare([]byte(hashHex(token)), []byte(r.TokenHash)) != 1 {
		return fmt.Errorf("node %s: %w", name, ErrBadToken)
	}
	return nil
}
