// Package state keeps the head's durable state in one bbolt database under
// the state directory: the node inventory with each node's boot status,
// its current boot's timeline and the last few boots before it.
//
// Guarantees:
//
//   - A database file is created only where none exists. An empty,
//     truncated or damaged file is a *DamageError naming the file, never a
//     panic and never a new empty inventory (see Verify).
//
//   - Memory follows disk: every change is applied to a copy of the node's
//     record, committed (fsync) and only then published to readers. A write
//     that fails (a full disk) changes nothing, in memory or on disk.
//
//   - Reads are served from memory, except earlier boots, read from disk.
//
//     db, err := state.Open(filepath.Join(stateDir, "ramboot.db"))
//     defer db.Close()
//     err = db.AddNode(state.Node{Name: "n1", MAC: mac, IP: ip})
//     err = db.Record("n1", state.Event{Step: state.StepScript}, false)
package state

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/ramboot/ramboot/images/overlay"
)

// Errors callers branch on.
var (
	// ErrNotFound means no node (or boot) has that name, MAC or address.
	ErrNotFound = errors.New("not found")
	// ErrExists means a node with that name, MAC or address already exists.
	ErrExists = errors.New("already exists")
	// ErrBadToken means a node presented a wrong, used or revoked secret.
	ErrBadToken = errors.New("bad token")
	// ErrWrongAddress means a node's request came from another address
	// than its reserved one.
	ErrWrongAddress = errors.New("not from the node's reserved address")
	// ErrConflict means a report contradicts the one already recorded for
	// the same boot, or is for a boot that is no longer current.
	ErrConflict = errors.New("conflicts with the recorded boot")
)

// Node is one inventory entry.
type Node struct {
	// Name is the node's unique name, a host name.
	Name string `json:"name"`
	// MAC is the provisioning interface's MAC, lower case with colons.
	MAC string `json:"mac"`
	// IP is the node's reserved IPv4 address.
	IP netip.Addr `json:"ip"`
	// Image is the image the node boots; empty means the default image.
	Image string `json:"image,omitempty"`
	// RootMode is the node's root mode (tmpfs, compressed); empty means
	// the configuration's boot.root.mode.
	RootMode string `json:"rootMode,omitempty"`
	// Created is when the node was added.
	Created time.Time `json:"created"`
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

// record is what is stored per node: what reads return, plus the secrets
// they never do.
type record struct {
	Node   Node   `json:"node"`
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

// clone returns a deep copy of r: changes are made to copies.
func (r *record) clone() *record {
	c := *r
	c.Status.Boot = r.Status.Boot.clone()
	c.Status.History = slices.Clone(r.Status.History)
	return &c
}

// view returns what readers see of r: a deep copy, with the node's live
// agent view. d.mu must be held.
func (d *DB) view(r *record) NodeStatus {
	c := r.clone()
	ns := NodeStatus{Node: c.Node, Status: c.Status}
	if a := d.live[r.Node.Name]; a != nil {
		ns.Agent = a.clone()
	}
	return ns
}

var (
	bucketNodes = []byte("nodes") // node name -> record (JSON)
	bucketBoots = []byte("boots") // bootKey(name, id) -> Boot (JSON), earlier boots
)

// Options configure a database.
type Options struct {
	// History is how many boots each node keeps, the current one
	// included; 0 means DefaultHistory.
	History int
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// mmapSize is bbolt's initial memory map size (tests: a write that
	// must grow the map waits for every read transaction to end).
	mmapSize int
}

// DB is the open state database. Its methods are safe for concurrent use.
type DB struct {
	db      *bolt.DB
	path    string
	history int
	now     func() time.Time

	mu    sync.Mutex
	nodes map[string]*record // by name; published records are never changed
	byMAC map[string]string  // MAC -> name
	byIP  map[netip.Addr]string
	fails int // writes that did not commit
	// live is each node's agent daemon's last registration or
	// heartbeat: memory only, never written (heartbeat.go). Published
	// values are never changed.
	live map[string]*Agent
}

// Open opens the database at path with default options; see OpenWith.
func Open(path string) (*DB, error) { return OpenWith(path, Options{}) }

// OpenWith opens the database at path, creating it only if no file exists
// there. An existing file is verified first (see Verify): an empty,
// truncated or damaged one is a *DamageError and is left untouched. Only one
// process may hold the database; a second one fails after a second with an
// error wrapping ErrInUse.
func OpenWith(path string, o Options) (*DB, error) {
	if o.History <= 0 {
		o.History = DefaultHistory
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if err := create(path); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("open state database: %w", err)
	}
	if _, err := Verify(path); err != nil {
		return nil, err
	}
	d := &DB{path: path, history: o.History, now: o.Now, nodes: map[string]*record{}, byMAC: map[string]string{}, byIP: map[netip.Addr]string{}, live: map[string]*Agent{}}
	err := contained(func() error {
		bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, InitialMmapSize: o.mmapSize})
		if err != nil {
			return err
		}
		d.db = bdb
		err = bdb.View(func(tx *bolt.Tx) error {
			if tx.Bucket(bucketNodes) == nil || tx.Bucket(bucketBoots) == nil {
				return errNoChange
			}
			return nil
		})
		if errors.Is(err, errNoChange) { // a database from before boot history
			err = bdb.Update(func(tx *bolt.Tx) error {
				for _, b := range [][]byte{bucketNodes, bucketBoots} {
					if _, err := tx.CreateBucketIfNotExists(b); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err != nil {
			return err
		}
		return bdb.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
				var r record
				if err := decodeRecord(k, v, &r); err != nil {
					return err
				}
				d.index(&r)
				return nil
			})
		})
	})
	if err != nil {
		if d.db != nil {
			d.db.Close()
		}
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("state database %s: %w (is a ramboot daemon serving this state directory?)", path, ErrInUse)
		}
		return nil, fmt.Errorf("load state database %s: %w", path, err)
	}
	return d, nil
}

// create makes a new, empty database at path atomically: it is built beside
// path and linked into place, so a crash never leaves an empty file at path
// (which the next start would rightly refuse).
func create(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create state database: %w", err)
	}
	tmp := path + ".new"
	_ = os.Remove(tmp) // left by a crash during an earlier create
	bdb, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("create state database %s: %w", tmp, err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketNodes, bucketBoots} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, path) // fails if a file appeared at path
	}
	_ = os.Remove(tmp)
	if err != nil {
		return fmt.Errorf("create state database %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

// Path returns the database file's path.
func (d *DB) Path() string { return d.path }

// CommitFailures returns how many writes failed to commit since Open.
func (d *DB) CommitFailures() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fails
}

func (d *DB) index(r *record) {
	d.nodes[r.Node.Name] = r
	d.byMAC[r.Node.MAC] = r.Node.Name
	d.byIP[r.Node.IP] = r.Node.Name
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

// update is the one place a node's record changes: fn works on a deep copy,
// which is committed in one transaction (with the archive changes fn asks
// for) and only then replaces the record that readers see. d.mu is held
// throughout, so a failed write leaves memory exactly as the disk is.
func (d *DB) update(name string, fn func(r *record, a *archive) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cur, ok := d.nodes[name]
	if !ok {
		return ErrNotFound
	}
	nr := cur.clone()
	var a archive
	if err := fn(nr, &a); err != nil {
		if errors.Is(err, errNoChange) {
			if a.live != nil {
				a.live()
			}
			return nil
		}
		return err
	}
	b, err := json.Marshal(nr)
	if err != nil {
		return fmt.Errorf("encode node %s: %w", name, err)
	}
	err = d.db.Update(func(tx *bolt.Tx) error {
		if a.put != nil {
			old, err := json.Marshal(a.put)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketBoots).Put(bootKey(name, a.put.ID), old); err != nil {
				return err
			}
		}
		for _, id := range a.drop {
			if err := tx.Bucket(bucketBoots).Delete(bootKey(name, id)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketNodes).Put([]byte(name), b)
	})
	if err != nil {
		d.fails++
		return fmt.Errorf("write node %s: %w", name, err)
	}
	d.nodes[name] = nr
	if a.live != nil {
		a.live()
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName checks that name can be a node name: a host name label.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("node name %q: must be 1-63 lower-case letters, digits or '-', not starting or ending with '-'", name)
	}
	return nil
}

// NormalizeMAC parses a MAC address and returns it lower case with colons.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("mac %q: not an Ethernet MAC address like 52:54:00:12:34:56", s)
	}
	return hw.String(), nil
}

// AddNode adds n to the inventory. Name, MAC and IP must be unique.
func (d *DB) AddNode(n Node) error {
	if err := ValidName(n.Name); err != nil {
		return err
	}
	mac, err := NormalizeMAC(n.MAC)
	if err != nil {
		return err
	}
	n.MAC = mac
	if !n.IP.Is4() {
		return fmt.Errorf("node %s: ip %q: not an IPv4 address", n.Name, n.IP)
	}
	if n.RootMode != "" && !overlay.RootMode(n.RootMode).Valid() {
		return fmt.Errorf("node %s: root mode %q: not tmpfs or compressed", n.Name, n.RootMode)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.nodes[n.Name]; ok {
		return fmt.Errorf("add node %s: name %w", n.Name, ErrExists)
	}
	if other, ok := d.byMAC[n.MAC]; ok {
		return fmt.Errorf("add node %s: mac %s %w (node %s)", n.Name, n.MAC, ErrExists, other)
	}
	if other, ok := d.byIP[n.IP]; ok {
		return fmt.Errorf("add node %s: ip %s %w (node %s)", n.Name, n.IP, ErrExists, other)
	}
	if n.Created.IsZero() {
		n.Created = d.now().UTC()
	}
	r := &record{Node: n, Status: Status{Boot: Boot{State: StateNew}}}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode node %s: %w", n.Name, err)
	}
	err = d.db.Update(func(tx *bolt.Tx) error {
		// Boots of an earlier node of the same name must not show up.
		if err := deleteBoots(tx, n.Name); err != nil {
			return err
		}
		return tx.Bucket(bucketNodes).Put([]byte(n.Name), b)
	})
	if err != nil {
		d.fails++
		return fmt.Errorf("add node %s: %w", n.Name, err)
	}
	d.index(r)
	delete(d.live, n.Name)
	return nil
}

func deleteBoots(tx *bolt.Tx, name string) error {
	c := tx.Bucket(bucketBoots).Cursor()
	p := bootPrefix(name)
	for k, _ := c.Seek(p); k != nil && strings.HasPrefix(string(k), string(p)); k, _ = c.Seek(p) {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// DeleteNode removes a node, its status and its boot history.
func (d *DB) DeleteNode(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return fmt.Errorf("delete node %s: %w", name, ErrNotFound)
	}
	err := d.db.Update(func(tx *bolt.Tx) error {
		if err := deleteBoots(tx, name); err != nil {
			return err
		}
		return tx.Bucket(bucketNodes).Delete([]byte(name))
	})
	if err != nil {
		d.fails++
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	delete(d.nodes, name)
	delete(d.byMAC, r.Node.MAC)
	delete(d.byIP, r.Node.IP)
	delete(d.live, name)
	return nil
}

// Get returns the node called name.
func (d *DB) Get(name string) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
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
		out = append(out, d.view(r))
	}
	slices.SortFunc(out, func(a, b NodeStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Boots returns every boot node name keeps, newest (the current one)
// first.
func (d *DB) Boots(name string) ([]Boot, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return nil, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	out := []Boot{r.Status.Boot.clone()}
	err := d.db.View(func(tx *bolt.Tx) error {
		for _, id := range r.Status.History {
			v := tx.Bucket(bucketBoots).Get(bootKey(name, id))
			if v == nil {
				continue
			}
			var b Boot
			if err := json.Unmarshal(v, &b); err != nil {
				return fmt.Errorf("decode boot %d of node %s: %w", id, name, err)
			}
			out = append(out, b)
		}
		return nil
	})
	return out, err
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
func (d *DB) Record(name string, e Event, newBoot bool) error {
	if e.Time.IsZero() {
		e.Time = d.now()
	}
	err := d.update(name, func(r *record, a *archive) error {
		st := &r.Status
		if e.Step == StepDHCPOffer && (newBoot || st.reached(StepScript) || st.ID == 0) {
			d.startBoot(r, a, e.Time)
		}
		st.add(e)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record %s for node %s: %w", e.Step, name, err)
	}
	return nil
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
