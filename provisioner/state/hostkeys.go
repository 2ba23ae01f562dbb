package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/store"
)

// Nodes' SSH host keys are made once per node and must be the same
// whichever head renders its overlay: with a shared store they live in it,
// at hostkeys/NAME (the private key files as OpenSSH writes them, as the
// state directory's ssh-host-keys/ holds them on a single head), and every
// head's memory follows them by the watch. The first head to store a
// node's keys wins (a compare-and-swap on the key's absence); the others
// take those.
const keyHostKeys = "hostkeys/" // hostkeys/NAME -> storedKeys

// storedKeys is one node's host keys as stored.
type storedKeys struct {
	Keys []storedKey `json:"keys"`
}

type storedKey struct {
	Type string `json:"type"`
	File []byte `json:"file"`
}

// SharedHostKeys returns the host key store of a shared store, which
// takes a node's keys from local (the head's own directory, from before
// the move to a shared store) the first time a node has none there. With
// a store of one head it returns local.
func (d *DB) SharedHostKeys(local hostkeys.Store) hostkeys.Store {
	if !d.shared() {
		return local
	}
	return &sharedKeys{d: d, local: local}
}

type sharedKeys struct {
	d     *DB
	local hostkeys.Store
}

// decodeKeys decodes a stored value.
func decodeKeys(node string, b []byte) (hostkeys.Keys, error) {
	var sk storedKeys
	if err := json.Unmarshal(b, &sk); err != nil {
		return nil, fmt.Errorf("host keys of %s: %w", node, err)
	}
	var ks hostkeys.Keys
	for _, k := range sk.Keys {
		key, err := hostkeys.ParseKey(hostkeys.Type(k.Type), k.File)
		if err != nil {
			return nil, fmt.Errorf("host keys of %s: %w", node, err)
		}
		ks = append(ks, key)
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("host keys of %s: none stored: %w", node, fs.ErrNotExist)
	}
	return ks, nil
}

func encodeKeys(ks hostkeys.Keys) ([]byte, error) {
	var sk storedKeys
	for _, k := range ks {
		f, err := k.PrivateFile()
		if err != nil {
			return nil, err
		}
		sk.Keys = append(sk.Keys, storedKey{Type: string(k.Type), File: f})
	}
	return json.Marshal(sk)
}

// Load implements hostkeys.Store: from memory; a node without keys there
// gets the local store's, stored for every head.
func (s *sharedKeys) Load(ctx context.Context, node string) (hostkeys.Keys, error) {
	s.d.mu.Lock()
	b, ok := s.d.hostKeys[node]
	s.d.mu.Unlock()
	if ok {
		return decodeKeys(node, b)
	}
	if s.local != nil {
		if ks, err := s.local.Load(ctx, node); err == nil {
			got, err := s.Create(ctx, map[string]hostkeys.Keys{node: ks})
			if err != nil {
				return nil, err
			}
			return got[node], nil
		}
	}
	return nil, fmt.Errorf("host keys of %s: %w", node, fs.ErrNotExist)
}

// Create implements hostkeys.Store: each node's keys are stored unless
// some head stored keys for it first; the keys returned are the stored
// ones.
func (s *sharedKeys) Create(ctx context.Context, batch map[string]hostkeys.Keys) (map[string]hostkeys.Keys, error) {
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range batch {
			if !yield(n) {
				return
			}
		}
	})
	per := max(s.d.st.Limits().MaxOps/2, 1)
	if s.d.st.Limits().MaxOps == 0 {
		per = 1000
	}
	for len(names) > 0 {
		group := names[:min(per, len(names))]
		names = names[len(group):]
		var cmps []store.Cmp
		var ops []store.Op
		for _, n := range group {
			b, err := encodeKeys(batch[n])
			if err != nil {
				return nil, err
			}
			cmps = append(cmps, store.Cmp{Key: keyHostKeys + n})
			ops = append(ops, store.Put(keyHostKeys+n, b))
		}
		if _, err := s.d.st.Txn(ctx, cmps, ops); err != nil {
			if !errors.Is(err, store.ErrConflict) {
				return nil, fmt.Errorf("store host keys: %w", err)
			}
			// Some node of the group has keys already: one by one.
			for i, n := range group {
				if _, err := s.d.st.Txn(ctx, cmps[i:i+1], ops[i:i+1]); err != nil && !errors.Is(err, store.ErrConflict) {
					return nil, fmt.Errorf("store host keys of %s: %w", n, err)
				}
			}
		}
	}
	if err := s.d.Sync(); err != nil {
		return nil, err
	}
	out := make(map[string]hostkeys.Keys, len(batch))
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	for n := range batch {
		b, ok := s.d.hostKeys[n]
		if !ok {
			return nil, fmt.Errorf("host keys of %s: stored but not seen", n)
		}
		ks, err := decodeKeys(n, b)
		if err != nil {
			return nil, err
		}
		out[n] = ks
	}
	return out, nil
}

// Delete implements hostkeys.Store.
func (s *sharedKeys) Delete(ctx context.Context, node string) error {
	if _, err := s.d.st.Txn(ctx, nil, []store.Op{store.Delete(keyHostKeys + node)}); err != nil {
		return fmt.Errorf("delete host keys of %s: %w", node, err)
	}
	if s.local != nil {
		return s.local.Delete(ctx, node)
	}
	return nil
}

// applyHostKeys folds a hostkeys/ key into memory; d.mu is held.
func (d *DB) applyHostKeys(e store.Event) {
	name := strings.TrimPrefix(e.Key, keyHostKeys)
	if e.Deleted {
		delete(d.hostKeys, name)
		return
	}
	d.hostKeys[name] = e.Value
}
