package state

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ramboot/ramboot/provisioner/store"
)

// Several heads on one shared store (etcd) know each other and share what
// they hear from the nodes' agent daemons:
//
//   - heads/ID is each head's registration (Head), held under a lease the
//     head renews: a dead head's key goes away by itself within the
//     lease's time to live. Heads() lists the live ones: the peers a head
//     fetches image blobs from, and that its rival-DHCP detector must not
//     count.
//   - live/ID/NNN are the last times this head heard each node's agent
//     (registration or heartbeat), in shards of liveShard nodes,
//     published every few seconds. A heartbeat costs no store write; a
//     node that heartbeats to one head is not marked down by another
//     (MarkDown takes the latest time any head heard it).
const (
	keyHeads  = "heads/" // heads/ID -> Head (leased)
	keyLive   = "live/"  // live/ID/NNN -> {"node": unix ms}
	liveShard = 2000     // nodes per live/ key: about 60 KB
)

// Head is one head's registration in a shared store.
type Head struct {
	// ID names the head: its boot URL's host:port, unique on the link.
	ID string `json:"id"`
	// URL is its boot and blob HTTP server (http://IP:PORT).
	URL string `json:"url"`
	// IP is its address on the provisioning link.
	IP string `json:"ip"`
	// Name is its host name.
	Name string `json:"name,omitempty"`
	// Started is when its daemon started.
	Started time.Time `json:"started"`
}

// holder is a store that keeps a key under a lease (store.Etcd).
type holder interface {
	Hold(ctx context.Context, key string, value []byte, ttl time.Duration) error
}

// Heads returns the heads registered in the shared store, by ID; none
// with a store of one head.
func (d *DB) Heads() []Head {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := slices.Collect(maps.Values(d.heads))
	slices.SortFunc(out, func(a, b Head) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// RunHead registers h in the shared store for as long as ctx lasts (under
// a lease of ttl: the registration outlives a dead head by at most ttl)
// and publishes what this head hears from the agents every publish, until
// ctx ends. With a store of one head it returns at once.
func (d *DB) RunHead(ctx context.Context, h Head, ttl, publish time.Duration) error {
	hs, ok := d.st.(holder)
	if !ok || !d.shared() {
		return nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.self = h.ID
	d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Hold(ctx, keyHeads+h.ID, b, ttl)
	}()
	t := time.NewTicker(publish)
	defer t.Stop()
	shards := 0
	for {
		select {
		case <-ctx.Done():
			<-done
			return nil
		case <-t.C:
		}
		n, err := d.publishLive(ctx, h.ID, shards)
		if err == nil {
			shards = n
		}
	}
}

// publishLive writes this head's agents' last-seen times to live/ID/NNN
// and removes shards past the new count (prev was the last count).
func (d *DB) publishLive(ctx context.Context, id string, prev int) (int, error) {
	d.mu.Lock()
	names := slices.Sorted(maps.Keys(d.live))
	seen := make([]int64, len(names))
	for i, n := range names {
		seen[i] = d.live[n].LastSeen.UnixMilli()
	}
	d.mu.Unlock()
	n := 0
	for start := 0; start < len(names); start += liveShard {
		m := map[string]int64{}
		for i := start; i < min(start+liveShard, len(names)); i++ {
			m[names[i]] = seen[i]
		}
		b, err := json.Marshal(m)
		if err != nil {
			return prev, err
		}
		if _, err := d.st.Txn(ctx, nil, []store.Op{store.Put(liveKey(id, n), b)}); err != nil {
			return prev, fmt.Errorf("publish the agents heard: %w", err)
		}
		n++
	}
	for i := n; i < prev; i++ {
		if _, err := d.st.Txn(ctx, nil, []store.Op{store.Delete(liveKey(id, i))}); err != nil {
			return prev, err
		}
	}
	return n, nil
}

func liveKey(id string, shard int) string { return fmt.Sprintf("%s%s/%03d", keyLive, id, shard) }

// applyShared folds heads/ and live/ keys into memory; d.mu is held.
func (d *DB) applyShared(e store.Event) {
	switch {
	case strings.HasPrefix(e.Key, keyHostKeys):
		d.applyHostKeys(e)
	case strings.HasPrefix(e.Key, keyHeads):
		id := strings.TrimPrefix(e.Key, keyHeads)
		if e.Deleted {
			delete(d.heads, id)
			return
		}
		var h Head
		if json.Unmarshal(e.Value, &h) == nil {
			d.heads[id] = h
		}
	case strings.HasPrefix(e.Key, keyLive):
		id, shard, _ := strings.Cut(strings.TrimPrefix(e.Key, keyLive), "/")
		k := id + "/" + shard
		if e.Deleted {
			delete(d.peerLive, k)
			return
		}
		var m map[string]int64
		if json.Unmarshal(e.Value, &m) == nil {
			d.peerLive[k] = m
		}
	}
}

// heardLast returns the latest time any other head published hearing
// node name's agent; zero when none did. d.mu is held.
func (d *DB) heardLast(name string) time.Time {
	var last int64
	for k, m := range d.peerLive {
		if d.self != "" && strings.HasPrefix(k, d.self+"/") {
			continue
		}
		if ms, ok := m[name]; ok && ms > last {
			last = ms
		}
	}
	if last == 0 {
		return time.Time{}
	}
	return time.UnixMilli(last)
}

// IsHead reports whether ip is the address of a head registered in the
// shared store: its DHCP offers are a peer's, not a rival's.
func (d *DB) IsHead(ip netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.heads {
		if a, err := netip.ParseAddr(h.IP); err == nil && a == ip.Unmap() {
			return true
		}
	}
	return false
}

// stampHead marks the events a change added to r's current boot (it was
// boot, with events events, before) with this head's ID, when several
// heads share the store: the head that recorded a boot's last step is the
// one that knows whether a download for it is under way (MarkStalled).
// d.mu is held (the writer applies changes under it).
func (d *DB) stampHead(r *record, boot, events int) {
	self := d.self
	if self == "" {
		return
	}
	tl := r.Status.Timeline
	from := events
	if r.Status.ID != boot || from > len(tl) {
		from = 0
	}
	if from == len(tl) && len(tl) > 0 && tl[len(tl)-1].Head == "" {
		from = len(tl) - 1 // the timeline was full: its last event replaced
	}
	for i := from; i < len(tl); i++ {
		if tl[i].Head == "" {
			tl[i].Head = self
		}
	}
}

// stalledElsewhere reports whether boot b's last step was recorded by
// another live head: that head judges whether it stalled, knowing its own
// downloads. d.mu is held.
func (d *DB) stalledElsewhere(b *Boot) bool {
	if d.self == "" || len(b.Timeline) == 0 {
		return false
	}
	h := b.Timeline[len(b.Timeline)-1].Head
	if h == "" || h == d.self {
		return false
	}
	_, live := d.heads[h]
	return live
}
