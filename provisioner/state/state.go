// Package state keeps the head's durable state in one bbolt database under
// the state directory: the node inventory with each node's boot status and
// boot timeline.
//
// All reads are served from memory; every change is written through to the
// database before the call returns, so a restarted daemon has the same view.
//
//	db, err := state.Open(filepath.Join(stateDir, "ramboot.db"))
//	defer db.Close()
//	err = db.AddNode(state.Node{Name: "n1", MAC: mac, IP: ip})
//	db.Record(n.Name, state.Event{Step: state.StepScript})
package state

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors callers branch on.
var (
	// ErrNotFound means no node has that name, MAC or address.
	ErrNotFound = errors.New("not found")
	// ErrExists means a node with that name, MAC or address already exists.
	ErrExists = errors.New("already exists")
	// ErrBadToken means a node presented a wrong or expired token.
	ErrBadToken = errors.New("bad token")
)

// Steps of a node's boot timeline, in the order a boot normally sees them.
const (
	StepDHCPOffer = "dhcp-offer"   // the head offered the node its address
	StepDHCPAck   = "dhcp-ack"     // the node took it
	StepTFTP      = "tftp"         // firmware fetched the iPXE binary
	StepScript    = "script"       // iPXE fetched the node's boot script
	StepKernel    = "kernel"       // iPXE fetched the kernel
	StepImage     = "image"        // iPXE fetched the image's root file system
	StepAgent     = "agent"        // iPXE fetched the agent archive
	StepOverlay   = "overlay"      // iPXE fetched the node's overlay
	StepReady     = "ready"        // the agent reported the node ready
	StepFailed    = "failed"       // the agent reported a failed boot step
	StepIgnored   = "dhcp-ignored" // a DHCP packet from the node got no answer
)

// Node states.
const (
	StateNew     = "new"     // never seen
	StateBooting = "booting" // a boot is under way
	StateBooted  = "booted"  // the agent reported ready
	StateFailed  = "failed"  // the agent reported a failure
)

// maxEvents bounds a boot timeline; later events replace the last one.
const maxEvents = 64

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
	// Created is when the node was added.
	Created time.Time `json:"created"`
}

// Status is what the head knows about a node's current or last boot.
type Status struct {
	// State is one of StateNew, StateBooting, StateBooted, StateFailed.
	State string `json:"state"`
	// Boots counts the boots the head has seen start.
	Boots int `json:"boots"`
	// Started is when the current boot's first event arrived.
	Started time.Time `json:"started,omitzero"`
	// Timeline lists the current boot's events in order.
	Timeline []Event `json:"timeline"`
	// Report is the agent's last report, if any.
	Report *Report `json:"report,omitempty"`
}

// Event is one step of a boot, seen by the head.
type Event struct {
	// Time is when the head saw the step.
	Time time.Time `json:"time"`
	// Step is one of the Step constants.
	Step string `json:"step"`
	// Detail says more: file names, bytes, reasons.
	Detail string `json:"detail,omitempty"`
}

// Report is what the head recorded from the agent's report.
type Report struct {
	// Received is when the head accepted it.
	Received time.Time `json:"received"`
	// State is the agent's state ("ready", "failed").
	State string `json:"state"`
	// Error is the agent's error, for a failed boot.
	Error string `json:"error,omitempty"`
	// ImageName is the image the node was assigned when it booted.
	ImageName string `json:"imageName"`
	// ImageDigest is the manifest digest of the image the node runs,
	// resolved from ContentDigest; empty when it matches no known image.
	ImageDigest string `json:"imageDigest"`
	// ContentDigest is the image content digest the node read from its root.
	ContentDigest string `json:"contentDigest"`
	// Kernel is the node's kernel release.
	Kernel string `json:"kernel"`
	// MemTotalBytes is the node's RAM.
	MemTotalBytes int64 `json:"memTotalBytes"`
	// UptimeSeconds is the node's uptime at the report.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// The agent daemon's registration adds what follows (heartbeat.go).
	Registration
}

// record is what is stored per node: what reads return, plus the secrets
// they never do.
type record struct {
	Node   Node   `json:"node"`
	Status Status `json:"status"`
	// BootNonce is in the overlay URL of the script last served.
	BootNonce string `json:"bootNonce,omitempty"`
	// TokenHash is the sha256 of the token in the overlay last served.
	TokenHash string `json:"tokenHash,omitempty"`
	// live is the agent daemon's last heartbeat: memory only, never
	// written (heartbeat.go).
	live *Agent
}

var bucketNodes = []byte("nodes")

// DB is the open state database. Its methods are safe for concurrent use.
type DB struct {
	db *bolt.DB

	mu    sync.Mutex
	nodes map[string]*record // by name
	byMAC map[string]string  // MAC -> name
	byIP  map[netip.Addr]string
	now   func() time.Time
}

// Open opens (creating if needed) the database at path. Only one process
// may hold it open; a second one fails after a second.
func Open(path string) (*DB, error) {
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state database %s: %w", path, err)
	}
	d := &DB{db: bdb, nodes: map[string]*record{}, byMAC: map[string]string{}, byIP: map[netip.Addr]string{}, now: time.Now}
	err = bdb.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketNodes)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode node %q: %w", k, err)
			}
			d.index(&r)
			return nil
		})
	})
	if err != nil {
		bdb.Close()
		return nil, fmt.Errorf("load state database %s: %w", path, err)
	}
	return d, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

func (d *DB) index(r *record) {
	d.nodes[r.Node.Name] = r
	d.byMAC[r.Node.MAC] = r.Node.Name
	d.byIP[r.Node.IP] = r.Node.Name
}

// put writes r through to the database; d.mu must be held.
func (d *DB) put(r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode node %s: %w", r.Node.Name, err)
	}
	err = d.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).Put([]byte(r.Node.Name), b)
	})
	if err != nil {
		return fmt.Errorf("write node %s: %w", r.Node.Name, err)
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
	r := &record{Node: n, Status: Status{State: StateNew}}
	if err := d.put(r); err != nil {
		return err
	}
	d.index(r)
	return nil
}

// DeleteNode removes a node and its status.
func (d *DB) DeleteNode(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return fmt.Errorf("delete node %s: %w", name, ErrNotFound)
	}
	err := d.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketNodes).Delete([]byte(name)) })
	if err != nil {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	delete(d.nodes, name)
	delete(d.byMAC, r.Node.MAC)
	delete(d.byIP, r.Node.IP)
	return nil
}

// NodeStatus is a node with its status, as returned by reads.
type NodeStatus struct {
	Node
	// Status is the node's boot status.
	Status Status `json:"status"`
	// Agent is the agent daemon's last heartbeat since the head started,
	// if any.
	Agent *Agent `json:"agent,omitempty"`
}

func (r *record) copy() NodeStatus {
	s := r.Status
	s.Timeline = slices.Clone(s.Timeline)
	if s.Report != nil {
		rep := *s.Report
		rep.Steps, rep.Warnings = slices.Clone(rep.Steps), slices.Clone(rep.Warnings)
		s.Report = &rep
	}
	ns := NodeStatus{Node: r.Node, Status: s}
	if r.live != nil {
		a := *r.live
		ns.Agent = &a
	}
	return ns
}

// Get returns the node called name.
func (d *DB) Get(name string) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return NodeStatus{}, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	return r.copy(), nil
}

// ByMAC returns the node with that MAC.
func (d *DB) ByMAC(mac net.HardwareAddr) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byMAC[mac.String()]
	if !ok {
		return NodeStatus{}, fmt.Errorf("mac %s: %w", mac, ErrNotFound)
	}
	return d.nodes[name].copy(), nil
}

// ByIP returns the node with that address.
func (d *DB) ByIP(ip netip.Addr) (NodeStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	name, ok := d.byIP[ip.Unmap()]
	if !ok {
		return NodeStatus{}, fmt.Errorf("ip %s: %w", ip, ErrNotFound)
	}
	return d.nodes[name].copy(), nil
}

// List returns every node, sorted by name.
func (d *DB) List() []NodeStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]NodeStatus, 0, len(d.nodes))
	for _, r := range d.nodes {
		out = append(out, r.copy())
	}
	slices.SortFunc(out, func(a, b NodeStatus) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Record appends an event to the node's boot timeline. A DHCP offer starts
// a new boot (a new timeline) when it comes from firmware (newBoot true) or
// when the current boot already got as far as its script: iPXE's own DHCP
// after a firmware PXE step belongs to the same boot.
func (d *DB) Record(name string, e Event, newBoot bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return fmt.Errorf("record %s for node %s: %w", e.Step, name, ErrNotFound)
	}
	if e.Time.IsZero() {
		e.Time = d.now()
	}
	st := &r.Status
	if e.Step == StepDHCPOffer && (newBoot || st.reached(StepScript) || len(st.Timeline) == 0) {
		st.Boots++
		st.State = StateBooting
		st.Started = e.Time
		st.Timeline = st.Timeline[:0]
	}
	st.add(e)
	return d.put(r)
}

// add appends e to the timeline, replacing the last event once it is full.
func (s *Status) add(e Event) {
	if len(s.Timeline) >= maxEvents {
		s.Timeline[len(s.Timeline)-1] = e
		return
	}
	s.Timeline = append(s.Timeline, e)
}

func (s *Status) reached(step string) bool {
	return slices.ContainsFunc(s.Timeline, func(e Event) bool { return e.Step == step })
}

// NewBootNonce mints the nonce that the node's script puts in its overlay
// URL, replacing the previous one, and records the script step.
func (d *DB) NewBootNonce(name string) (string, error) {
	nonce := randomHex(16)
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return "", fmt.Errorf("boot nonce for node %s: %w", name, ErrNotFound)
	}
	r.BootNonce = nonce
	return nonce, d.put(r)
}

// NewToken checks the boot nonce from the overlay URL and mints the node's
// report token for this boot; only its hash is kept.
func (d *DB) NewToken(name, nonce string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return "", fmt.Errorf("token for node %s: %w", name, ErrNotFound)
	}
	if r.BootNonce == "" || subtle.ConstantTimeCompare([]byte(nonce), []byte(r.BootNonce)) != 1 {
		return "", fmt.Errorf("token for node %s: boot nonce: %w", name, ErrBadToken)
	}
	tok := randomHex(32)
	r.TokenHash = hashHex(tok)
	return tok, d.put(r)
}

// SetReport checks the node's token and records its report: the node is
// booted (or failed) from now on.
func (d *DB) SetReport(name, token string, rep Report) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.nodes[name]
	if !ok {
		return fmt.Errorf("report from node %s: %w", name, ErrNotFound)
	}
	if r.TokenHash == "" || subtle.ConstantTimeCompare([]byte(hashHex(token)), []byte(r.TokenHash)) != 1 {
		return fmt.Errorf("report from node %s: %w", name, ErrBadToken)
	}
	if rep.Received.IsZero() {
		rep.Received = d.now()
	}
	st := &r.Status
	st.Report = &rep
	step, detail := StepReady, fmt.Sprintf("kernel %s, uptime %.1fs", rep.Kernel, rep.UptimeSeconds)
	st.State = StateBooted
	if rep.State != "ready" {
		step, detail, st.State = StepFailed, rep.Error, StateFailed
	}
	st.add(Event{Time: rep.Received, Step: step, Detail: detail})
	return d.put(r)
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
