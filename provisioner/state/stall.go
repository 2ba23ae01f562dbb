package state

import (
	"fmt"
	"time"
)

// MarkStalled marks stalled every boot that is booting and has had no
// event for timeout, unless busy says the node is still transferring a
// file. It records a stalled event (since when, after which step) and
// returns the names of the nodes it marked.
func (d *DB) MarkStalled(timeout time.Duration, busy func(Node) bool) ([]string, error) {
	now := d.now()
	stale := func(r *record) bool {
		return r.Status.State == StateBooting && now.Sub(r.Status.lastProgress()) >= timeout
	}
	d.mu.Lock()
	var cands []*record
	for _, r := range d.nodes {
		if r.Node.Name != "" && stale(r) && !d.stalledElsewhere(&r.Status.Boot) {
			cands = append(cands, r)
		}
	}
	d.mu.Unlock()
	var marked []string
	var errs []error
	for _, c := range cands {
		if busy != nil && busy(c.Node) {
			continue
		}
		var done bool
		err := d.update(c.Node.Name, func(r *record, _ *archive) error {
			if !stale(r) {
				return errNoChange
			}
			since, after := r.Status.lastProgress(), Step("start")
			if n := len(r.Status.Timeline); n > 0 {
				after = r.Status.Timeline[n-1].Step
			}
			r.Status.add(Event{Time: now, Step: StepStalled, Detail: fmt.Sprintf("no progress for %s, since %s at %s",
				now.Sub(since).Round(time.Second), after, since.Format(time.TimeOnly))})
			done = true
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("mark node %s stalled: %w", c.Node.Name, err))
		} else if done {
			marked = append(marked, c.Node.Name)
		}
	}
	if len(errs) > 0 {
		return marked, errs[0]
	}
	return marked, nil
}
