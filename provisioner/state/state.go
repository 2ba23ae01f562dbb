// Package state keeps the head's durable state in a store (provisioner/store;
// one bbolt database under the state directory by default): the node
// inventory with each node's boot status, its current boot's timeline and
// the last few boots before it. Reads come from an in-memory view that
// follows the store's changes (its Watch), so with a shared store every
// head serves what any head committed.
//
// Guarantees:
//
//   - A database file is created only where none exists. An empty,
//     truncated or damaged file is a *DamageError naming the file, never a
//     panic and never a new empty inventory (see Verify).
//
//   - Memory follows disk: every change is applied to a copy of the node's
//     record and committed (fsync, compare-and-swap on what it read); only
//     the store's watch of committed changes updates memory. A write that
//     fails (a full disk) changes nothing, in memory or on disk.
//
//   - Reads are served from memory, except earlier boots, read from disk.
//
//     db, err := state.Open(filepath.Join(stateDir, "ramboot.db"))
//     defer db.Close()
//     err = db.AddNode(state.Node{Name: "n1", MAC: mac, IP: ip})
//     err = db.Record("n1", state.Event{Step: state.StepScript}, false)
package state

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/store"
)

// Errors callers branch on.
var (
	// ErrNotFound means no node (or boot) has that name, MAC or address.
	ErrNotFound = errors.New("not found")
	// ErrExists means a node with that name, MAC or address already exists.
	ErrExists = inventory.ErrDuplicate
	// ErrBadToken means a node presented a wrong, used or revoked secret.
	ErrBadToken = errors.New("bad token")
	// ErrWrongAddress means a node's request came from another address
	// than its reserved one.
	ErrWrongAddress = errors.New("not from the node's reserved address")
	// ErrConflict means a report contradicts the one already recorded for
	// the same boot, or is for a boot that is no longer current.
	ErrConflict = errors.New("conflicts with the recorded boot")
)

// Node is one inventory node (provisioner/inventory's model).
type Node = inventory.Node

// Profile is one inventory profile.
type Profile = inventory.Profile

// Pin is the image digest a node was given: it keeps booting that digest,
// whatever its reference resolves to later, until an admin moves it.
type Pin struct {
	// Ref is the image reference the digest was resolved from.
	Ref string `json:"ref"`
	// Digest is the manifest digest.
	Digest string `json:"digest"`
	// Boot is the boot that was first given it.
	Boot int `json:"boot,omitempty"`
}

// Status is what the head knows about a node's boots: the current (or
// last) boot, and which earlier ones it keeps.
type Status struct {
	// Boot is the current boot; its ID is 0 and its state StateNew while
	// no boot was seen.
	Boot
	// Boots counts the boots the head has seen start.
	Boots int `json:"boots"`
	// History lists the IDs of the earlier boots kept, newest first.
	History []int `json:"history,omitempty"`
	// Pin is the image the node boots until an admin moves it; nil until
	// its first script.
	Pin *Pin `json:"pin,omitempty"`
}

// NodeStatus is a node with its status, as returned by reads.
type NodeStatus struct {
	Node
	// Status is the node's boot status.
	Status Status `json:"status"`
	// Agent is the agent daemon's last registration or heartbeat since
	// the head started, if any: memory only (heartbeat.go).
	Agent *Agent `json:"agent,omitempty"`
}

// record is a node as memory holds it: its inventory entry and its
// status, each with the store revision that last wrote it, plus the
// secrets reads never return.
type record struct {
	Node Node
	statusRecord
	statusRev int64
	// nodeGen changes whenever the node's inventory entry is applied
	// (DB.gen): what a cache of anything derived from Node keys on.
	nodeGen uint64
}

// statusRecord is what is stored at a node's status key: its boot status
// and the current boot's secrets.
type statusRecord struct {
	Status Status `json:"status"`
	// BootNonce is in the overlay URL of the script last served; empty once
	// an overlay consumed it, or a new boot started.
	BootNonce string `json:"bootNonce,omitempty"`
	// TokenHash is the sha256 of the report token of the overlay last
	// served; empty once a new script revoked it.
	TokenHash string `json:"tokenHash,omitempty"`
	// TokenBoot is the boot the token was minted in.
	TokenBoot int `json:"tokenBoot,omitempty"`
}

// clone returns a deep copy of s: changes are made to copies.
func (s statusRecord) clone() statusRecord {
	c := s
	c.Status.Boot = s.Status.Boot.clone()
	c.Status.History = slices.Clone(s.Status.History)
	if s.Status.Pin != nil {
		p := *s.Status.Pin
		c.Status.Pin = &p
	}
	return c
}

// view returns what readers see of r: a deep copy, with the node's live
// agent view. d.mu must be held.
func (d *DB) view(r *record) NodeStatus {
	c := r.statusRecord.clone()
	ns := NodeStatus{Node: *r.Node.Clone(), Status: c.Status}
	if a := d.live[r.Node.Name]; a != nil {
		ns.Agent = a.clone()
	}
	return ns
}

// clone returns a deep copy of r.
func (r *record) clone() *record {
	c := *r
	c.statusRecord = r.statusRecord.clone()
	return &c
}

// Keys of the store.
const (
	keyNodes     = "nodes/"         // nodes/NAME -> Node (inventory)
	keyProfiles  = "profiles/"      // profiles/NAME -> Profile (inventory)
	keyStatus    = "status/"        // status/NAME -> statusRecord
	keyBoots     = "boots/"         // boots/NAME/ID (16 hex digits) -> Boot, earlier boots
	keyInventory = "meta/inventory" // changes with every inventory write: the inventory's compare-and-swap key
)

func nodeKey(name string) string   { return keyNodes + name }
func statusKey(name string) string { return keyStatus + name }

// Options configure a database.
type Options struct {
	// History is how many boots each node keeps, the current one
	// included; 0 means DefaultHistory.
	History int
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// Check, if set, checks the whole inventory after every change, before
	// it commits, instead of inventory.Validate without subnets (the daemon
	// checks addresses against its subnets); changed names the nodes the
	// change adds or changes.
	Check func(inv *inventory.Inventory, changed map[string]bool) error

	// mmapSize is bbolt's initial memory map size (tests: a write that
	// must grow the map waits for every read transaction to end).
	mmapSize int
}

// DB is the open state database: an in-memory view that follows the
// store's changes. Its methods are safe for concurrent use.
type DB struct {
	st      store.Store
	bolt    *store.Bolt // nil when the store is shared (etcd)
	path    string
	history int
	now     func() time.Time
	stop    context.CancelFunc
	done    chan struct{}
	w       *writer

	mu       sync.Mutex
	applied  sync.Cond // broadcast when rev advances
	rev      int64     // the store revision memory reflects
	watchErr error     // set when the watch ended
	reloads  int       // times memory was rebuilt from a listing (ErrCompacted)
	invRev   int64     // revision of keyInventory
	// gen counts the inventory entries applied to memory, never reset
	// (not even by a reload): each node record and the profiles map take
	// a new value of it when they change (record.nodeGen, profGen).
	gen     uint64
	profGen uint64
	inv     *inventory.Inventory
	nodes   map[string]*record // by name; published records are never changed
	byMAC   map[string]string  // MAC -> name, every interface
	byID    map[string]string  // client id -> name
	byIP    map[netip.Addr]string
	fails   int // writes that did not commit
	check   func(*inventory.Inventory, map[string]bool) error
	// live is each node's agent daemon's last registration or
	// heartbeat: memory only, never written (heartbeat.go). Published
	// values are never changed.
	live map[string]*Agent
	// pending are the tokens of overlays being sent (ExpectToken).
	pending map[string]*pendingToken
	// open is the inventory change being applied in chunks (chunked.go),
	// nil when none; held are its events, applied together when it
	// closes.
	open     *openChange
	held     []store.Event
	openSeen time.Time // when memory last saw the open change move
	// heads are the heads registered in a shared store, by ID; peerLive
	// what each published hearing from the agents, by "ID/shard"; self
	// is this head's ID (heads.go).
	heads    map[string]Head
	peerLive map[string]map[string]int64
	self     string
	hostKeys map[string][]byte // node -> its stored host keys (hostkeys.go)
	// prepared are the status records the writer is committing, by key
	// (writer.go).
	prepared      map[string]*prepared
	preparedTaken int // prepared records memory took (tests)
	bg            sync.WaitGroup
}

// staleChange is how long a chunked inventory change may sit open,
// unmoving, before another head finishes it.
const staleChange = 30 * time.Second

// finishLoop finishes chunked inventory changes whose head died mid-way,
// until ctx ends.
func (d *DB) finishLoop(ctx context.Context) {
	t := time.NewTicker(staleChange / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = d.finishStale(staleChange) // tried again at the next tick
		}
	}
}

// Open opens the database at path with default options; see OpenWith.
func Open(path string) (*DB, error) { return OpenWith(path, Options{}) }

// OpenWith opens the database at path, creating it only if no file exists
// there. An existing file is verified first (see Verify): an empty,
// truncated or damaged one is a *DamageError and is left untouched. Only one
// process may hold the database; a second one fails after a second with an
// error wrapping ErrInUse.
func OpenWith(path string, o Options) (*DB, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if err := store.CreateBolt(path); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("open state database: %w", err)
	}
	if _, err := Verify(path); err != nil {
		return nil, err
	}
	var st *store.Bolt
	err := contained(func() error {
		var err error
		st, err = store.OpenBolt(path, store.BoltOptions{InitialMmapSize: o.mmapSize})
		if err != nil {
			return err
		}
		return migrate(st)
	})
	if err != nil {
		if st != nil {
			st.Close()
		}
		if errors.Is(err, store.ErrInUse) {
			return nil, fmt.Errorf("state database %s: %w (is a ramboot daemon serving this state directory?)", path, ErrInUse)
		}
		return nil, fmt.Errorf("load state database %s: %w", path, err)
	}
	var d *DB
	err = contained(func() error {
		var err error
		d, err = openStore(st, o)
		return err
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("load state database %s: %w", path, err)
	}
	d.path, d.bolt = path, st
	return d, nil
}

// OpenStore opens the database kept in st, a store several heads may
// share (etcd): memory is loaded from a listing and follows the store's
// watch from then on, and an inventory change another head left half
// applied is finished first (chunked.go). Close closes st.
func OpenStore(st store.Store, o Options) (*DB, error) {
	if err := finishOpenChange(context.Background(), st); err != nil {
		return nil, fmt.Errorf("load the state store: %w", err)
	}
	d, err := openStore(st, o)
	if err != nil {
		return nil, fmt.Errorf("load the state store: %w", err)
	}
	return d, nil
}

func openStore(st store.Store, o Options) (*DB, error) {
	if o.History <= 0 {
		o.History = DefaultHistory
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	d := &DB{st: st, history: o.History, now: o.Now, check: o.Check, live: map[string]*Agent{}, prepared: map[string]*prepared{}}
	d.applied.L = &d.mu
	if err := d.load(context.Background()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stop, d.done = cancel, make(chan struct{})
	go d.follow(ctx)
	if st.Limits().MaxOps > 0 {
		d.bg.Go(func() { d.finishLoop(ctx) })
	}
	d.w = newWriter()
	go d.runWriter()
	return d, nil
}

// load rebuilds memory from a listing of the whole store. Agents' live
// views are kept for the nodes still there.
func (d *DB) load(ctx context.Context) error {
	kvs, rev, err := d.st.List(ctx, "")
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inv, d.nodes = inventory.New(), map[string]*record{}
	d.gen++
	d.profGen = d.gen // a new, empty profiles map
	d.byMAC, d.byID, d.byIP = map[string]string{}, map[string]string{}, map[netip.Addr]string{}
	d.open, d.held = nil, nil
	d.heads, d.peerLive, d.hostKeys = map[string]Head{}, map[string]map[string]int64{}, map[string][]byte{}
	d.rev = rev
	for _, kv := range kvs {
		if err := d.fold(store.Event{KV: kv}); err != nil {
			return err
		}
	}
	for name := range d.live {
		if _, ok := d.nodes[name]; !ok {
			delete(d.live, name)
		}
	}
	d.applied.Broadcast()
	return nil
}

// follow applies the store's changes to memory, in order, until ctx ends.
// When the store no longer keeps the revisions the watch needs (etcd
// compacted them while the watch was away), memory is rebuilt from a new
// listing and the watch starts again from there.
func (d *DB) follow(ctx context.Context) {
	defer close(d.done)
	for {
		err := d.followFrom(ctx, d.st.Watch(ctx, "", d.rev))
		if ctx.Err() != nil || !errors.Is(err, store.ErrCompacted) {
			break
		}
		for ctx.Err() == nil {
			if err = d.load(ctx); err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		d.mu.Lock()
		d.reloads++
		d.mu.Unlock()
	}
	d.mu.Lock()
	if d.watchErr == nil {
		d.watchErr = store.ErrClosed
	}
	d.applied.Broadcast()
	d.mu.Unlock()
}

// followFrom folds one watch stream into memory; it returns the error
// that ended it (nil when ctx ended or the stream closed).
func (d *DB) followFrom(ctx context.Context, ch <-chan store.Change) error {
	for c := range ch {
		if errors.Is(c.Err, store.ErrCompacted) {
			return c.Err
		}
		d.mu.Lock()
		err := c.Err
		for _, e := range c.Events {
			if aerr := d.fold(e); aerr != nil && err == nil {
				err = aerr
			}
		}
		if c.Rev > d.rev {
			d.rev = c.Rev
		}
		if err != nil && ctx.Err() == nil {
			d.watchErr = err
		}
		d.applied.Broadcast()
		d.mu.Unlock()
	}
	return nil
}

// apply folds one stored key into memory; d.mu is held (or memory not yet
// shared).
func (d *DB) apply(e store.Event) error {
	switch {
	case e.Key == keyInventory:
		d.invRev = e.Rev
	case strings.HasPrefix(e.Key, keyProfiles):
		name := strings.TrimPrefix(e.Key, keyProfiles)
		m := maps.Clone(d.inv.Profiles) // published maps are never changed
		d.inv.Profiles = m
		d.gen++
		d.profGen = d.gen
		if e.Deleted {
			delete(m, name)
			return nil
		}
		var p Profile
		if err := json.Unmarshal(e.Value, &p); err != nil || p.Name != name {
			return fmt.Errorf("decode profile %q: %v", name, err)
		}
		m[name] = &p
	case strings.HasPrefix(e.Key, keyNodes):
		name := strings.TrimPrefix(e.Key, keyNodes)
		old := d.nodes[name]
		if old != nil {
			d.unindex(&old.Node)
		}
		if e.Deleted {
			delete(d.nodes, name)
			delete(d.inv.Nodes, name)
			delete(d.live, name)
			return nil
		}
		if old == nil || old.Node.Name == "" {
			delete(d.live, name) // a new node: no agent of an earlier one
		}
		var n Node
		if err := json.Unmarshal(e.Value, &n); err != nil || n.Name != name {
			return fmt.Errorf("decode node %q: %v", name, err)
		}
		n.Upgrade()
		r := &record{}
		if old != nil {
			*r = *old
		}
		r.Node = n
		d.gen++
		r.nodeGen = d.gen
		d.nodes[name] = r
		d.inv.Nodes[name] = &r.Node
		d.index(&n)
	case strings.HasPrefix(e.Key, keyStatus):
		name := strings.TrimPrefix(e.Key, keyStatus)
		old := d.nodes[name]
		if e.Deleted {
			if old != nil {
				r := *old
				r.statusRecord, r.statusRev = statusRecord{}, 0
				d.nodes[name] = &r
			}
			return nil
		}
		s, ok := d.takePrepared(e)
		if !ok {
			if err := decodeStatus(name, e.Value, &s); err != nil {
				return err
			}
		}
		r := &record{}
		if old != nil {
			*r = *old
		}
		r.statusRecord, r.statusRev = s, e.Rev
		d.nodes[name] = r
	default:
		d.applyShared(e)
	}
	return nil
}

// index adds n's interfaces to the lookup maps.
func (d *DB) index(n *Node) {
	for _, ifc := range n.Interfaces {
		if ifc.MAC != "" {
			d.byMAC[ifc.MAC] = n.Name
		}
		if ifc.ClientID != "" {
			d.byID[ifc.ClientID] = n.Name
		}
		if ifc.IP.IsValid() {
			d.byIP[ifc.IP] = n.Name
		}
	}
}

// unindex removes n's interfaces from the lookup maps.
func (d *DB) unindex(n *Node) {
	for _, ifc := range n.Interfaces {
		if d.byMAC[ifc.MAC] == n.Name {
			delete(d.byMAC, ifc.MAC)
		}
		if d.byID[ifc.ClientID] == n.Name {
			delete(d.byID, ifc.ClientID)
		}
		if d.byIP[ifc.IP] == n.Name {
			delete(d.byIP, ifc.IP)
		}
	}
}

// waitRev waits until memory reflects store revision rev.
func (d *DB) waitRev(rev int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.rev < rev && d.watchErr == nil {
		d.applied.Wait()
	}
	if d.rev < rev {
		return fmt.Errorf("follow the state store: %w", d.watchErr)
	}
	return nil
}

// Reloads returns how many times memory was rebuilt from a listing
// because the store had compacted the revisions its watch needed.
func (d *DB) Reloads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloads
}

// Close closes the database and its store.
func (d *DB) Close() error {
	if d.w != nil {
		d.closeWriter()
	}
	err := d.st.Close()
	if d.stop != nil {
		d.stop()
		<-d.done
		d.bg.Wait()
	}
	return err
}

// Path returns the database file's path; "" for a shared store.
func (d *DB) Path() string { return d.path }

// Store returns the store the database lives in.
func (d *DB) Store() store.Store { return d.st }

// CommitFailures returns how many writes failed to commit since Open.
func (d *DB) CommitFailures() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fails
}

// errNoChange, returned by an update's function, ends the update without a
// write and without an error.
var errNoChange = errors.New("no change")

// archive is what an update does besides the node's record: to its
// earlier boots, and to its live agent view.
type archive struct {
	put  *Boot // a boot that just ended, to keep
	drop []int // boots that fell out of the history
	// live, when set, is run with d.mu held once the record is published,
	// or when fn returned errNoChange: memory-only changes that must not
	// show unless the write they go with committed.
	live func()
}

// maxRetries bounds the retries of a transaction that met a conflict.
const maxRetries = 16

// commit runs one transaction and waits until memory reflects it. A
// failure other than a conflict counts as a failed write.
func (d *DB) commit(cmps []store.Cmp, ops []store.Op) error {
	rev, err := d.st.Txn(context.Background(), cmps, ops)
	if err != nil {
		if !errors.Is(err, store.ErrConflict) {
			d.mu.Lock()
			d.fails++
			d.mu.Unlock()
		}
		return err
	}
	return d.waitRev(rev)
}

// catchUp waits until memory reflects everything the store committed
// that this head knows of (a conflict's revision included).
func (d *DB) catchUp() error { return d.waitRev(d.st.Rev()) }

// syncTimeout bounds Sync.
const syncTimeout = 5 * time.Second

// Sync waits until memory reflects every transaction committed anywhere
// before the call: with a shared store, what another head wrote a moment
// ago (a node's nonce, its token). It costs one linearizable read.
func (d *DB) Sync() error {
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	rev, err := d.st.Current(ctx)
	if err != nil {
		return fmt.Errorf("sync with the state store: %w", err)
	}
	if p, ok := d.st.(interface{ RequestProgress(context.Context) error }); ok {
		d.mu.Lock()
		behind := d.rev < rev
		d.mu.Unlock()
		if behind {
			// Revisions other programs made under other prefixes never
			// come through this head's watch: ask etcd to say how far
			// the watch has come.
			_ = p.RequestProgress(ctx)
		}
	}
	return d.waitRevFor(rev, syncTimeout)
}

// waitRevFor is waitRev with a time limit.
func (d *DB) waitRevFor(rev int64, limit time.Duration) error {
	timedOut := false
	t := time.AfterFunc(limit, func() {
		d.mu.Lock()
		timedOut = true
		d.applied.Broadcast()
		d.mu.Unlock()
	})
	defer t.Stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.rev < rev && d.watchErr == nil && !timedOut {
		d.applied.Wait()
	}
	switch {
	case d.rev >= rev:
		return nil
	case d.watchErr != nil:
		return fmt.Errorf("follow the state store: %w", d.watchErr)
	}
	return fmt.Errorf("follow the state store: revision %d not seen within %s (at %d)", rev, limit, d.rev)
}

// ValidName checks that name can be a node name: a host name label.
func ValidName(name string) error { return inventory.ValidName("node", name) }

// NormalizeMAC parses a MAC address and returns it lower case with colons.
func NormalizeMAC(s string) (string, error) { return inventory.NormalizeMAC(s) }

// Change is what an inventory transaction changed.
type Change struct {
	// Added, Updated and Removed name the nodes, sorted.
	Added, Updated, Removed []string
	// ProfilesAdded, ProfilesUpdated and ProfilesRemoved name the profiles.
	ProfilesAdded, ProfilesUpdated, ProfilesRemoved []string
}

// Empty reports whether c changes nothing.
func (c Change) Empty() bool {
	return len(c.Added)+len(c.Updated)+len(c.Removed)+len(c.ProfilesAdded)+len(c.ProfilesUpdated)+len(c.ProfilesRemoved) == 0
}

// ChangeInventory runs one inventory transaction: fn edits a copy of the
// inventory (replacing entries, never changing them in place); the result
// is checked whole (inventory.Validate and Options.Check: every problem at
// once), and the difference commits in one transaction only if the
// inventory did not change since it was read (else fn runs again on the
// newer one). Memory reflects it on return. With dryRun nothing is
// written. New nodes start with status new; removed nodes lose their
// status and boot history; a node whose effective image changed is moved
// by fn clearing its pin with ClearPin.
func (d *DB) ChangeInventory(dryRun bool, fn func(inv *inventory.Inventory) error) (Change, error) {
	for range maxRetries {
		if err := d.finishStale(0); err != nil {
			return Change{}, fmt.Errorf("finish the inventory change another head left open: %w", err)
		}
		d.mu.Lock()
		old := d.inv
		next := old.Copy()
		rev := d.invRev
		d.mu.Unlock()
		if err := fn(next); err != nil {
			return Change{}, err
		}
		for name, p := range next.Profiles {
			if old.Profiles[name] != p {
				next.Profiles[name] = p.Normalize()
			}
		}
		changed := map[string]bool{}
		for name, n := range next.Nodes {
			if old.Nodes[name] != n {
				changed[name] = true
				nn := n.Normalize()
				if nn.Created.IsZero() {
					if o, ok := old.Nodes[name]; ok {
						nn.Created = o.Created
					} else {
						nn.Created = d.now().UTC()
					}
				}
				next.Nodes[name] = nn
			}
		}
		if d.check != nil {
			if err := d.check(next, changed); err != nil {
				return Change{}, err
			}
		} else if err := next.ValidateChange(nil, changed); err != nil {
			return Change{}, err
		}
		ch, ops, err := diff(old, next)
		if err != nil {
			return Change{}, err
		}
		if dryRun || len(ops) == 0 {
			return ch, nil
		}
		mark := store.Put(keyInventory, []byte(strconv.FormatInt(rev+1, 10)))
		if fits(d.st.Limits(), 1, append(ops, mark)) {
			err = d.commit([]store.Cmp{{Key: keyInventory, Rev: rev}}, append(ops, mark))
		} else {
			err = d.commitChunked(rev, ops)
		}
		if errors.Is(err, store.ErrConflict) {
			if err := d.catchUp(); err != nil {
				return Change{}, err
			}
			continue
		}
		if err != nil {
			return Change{}, fmt.Errorf("write the inventory: %w", err)
		}
		return ch, nil
	}
	return Change{}, fmt.Errorf("write the inventory: %w, %d times", store.ErrConflict, maxRetries)
}

// diff returns the change from old to next and the store writes it takes.
func diff(old, next *inventory.Inventory) (Change, []store.Op, error) {
	var ch Change
	var ops []store.Op
	newStatus, err := json.Marshal(statusRecord{Status: Status{Boot: Boot{State: StateNew}}})
	if err != nil {
		return ch, nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(next.Profiles)) {
		p := next.Profiles[name]
		o, had := old.Profiles[name]
		if had && (o == p || reflect.DeepEqual(o, p)) {
			continue
		}
		b, err := json.Marshal(p)
		if err != nil {
			return ch, nil, fmt.Errorf("encode profile %s: %w", name, err)
		}
		ops = append(ops, store.Put(keyProfiles+name, b))
		if had {
			ch.ProfilesUpdated = append(ch.ProfilesUpdated, name)
		} else {
			ch.ProfilesAdded = append(ch.ProfilesAdded, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(old.Profiles)) {
		if _, ok := next.Profiles[name]; !ok {
			ops = append(ops, store.Delete(keyProfiles+name))
			ch.ProfilesRemoved = append(ch.ProfilesRemoved, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(next.Nodes)) {
		n := next.Nodes[name]
		o, had := old.Nodes[name]
		if had && (o == n || reflect.DeepEqual(o, n)) {
			continue
		}
		b, err := json.Marshal(n)
		if err != nil {
			return ch, nil, fmt.Errorf("encode node %s: %w", name, err)
		}
		if had {
			ch.Updated = append(ch.Updated, name)
			ops = append(ops, store.Put(nodeKey(name), b))
		} else {
			ch.Added = append(ch.Added, name)
			// Boots of an earlier node of the same name must not show up.
			ops = append(ops, store.DeletePrefix(bootPrefix(name)), store.Put(nodeKey(name), b), store.Put(statusKey(name), newStatus))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(old.Nodes)) {
		if _, ok := next.Nodes[name]; !ok {
			ch.Removed = append(ch.Removed, name)
			ops = append(ops, store.DeletePrefix(bootPrefix(name)), store.Delete(statusKey(name)), store.Delete(nodeKey(name)))
		}
	}
	return ch, ops, nil
}

// Inventory returns the inventory as memory holds it: the maps are a
// copy, the entries shared and never to be changed.
func (d *DB) Inventory() *inventory.Inventory {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inv.Copy()
}

// InventoryRev returns the store revision of the last inventory change:
// it changes with every node or profile written, and with nothing else.
func (d *DB) InventoryRev() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.invRev
}

// Profiles returns every profile by name: a map that is never changed
// (a change to the profiles publishes a new one), so reading it costs
// nothing on a per-packet path.
func (d *DB) Profiles() map[string]*Profile {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.inv.Profiles
}

// AddNode adds n to the inventory. Name, MACs, client ids and addresses
// must be unique.
func (d *DB) AddNode(n Node) error {
	n.Upgrade()
	_, err := d.ChangeInventory(false, func(inv *inventory.Inventory) error {
		if _, ok := inv.Nodes[n.Name]; ok {
			return fmt.Errorf("add node %s: name %w", n.Name, ErrExists)
		}
		inv.Nodes[n.Name] = &n
		return nil
	})
	return err
}

// DeleteNode removes a node, its status and its boot history.
func (d *DB) DeleteNode(name string) error {
	_, err := d.ChangeInventory(false, func(inv *inventory.Inventory) error {
		if _, ok := inv.Nodes[name]; !ok {
			return fmt.Errorf("delete node %s: %w", name, ErrNotFound)
		}
		delete(inv.Nodes, name)
		return nil
	})
	return err
}

// Get returns the node called name.
func (d *DB) Get(name string) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok || r.Node.Name == "" {
		return NodeStatus{}, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	return d.view(r), nil
}

// ByMAC returns the node with that MAC.
func (d *DB) ByMAC(mac net.HardwareAddr) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byMAC[mac.String()]
	if !ok {
		return NodeStatus{}, fmt.Errorf("mac %s: %w", mac, ErrNotFound)
	}
	return d.view(d.nodes[name]), nil
}

// PlanInput is what a node's plan depends on in the state, shared with
// memory and never to be changed: the DHCP path reads it without copying
// the node. Gen and ProfilesGen change whenever the node's inventory
// entry, respectively any profile, changes (a reload included), so a
// cache of a plan keyed on (Gen, ProfilesGen, Pin) and the defaults is
// never stale.
type PlanInput struct {
	// Node is the node's inventory entry: shared, never to be changed.
	Node *Node
	// Gen identifies this version of Node.
	Gen uint64
	// Pin is the node's image pin (zero when none).
	Pin Pin
	// Profiles are every profile by name: shared, never to be changed.
	Profiles map[string]*Profile
	// ProfilesGen identifies this version of Profiles.
	ProfilesGen uint64
}

// PlanInputByMAC returns what the plan of the node with that MAC (lower
// case, colons) depends on, without copying the node.
func (d *DB) PlanInputByMAC(mac string) (PlanInput, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byMAC[mac]
	if !ok {
		return PlanInput{}, fmt.Errorf("mac %s: %w", mac, ErrNotFound)
	}
	return d.planInput(d.nodes[name]), nil
}

// PlanInputByClientID is PlanInputByMAC by DHCP client identifier.
func (d *DB) PlanInputByClientID(id string) (PlanInput, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byID[id]
	if !ok {
		return PlanInput{}, fmt.Errorf("client id %s: %w", id, ErrNotFound)
	}
	return d.planInput(d.nodes[name]), nil
}

// planInput returns r's PlanInput; d.mu is held.
func (d *DB) planInput(r *record) PlanInput {
	in := PlanInput{Node: &r.Node, Gen: r.nodeGen, Profiles: d.inv.Profiles, ProfilesGen: d.profGen}
	if p := r.Status.Pin; p != nil {
		in.Pin = *p
	}
	return in
}

// NameByMAC returns the name of the node with that MAC, without copying
// anything (the recorder's lookup for every DHCP event).
func (d *DB) NameByMAC(mac net.HardwareAddr) (string, bool) {
	k := mac.String()
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byMAC[k]
	return name, ok
}

// NameByClientID is NameByMAC by DHCP client identifier.
func (d *DB) NameByClientID(id string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byID[id]
	return name, ok
}

// ByClientID returns the node with that DHCP client identifier (hex
// with colons, as inventory.NormalizeClientID writes it).
func (d *DB) ByClientID(id string) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byID[id]
	if !ok {
		return NodeStatus{}, fmt.Errorf("client id %s: %w", id, ErrNotFound)
	}
	return d.view(d.nodes[name]), nil
}

// ByIP returns the node with that address.
func (d *DB) ByIP(ip netip.Addr) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byIP[ip.Unmap()]
	if !ok {
		return NodeStatus{}, fmt.Errorf("ip %s: %w", ip, ErrNotFound)
	}
	return d.view(d.nodes[name]), nil
}

// List returns every node, sorted by name.
func (d *DB) List() []NodeStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]NodeStatus, 0, len(d.nodes))
	for _, r := range d.nodes {
		if r.Node.Name != "" {
			out = append(out, d.view(r))
		}
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Summaries returns every node, sorted by name, with only the last event
// of its current boot's timeline: what a listing of thousands of nodes
// shows, without copying every timeline.
func (d *DB) Summaries() []NodeStatus {
	d.mu.Lock()
	out := make([]NodeStatus, 0, len(d.nodes))
	for _, r := range d.nodes {
		if r.Node.Name == "" {
			continue
		}
		st := r.Status
		if n := len(st.Timeline); n > 0 {
			st.Timeline = []Event{st.Timeline[n-1]}
		}
		st.History = slices.Clone(st.History)
		if st.Report != nil {
			rep := *st.Report
			st.Report = &rep
		}
		if st.Pin != nil {
			p := *st.Pin
			st.Pin = &p
		}
		out = append(out, NodeStatus{Node: r.Node, Status: st})
	}
	d.mu.Unlock()
	// Published records are never changed: their Node's slices and maps
	// can be shared by the copies, which callers must not change.
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Boots returns every boot node name keeps, newest (the current one)
// first.
func (d *DB) Boots(name string) ([]Boot, error) {
	d.mu.Lock()
	r, ok := d.nodes[name]
	if !ok || r.Node.Name == "" {
		d.mu.Unlock()
		return nil, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	out := []Boot{r.Status.Boot.clone()}
	history := slices.Clone(r.Status.History)
	d.mu.Unlock()
	kvs, _, err := d.st.List(context.Background(), bootPrefix(name))
	if err != nil {
		return out, err
	}
	kept := map[string][]byte{}
	for _, kv := range kvs {
		kept[kv.Key] = kv.Value
	}
	for _, id := range history {
		v, ok := kept[bootKey(name, id)]
		if !ok {
			continue
		}
		var b Boot
		if err := json.Unmarshal(v, &b); err != nil {
			return out, fmt.Errorf("decode boot %d of node %s: %w", id, name, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// BootByID returns boot id of node name, if it is still kept.
func (d *DB) BootByID(name string, id int) (Boot, error) {
	bs, err := d.Boots(name)
	if err != nil {
		return Boot{}, err
	}
	for _, b := range bs {
		if b.ID == id {
			return b, nil
		}
	}
	ids := make([]string, 0, len(bs))
	for _, b := range bs {
		if b.ID > 0 {
			ids = append(ids, fmt.Sprint(b.ID))
		}
	}
	return Boot{}, fmt.Errorf("boot %d of node %s (kept: %s): %w", id, name, orNone(strings.Join(ids, ", ")), ErrNotFound)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Record appends an event to the node's current boot. A DHCP offer starts
// a new boot when it goes to firmware (newBoot true), when the current
// boot already got as far as its script, or when the node never booted:
// iPXE's own DHCP after a firmware PXE step belongs to the same boot. A new
// boot keeps the previous one in the node's history (the last History
// boots), voids the previous script's nonce, and never touches the token a
// running node holds: only a new script revokes it.
//
// Record waits until the event is committed; Post does not.
func (d *DB) Record(name string, e Event, newBoot bool) error {
	if err := d.update(name, d.recordFn(e, newBoot)); err != nil {
		return fmt.Errorf("record %s for node %s: %w", e.Step, name, err)
	}
	return nil
}

// Post queues an event as Record does and returns at once: the status
// writer commits it with its next group of changes, typically within a
// few milliseconds. The serving path (DHCP, TFTP, downloads) posts, so a
// reply never waits for the disk; a crash can lose what was posted and
// not yet committed (docs/state.md).
func (d *DB) Post(name string, e Event, newBoot bool) {
	d.postCanon(name, d.recordFn(e, newBoot))
}

func (d *DB) recordFn(e Event, newBoot bool) func(r *record, a *archive) error {
	if e.Time.IsZero() {
		e.Time = d.now()
	}
	e = canonical(e) // the same in memory as decoded from the store
	return func(r *record, a *archive) error {
		st := &r.Status
		e := e // fn may run again (a conflict's retry)
		if e.Step == StepDHCPOffer {
			if x, ok := st.offer(e.XID); ok {
				// An answer to a transaction the boot already answered:
				// a retransmitted DISCOVER (answered late by a busy head,
				// possibly after the node fetched its script), or the
				// same DISCOVER answered by several heads. It is not a new
				// boot: that would void the script's nonce, and the
				// node's overlay would be refused.
				if x.Head == d.self {
					e.Detail += " (repeated request)"
				}
			} else if newBoot || st.reached(StepScript) || st.ID == 0 {
				// (StepLease, a node OS's DHCP, never starts a boot.)
				d.startBoot(r, a, e.Time)
			}
		}
		st.add(e)
		return nil
	}
}

// startBoot moves r's current boot to the history and starts the next.
func (d *DB) startBoot(r *record, a *archive, t time.Time) {
	st := &r.Status
	if st.ID > 0 {
		ended := st.Boot.clone()
		a.put = &ended
		st.History = slices.Insert(st.History, 0, ended.ID)
		if keep := d.history - 1; len(st.History) > keep {
			a.drop = st.History[keep:]
			st.History = slices.Clone(st.History[:keep])
		}
	}
	st.Boots++
	st.Boot = newBoot(st.Boots, t)
	r.BootNonce = ""
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b)
}

func hashHex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}
