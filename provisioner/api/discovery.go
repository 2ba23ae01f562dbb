package api

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// errNoDiscovery answers the discovery routes when dhcp.discovery is off.
var errNoDiscovery = fmt.Errorf("discovery is off (dhcp.discovery.enabled in the configuration): %w", state.ErrNotFound)

// DiscoveredOut returns a discovered machine as the API shows it.
func DiscoveredOut(m dhcp.Machine) Discovered {
	d := Discovered{
		Key: m.Key, MAC: m.MAC, ClientID: m.ClientID, HWType: int(m.HWType), Stage: string(m.Stage),
		VendorClass: m.VendorClass, UserClass: m.UserClass, Hostname: m.Hostname,
		CircuitID: m.CircuitID, RemoteID: m.RemoteID, FirstSeen: m.FirstSeen, LastSeen: m.LastSeen,
	}
	if m.HasArch {
		d.Arch = m.Arch.String()
	}
	if m.Subnet.IsValid() {
		d.Subnet = m.Subnet.String()
	}
	if m.Relay.IsValid() {
		d.Relay = m.Relay.String()
	}
	if m.IP.IsValid() {
		d.IP = m.IP.String()
	}
	return d
}

func (a *Admin) listDiscovered(w http.ResponseWriter, _ *http.Request) {
	if a.Discovery == nil {
		writeError(w, errNoDiscovery)
		return
	}
	ms := a.Discovery.Machines()
	out := make([]Discovered, len(ms))
	for i, m := range ms {
		out[i] = DiscoveredOut(m)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Admin) forgetDiscovered(w http.ResponseWriter, r *http.Request) {
	if a.Discovery == nil {
		writeError(w, errNoDiscovery)
		return
	}
	m, ok := a.Discovery.Find(r.PathValue("id"))
	if !ok || !a.Discovery.Forget(m.Key) {
		writeError(w, fmt.Errorf("discovered machine %s: %w", r.PathValue("id"), state.ErrNotFound))
		return
	}
	logger(a.Logger).Info("discovered machine forgotten", "key", m.Key)
	w.WriteHeader(http.StatusNoContent)
}

// adopt adds a discovered machine as a node and forgets it from the pool:
// its next DHCP request gets the node's reservation and boot.
func (a *Admin) adopt(w http.ResponseWriter, r *http.Request) {
	if a.Discovery == nil {
		writeError(w, errNoDiscovery)
		return
	}
	var req AdoptRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	m, ok := a.Discovery.Find(req.ID)
	if !ok {
		writeError(w, fmt.Errorf("discovered machine %s: %w (ramboot node discovered lists them)", req.ID, state.ErrNotFound))
		return
	}
	if req.Name == "" {
		writeError(w, badRequest{errors.New("name: required")})
		return
	}
	ip, err := netip.ParseAddr(req.IP)
	if err != nil || !ip.Is4() {
		writeError(w, badRequest{fmt.Errorf("ip %q: an IPv4 address is required (the node's reserved address)", req.IP)})
		return
	}
	ifc := inventory.Interface{Name: req.Interface, IP: ip}
	if hw, err := net.ParseMAC(m.MAC); err == nil && len(hw) == 6 {
		ifc.MAC = hw.String()
	} else if ifc.ClientID, err = inventory.NormalizeClientID(m.ClientID); err != nil {
		writeError(w, badRequest{fmt.Errorf("discovered machine %s has neither an Ethernet MAC nor a client id", m.Key)})
		return
	}
	n := &inventory.Node{Name: req.Name, Hostname: req.Hostname, Profiles: slices.Clone(req.Profiles),
		Interfaces: []inventory.Interface{ifc}, Settings: settingsIn(req.Settings)}
	if _, err := a.change(false, func(inv *inventory.Inventory) error {
		if _, ok := inv.Nodes[n.Name]; ok {
			return fmt.Errorf("adopt as node %s: name %w", n.Name, state.ErrExists)
		}
		inv.Nodes[n.Name] = n
		return nil
	}); err != nil {
		writeError(w, err)
		return
	}
	a.Discovery.Forget(m.Key)
	logger(a.Logger).Info("discovered machine adopted", "key", m.Key, "node", n.Name, "ip", ip)
	got, err := a.DB.Get(n.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, StatusOut(got))
}

// bootEvents serves ?client=MAC|CLIENT-ID.
func (a *Admin) bootEvents(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("client")
	if id == "" {
		writeError(w, badRequest{errors.New("client: required (a MAC, or a client id in hex)")})
		return
	}
	out := BootEvents{Client: id, Events: []BootEvent{}}
	if hw, err := net.ParseMAC(id); err == nil && len(hw) == 6 {
		out.Client = hw.String()
		if n, err := a.DB.ByMAC(hw); err == nil {
			out.Node = n.Name
		}
	} else if cid, err := inventory.NormalizeClientID(id); err == nil {
		out.Client = cid
		if n, err := a.DB.ByClientID(cid); err == nil {
			out.Node = n.Name
		}
	} else {
		writeError(w, badRequest{fmt.Errorf("client %q: not a MAC nor a client id in hex", id)})
		return
	}
	if a.BootEvents != nil {
		if evs, ok := a.BootEvents(out.Client); ok {
			out.Events = evs
		}
	}
	writeJSON(w, http.StatusOK, out)
}
