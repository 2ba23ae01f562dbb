package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/ramboot/ramboot/provisioner/store"
)

// Bounds of the status writer.
const (
	// maxBatch bounds the changes one transaction commits.
	maxBatch = 2048
	// maxQueued bounds the changes waiting for the writer; boot events
	// posted beyond it are dropped and counted (a disk that stopped
	// answering must not make the head run out of memory).
	maxQueued = 100_000
)

// job is one status change for the writer: fn works on a copy of the
// node's record, as update's does. done, when not nil, receives the
// result once the change is committed (and in memory) or refused.
type job struct {
	name string
	fn   func(r *record, a *archive) error
	done chan error
}

// writer is the one goroutine that writes nodes' status: it takes every
// change queued since its last commit, applies them in order to copies of
// the records, and commits them in one transaction (one fsync for the
// group). Boot events are posted without waiting (a DHCP reply never waits
// for the disk); secrets and reports wait for their group's commit.
type writer struct {
	mu      sync.Mutex
	queue   []job
	wake    chan struct{}
	closing bool
	done    chan struct{}
	dropped int // events refused because the queue was full
	lost    int // posted events whose commit failed
	batches int // transactions committed
	changes int // changes committed
}

func newWriter() *writer {
	return &writer{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// submit queues j; it reports false when the writer is closed, or when j
// posts (no done) and the queue is full.
func (w *writer) submit(j job) bool {
	w.mu.Lock()
	if w.closing || j.done == nil && len(w.queue) >= maxQueued {
		if !w.closing {
			w.dropped++
		}
		w.mu.Unlock()
		return false
	}
	w.queue = append(w.queue, j)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return true
}

// take returns up to maxBatch queued jobs, waiting for one; ok is false
// once the writer is closing and the queue is empty.
func (w *writer) take() (jobs []job, ok bool) {
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			n := min(len(w.queue), maxBatch)
			jobs = w.queue[:n:n]
			w.queue = w.queue[n:]
			if len(w.queue) == 0 {
				w.queue = nil
			}
			w.mu.Unlock()
			return jobs, true
		}
		closing := w.closing
		w.mu.Unlock()
		if closing {
			return nil, false
		}
		<-w.wake
	}
}

// update applies fn to node name's status through the writer and waits
// until the change is committed and in memory (or refused).
func (d *DB) update(name string, fn func(r *record, a *archive) error) error {
	done := make(chan error, 1)
	if !d.w.submit(job{name: name, fn: fn, done: done}) {
		return fmt.Errorf("write node %s: %w", name, store.ErrClosed)
	}
	return <-done
}

// post queues fn for node name's status and returns at once; the change
// is committed with the writer's next group. A failure is logged by
// counting it (WriterStats).
func (d *DB) post(name string, fn func(r *record, a *archive) error) {
	d.w.submit(job{name: name, fn: fn})
}

// Flush waits until every change posted before it is committed (or
// failed).
func (d *DB) Flush() {
	_ = d.update("", func(*record, *archive) error { return errNoChange })
}

// WriterStats are the status writer's counters.
type WriterStats struct {
	// Batches is the number of transactions committed.
	Batches int
	// Changes is the number of changes they held.
	Changes int
	// Dropped counts boot events refused because too many were queued.
	Dropped int
	// Lost counts posted boot events whose transaction failed.
	Lost int
	// Queued is the number of changes waiting now.
	Queued int
}

// WriterStats returns the status writer's counters.
func (d *DB) WriterStats() WriterStats {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	return WriterStats{Batches: d.w.batches, Changes: d.w.changes, Dropped: d.w.dropped, Lost: d.w.lost, Queued: len(d.w.queue)}
}

// runWriter is the writer's goroutine, until Close.
func (d *DB) runWriter() {
	defer close(d.w.done)
	for {
		jobs, ok := d.w.take()
		if !ok {
			return
		}
		d.writeBatch(jobs)
	}
}

// work is one node's record while a batch is applied.
type work struct {
	rec  *record
	rev  int64
	ops  []store.Op
	dirt bool
}

// writeBatch applies jobs in order and commits them in one transaction,
// retrying on a conflict (another writer of the same store) with the newer
// records.
func (d *DB) writeBatch(jobs []job) {
	results := make([]error, len(jobs))
	var lives []func() // memory-only changes, once their writes committed
	var err error
	for range maxRetries {
		var cmps []store.Cmp
		var ops []store.Op
		nodes := map[string]*work{}
		var order []string
		d.mu.Lock()
		lives = lives[:0]
		var noChangeLives []func()
		for i, j := range jobs {
			results[i] = nil
			if j.name == "" {
				continue // Flush
			}
			wk := nodes[j.name]
			if wk == nil {
				cur, ok := d.nodes[j.name]
				if !ok || cur.Node.Name == "" {
					results[i] = ErrNotFound
					continue
				}
				wk = &work{rec: cur.clone(), rev: cur.statusRev}
				nodes[j.name] = wk
				order = append(order, j.name)
			}
			nr := wk.rec.clone()
			var a archive
			if ferr := j.fn(nr, &a); ferr != nil {
				if !errors.Is(ferr, errNoChange) {
					results[i] = ferr
				} else if a.live != nil {
					noChangeLives = append(noChangeLives, a.live)
				}
				continue
			}
			if a.live != nil {
				lives = append(lives, a.live)
			}
			wk.rec, wk.dirt = nr, true
			if a.put != nil {
				old, merr := json.Marshal(a.put)
				if merr != nil {
					results[i] = merr
					continue
				}
				wk.ops = append(wk.ops, store.Put(bootKey(j.name, a.put.ID), old))
			}
			for _, id := range a.drop {
				wk.ops = append(wk.ops, store.Delete(bootKey(j.name, id)))
			}
		}
		// Memory-only changes that go with no write apply now (a
		// heartbeat: no disk write per heartbeat).
		for _, f := range noChangeLives {
			f()
		}
		d.mu.Unlock()
		n := 0
		for _, name := range order {
			wk := nodes[name]
			if !wk.dirt {
				continue
			}
			b, merr := json.Marshal(wk.rec.statusRecord)
			if merr != nil {
				err = merr
				break
			}
			cmps = append(cmps, store.Cmp{Key: statusKey(name), Rev: wk.rev})
			ops = append(ops, store.Put(statusKey(name), b))
			ops = append(ops, wk.ops...)
			n++
		}
		if err != nil {
			break
		}
		if len(ops) == 0 {
			break
		}
		err = d.commit(cmps, ops)
		if errors.Is(err, store.ErrConflict) {
			if err = d.catchUp(); err != nil {
				break
			}
			err = store.ErrConflict
			continue
		}
		if err == nil {
			d.w.mu.Lock()
			d.w.batches++
			d.w.changes += len(jobs)
			d.w.mu.Unlock()
		}
		break
	}
	if err == nil && len(lives) > 0 {
		d.mu.Lock()
		for _, f := range lives {
			f()
		}
		d.mu.Unlock()
	}
	lost := 0
	for i, j := range jobs {
		r := results[i]
		if err != nil && r == nil && j.name != "" {
			r = fmt.Errorf("write node %s: %w", j.name, err)
			if j.done == nil {
				lost++
			}
		}
		if j.done != nil {
			j.done <- r
		}
	}
	if lost > 0 {
		d.w.mu.Lock()
		d.w.lost += lost
		d.w.mu.Unlock()
	}
}

// closeWriter lets the writer commit what is queued, then stops it.
func (d *DB) closeWriter() {
	d.w.mu.Lock()
	d.w.closing = true
	d.w.mu.Unlock()
	select {
	case d.w.wake <- struct{}{}:
	default:
	}
	<-d.w.done
}
