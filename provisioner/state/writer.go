package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"sync"
	"time"
	"unicode/utf8"

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
	// groupGap is the least time between the starts of two commits of
	// posted changes only: under a steady stream of boot events (a DHCP
	// load, a boot storm) the writer gathers them for up to this long
	// rather than committing each handful as it comes, so the commit's
	// fixed costs (the fsync, the meta page, the tree's upper pages) are
	// paid a hundred times a second, not a thousand. An event arriving
	// after a quiet spell is committed at once, and a change someone
	// waits for (update: a nonce, a token, a report) ends the wait.
	groupGap = 10 * time.Millisecond
)

// job is one status change for the writer: fn works on a copy of the
// node's record, as update's does. done, when not nil, receives the
// result once the change is committed (and in memory) or refused.
type job struct {
	name string
	fn   func(r *record, a *archive) error
	done chan error
	// canon says fn changes the record only in ways the store's JSON
	// gives back unchanged (canonical): a boot event posted by the
	// serving path (Post, PostRepeat). See prepared.
	canon bool
}

// prepared is a node's status as the writer committed it, with the bytes
// it wrote: when the watch delivers exactly these bytes at that key, the
// record is taken as is instead of decoded from them (the serving path's
// boot events are most of the head's writes under a boot storm, and
// decoding each back cost more than the rest of the packet). It is only
// made from records whose every change was canonical (job.canon) on a
// record memory already held (itself decoded, or prepared), so it equals
// what decoding the bytes gives; the tests of this package decode and
// compare every one (verifyPrepared). Keyed by content, it is right with
// a store several heads share too: bytes another head wrote are decoded,
// and identical bytes decode to an identical record.
type prepared struct {
	value []byte
	rec   statusRecord
}

// verifyPrepared makes apply decode every prepared record and panic if
// it differs from the decoded one (set by this package's tests).
var verifyPrepared bool

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
	dropped int       // events refused because the queue was full
	lost    int       // posted events whose commit failed
	batches int       // transactions committed
	changes int       // changes committed
	waiters int       // queued jobs with done (someone waits for them)
	last    time.Time // when the last group was taken
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
	if j.done != nil {
		w.waiters++
	}
	// The writer waits for the first job, or lingers over posted ones
	// (take): only what ends either wakes it.
	wake := len(w.queue) == 1 || j.done != nil || len(w.queue) == maxBatch
	w.mu.Unlock()
	if wake {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// take returns up to maxBatch queued jobs, waiting for one; ok is false
// once the writer is closing and the queue is empty. Jobs that are all
// posted wait until groupGap after the last group was taken (or a full
// batch, or a job someone waits for, or Close).
func (w *writer) take() (jobs []job, ok bool) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			wait := groupGap - time.Since(w.last)
			if wait > 0 && w.waiters == 0 && len(w.queue) < maxBatch && !w.closing {
				w.mu.Unlock()
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case <-timer.C:
				case <-w.wake:
				}
				continue
			}
			n := min(len(w.queue), maxBatch)
			jobs = w.queue[:n:n]
			w.queue = w.queue[n:]
			if len(w.queue) == 0 {
				w.queue = nil
			}
			for _, j := range jobs {
				if j.done != nil {
					w.waiters--
				}
			}
			w.last = time.Now()
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

// postCanon is post for a change that is canonical (job.canon).
func (d *DB) postCanon(name string, fn func(r *record, a *archive) error) {
	d.w.submit(job{name: name, fn: fn, canon: true})
}

// canonical returns e as the store's JSON gives it back: its time
// without the monotonic clock reading and in the location decoding
// gives, its detail valid UTF-8 as the encoder writes it.
func canonical(e Event) Event {
	if _, off := e.Time.Zone(); off == 0 && e.Time.Year() >= 0 && e.Time.Year() <= 9999 {
		// What the round trip below gives, without it (every boot event
		// takes this path on a head whose zone is UTC): RFC 3339 says "Z",
		// which decodes in UTC.
		e.Time = e.Time.Round(0).UTC()
	} else if b, err := e.Time.MarshalJSON(); err == nil {
		var t time.Time
		if t.UnmarshalJSON(b) == nil {
			e.Time = t
		}
	}
	for _, s := range []*string{&e.Detail, (*string)(&e.Step), &e.Head} {
		if !utf8.ValidString(*s) {
			b, _ := json.Marshal(*s)
			_ = json.Unmarshal(b, s)
		}
	}
	return e
}

// takePrepared returns the record the writer prepared for e, if e
// carries its bytes; d.mu is held.
func (d *DB) takePrepared(e store.Event) (statusRecord, bool) {
	p := d.prepared[e.Key]
	if p == nil || !bytes.Equal(p.value, e.Value) {
		return statusRecord{}, false
	}
	delete(d.prepared, e.Key)
	d.preparedTaken++
	if verifyPrepared {
		var s statusRecord
		if err := decodeStatus(e.Key, e.Value, &s); err != nil || !reflect.DeepEqual(s, p.rec) {
			panic(fmt.Sprintf("state: prepared status %s differs from its bytes (%v):\nprepared %#v\ndecoded  %#v", e.Key, err, p.rec, s))
		}
	}
	return p.rec, true
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
	rec   *record
	rev   int64
	ops   []store.Op
	dirt  bool
	canon bool // every change applied was canonical (job.canon)
}

// writeBatch applies jobs in order and commits them: in one transaction
// when the store takes it, else in as few as its limits allow (each
// node's changes always in one). Nodes whose transaction met a conflict
// (another head wrote the same node) are done again on the newer records.
func (d *DB) writeBatch(jobs []job) {
	results := make([]error, len(jobs))
	final := make([]bool, len(jobs)) // the job's outcome is known
	var lives []func()               // memory-only changes, once their writes committed
	for attempt := 0; ; attempt++ {
		retry, l, err := d.tryBatch(jobs, results, final)
		lives = append(lives, l...)
		if len(retry) == 0 {
			break
		}
		if err == nil {
			err = d.catchUp()
		}
		if err != nil || attempt+1 >= maxRetries {
			if err == nil {
				err = fmt.Errorf("%w, %d times", store.ErrConflict, maxRetries)
			}
			for _, i := range retry {
				results[i], final[i] = fmt.Errorf("write node %s: %w", jobs[i].name, err), true
			}
			break
		}
	}
	if len(lives) > 0 {
		d.mu.Lock()
		for _, f := range lives {
			f()
		}
		d.mu.Unlock()
	}
	lost := 0
	for i, j := range jobs {
		if j.done != nil {
			j.done <- results[i]
		} else if results[i] != nil && !errors.Is(results[i], ErrNotFound) && j.name != "" {
			lost++
		}
	}
	if lost > 0 {
		d.w.mu.Lock()
		d.w.lost += lost
		d.w.mu.Unlock()
	}
}

// tryBatch applies the jobs whose outcome is not final to copies of the
// records and commits them. It returns the jobs to try again (their
// node's transaction met a conflict), with the error that stops retrying
// if any, and the memory-only changes of the jobs that committed.
func (d *DB) tryBatch(jobs []job, results []error, final []bool) (retry []int, lives []func(), err error) {
	nodes := map[string]*work{}
	var order []string
	jobsOf := map[string][]int{}
	liveOf := map[string][]func(){}
	d.mu.Lock()
	for i, j := range jobs {
		if final[i] {
			continue
		}
		results[i] = nil
		if j.name == "" {
			final[i] = true // Flush
			continue
		}
		wk := nodes[j.name]
		if wk == nil {
			cur, ok := d.nodes[j.name]
			if !ok || cur.Node.Name == "" {
				results[i], final[i] = ErrNotFound, true
				continue
			}
			wk = &work{rec: cur.clone(), rev: cur.statusRev, canon: true}
			nodes[j.name] = wk
			order = append(order, j.name)
		}
		// A change that may fail works on a copy, so that its failure
		// leaves the record as it was; a canonical one (a posted boot
		// event) never fails, and changes the group's copy directly.
		nr := wk.rec
		if !j.canon {
			nr = wk.rec.clone()
		}
		var a archive
		boot, events := nr.Status.ID, len(nr.Status.Timeline)
		ferr := j.fn(nr, &a)
		if ferr == nil {
			d.stampHead(nr, boot, events)
		}
		if ferr != nil {
			if !errors.Is(ferr, errNoChange) {
				results[i], final[i] = ferr, true
			} else {
				// Memory-only changes that go with no write apply now
				// (a heartbeat: no disk write per heartbeat).
				if a.live != nil {
					a.live()
				}
				final[i] = true
			}
			continue
		}
		jobsOf[j.name] = append(jobsOf[j.name], i)
		if a.live != nil {
			liveOf[j.name] = append(liveOf[j.name], a.live)
		}
		wk.rec, wk.dirt, wk.canon = nr, true, wk.canon && j.canon
		if a.put != nil {
			old, merr := encodeBoot(a.put)
			if merr != nil {
				results[i], final[i] = merr, true
				continue
			}
			wk.ops = append(wk.ops, store.Put(bootKey(j.name, a.put.ID), old))
		}
		for _, id := range a.drop {
			wk.ops = append(wk.ops, store.Delete(bootKey(j.name, id)))
		}
	}
	d.mu.Unlock()

	// One group per node: its compare, its status, its boots.
	type group struct {
		name string
		cmp  store.Cmp
		ops  []store.Op
	}
	var groups []group
	var preps map[string]*prepared
	for _, name := range order {
		wk := nodes[name]
		if !wk.dirt {
			continue
		}
		b, merr := encodeStatus(&wk.rec.statusRecord)
		if merr != nil {
			for _, i := range jobsOf[name] {
				results[i], final[i] = merr, true
			}
			continue
		}
		groups = append(groups, group{name, store.Cmp{Key: statusKey(name), Rev: wk.rev}, append([]store.Op{store.Put(statusKey(name), b)}, wk.ops...)})
		if wk.canon {
			rec := wk.rec.statusRecord
			if len(rec.Status.History) == 0 {
				rec.Status.History = nil // omitempty: decoded as nil
			}
			if preps == nil {
				preps = map[string]*prepared{}
			}
			preps[statusKey(name)] = &prepared{value: b, rec: rec}
		}
	}
	if len(preps) > 0 {
		d.mu.Lock()
		maps.Copy(d.prepared, preps)
		d.mu.Unlock()
		defer func() {
			// What the watch did not take (a failed commit, a conflict)
			// goes.
			d.mu.Lock()
			for k, p := range preps {
				if d.prepared[k] == p {
					delete(d.prepared, k)
				}
			}
			d.mu.Unlock()
		}()
	}
	limits := d.st.Limits()
	for len(groups) > 0 {
		var cmps []store.Cmp
		var ops []store.Op
		n, size := 0, 0
		for n < len(groups) {
			g := groups[n]
			// What fits(limits, cmps, ops+g.ops) says, counted as the
			// groups are added (not by copying the ops for each group:
			// quadratic in a 2,048-change batch).
			gsize := opsSize(g.ops)
			if n > 0 && limits.MaxOps > 0 && (len(cmps)+1 > limits.MaxOps || len(ops)+len(g.ops) > limits.MaxOps ||
				limits.MaxBytes > 0 && size+gsize > limits.MaxBytes) {
				break
			}
			cmps, ops, size = append(cmps, g.cmp), append(ops, g.ops...), size+gsize
			n++
		}
		batch := groups[:n]
		groups = groups[n:]
		cerr := d.commit(cmps, ops)
		if cerr == nil {
			changes := 0
			for _, g := range batch {
				for _, i := range jobsOf[g.name] {
					final[i] = true
				}
				changes += len(jobsOf[g.name])
				lives = append(lives, liveOf[g.name]...)
			}
			d.w.mu.Lock()
			d.w.batches++
			d.w.changes += changes
			d.w.mu.Unlock()
			continue
		}
		for _, g := range batch {
			for _, i := range jobsOf[g.name] {
				if errors.Is(cerr, store.ErrConflict) {
					retry = append(retry, i)
				} else {
					results[i], final[i] = fmt.Errorf("write node %s: %w", g.name, cerr), true
				}
			}
		}
	}
	return retry, lives, nil
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
