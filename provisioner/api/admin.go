package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/hostlist"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// AddNodesRequest is the body of POST /api/v1/nodes: one node, or one per
// name of a host list, with address ranges for the many.
type AddNodesRequest struct {
	// Names is a host list: "n001", "n[001-128]", "rack[1-4]n[01-32]".
	Names string `json:"names"`
	// MAC is the first interface's MAC, or a MAC list or range for many
	// ("52:54:00:00:01:00+": consecutive from there).
	MAC string `json:"mac,omitempty"`
	// ClientID is the first interface's DHCP client id (one node only).
	ClientID string `json:"clientId,omitempty"`
	// IP is the first interface's address, or a list or range for many
	// ("10.0.0.101+").
	IP string `json:"ip,omitempty"`
	// Interface names the first interface on the node (eth0); optional.
	Interface string `json:"interface,omitempty"`
	// Hostname is the host name (one node only).
	Hostname string `json:"hostname,omitempty"`
	// Profiles are the nodes' profiles, in order.
	Profiles []string `json:"profiles,omitempty"`
	// Settings are the nodes' own settings.
	Settings
}

// SetRequest is the body of PATCH /api/v1/nodes?names=HOSTLIST: the
// fields to change on every node named; a nil field is left alone.
type SetRequest struct {
	// Image sets the image reference ("" inherits); setting it, even to
	// the same reference, moves the nodes to what it resolves to now.
	Image *string `json:"image,omitempty"`
	// KernelArgs sets the kernel arguments; Inherit lists fields to reset
	// to inherited instead.
	KernelArgs *string `json:"kernelArgs,omitempty"`
	// Modules sets the modules.
	Modules *[]string `json:"modules,omitempty"`
	// BootFile sets the iPXE binary override ("" none).
	BootFile *string `json:"bootFile,omitempty"`
	// RootMode and RootSize set the root settings ("" inherits).
	RootMode *string `json:"rootMode,omitempty"`
	RootSize *string `json:"rootSize,omitempty"`
	// Network sets the network stack ("" inherits).
	Network *string `json:"network,omitempty"`
	// Profiles replaces the profile list.
	Profiles *[]string `json:"profiles,omitempty"`
	// Hostname sets the host name (one node only).
	Hostname *string `json:"hostname,omitempty"`
	// MAC and IP set the first interface's (one node only).
	MAC *string `json:"mac,omitempty"`
	IP  *string `json:"ip,omitempty"`
	// Tags are set (added or replaced); Untag removes tags.
	Tags  map[string]string `json:"tags,omitempty"`
	Untag []string          `json:"untag,omitempty"`
	// Values are set; Unvalue removes values.
	Values  map[string]string `json:"values,omitempty"`
	Unvalue []string          `json:"unvalue,omitempty"`
	// Inherit resets fields to inherited: kernelArgs, modules.
	Inherit []string `json:"inherit,omitempty"`
	// Repin moves the nodes to what their image resolves to now.
	Repin bool `json:"repin,omitempty"`
	// DryRun reports the changes without making them.
	DryRun bool `json:"dryRun,omitempty"`
}

// FieldChange is one field of a node or profile that a change sets.
type FieldChange struct {
	// Field is its path, e.g. "image", "interfaces[0].ip", "tags.rack".
	Field string `json:"field"`
	// Before and After are its values ("" when unset).
	Before string `json:"before"`
	After  string `json:"after"`
}

// NodeChange is what a change does to one node.
type NodeChange struct {
	// Name is the node's.
	Name string `json:"name"`
	// Changes are its fields that change.
	Changes []FieldChange `json:"changes"`
}

// Cluster is the declarative inventory: what `ramboot apply -f` takes and
// `ramboot export` writes. A node entry's name may be a host list, with
// MAC and IP lists or ranges ("+") on its first interface.
type Cluster struct {
	// Profiles are the profiles.
	Profiles []Profile `json:"profiles,omitempty" yaml:"profiles,omitempty"`
	// Nodes are the nodes.
	Nodes []NodeSpec `json:"nodes,omitempty" yaml:"nodes,omitempty"`
}

// ApplyRequest is the body of POST /api/v1/apply.
type ApplyRequest struct {
	// Cluster is the inventory wanted.
	Cluster Cluster `json:"cluster"`
	// Prune removes nodes and profiles Cluster does not list.
	Prune bool `json:"prune,omitempty"`
	// DryRun reports the changes without making them.
	DryRun bool `json:"dryRun,omitempty"`
}

// ApplyResult is what an apply did (or, with DryRun, would do).
type ApplyResult struct {
	// DryRun is true when nothing was written.
	DryRun bool `json:"dryRun"`
	// Added, Updated, Removed and Unchanged count nodes.
	Added, Updated, Removed, Unchanged int `json:"-"`
	// Nodes and Profiles list what changes, per object.
	Nodes    []ObjectChange `json:"nodes"`
	Profiles []ObjectChange `json:"profiles"`
}

// ObjectChange is one node or profile an apply adds, updates or removes.
type ObjectChange struct {
	// Name is the object's.
	Name string `json:"name"`
	// Action is add, update or remove.
	Action string `json:"action"`
	// Changes are the fields an update changes.
	Changes []FieldChange `json:"changes,omitempty"`
}

// Summary is GET /api/v1/status: the cluster at a glance.
type Summary struct {
	// Nodes counts the inventory's nodes.
	Nodes int `json:"nodes"`
	// Counts maps each state (new, booting, stalled, booted, failed) to
	// its number of nodes, every state present.
	Counts map[string]int `json:"counts"`
	// Stragglers maps each state but booted to its nodes, as a host list.
	Stragglers map[string]string `json:"stragglers"`
}

// Admin serves the admin routes. Put it only on a listener that only the
// administrator can reach (the root-only unix socket, or TCP with tokens).
type Admin struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images is the image store; required.
	Images *images.Store
	// Plan returns a node's plan (the policy seam); nil leaves plans out.
	Plan func(node string) (plan.Plan, error)
	// Render, when set, renders a node's overlay (GET .../overlay).
	Render func(node, path string) (OverlayResult, error)
	// Discovery is the DHCP server's discovery pool (GET
	// /api/v1/discovered, adopt); nil when dhcp.discovery is off.
	Discovery *dhcp.Discovery
	// BootEvents returns the recent DHCP and TFTP events of the client
	// with a MAC or client id (GET /api/v1/boot/events); nil serves none.
	BootEvents func(id string) ([]BootEvent, bool)
	// RemoveImage removes an image reference (DELETE /api/v1/images/{ref},
	// once no node is assigned it); with several heads it is where the
	// removal reaches the others. nil means Images.Remove.
	RemoveImage func(ctx context.Context, ref string) (images.Digest, error)
	// Logger logs inventory changes at Info; nil = discard.
	Logger *slog.Logger
}

// Handler returns the admin routes; docs/api.md lists them.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/nodes", a.listNodes)
	mux.HandleFunc("POST /api/v1/nodes", a.addNodes)
	mux.HandleFunc("PATCH /api/v1/nodes", a.setNodes)
	mux.HandleFunc("DELETE /api/v1/nodes", a.deleteNodes)
	mux.HandleFunc("GET /api/v1/nodes/{name}", a.getNode)
	mux.HandleFunc("DELETE /api/v1/nodes/{name}", a.deleteNode)
	mux.HandleFunc("GET /api/v1/nodes/{name}/boots", a.listBoots)
	mux.HandleFunc("GET /api/v1/nodes/{name}/boots/{boot}", a.getBoot)
	mux.HandleFunc("GET /api/v1/nodes/{name}/overlay", a.overlay)
	mux.HandleFunc("GET /api/v1/profiles", a.listProfiles)
	mux.HandleFunc("POST /api/v1/profiles", a.addProfile)
	mux.HandleFunc("GET /api/v1/profiles/{name}", a.getProfile)
	mux.HandleFunc("PUT /api/v1/profiles/{name}", a.putProfile)
	mux.HandleFunc("DELETE /api/v1/profiles/{name}", a.deleteProfile)
	mux.HandleFunc("POST /api/v1/apply", a.apply)
	mux.HandleFunc("GET /api/v1/discovered", a.listDiscovered)
	mux.HandleFunc("POST /api/v1/discovered/adopt", a.adopt)
	mux.HandleFunc("DELETE /api/v1/discovered/{id}", a.forgetDiscovered)
	mux.HandleFunc("GET /api/v1/boot/events", a.bootEvents)
	mux.HandleFunc("GET /api/v1/export", a.export)
	mux.HandleFunc("GET /api/v1/status", a.status)
	mux.HandleFunc("GET /api/v1/state/backup", a.backup)
	a.imageRoutes(mux)
	return mux
}

// names expands the names query parameter (a host list); empty means
// every node when all is true.
func (a *Admin) names(r *http.Request, all bool) ([]string, error) {
	q := r.URL.Query().Get("names")
	if q == "" {
		if !all {
			return nil, badRequest{errors.New("names: required (a host list, e.g. n[001-128])")}
		}
		return nil, nil
	}
	ns, err := hostlist.Expand(q)
	if err != nil {
		return nil, badRequest{err}
	}
	return ns, nil
}

func (a *Admin) listNodes(w http.ResponseWriter, r *http.Request) {
	names, err := a.names(r, true)
	if err != nil {
		writeError(w, err)
		return
	}
	var list []state.NodeStatus
	if names == nil {
		list = a.DB.Summaries()
	} else {
		var missing []string
		for _, n := range names {
			ns, err := a.DB.Get(n)
			if err != nil {
				missing = append(missing, n)
				continue
			}
			list = append(list, ns)
		}
		if len(missing) > 0 {
			c, _ := hostlist.Compress(missing)
			writeError(w, fmt.Errorf("nodes %s: %w", c, state.ErrNotFound))
			return
		}
	}
	if r.URL.Query().Get("view") == "rows" {
		rows := make([]NodeRow, len(list))
		for i, n := range list {
			rows[i] = RowOut(n)
		}
		writeCompact(w, http.StatusOK, rows)
		return
	}
	full := r.URL.Query().Get("timeline") == "full"
	out := make([]NodeStatus, len(list))
	for i, n := range list {
		if !full && len(n.Status.Timeline) > 1 {
			n.Status.Timeline = n.Status.Timeline[len(n.Status.Timeline)-1:]
		}
		out[i] = StatusOut(n)
	}
	writeCompact(w, http.StatusOK, out)
}

func (a *Admin) getNode(w http.ResponseWriter, r *http.Request) {
	n, err := a.DB.Get(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	out := StatusOut(n)
	if a.Plan != nil {
		if p, err := a.Plan(n.Name); err != nil {
			out.PlanError = err.Error()
		} else {
			out.Plan = PlanOut(p)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// invError makes an inventory error an HTTP one: a duplicate is a
// conflict, an unknown object a 404, anything else a bad request.
func invError(err error) error {
	switch {
	case errors.Is(err, state.ErrExists), errors.Is(err, state.ErrNotFound), errors.As(err, new(badRequest)), errors.As(err, new(*http.MaxBytesError)):
		return err
	case errors.Is(err, errWrite):
		return err
	}
	return badRequest{err}
}

// errWrite marks a failure to write (not the request's fault).
var errWrite = errors.New("write failed")

// change runs an inventory transaction, telling the request's faults
// (400, 404, 409) from the store's (500).
func (a *Admin) change(dry bool, fn func(inv *inventory.Inventory) error) (state.Change, error) {
	var reqErr error
	ch, err := a.DB.ChangeInventory(dry, func(inv *inventory.Inventory) error {
		if err := fn(inv); err != nil {
			reqErr = err
			return err
		}
		return nil
	})
	if err == nil || reqErr != nil {
		if reqErr != nil {
			return ch, invError(reqErr)
		}
		return ch, nil
	}
	if strings.HasPrefix(err.Error(), "write the inventory") {
		return ch, fmt.Errorf("%w: %w", errWrite, err)
	}
	return ch, invError(err) // the inventory's checks
}

func (a *Admin) addNodes(w http.ResponseWriter, r *http.Request) {
	var req AddNodesRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	nodes, err := expandAdd(req)
	if err != nil {
		writeError(w, err)
		return
	}
	_, err = a.change(false, func(inv *inventory.Inventory) error {
		for _, n := range nodes {
			if _, ok := inv.Nodes[n.Name]; ok {
				return fmt.Errorf("add node %s: name %w", n.Name, state.ErrExists)
			}
			inv.Nodes[n.Name] = n
		}
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]NodeStatus, 0, len(nodes))
	for _, n := range nodes {
		if got, err := a.DB.Get(n.Name); err == nil {
			out = append(out, StatusOut(got))
		}
	}
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	c, _ := hostlist.Compress(names)
	logger(a.Logger).Info("nodes added", "node", c, "count", len(nodes))
	writeJSON(w, http.StatusCreated, out)
}

// expandAdd returns the nodes an add request describes.
func expandAdd(req AddNodesRequest) ([]*inventory.Node, error) {
	names, err := hostlist.Expand(req.Names)
	if err != nil {
		return nil, badRequest{err}
	}
	if len(names) == 0 {
		return nil, badRequest{errors.New("names: no node named")}
	}
	if len(names) > 1 && (req.ClientID != "" || req.Hostname != "") {
		return nil, badRequest{fmt.Errorf("%d nodes: a client id or a host name names one node", len(names))}
	}
	var ips []netip.Addr
	if req.IP != "" {
		if ips, err = hostlist.IPs(req.IP, len(names)); err != nil {
			return nil, badRequest{err}
		}
	}
	var macs []string
	if req.MAC != "" {
		hw, err := hostlist.MACs(req.MAC, len(names))
		if err != nil {
			return nil, badRequest{err}
		}
		for _, m := range hw {
			macs = append(macs, m.String())
		}
	}
	out := make([]*inventory.Node, len(names))
	for i, name := range names {
		ifc := inventory.Interface{Name: req.Interface, ClientID: req.ClientID}
		if ips != nil {
			ifc.IP = ips[i]
		}
		if macs != nil {
			ifc.MAC = macs[i]
		}
		out[i] = &inventory.Node{Name: name, Hostname: req.Hostname, Profiles: slices.Clone(req.Profiles),
			Interfaces: []inventory.Interface{ifc}, Settings: settingsIn(req.Settings)}
	}
	return out, nil
}

func (a *Admin) setNodes(w http.ResponseWriter, r *http.Request) {
	names, err := a.names(r, false)
	if err != nil {
		writeError(w, err)
		return
	}
	var req SetRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(names) > 1 && (req.Hostname != nil || req.MAC != nil || req.IP != nil) {
		writeError(w, badRequest{fmt.Errorf("%d nodes: a host name, MAC or IP is set on one node", len(names))})
		return
	}
	var changes []NodeChange
	var moved []string
	_, err = a.change(req.DryRun, func(inv *inventory.Inventory) error {
		changes, moved = nil, nil
		for _, name := range names {
			old, ok := inv.Nodes[name]
			if !ok {
				return fmt.Errorf("node %s: %w", name, state.ErrNotFound)
			}
			n := old.Clone()
			if err := req.apply(n); err != nil {
				return err
			}
			inv.Nodes[name] = n
			fc := diffFields(flattenNode(NodeOut(old)), flattenNode(NodeOut(n)))
			if len(fc) > 0 {
				changes = append(changes, NodeChange{Name: name, Changes: fc})
			}
			// A changed reference needs no unpinning (a pin holds only
			// for the reference it came from); the same one set again does.
			if req.Image != nil || req.Repin {
				moved = append(moved, name)
			}
		}
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	if !req.DryRun && len(moved) > 0 {
		if err := a.DB.ClearPins(moved); err != nil {
			writeError(w, err)
			return
		}
	}
	if !req.DryRun {
		for _, c := range changes {
			logger(a.Logger).Info("node changed", "node", c.Name, "changes", len(c.Changes))
		}
	}
	if changes == nil {
		changes = []NodeChange{}
	}
	writeJSON(w, http.StatusOK, changes)
}

// apply applies a set request to a node.
func (s SetRequest) apply(n *inventory.Node) error {
	if s.Image != nil {
		n.Image = *s.Image
	}
	if s.KernelArgs != nil {
		v := *s.KernelArgs
		n.KernelArgs = &v
	}
	if s.Modules != nil {
		n.Modules = slices.Clone(*s.Modules)
		if n.Modules == nil {
			n.Modules = []string{}
		}
	}
	if s.BootFile != nil {
		n.BootFile = *s.BootFile
	}
	if s.RootMode != nil {
		n.Root.Mode = *s.RootMode
	}
	if s.RootSize != nil {
		n.Root.Size = *s.RootSize
	}
	if s.Network != nil {
		n.Network = *s.Network
	}
	if s.Profiles != nil {
		n.Profiles = slices.Clone(*s.Profiles)
	}
	if s.Hostname != nil {
		n.Hostname = *s.Hostname
	}
	if s.MAC != nil || s.IP != nil {
		if len(n.Interfaces) == 0 {
			n.Interfaces = []inventory.Interface{{}}
		}
		if s.MAC != nil {
			n.Interfaces[0].MAC = *s.MAC
		}
		if s.IP != nil {
			ip, err := netip.ParseAddr(*s.IP)
			if err != nil || !ip.Is4() {
				return badRequest{fmt.Errorf("node %s: ip %q: not an IPv4 address", n.Name, *s.IP)}
			}
			n.Interfaces[0].IP = ip
		}
	}
	for k, v := range s.Tags {
		if n.Tags == nil {
			n.Tags = map[string]string{}
		}
		n.Tags[k] = v
	}
	for _, k := range s.Untag {
		delete(n.Tags, k)
	}
	for k, v := range s.Values {
		if n.Values == nil {
			n.Values = map[string]string{}
		}
		n.Values[k] = v
	}
	for _, k := range s.Unvalue {
		delete(n.Values, k)
	}
	for _, f := range s.Inherit {
		switch f {
		case "kernelArgs", "kernel_args":
			n.KernelArgs = nil
		case "modules":
			n.Modules = nil
		default:
			return badRequest{fmt.Errorf("inherit %q: only kernelArgs and modules", f)}
		}
	}
	return nil
}

func (a *Admin) deleteNode(w http.ResponseWriter, r *http.Request) {
	a.removeNodes(w, []string{r.PathValue("name")})
}

func (a *Admin) deleteNodes(w http.ResponseWriter, r *http.Request) {
	names, err := a.names(r, false)
	if err != nil {
		writeError(w, err)
		return
	}
	a.removeNodes(w, names)
}

func (a *Admin) removeNodes(w http.ResponseWriter, names []string) {
	_, err := a.change(false, func(inv *inventory.Inventory) error {
		for _, name := range names {
			if _, ok := inv.Nodes[name]; !ok {
				return fmt.Errorf("delete node %s: %w", name, state.ErrNotFound)
			}
			delete(inv.Nodes, name)
		}
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	c, _ := hostlist.Compress(names)
	logger(a.Logger).Info("nodes deleted", "node", c, "count", len(names))
	w.WriteHeader(http.StatusNoContent)
}

func (a *Admin) listBoots(w http.ResponseWriter, r *http.Request) {
	bs, err := a.DB.Boots(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Boot, len(bs))
	for i, b := range bs {
		out[i] = BootOut(b)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Admin) getBoot(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(r.PathValue("boot"))
	if err != nil || id < 1 {
		writeError(w, badRequest{fmt.Errorf("boot %q: not a boot number (1, 2, ...)", r.PathValue("boot"))})
		return
	}
	b, err := a.DB.BootByID(r.PathValue("name"), id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, BootOut(b))
}

func (a *Admin) listProfiles(w http.ResponseWriter, _ *http.Request) {
	ps := a.DB.Profiles()
	out := make([]Profile, 0, len(ps))
	for _, name := range slices.Sorted(maps.Keys(ps)) {
		out = append(out, ProfileOut(ps[name]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Admin) getProfile(w http.ResponseWriter, r *http.Request) {
	p, ok := a.DB.Profiles()[r.PathValue("name")]
	if !ok {
		writeError(w, fmt.Errorf("profile %s: %w", r.PathValue("name"), state.ErrNotFound))
		return
	}
	writeJSON(w, http.StatusOK, ProfileOut(p))
}

func (a *Admin) addProfile(w http.ResponseWriter, r *http.Request) {
	var p Profile
	if err := decode(r, &p); err != nil {
		writeError(w, err)
		return
	}
	_, err := a.change(false, func(inv *inventory.Inventory) error {
		if _, ok := inv.Profiles[p.Name]; ok {
			return fmt.Errorf("add profile %s: name %w", p.Name, state.ErrExists)
		}
		inv.Profiles[p.Name] = ProfileIn(p)
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("profile added", "profile", p.Name)
	writeJSON(w, http.StatusCreated, ProfileOut(a.DB.Profiles()[p.Name]))
}

// putProfile replaces a profile and answers what changed.
func (a *Admin) putProfile(w http.ResponseWriter, r *http.Request) {
	var p Profile
	if err := decode(r, &p); err != nil {
		writeError(w, err)
		return
	}
	name := r.PathValue("name")
	if p.Name != name {
		writeError(w, badRequest{fmt.Errorf("profile %s: the body names profile %q", name, p.Name)})
		return
	}
	var fc []FieldChange
	dry := r.URL.Query().Get("dryRun") == "true"
	_, err := a.change(dry, func(inv *inventory.Inventory) error {
		old, ok := inv.Profiles[name]
		if !ok {
			return fmt.Errorf("profile %s: %w", name, state.ErrNotFound)
		}
		fc = diffFields(flattenProfile(ProfileOut(old)), flattenProfile(p))
		inv.Profiles[name] = ProfileIn(p)
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	if fc == nil {
		fc = []FieldChange{}
	}
	if !dry && len(fc) > 0 {
		logger(a.Logger).Info("profile changed", "profile", name, "changes", len(fc))
	}
	writeJSON(w, http.StatusOK, NodeChange{Name: name, Changes: fc})
}

func (a *Admin) deleteProfile(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	_, err := a.change(false, func(inv *inventory.Inventory) error {
		if _, ok := inv.Profiles[name]; !ok {
			return fmt.Errorf("profile %s: %w", name, state.ErrNotFound)
		}
		delete(inv.Profiles, name)
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("profile deleted", "profile", name)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Admin) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, Summarize(a.DB.Summaries()))
}

// Summarize counts nodes by state and lists the ones not booted.
func Summarize(list []state.NodeStatus) Summary {
	s := Summary{Nodes: len(list), Counts: map[string]int{}, Stragglers: map[string]string{}}
	by := map[string][]string{}
	for _, st := range state.States() {
		s.Counts[string(st)] = 0
	}
	for _, n := range list {
		st := string(n.Status.State)
		s.Counts[st]++
		if n.Status.State != state.StateBooted {
			by[st] = append(by[st], n.Name)
		}
	}
	for st, names := range by {
		s.Stragglers[st], _ = hostlist.Compress(names)
	}
	return s
}

func (a *Admin) overlay(w http.ResponseWriter, r *http.Request) {
	if a.Render == nil {
		writeError(w, fmt.Errorf("overlay rendering is not configured: %w", state.ErrNotFound))
		return
	}
	res, err := a.Render(r.PathValue("name"), r.URL.Query().Get("path"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// OverlayResult is GET /api/v1/nodes/{name}/overlay: the node's overlay
// as its next boot would get it (with a placeholder token).
type OverlayResult struct {
	// Node is the node's name.
	Node string `json:"node"`
	// Files lists every entry.
	Files []OverlayFile `json:"files"`
	// Content is the file at ?path=, when asked for.
	Content *string `json:"content,omitempty"`
}

// OverlayFile is one entry of an overlay.
type OverlayFile struct {
	// Path is its path under the node's root.
	Path string `json:"path"`
	// Mode is its type and permissions, as ls shows them.
	Mode string `json:"mode"`
	// UID and GID own it.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// Size is a file's size in bytes.
	Size int `json:"size"`
	// Link is a symbolic link's target.
	Link string `json:"link,omitempty"`
	// Source says where it came from: built-in, profile NAME: FILE, directory.
	Source string `json:"source"`
}

// flattenNode returns a node's fields as path -> value, for diffs.
func flattenNode(n NodeSpec) map[string]string {
	m := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	put("hostname", n.Hostname)
	put("profiles", strings.Join(n.Profiles, ","))
	for i, ifc := range n.Interfaces {
		p := fmt.Sprintf("interfaces[%d].", i)
		put(p+"name", ifc.Name)
		put(p+"mac", ifc.MAC)
		put(p+"client_id", ifc.ClientID)
		put(p+"ip", ifc.IP)
		put(p+"gateway", ifc.Gateway)
		if ifc.MTU != 0 {
			put(p+"mtu", strconv.Itoa(ifc.MTU))
		}
	}
	flattenSettings(n.Settings, put)
	return m
}

func flattenProfile(p Profile) map[string]string {
	m := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	put("inherits", strings.Join(p.Inherits, ","))
	flattenSettings(p.Settings, put)
	return m
}

func flattenSettings(s Settings, put func(k, v string)) {
	put("image", s.Image)
	if s.KernelArgs != nil {
		v := *s.KernelArgs
		if v == "" {
			v = `""`
		}
		put("kernel_args", v)
	}
	if s.Modules != nil {
		v := strings.Join(*s.Modules, ",")
		if v == "" {
			v = "[]"
		}
		put("modules", v)
	}
	put("boot_file", s.BootFile)
	if s.Root != nil {
		put("root.mode", s.Root.Mode)
		put("root.size", s.Root.Size)
	}
	put("network", s.Network)
	for k, v := range s.Tags {
		put("tags."+k, v)
	}
	for k, v := range s.Values {
		put("values."+k, v)
	}
}

// diffFields lists the fields whose values differ, sorted.
func diffFields(before, after map[string]string) []FieldChange {
	var out []FieldChange
	for k, v := range after {
		if before[k] != v {
			out = append(out, FieldChange{Field: k, Before: before[k], After: v})
		}
	}
	for k, v := range before {
		if _, ok := after[k]; !ok {
			out = append(out, FieldChange{Field: k, Before: v})
		}
	}
	slices.SortFunc(out, func(a, b FieldChange) int { return cmp.Compare(a.Field, b.Field) })
	return out
}

// backup streams a consistent copy of the database (one read transaction),
// with its size in Content-Length: a copy cut short does not verify.
func (a *Admin) backup(w http.ResponseWriter, r *http.Request) {
	n, err := a.DB.WriteSnapshot(w, func(size int64) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	})
	if err != nil && n == 0 {
		writeError(w, err)
		return
	}
	if err != nil {
		logger(a.Logger).Warn("state backup cut short", "bytes", n, "err", err)
		return
	}
	logger(a.Logger).Info("state backup sent", "bytes", n)
}
