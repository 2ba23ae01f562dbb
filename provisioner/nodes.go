package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// Nodes is the head's side of the policy seam: it resolves each node's
// plan (provisioner/plan) from the state's inventory and the current
// configuration's defaults, for DHCP, the boot server (it implements
// bootserver.Nodes) and the node API, and carries their boot steps to the
// state. SetDefaults replaces the defaults whole (a configuration reload).
type Nodes struct {
	db       *state.DB
	defaults atomic.Pointer[plan.Defaults]
	baseURL  string
	// discovery holds the DHCP discovery ranges, if any.
	discovery atomic.Pointer[[]dhcp.Range]
	// reservations caches Lookup's answers by client key (see
	// cachedReservation).
	reservations sync.Map
	cached       atomic.Int64 // entries in reservations, about
}

// cachedReservation is a DHCP reservation with everything it was
// resolved from: it is served only while all of them are still the
// state's and the configuration's (the node's entry, its pin, the
// profiles, the defaults), so a node set, a profile change, a pin and a
// reload are served at the next packet.
type cachedReservation struct {
	node        string
	gen         uint64
	pin         state.Pin
	profilesGen uint64
	defaults    *plan.Defaults
	res         dhcp.Reservation
}

// maxCachedReservations bounds the reservation cache: past it (interfaces
// of deleted nodes, MACs moved), it starts again empty.
const maxCachedReservations = 1 << 18

// NewNodes returns the seam over db with defaults d; baseURL is the HTTP
// base URL nodes reach the head at (for DHCP's script URLs).
func NewNodes(db *state.DB, d *plan.Defaults, baseURL string) *Nodes {
	h := &Nodes{db: db, baseURL: baseURL}
	h.defaults.Store(d)
	return h
}

// SetDefaults replaces the defaults, for every plan resolved from then on.
func (h *Nodes) SetDefaults(d *plan.Defaults) { h.defaults.Store(d) }

// Defaults returns the current defaults.
func (h *Nodes) Defaults() *plan.Defaults { return h.defaults.Load() }

// Defaults returns the plan's defaults from the configuration: the boot
// settings, and the provisioning subnet (the interface's address and
// prefix, dhcp.router, dhcp.dns). It is the one place they are read.
func Defaults(cfg config.Config, prefix netip.Prefix) *plan.Defaults {
	d := &plan.Defaults{
		Image:        cfg.Boot.DefaultImage,
		KernelArgs:   cfg.Boot.KernelArgs,
		Modules:      cfg.Boot.Modules,
		Root:         inventory.Root{Mode: cfg.Boot.Root.Mode, Size: cfg.Boot.Root.Size},
		ConsoleShell: cfg.Boot.ConsoleShell,
		BootFiles:    cfg.TFTPFiles(),
	}
	own := plan.Subnet{Prefix: prefix, From: "subnet " + prefix.Masked().String() + " (the provisioning interface; dhcp.router, dhcp.dns)"}
	if cfg.DHCP.Router != "" {
		own.Gateway = netip.MustParseAddr(cfg.DHCP.Router) // validated
	}
	for _, s := range cfg.DHCP.DNS {
		own.DNS = append(own.DNS, netip.MustParseAddr(s))
	}
	d.Subnets = append(d.Subnets, own)
	for i, sn := range cfg.Subnets { // validated
		s := plan.Subnet{Prefix: netip.MustParsePrefix(sn.Prefix), MTU: sn.MTU, From: fmt.Sprintf("config subnets[%d] (%s)", i, sn.Prefix)}
		if sn.Gateway != "" {
			s.Gateway = netip.MustParseAddr(sn.Gateway)
		}
		for _, a := range sn.DNS {
			s.DNS = append(s.DNS, netip.MustParseAddr(a))
		}
		d.Subnets = append(d.Subnets, s)
	}
	return d
}

// Check is the state's inventory check: every address on a configured
// subnet, every node's plan resolvable, and no address of a node added or
// changed inside a discovery range (the DHCP server would never lend it
// anyway, but the range is the admin's promise of free addresses).
func (h *Nodes) Check(inv *inventory.Inventory, changed map[string]bool) error {
	d := h.defaults.Load()
	errs := []error{inv.ValidateChange(d.Prefixes(), changed), h.checkBootFiles(d, inv, changed)}
	rs := h.discovery.Load()
	if rs == nil {
		return errors.Join(errs...)
	}
	for _, name := range slices.Sorted(maps.Keys(changed)) {
		n := inv.Nodes[name]
		if n == nil {
			continue
		}
		for i, ifc := range n.Interfaces {
			for _, r := range *rs {
				if r.Contains(ifc.IP) {
					errs = append(errs, fmt.Errorf("node %s: interfaces[%d].ip %s is in the discovery range %s-%s (dhcp.discovery): give it an address outside", name, i, ifc.IP, r.First, r.Last))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// checkBootFiles refuses a boot_file the head does not serve on the
// nodes of changed and on the profiles added or changed: the node would
// get a boot file name its firmware cannot fetch. Entries stored before
// are left alone (a tftp.files changed since is the configuration's
// business, not this change's).
func (h *Nodes) checkBootFiles(d *plan.Defaults, inv *inventory.Inventory, changed map[string]bool) error {
	if d.BootFiles == nil {
		return nil
	}
	var errs []error
	check := func(what, f string) {
		if f != "" && !slices.Contains(d.BootFiles, f) {
			errs = append(errs, fmt.Errorf("%s: boot_file %q is not in the TFTP catalogue (tftp.files): want one of %s", what, f, strings.Join(d.BootFiles, ", ")))
		}
	}
	var stored map[string]*state.Profile
	if h.db != nil {
		stored = h.db.Profiles()
	}
	for _, name := range slices.Sorted(maps.Keys(inv.Profiles)) {
		if old, ok := stored[name]; ok && old.BootFile == inv.Profiles[name].BootFile {
			continue
		}
		check("profile "+name, inv.Profiles[name].BootFile)
	}
	for _, name := range slices.Sorted(maps.Keys(changed)) {
		if n := inv.Nodes[name]; n != nil {
			check("node "+name, n.BootFile)
		}
	}
	return errors.Join(errs...)
}

// SetDiscoveryRanges sets the ranges the DHCP server lends to unknown
// machines, which Check keeps nodes' addresses out of.
func (h *Nodes) SetDiscoveryRanges(rs []dhcp.Range) { h.discovery.Store(&rs) }

// pinOf returns a node's image pin as the plan takes it.
func pinOf(st state.Status) plan.Pin {
	if st.Pin == nil {
		return plan.Pin{}
	}
	return plan.Pin{Ref: st.Pin.Ref, Digest: st.Pin.Digest, Boot: st.Pin.Boot}
}

// resolve returns the plan of node n.
func (h *Nodes) resolve(n state.NodeStatus) (plan.Plan, error) {
	inv := &inventory.Inventory{Profiles: h.db.Profiles()}
	return h.defaults.Load().Resolve(inv, &n.Node, pinOf(n.Status))
}

// Plan returns the plan of the node called name.
func (h *Nodes) Plan(name string) (plan.Plan, error) {
	n, err := h.db.Get(name)
	if err != nil {
		return plan.Plan{}, err
	}
	return h.resolve(n)
}

// ByIP implements bootserver.Nodes.
func (h *Nodes) ByIP(ip netip.Addr) (plan.Plan, error) {
	n, err := h.db.ByIP(ip)
	if err != nil {
		return plan.Plan{}, err
	}
	return h.resolve(n)
}

// StartScript implements bootserver.Nodes.
func (h *Nodes) StartScript(node, detail, ref, digest string) (string, error) {
	return h.db.StartScript(node, state.Event{Step: state.StepScript, Detail: detail}, &state.Pin{Ref: ref, Digest: digest})
}

// CheckNonce implements bootserver.Nodes.
func (h *Nodes) CheckNonce(node, nonce string) error { return h.db.CheckNonce(node, nonce) }

// ReserveToken implements bootserver.Nodes.
func (h *Nodes) ReserveToken(node, nonce, token string) error {
	return h.db.ReserveToken(node, nonce, token)
}

// ExpectToken implements bootserver.Nodes.
func (h *Nodes) ExpectToken(node, token string) func() { return h.db.ExpectToken(node, token) }

// ConsumeNonce implements bootserver.Nodes.
func (h *Nodes) ConsumeNonce(node, nonce, token, detail string) error {
	return h.db.ConsumeNonce(node, nonce, token, state.Event{Step: state.StepOverlay, Detail: detail})
}

// Post implements bootserver.Nodes.
func (h *Nodes) Post(node string, step state.Step, detail string) {
	h.db.Post(node, state.Event{Step: step, Detail: detail}, false)
}

// Lookup is the DHCP server's inventory (dhcp.Inventory): the plan of the
// interface the client is, found by its MAC, else by its DHCP client
// identifier (InfiniBand: the whole identifier, or its last 8 bytes, the
// port GUID, as the inventory may spell either). Every address is a
// reservation; an interface without one gets none (proxy mode needs none;
// reservation mode refuses it). The script URL names the node's first MAC
// (the boot server serves it only to the node's reserved address).
//
// The answer is cached per interface, keyed on what it was resolved from
// (cachedReservation): a packet of a node whose entry, pin, profiles and
// defaults did not change since costs a map lookup, not a plan.
func (h *Nodes) Lookup(_ context.Context, c dhcp.Client) (dhcp.Reservation, error) {
	in, ifc, err := h.lookup(c)
	if errors.Is(err, state.ErrNotFound) {
		return dhcp.Reservation{}, fmt.Errorf("%s: %w", clientName(c), dhcp.ErrUnknown)
	}
	if err != nil {
		return dhcp.Reservation{}, err
	}
	d := h.defaults.Load()
	key := ifc.MAC
	if key == "" {
		key = "id " + ifc.ClientID
	}
	if v, ok := h.reservations.Load(key); ok {
		e := v.(*cachedReservation)
		if e.node == in.Node.Name && e.gen == in.Gen && e.pin == in.Pin && e.profilesGen == in.ProfilesGen && e.defaults == d {
			return e.res, nil
		}
	}
	r, err := h.reservation(d, in, ifc, c)
	if err != nil {
		return r, err
	}
	if h.cached.Add(1) > maxCachedReservations {
		h.reservations.Clear()
		h.cached.Store(1)
	}
	h.reservations.Store(key, &cachedReservation{node: in.Node.Name, gen: in.Gen, pin: in.Pin, profilesGen: in.ProfilesGen, defaults: d, res: r})
	return r, nil
}

// reservation resolves the reservation of interface ifc of the node in.
func (h *Nodes) reservation(d *plan.Defaults, in state.PlanInput, ifc inventory.Interface, c dhcp.Client) (dhcp.Reservation, error) {
	inv := &inventory.Inventory{Profiles: in.Profiles}
	p, err := d.Resolve(inv, in.Node, plan.Pin{Ref: in.Pin.Ref, Digest: in.Pin.Digest, Boot: in.Pin.Boot})
	if err != nil {
		return dhcp.Reservation{}, err
	}
	pi, ok := p.InterfaceOf(ifc.MAC, ifc.ClientID)
	if !ok {
		return dhcp.Reservation{}, fmt.Errorf("node %s: interface %s not in its plan: %w", p.Node, clientName(c), dhcp.ErrUnknown)
	}
	r := dhcp.Reservation{
		PrefixLen: pi.Address.Bits(),
		Router:    pi.Gateway,
		DNS:       pi.DNS,
		MTU:       pi.MTU,
		Hostname:  p.Hostname,
		BootFile:  p.BootFile,
	}
	if pi.Address.IsValid() {
		r.IP = pi.Address.Addr()
	}
	for _, i := range p.Interfaces {
		if i.MAC != "" {
			r.ScriptURL = h.baseURL + "/boot/ipxe?mac=" + url.QueryEscape(i.MAC)
			break
		}
	}
	return r, nil
}

// lookup finds the node and interface a DHCP client is.
func (h *Nodes) lookup(c dhcp.Client) (state.PlanInput, inventory.Interface, error) {
	if len(c.MAC) == 6 {
		mac := c.MAC.String()
		n, err := h.db.PlanInputByMAC(mac)
		if err == nil {
			return n, inventory.Interface{MAC: mac}, nil
		}
		if !errors.Is(err, state.ErrNotFound) || len(c.ClientID) == 0 {
			return n, inventory.Interface{}, err
		}
	}
	if len(c.ClientID) == 0 {
		return state.PlanInput{}, inventory.Interface{}, state.ErrNotFound
	}
	ids := []string{hexColons(c.ClientID)}
	if guid, ok := c.GUID(); ok {
		ids = append(ids, hexColons(guid))
	}
	for _, id := range ids {
		n, err := h.db.PlanInputByClientID(id)
		if err == nil {
			return n, inventory.Interface{ClientID: id}, nil
		}
		if !errors.Is(err, state.ErrNotFound) {
			return n, inventory.Interface{}, err
		}
	}
	return state.PlanInput{}, inventory.Interface{}, state.ErrNotFound
}

// hexColons writes b as inventory.NormalizeClientID does: lower-case hex
// bytes joined by colons.
func hexColons(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 3*len(b))
	for i, c := range b {
		if i > 0 {
			out = append(out, ':')
		}
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// clientName names a DHCP client in errors: its MAC, else its client id.
func clientName(c dhcp.Client) string {
	if len(c.MAC) > 0 {
		return c.MAC.String()
	}
	return "client id " + hexColons(c.ClientID)
}

// discard returns a logger that drops everything.
func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
