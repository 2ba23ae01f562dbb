package dhcp

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ramboot/ramboot/pxe"
)

// Defaults of the Discovery fields.
const (
	// DefaultDiscoveryLease is the lease time of discovery addresses when
	// Discovery.LeaseTime is zero: short, so an unknown machine that is
	// adopted (or unplugged) gives its address back within minutes.
	DefaultDiscoveryLease = 10 * time.Minute
	// DefaultDeclineHold is how long an address a client declined (it
	// found the address in use) is not lent again, when
	// Discovery.DeclineHold is zero.
	DefaultDeclineHold = time.Hour
	// DefaultMaxMachines caps the discovered machines kept when
	// Discovery.MaxMachines is zero: a flood of random MACs must not grow
	// memory and the file without bound.
	DefaultMaxMachines = 4096
	// DefaultFlushInterval is how often Run writes changes to the file
	// when Discovery.FlushInterval is zero.
	DefaultFlushInterval = time.Second
	// offerHold is how long an offered address is kept for the client's
	// DHCPREQUEST.
	offerHold = time.Minute
	// seenResolution is how stale a machine's LastSeen may be on disk:
	// a newer sighting alone does not rewrite the file before that.
	seenResolution = time.Minute
	// maxRange is the largest discovery range accepted.
	maxRange = 1 << 16
)

// Discovery lends addresses from each subnet's discovery range to clients
// the inventory does not know, and records every unknown client it sees as
// a discovered Machine (with the architecture, vendor class and relay
// information it reported) for an admin to adopt. The Server uses it when
// its Discovery field is set; it touches only memory on the reply path, and
// Run writes the changes to its file in the background.
//
// Leases are conflict-free on one head: an address is lent to one client at
// a time, never while another holds it (offered addresses are held for a
// minute, bound ones for LeaseTime), never when InUse says a node has it,
// and not for DeclineHold after a client declined it. A client asking for an
// address it held before a restart that lost the last second of changes gets
// it back if it is still free, else a NAK.
//
// Create it with OpenDiscovery; set the exported fields before the Server
// uses it.
type Discovery struct {
	// LeaseTime is the lease time of discovery addresses. Default 10m
	// (DefaultDiscoveryLease).
	LeaseTime time.Duration
	// DeclineHold is how long a declined address is not lent. Default 1h
	// (DefaultDeclineHold).
	DeclineHold time.Duration
	// MaxMachines caps the discovered machines kept; beyond it new ones are
	// dropped (and counted). Default 4096 (DefaultMaxMachines).
	MaxMachines int
	// FlushInterval is how often Run writes changes. Default 1s
	// (DefaultFlushInterval).
	FlushInterval time.Duration
	// InUse, if set, reports addresses that must never be lent, such as
	// nodes' reserved addresses. It is called on the reply path with the
	// Discovery's lock held: it must be fast and must not call back.
	InUse func(netip.Addr) bool

	path string
	now  func() time.Time
	// lease and max, when above zero, replace LeaseTime and MaxMachines
	// (SetLimits, while the Server uses it).
	lease, max atomic.Int64

	mu       sync.Mutex
	leases   map[string]*lease     // by client key
	byIP     map[netip.Addr]*lease // the current holder of an address
	held     map[netip.Addr]time.Time
	machines map[string]*Machine
	dropped  int
	dirty    bool
}

// lease is one address lent to one client.
type lease struct {
	Key     string     `json:"key"`
	IP      netip.Addr `json:"ip"`
	Expires time.Time  `json:"expires"`
	// Bound is false for an address offered but not yet requested.
	Bound bool `json:"bound"`
}

// Machine is a client the inventory does not know, as the server saw it.
type Machine struct {
	// Key is the client's identity: "id:HEX" for a client identifier,
	// else "hwN:MAC".
	Key string `json:"key"`
	// MAC is the hardware address (chaddr), "" for InfiniBand.
	MAC string `json:"mac,omitempty"`
	// ClientID is option 61 in hex, "" when absent.
	ClientID string `json:"client_id,omitempty"`
	// HWType is the hardware type (1 Ethernet, 32 InfiniBand).
	HWType uint16 `json:"hw_type"`
	// Stage is what the client showed itself to be in its last request.
	Stage Stage `json:"stage"`
	// Arch is its architecture (option 93), valid when HasArch.
	Arch    pxe.Arch `json:"arch"`
	HasArch bool     `json:"has_arch"`
	// VendorClass is option 60, UserClass option 77, Hostname option 12,
	// as it sent them.
	VendorClass string   `json:"vendor_class,omitempty"`
	UserClass   []string `json:"user_class,omitempty"`
	Hostname    string   `json:"hostname,omitempty"`
	// Subnet is the subnet it asked from; Relay the relay agent (giaddr);
	// CircuitID and RemoteID the relay agent's suboptions 1 and 2 (option
	// 82: typically the switch port and the switch), as text when
	// printable, else hex.
	Subnet    netip.Prefix `json:"subnet,omitzero"`
	Relay     netip.Addr   `json:"relay,omitzero"`
	CircuitID string       `json:"circuit_id,omitempty"`
	RemoteID  string       `json:"remote_id,omitempty"`
	// IP is the discovery address it holds or last held; zero when none.
	IP netip.Addr `json:"ip,omitzero"`
	// FirstSeen and LastSeen are its first and latest requests.
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// discoveryFile is the on-disk form.
type discoveryFile struct {
	Version  int                      `json:"version"`
	Leases   []*lease                 `json:"leases"`
	Held     map[netip.Addr]time.Time `json:"held,omitempty"`
	Machines []*Machine               `json:"machines"`
}

// OpenDiscovery loads the discovery state kept in the file at path, or
// starts empty when it does not exist; "" keeps everything in memory only.
// A file that does not decode is an error naming it: it is never replaced
// silently.
func OpenDiscovery(path string) (*Discovery, error) {
	d := &Discovery{
		path:     path,
		now:      time.Now,
		leases:   map[string]*lease{},
		byIP:     map[netip.Addr]*lease{},
		held:     map[netip.Addr]time.Time{},
		machines: map[string]*Machine{},
	}
	if path == "" {
		return d, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return d, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open discovery state: %w", err)
	}
	var f discoveryFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("open discovery state %s: damaged (%w); move it away to start with no discovered machines", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("open discovery state %s: version %d, want 1", path, f.Version)
	}
	for _, l := range f.Leases {
		if l == nil || l.Key == "" || !l.IP.Is4() || d.byIP[l.IP] != nil {
			continue
		}
		d.leases[l.Key] = l
		d.byIP[l.IP] = l
	}
	for ip, until := range f.Held {
		d.held[ip] = until
	}
	for _, m := range f.Machines {
		if m != nil && m.Key != "" {
			d.machines[m.Key] = m
		}
	}
	return d, nil
}

// SetLimits replaces LeaseTime and MaxMachines while the Server uses the
// pool (a configuration reload); zero keeps the field's value. Leases
// already lent keep their expiry; machines already kept over a lower
// maximum stay, and new ones are dropped until fewer are kept.
func (d *Discovery) SetLimits(leaseTime time.Duration, maxMachines int) {
	d.lease.Store(int64(leaseTime))
	d.max.Store(int64(maxMachines))
}

func (d *Discovery) leaseTime() time.Duration {
	if v := d.lease.Load(); v > 0 {
		return time.Duration(v)
	}
	if d.LeaseTime > 0 {
		return d.LeaseTime
	}
	return DefaultDiscoveryLease
}

func (d *Discovery) declineHold() time.Duration {
	if d.DeclineHold > 0 {
		return d.DeclineHold
	}
	return DefaultDeclineHold
}

func (d *Discovery) maxMachines() int {
	if v := d.max.Load(); v > 0 {
		return int(v)
	}
	if d.MaxMachines > 0 {
		return d.MaxMachines
	}
	return DefaultMaxMachines
}

// see records a sighting of an unknown client. It reports false when the
// machine is new and MaxMachines are already kept (it is then dropped).
func (d *Discovery) see(c Client, req *dhcpv4.DHCPv4) bool {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	key := c.Key()
	m := d.machines[key]
	if m == nil {
		if len(d.machines) >= d.maxMachines() {
			d.dropped++
			return false
		}
		m = &Machine{Key: key, FirstSeen: now}
		d.machines[key] = m
		d.dirty = true
	}
	if now.Sub(m.LastSeen) >= seenResolution {
		d.dirty = true
	}
	m.LastSeen = now
	if len(c.MAC) > 0 {
		m.MAC = c.MAC.String()
	}
	if len(c.ClientID) > 0 {
		m.ClientID = hex.EncodeToString(c.ClientID)
	}
	if m.Stage != c.Stage || m.Arch != c.Arch || m.HasArch != c.HasArch || m.VendorClass != c.VendorClass {
		d.dirty = true
	}
	m.HWType, m.Stage, m.Arch, m.HasArch, m.VendorClass = uint16(c.HWType), c.Stage, c.Arch, c.HasArch, c.VendorClass
	if req.Options.Has(dhcpv4.OptionUserClassInformation) {
		m.UserClass = req.UserClass()
	}
	if h := req.HostName(); h != "" {
		m.Hostname = h
	}
	m.Subnet, m.Relay = c.Subnet, c.Relay
	if rai := req.RelayAgentInfo(); rai != nil {
		m.CircuitID = printable(rai.Get(dhcpv4.AgentCircuitIDSubOption))
		m.RemoteID = printable(rai.Get(dhcpv4.AgentRemoteIDSubOption))
	}
	return true
}

// printable returns b as text when it is printable ASCII, else as hex.
func printable(b []byte) string {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return hex.EncodeToString(b)
		}
	}
	return string(b)
}

// offer picks an address from rng for the client (its current or last one
// when still free), holds it for the client's DHCPREQUEST and returns it;
// it returns false when the range has no free address. exclude is never
// lent (the server's own address).
func (d *Discovery) offer(key string, subnet netip.Prefix, rng Range, exclude netip.Addr) (netip.Addr, bool) {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.leases[key]; l != nil && rng.Contains(l.IP) && d.lendable(l.IP, key, subnet, exclude, now) {
		if !l.Bound || l.Expires.Before(now) {
			l.Bound = false
			l.Expires = maxTime(l.Expires, now.Add(offerHold))
		}
		return l.IP, true
	}
	// First an address nobody has had, then the one expired longest ago.
	var oldest *lease
	for a, i := rng.First, 0; i < rng.Size(); a, i = a.Next(), i+1 {
		if !d.lendable(a, key, subnet, exclude, now) {
			continue
		}
		l := d.byIP[a]
		if l == nil {
			return d.lend(key, a, now.Add(offerHold), false), true
		}
		if oldest == nil || l.Expires.Before(oldest.Expires) {
			oldest = l
		}
	}
	if oldest == nil {
		return netip.Addr{}, false
	}
	return d.lend(key, oldest.IP, now.Add(offerHold), false), true
}

// lendable reports whether a may be lent to key now.
func (d *Discovery) lendable(a netip.Addr, key string, subnet netip.Prefix, exclude netip.Addr, now time.Time) bool {
	if a == exclude || (subnet.IsValid() && (a == subnet.Masked().Addr() || a == lastAddr(subnet))) {
		return false
	}
	if until, ok := d.held[a]; ok {
		if now.Before(until) {
			return false
		}
		delete(d.held, a)
	}
	if l := d.byIP[a]; l != nil && l.Key != key && now.Before(l.Expires) {
		return false
	}
	return d.InUse == nil || !d.InUse(a)
}

// lend gives address a to key until expires, taking it from a previous
// holder and moving key off its previous address.
func (d *Discovery) lend(key string, a netip.Addr, expires time.Time, bound bool) netip.Addr {
	if old := d.byIP[a]; old != nil && old.Key != key {
		delete(d.leases, old.Key)
		if m := d.machines[old.Key]; m != nil && m.IP == a {
			m.IP = netip.Addr{}
		}
	}
	if l := d.leases[key]; l != nil && l.IP != a {
		delete(d.byIP, l.IP)
	}
	l := &lease{Key: key, IP: a, Expires: expires, Bound: bound}
	d.leases[key] = l
	d.byIP[a] = l
	if m := d.machines[key]; m != nil {
		m.IP = a
	}
	d.dirty = true
	return a
}

// verdict is the answer to a DHCPREQUEST for a discovery address.
type verdict int

const (
	verdictIgnore verdict = iota // not ours to judge: stay silent
	verdictAck
	verdictNak
)

// request judges a client's DHCPREQUEST for address a from rng: ACK (and
// bind the lease) when the client holds a, or a is free; NAK when a is held
// by another client, held back, in use, or the client holds another
// address; silence for an address outside the range, which another server
// may own.
func (d *Discovery) request(key string, a netip.Addr, subnet netip.Prefix, rng Range, exclude netip.Addr) verdict {
	if !rng.Contains(a) {
		return verdictIgnore
	}
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.leases[key]
	if l != nil && l.IP != a && now.Before(l.Expires) && l.Bound {
		return verdictNak
	}
	if !d.lendable(a, key, subnet, exclude, now) {
		return verdictNak
	}
	d.lend(key, a, now.Add(d.leaseTime()), true)
	return verdictAck
}

// release frees the client's lease of a (DHCPRELEASE).
func (d *Discovery) release(key string, a netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.leases[key]
	if l == nil || l.IP != a {
		return false
	}
	delete(d.leases, key)
	delete(d.byIP, a)
	d.dirty = true
	return true
}

// decline drops the client's lease of a and holds a back for DeclineHold:
// the client found it in use (DHCPDECLINE).
func (d *Discovery) decline(key string, a netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.leases[key]
	if l == nil || l.IP != a {
		return false
	}
	delete(d.leases, key)
	delete(d.byIP, a)
	d.held[a] = d.now().Add(d.declineHold())
	d.dirty = true
	return true
}

// adopted forgets the client, now known to the inventory: its lease (the
// address goes back to the range) and its machine record.
func (d *Discovery) adopted(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.leases[key]; l != nil {
		delete(d.leases, key)
		delete(d.byIP, l.IP)
		d.dirty = true
	}
	if _, ok := d.machines[key]; ok {
		delete(d.machines, key)
		d.dirty = true
	}
}

// Machines returns the discovered machines, oldest first.
func (d *Discovery) Machines() []Machine {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Machine, 0, len(d.machines))
	for _, m := range d.machines {
		c := *m
		c.UserClass = slices.Clone(m.UserClass)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Machine) int {
		if c := a.FirstSeen.Compare(b.FirstSeen); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

// Find returns the discovered machine with hardware address mac (any
// spelling net.ParseMAC takes), client identifier (hex, with or without
// colons) or key.
func (d *Discovery) Find(id string) (Machine, bool) {
	want := normalizeID(id)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.machines {
		if m.Key == id || (m.MAC != "" && normalizeID(m.MAC) == want) || (m.ClientID != "" && m.ClientID == want) {
			c := *m
			c.UserClass = slices.Clone(m.UserClass)
			return c, true
		}
	}
	return Machine{}, false
}

// normalizeID lower-cases id and drops its colons, dashes and dots.
func normalizeID(id string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ':', '-', '.':
			return -1
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, id)
}

// Forget drops the discovered machine with key (and its lease), for
// example once an admin adopted it into the inventory. It reports whether
// there was one.
func (d *Discovery) Forget(key string) bool {
	d.mu.Lock()
	_, ok := d.machines[key]
	d.mu.Unlock()
	if ok {
		d.adopted(key)
	}
	return ok
}

// Stats returns the addresses lent now (bound and unexpired), the
// discovered machines kept, and the machines dropped over MaxMachines.
func (d *Discovery) Stats() (leases, machines, dropped int) {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.leases {
		if l.Bound && now.Before(l.Expires) {
			leases++
		}
	}
	return leases, len(d.machines), d.dropped
}

// Run writes the changes to the file every FlushInterval until ctx ends,
// then once more, and returns the last write's error (nil without a file).
// A failed write is retried at the next tick; Run returns early only when
// ctx ends.
func (d *Discovery) Run(ctx context.Context) error {
	every := d.FlushInterval
	if every <= 0 {
		every = DefaultFlushInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return d.Flush()
		case <-t.C:
			_ = d.Flush() // retried at the next tick; the final one is returned
		}
	}
}

// Flush writes the state to the file if it changed since the last write:
// a temporary file, fsynced, renamed over the old one, directory fsynced.
func (d *Discovery) Flush() error {
	d.mu.Lock()
	if !d.dirty || d.path == "" {
		d.mu.Unlock()
		return nil
	}
	f := discoveryFile{Version: 1, Held: map[netip.Addr]time.Time{}}
	for _, l := range d.leases {
		c := *l
		f.Leases = append(f.Leases, &c)
	}
	for ip, until := range d.held {
		f.Held[ip] = until
	}
	for _, m := range d.machines {
		c := *m
		f.Machines = append(f.Machines, &c)
	}
	d.dirty = false
	d.mu.Unlock()
	slices.SortFunc(f.Leases, func(a, b *lease) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(f.Machines, func(a, b *Machine) int { return strings.Compare(a.Key, b.Key) })
	b, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = writeFileAtomic(d.path, append(b, '\n'))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.dirty = true
		return fmt.Errorf("write discovery state: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with b: never a half-written file.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	dh, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer dh.Close()
	return dh.Sync()
}

// lastAddr returns the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	if p.Bits() == 0 {
		host = ^uint32(0)
	}
	v := be32(a[:]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
