// Package store is the head's durable key/value store behind one small
// interface, shaped so that a distributed engine (etcd) can implement it:
// every committed change has a revision, a transaction commits only if the
// keys it compares still have the revisions it read (optimistic
// concurrency: read, compare-and-swap, retry on ErrConflict), and Watch
// streams every change after a revision, so a reader keeps an in-memory
// view current by folding the stream.
//
// Bolt is the embedded implementation (one bbolt file, one process). It
// commits each transaction with an fsync before Txn returns, and only then
// publishes the change to watchers: a watcher's view never holds anything
// the disk does not.
//
// Etcd is the shared implementation for several heads (etcd.go): the same
// semantics on an etcd cluster, whose transactions are bounded (Limits),
// and whose watch resumes by itself after the loss of a member.
//
//	s, err := store.OpenBolt(path, store.BoltOptions{})
//	kvs, rev, err := s.List(ctx, "nodes/")
//	ch := s.Watch(ctx, "", rev) // every change after rev
//	rev, err = s.Txn(ctx, []store.Cmp{{Key: "nodes/n1", Rev: 0}}, []store.Op{store.Put("nodes/n1", b)})
package store

import (
	"context"
	"errors"
	"strings"
)

// Errors callers branch on.
var (
	// ErrConflict means a compared key changed since it was read: read
	// again and retry.
	ErrConflict = errors.New("store: changed meanwhile (conflict)")
	// ErrCompacted means a Watch asked for changes older than the store
	// still keeps: list again and watch from there.
	ErrCompacted = errors.New("store: revision compacted")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("store: closed")
)

// KV is a key, its value and the revision of the transaction that last
// changed it.
type KV struct {
	// Key is the key, a path like "nodes/n001".
	Key string
	// Value is the value; nil for a deleted key in an Event.
	Value []byte
	// Rev is the revision of the transaction that wrote (or deleted) it.
	Rev int64
}

// Cmp is one condition of a transaction: the key must still have revision
// Rev, or, when Rev is 0, must not exist.
type Cmp struct {
	// Key is the key compared.
	Key string
	// Rev is the revision the key must have; 0 means absent.
	Rev int64
}

// Op is one write of a transaction.
type Op struct {
	// Key is the key written.
	Key string
	// Value is the new value (Delete false).
	Value []byte
	// Delete removes Key (and, with Prefix, every key under it).
	Delete bool
	// Prefix makes a Delete remove every key starting with Key.
	Prefix bool
}

// Put returns an Op that writes value at key.
func Put(key string, value []byte) Op { return Op{Key: key, Value: value} }

// Delete returns an Op that removes key.
func Delete(key string) Op { return Op{Key: key, Delete: true} }

// DeletePrefix returns an Op that removes every key starting with prefix.
func DeletePrefix(prefix string) Op { return Op{Key: prefix, Delete: true, Prefix: true} }

// Event is one key changed by a transaction.
type Event struct {
	KV
	// Deleted reports that the key was removed.
	Deleted bool
}

// Change is what one committed transaction did, as a watcher sees it.
type Change struct {
	// Rev is the transaction's revision.
	Rev int64
	// Events are the keys it changed, in the transaction's order.
	Events []Event
	// Err, when set, ends the stream: the watcher fell behind what the
	// store keeps (ErrCompacted) or the store closed.
	Err error
}

// Store is the head's state store. Implementations are safe for concurrent
// use.
type Store interface {
	// List returns every key under prefix, sorted, and the revision the
	// list was read at.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Get returns one key; ok is false when it does not exist.
	Get(ctx context.Context, key string) (kv KV, ok bool, err error)
	// Txn applies ops atomically if every cmp holds, durably, and returns
	// the transaction's revision; it returns ErrConflict (wrapped) when a
	// cmp fails, and then changes nothing.
	Txn(ctx context.Context, cmps []Cmp, ops []Op) (int64, error)
	// Watch streams, in order, every change to keys under prefix made by
	// transactions after revision rev, until ctx ends (then the channel
	// closes) or the stream fails (a Change with Err, then it closes).
	Watch(ctx context.Context, prefix string, rev int64) <-chan Change
	// Rev returns the revision of the last committed transaction this
	// store handle knows of.
	Rev() int64
	// Current returns the revision of the last transaction committed by
	// anyone (with a shared store, a linearizable read): a reader that
	// waits for its view to reach it reads every write made before the
	// call, on whichever head.
	Current(ctx context.Context) (int64, error)
	// Limits returns the bounds of one transaction; callers split larger
	// writes.
	Limits() Limits
	// Close closes the store; watches end.
	Close() error
}

// filter returns the events of c under prefix.
func filter(c Change, prefix string) Change {
	if prefix == "" {
		return c
	}
	out := Change{Rev: c.Rev, Err: c.Err}
	for _, e := range c.Events {
		if strings.HasPrefix(e.Key, prefix) {
			out.Events = append(out.Events, e)
		}
	}
	return out
}
