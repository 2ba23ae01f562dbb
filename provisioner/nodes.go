package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
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
}

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
// subnet, and every node's plan resolvable.
func (h *Nodes) Check(inv *inventory.Inventory, changed map[string]bool) error {
	d := h.defaults.Load()
	return inv.ValidateChange(d.Prefixes(), changed)
}

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

// Reservation is the DHCP server's inventory: every address is a
// reservation, the interface's plan.
func (h *Nodes) Reservation(_ context.Context, mac net.HardwareAddr) (dhcp.Reservation, error) {
	n, err := h.db.ByMAC(mac)
	if errors.Is(err, state.ErrNotFound) {
		return dhcp.Reservation{}, dhcp.ErrUnknown
	}
	if err != nil {
		return dhcp.Reservation{}, err
	}
	p, err := h.resolve(n)
	if err != nil {
		return dhcp.Reservation{}, err
	}
	ifc, ok := p.Interface(mac.String())
	if !ok || !ifc.Address.IsValid() {
		return dhcp.Reservation{}, fmt.Errorf("node %s: interface %s has no address: %w", p.Node, mac, dhcp.ErrUnknown)
	}
	return dhcp.Reservation{
		IP:        ifc.Address.Addr(),
		PrefixLen: ifc.Address.Bits(),
		Router:    ifc.Gateway,
		DNS:       ifc.DNS,
		Hostname:  p.Hostname,
		BootFile:  p.BootFile,
		ScriptURL: h.baseURL + "/boot/ipxe?mac=" + url.QueryEscape(mac.String()),
	}, nil
}

// discard returns a logger that drops everything.
func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
