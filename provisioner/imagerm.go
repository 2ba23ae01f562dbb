package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/provisioner/store"
)

// Image removal on several heads (docs/scale-out.md, "Removing images").
// Each head has its own image store, so `ramboot image rm` on one head
// leaves a removal record in the shared store, imagerm/NAME:TAG, that
// every head honours:
//
//   - a head removes its own reference NAME:TAG if it was written at or
//     before the removal (its file's time against the record's): the
//     head that was down at the time does so when it starts;
//   - no head fetches NAME:TAG from a peer while the record exists (a peer
//     that has not yet removed its copy would bring the image back);
//   - the record is lifted by the head where NAME:TAG is written again
//     after the removal (an admin's rebuild, tag or push there), so that
//     the other heads may fetch the new image; a copy this head fetched
//     from a peer does not count, it is removed instead.
//
// Heads compare their clocks with the removing head's: run NTP (a
// reference rebuilt within the clocks' skew of its removal may be removed
// as the old one).
const keyImageRemoved = "imagerm/"

// imageRemoval is the value of imagerm/NAME:TAG.
type imageRemoval struct {
	// Ref is "name:tag".
	Ref string `json:"ref"`
	// Digest is the manifest the removing head's reference named ("" if
	// it had none: removed on other heads only).
	Digest images.Digest `json:"digest,omitempty"`
	// Time is when it was removed, by the removing head's clock.
	Time time.Time `json:"time"`
	// Head is the removing head's boot URL, or "cli" when no daemon ran.
	Head string `json:"head"`
}

// imageRemovals carries out image removals across the heads of a shared
// store. Its zero value is not usable: see newImageRemovals.
type imageRemovals struct {
	st     store.Store // the shared store; nil for a single head
	images *images.Store
	self   string
	log    *slog.Logger
	now    func() time.Time
	// sweepEvery is how often the head looks again at its references
	// against the records (a reference written again lifts its record);
	// records that arrive by the watch are applied at once.
	sweepEvery time.Duration

	mu      sync.Mutex
	removed map[string]storedRemoval
	// fetched are the references this process committed from a peer, and
	// when: never taken for an admin's rewrite.
	fetched  map[string]time.Time
	inflight map[string]int
	m        *prometheus.CounterVec
}

type storedRemoval struct {
	imageRemoval
	rev int64
}

// headImageRemovals returns the removals of a head on db: shared through
// db's store when heads share it (etcd), this head's store only otherwise.
func headImageRemovals(db *state.DB, is *images.Store, self string, log *slog.Logger, reg prometheus.Registerer) *imageRemovals {
	var st store.Store
	if db.Path() == "" {
		st = db.Store()
	}
	r := newImageRemovals(st, is, self, log)
	if reg != nil {
		reg.MustRegister(r.m)
	}
	return r
}

func newImageRemovals(st store.Store, is *images.Store, self string, log *slog.Logger) *imageRemovals {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &imageRemovals{st: st, images: is, self: self, log: log, now: time.Now, sweepEvery: 5 * time.Second,
		removed: map[string]storedRemoval{}, fetched: map[string]time.Time{}, inflight: map[string]int{},
		m: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_image_removals_total",
			Help: "Image references removed from this head's store: by an admin here (local), or carried out for a removal on another head (other_head).",
		}, []string{"origin"}),
	}
	r.m.WithLabelValues("local")
	r.m.WithLabelValues("other_head")
	return r
}

// Remove removes reference ref from this head's store and, with a shared
// store, records the removal for every other head first: if the record
// cannot be written, nothing is removed. A reference this head lacks is
// still removed from the others (ErrNotFound only when no head is told).
func (r *imageRemovals) Remove(ctx context.Context, ref string) (images.Digest, error) {
	rf, err := images.ParseReference(ref)
	if err != nil {
		return "", err
	}
	if r.st == nil {
		d, err := r.images.Remove(rf.String())
		if err == nil {
			r.m.WithLabelValues("local").Inc()
		}
		return d, err
	}
	_, d, err := r.images.Resolve(rf.String())
	if err != nil && !errors.Is(err, images.ErrNotFound) {
		d = "" // a damaged reference is removed all the same
	}
	rec := imageRemoval{Ref: rf.String(), Digest: d, Time: r.now().UTC(), Head: r.self}
	b, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	rev, err := r.st.Txn(ctx, nil, []store.Op{store.Put(keyImageRemoved+rec.Ref, b)})
	if err != nil {
		return "", fmt.Errorf("remove image %s: record the removal for the other heads: %w", rf, err)
	}
	r.mu.Lock()
	r.removed[rec.Ref] = storedRemoval{rec, rev}
	r.mu.Unlock()
	ld, err := r.images.Remove(rf.String())
	if errors.Is(err, images.ErrNotFound) {
		r.log.Info("image removal recorded for the other heads; this head had no such reference", "image", rec.Ref)
		return "", nil
	}
	if err != nil {
		return "", err
	}
	r.m.WithLabelValues("local").Inc()
	return ld, nil
}

// Removed reports whether ref was removed on some head and not written
// again since: a peer's copy of it must not be fetched.
func (r *imageRemovals) Removed(ref string) (imageRemoval, bool) {
	if r == nil || strings.HasPrefix(ref, "sha256:") {
		return imageRemoval{}, false
	}
	rf, err := images.ParseReference(ref)
	if err != nil {
		return imageRemoval{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.removed[rf.String()]
	return s.imageRemoval, ok
}

// Fetching notes that ref is being committed from a peer; call the
// function it returns once the commit is done (committed true) or
// failed. The sweep
// leaves ref alone meanwhile, then takes the copy for a fetched one, not
// an admin's rewrite.
func (r *imageRemovals) Fetching(ref string) func(committed bool) {
	if r == nil || strings.HasPrefix(ref, "sha256:") {
		return func(bool) {}
	}
	rf, err := images.ParseReference(ref)
	if err != nil {
		return func(bool) {}
	}
	k := rf.String()
	r.mu.Lock()
	r.inflight[k]++
	r.mu.Unlock()
	return func(committed bool) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if committed {
			r.fetched[k] = r.now()
		}
		if r.inflight[k]--; r.inflight[k] <= 0 {
			delete(r.inflight, k)
		}
	}
}

// Run follows the removal records of the shared store until ctx ends,
// applying each to this head's store as it arrives and sweeping every
// sweepEvery. It returns nil at once for a single head.
func (r *imageRemovals) Run(ctx context.Context) error {
	if r.st == nil {
		return nil
	}
	t := time.NewTicker(r.sweepEvery)
	defer t.Stop()
	for ctx.Err() == nil {
		kvs, rev, err := r.st.List(ctx, keyImageRemoved)
		if err != nil {
			r.log.Warn("image removals: list", "err", err)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			continue
		}
		r.mu.Lock()
		clear(r.removed)
		for _, kv := range kvs {
			r.fold(kv.Key, kv.Value, kv.Rev)
		}
		r.mu.Unlock()
		r.sweep(ctx)
		wctx, cancel := context.WithCancel(ctx)
		ch := r.st.Watch(wctx, keyImageRemoved, rev)
	watch:
		for {
			select {
			case <-ctx.Done():
				break watch
			case <-t.C:
				r.sweep(ctx)
			case c, ok := <-ch:
				if !ok || c.Err != nil {
					if c.Err != nil && !errors.Is(c.Err, store.ErrCompacted) && ctx.Err() == nil {
						r.log.Warn("image removals: watch", "err", c.Err)
					}
					break watch // list again
				}
				r.mu.Lock()
				for _, e := range c.Events {
					if e.Deleted {
						delete(r.removed, strings.TrimPrefix(e.Key, keyImageRemoved))
						continue
					}
					r.fold(e.Key, e.Value, e.Rev)
				}
				r.mu.Unlock()
				r.sweep(ctx)
			}
		}
		cancel()
	}
	return nil
}

// fold records one stored removal; r.mu is held.
func (r *imageRemovals) fold(key string, v []byte, rev int64) {
	var rec imageRemoval
	if err := json.Unmarshal(v, &rec); err != nil || rec.Ref != strings.TrimPrefix(key, keyImageRemoved) {
		r.log.Warn("image removals: a record that does not decode is ignored", "key", key, "err", err)
		return
	}
	r.removed[rec.Ref] = storedRemoval{rec, rev}
}

// sweep applies every record to this head's store: a reference written
// before its removal goes; one written after it by this head's admin
// lifts the record.
func (r *imageRemovals) sweep(ctx context.Context) {
	r.mu.Lock()
	recs := make([]storedRemoval, 0, len(r.removed))
	for _, s := range r.removed {
		recs = append(recs, s)
	}
	r.mu.Unlock()
	for _, s := range recs {
		_, at, err := r.images.RefTime(s.Ref)
		if errors.Is(err, images.ErrNotFound) {
			continue
		}
		if err != nil {
			r.log.Warn("image removals: read reference", "image", s.Ref, "err", err)
			continue
		}
		r.mu.Lock()
		fetchedAt, fetched := r.fetched[s.Ref]
		busy := r.inflight[s.Ref] > 0
		r.mu.Unlock()
		if busy {
			continue // judged once the fetch has committed
		}
		if !at.After(s.Time) || fetched && !fetchedAt.Before(at) {
			before := at
			if before.Before(s.Time) {
				before = s.Time
			}
			d, ok, err := r.images.RemoveWrittenBefore(s.Ref, before)
			if err != nil {
				r.log.Warn("image removals: remove", "image", s.Ref, "err", err)
			} else if ok {
				r.m.WithLabelValues("other_head").Inc()
				r.mu.Lock()
				delete(r.fetched, s.Ref)
				r.mu.Unlock()
				r.log.Info("image removed: removed on another head", "image", s.Ref+"@"+string(d), "by", s.Head, "at", s.Time)
			}
			continue
		}
		// Written here after the removal: a new image under the old name.
		_, err = r.st.Txn(ctx, []store.Cmp{{Key: keyImageRemoved + s.Ref, Rev: s.rev}}, []store.Op{store.Delete(keyImageRemoved + s.Ref)})
		switch {
		case err == nil:
			r.log.Info("image written again after its removal: the other heads may fetch it", "image", s.Ref)
			r.mu.Lock()
			if cur, ok := r.removed[s.Ref]; ok && cur.rev == s.rev {
				delete(r.removed, s.Ref)
			}
			r.mu.Unlock()
		case errors.Is(err, store.ErrConflict):
			// Removed again meanwhile: the next sweep judges the new record.
		default:
			r.log.Warn("image removals: lift the record", "image", s.Ref, "err", err)
		}
	}
}
