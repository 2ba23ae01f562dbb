package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ramboot/ramboot/provisioner/store"
)

// An inventory change larger than one transaction of the store (etcd
// takes 128 operations and about 1.5 MiB by default; `apply` of 10,000
// nodes writes 30,000 keys) commits in chunks, and stays one change for
// every head:
//
//  1. The whole change is written to journal/ID/NNNNNN keys, which no
//     reader looks at.
//  2. One transaction compares meta/inventory with the revision the
//     change was checked against and marks it open there (the journal's
//     ID and its chunk count). This is the commit point: from here on
//     the change will be applied whole, by this head or, if it dies, by
//     any other (finishOpenChange); before it, nothing happened.
//  3. Each chunk is one transaction that compares meta/inventory with the
//     revision the previous step left (a fence: no other inventory write
//     can come in between) and moves the mark on; the last one closes it
//     and drops the journal.
//
// Heads hold back every inventory event from the open mark until the
// close, then apply them together (fold): a node is never served from a
// half-applied inventory. So an admin gets all or nothing, checked whole,
// as with one transaction; what differs is that an inventory written by
// a head that died mid-way is finished by the next head that opens the
// store, changes the inventory, or notices it waiting (finishStale).

// Keys of a chunked change.
const (
	keyJournal = "journal/" // journal/ID/NNNNNN -> the chunk's operations
)

// openChange is the mark meta/inventory holds while a chunked change is
// applied.
type openChange struct {
	// ID names the change's journal.
	ID string `json:"open"`
	// Chunks is how many chunks the journal holds; Next the first not yet
	// applied.
	Chunks int `json:"chunks"`
	Next   int `json:"next"`
	// Base is the inventory's revision the change was checked against:
	// every inventory key written after it belongs to the change.
	Base int64 `json:"base"`
}

// parseOpen returns the open change a meta/inventory value marks, or nil
// when it marks none.
func parseOpen(v []byte) *openChange {
	if len(v) == 0 || v[0] != '{' {
		return nil
	}
	var oc openChange
	if json.Unmarshal(v, &oc) != nil || oc.ID == "" {
		return nil
	}
	return &oc
}

// journalOp is one store operation as the journal keeps it.
type journalOp struct {
	Key    string `json:"k"`
	Value  []byte `json:"v,omitempty"`
	Delete bool   `json:"d,omitempty"`
	Prefix bool   `json:"p,omitempty"`
}

// fold applies one event of the watch to memory, holding back the
// inventory events of an open chunked change until it closes. d.mu is
// held.
func (d *DB) fold(e store.Event) error {
	if e.Key == keyInventory {
		d.invRev = e.Rev
		if oc := parseOpen(e.Value); oc != nil && !e.Deleted {
			d.open, d.openSeen = oc, time.Now()
			return nil
		}
		held := d.held
		d.open, d.held = nil, nil
		var errs []error
		for _, h := range held {
			if err := d.apply(h); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	if d.open != nil && e.Rev > d.open.Base && (strings.HasPrefix(e.Key, keyNodes) || strings.HasPrefix(e.Key, keyProfiles) ||
		strings.HasPrefix(e.Key, keyStatus) && e.Deleted) {
		d.held = append(d.held, e)
		return nil
	}
	return d.apply(e)
}

// chunks splits ops into groups that each fit in one transaction of
// limits, with room for the fence's compare and the mark's write.
func chunks(ops []store.Op, l store.Limits) [][]store.Op {
	maxOps, maxBytes := l.MaxOps-2, l.MaxBytes/2
	var out [][]store.Op
	var cur []store.Op
	size := 0
	for _, op := range ops {
		n := len(op.Key) + len(op.Value) + 16
		if len(cur) > 0 && (len(cur) >= maxOps || size+n > maxBytes) {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, op)
		size += n
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// fits reports whether ops (and cmps compares) fit in one transaction.
func fits(l store.Limits, cmps int, ops []store.Op) bool {
	if l.MaxOps == 0 {
		return true
	}
	if cmps > l.MaxOps || len(ops) > l.MaxOps {
		return false
	}
	return l.MaxBytes == 0 || opsSize(ops) <= l.MaxBytes
}

// opsSize is the size fits counts for ops.
func opsSize(ops []store.Op) int {
	size := 0
	for _, op := range ops {
		size += len(op.Key) + len(op.Value) + 16
	}
	return size
}

// commitChunked commits the inventory change ops, checked against the
// inventory at revision base, in chunks (see above). It returns
// store.ErrConflict when the inventory changed since base; then nothing
// happened.
func (d *DB) commitChunked(base int64, ops []store.Op) error {
	err := markChunked(context.Background(), d.st, base, ops)
	if err != nil {
		if !errors.Is(err, store.ErrConflict) {
			d.mu.Lock()
			d.fails++
			d.mu.Unlock()
		}
		return err
	}
	// Committed: from here on the change happens whole.
	if crashAfterMark {
		return errCrashed
	}
	if err := finishOpenChange(context.Background(), d.st); err != nil {
		return fmt.Errorf("the change is committed and will be finished by the next head that opens the store or changes the inventory: %w", err)
	}
	return d.catchUp()
}

// markChunked writes ops to a journal and marks the change open in
// meta/inventory if it still has revision base (0: absent): the commit
// point. It returns store.ErrConflict, and leaves no journal, when the
// inventory changed since base.
func markChunked(ctx context.Context, st store.Store, base int64, ops []store.Op) error {
	parts := chunks(ops, st.Limits())
	id := time.Now().UTC().Format("20060102T150405") + "-" + randomHex(4)
	prefix := keyJournal + id + "/"
	drop := func() { _, _ = st.Txn(context.Background(), nil, []store.Op{store.DeletePrefix(prefix)}) }
	for i, p := range parts {
		jops := make([]journalOp, len(p))
		for j, op := range p {
			jops[j] = journalOp{Key: op.Key, Value: op.Value, Delete: op.Delete, Prefix: op.Prefix}
		}
		b, err := json.Marshal(jops)
		if err != nil {
			return err
		}
		if _, err := st.Txn(ctx, nil, []store.Op{store.Put(fmt.Sprintf("%s%06d", prefix, i), b)}); err != nil {
			drop()
			return fmt.Errorf("write the change's journal: %w", err)
		}
	}
	mark, err := json.Marshal(openChange{ID: id, Chunks: len(parts), Base: base})
	if err != nil {
		return err
	}
	if _, err := st.Txn(ctx, []store.Cmp{{Key: keyInventory, Rev: base}}, []store.Op{store.Put(keyInventory, mark)}); err != nil {
		drop()
		return err
	}
	return nil
}

// crashAfterMark makes commitChunked stop right after its commit point,
// as a head that died there would (tests).
var (
	crashAfterMark bool
	errCrashed     = errors.New("stopped after the commit point (test)")
)

// finishOpenChange applies what is left of an open chunked change, if
// meta/inventory marks one, from its journal, chunk by chunk under the
// fence; several heads may run it at once (each chunk commits once: the
// others see a conflict and read the mark again). It also drops journals
// older than an hour that no mark names (a head died before its commit
// point).
func finishOpenChange(ctx context.Context, st store.Store) error {
	for range 1 << 20 {
		kv, ok, err := st.Get(ctx, keyInventory)
		if err != nil {
			return err
		}
		var oc *openChange
		if ok {
			oc = parseOpen(kv.Value)
		}
		if oc == nil {
			return dropStaleJournals(ctx, st, "")
		}
		prefix := keyJournal + oc.ID + "/"
		var ops []store.Op
		if oc.Next < oc.Chunks {
			jkv, ok, err := st.Get(ctx, fmt.Sprintf("%s%06d", prefix, oc.Next))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("inventory change %s: chunk %d of its journal is missing", oc.ID, oc.Next)
			}
			var jops []journalOp
			if err := json.Unmarshal(jkv.Value, &jops); err != nil {
				return fmt.Errorf("inventory change %s: chunk %d: %w", oc.ID, oc.Next, err)
			}
			for _, j := range jops {
				ops = append(ops, store.Op{Key: j.Key, Value: j.Value, Delete: j.Delete, Prefix: j.Prefix})
			}
		}
		next := *oc
		next.Next++
		if next.Next >= oc.Chunks {
			// The last chunk closes the change (any value but a mark).
			ops = append(ops, store.Put(keyInventory, []byte(strconv.FormatInt(oc.Base+1, 10))), store.DeletePrefix(prefix))
		} else {
			mark, err := json.Marshal(next)
			if err != nil {
				return err
			}
			ops = append(ops, store.Put(keyInventory, mark))
		}
		_, err = st.Txn(ctx, []store.Cmp{{Key: keyInventory, Rev: kv.Rev}}, ops)
		if err != nil && !errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("inventory change %s, chunk %d of %d: %w", oc.ID, oc.Next+1, oc.Chunks, err)
		}
	}
	return errors.New("inventory change: too many chunks")
}

// dropStaleJournals removes journals older than an hour other than keep.
func dropStaleJournals(ctx context.Context, st store.Store, keep string) error {
	kvs, _, err := st.List(ctx, keyJournal)
	if err != nil || len(kvs) == 0 {
		return err
	}
	seen := map[string]bool{}
	for _, kv := range kvs {
		id, _, _ := strings.Cut(strings.TrimPrefix(kv.Key, keyJournal), "/")
		if id == keep || seen[id] {
			continue
		}
		seen[id] = true
		stamp, _, _ := strings.Cut(id, "-")
		t, err := time.Parse("20060102T150405", stamp)
		if err == nil && time.Since(t) < time.Hour {
			continue
		}
		if _, err := st.Txn(ctx, nil, []store.Op{store.DeletePrefix(keyJournal + id + "/")}); err != nil {
			return err
		}
	}
	return nil
}

// finishStale finishes a chunked change that memory has seen open and
// unmoving for stale: its head died mid-way. It runs from the writer's
// idle loop, and from ChangeInventory before any new change.
func (d *DB) finishStale(stale time.Duration) error {
	d.mu.Lock()
	open := d.open != nil && time.Since(d.openSeen) >= stale
	d.mu.Unlock()
	if !open {
		return nil
	}
	if err := finishOpenChange(context.Background(), d.st); err != nil {
		return err
	}
	return d.catchUp()
}
