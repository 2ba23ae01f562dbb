package api

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/ramboot/ramboot/provisioner/hostlist"
	"github.com/ramboot/ramboot/provisioner/inventory"
)

// ExpandCluster returns the nodes and profiles a cluster file describes:
// a node entry whose name is a host list becomes one node per name, with
// its interfaces' MAC and IP lists or ranges ("10.0.0.101+") spread over
// them. Every problem is reported at once, naming the entry.
func ExpandCluster(c Cluster) (nodes []*inventory.Node, profiles []*inventory.Profile, err error) {
	var errs []error
	seenP := map[string]bool{}
	for i, p := range c.Profiles {
		if seenP[p.Name] {
			errs = append(errs, fmt.Errorf("profiles[%d]: profile %s is listed twice", i, p.Name))
			continue
		}
		seenP[p.Name] = true
		profiles = append(profiles, ProfileIn(p))
	}
	seen := map[string]int{}
	for i, entry := range c.Nodes {
		names, err := hostlist.Expand(entry.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("nodes[%d]: %w", i, err))
			continue
		}
		expanded, err := expandEntry(entry, names)
		if err != nil {
			errs = append(errs, fmt.Errorf("nodes[%d] (%s): %w", i, entry.Name, err))
			continue
		}
		for _, n := range expanded {
			if j, dup := seen[n.Name]; dup {
				errs = append(errs, fmt.Errorf("nodes[%d]: node %s is also in nodes[%d]", i, n.Name, j))
				continue
			}
			seen[n.Name] = i
			nodes = append(nodes, n)
		}
	}
	return nodes, profiles, errors.Join(errs...)
}

// expandEntry spreads one node entry over names.
func expandEntry(entry NodeSpec, names []string) ([]*inventory.Node, error) {
	if len(names) == 1 {
		entry.Name = names[0]
		n, err := NodeIn(entry)
		if err != nil {
			return nil, err
		}
		return []*inventory.Node{n}, nil
	}
	if entry.Hostname != "" {
		return nil, errors.New("a host name names one node")
	}
	ips := make([][]netip.Addr, len(entry.Interfaces))
	macs := make([][]string, len(entry.Interfaces))
	for k, ifc := range entry.Interfaces {
		if ifc.ClientID != "" {
			return nil, fmt.Errorf("interfaces[%d]: a client id names one node's interface", k)
		}
		if ifc.IP != "" {
			a, err := hostlist.IPs(ifc.IP, len(names))
			if err != nil {
				return nil, fmt.Errorf("interfaces[%d]: %w", k, err)
			}
			ips[k] = a
		}
		if ifc.MAC != "" {
			hw, err := hostlist.MACs(ifc.MAC, len(names))
			if err != nil {
				return nil, fmt.Errorf("interfaces[%d]: %w", k, err)
			}
			for _, m := range hw {
				macs[k] = append(macs[k], m.String())
			}
		}
	}
	out := make([]*inventory.Node, 0, len(names))
	for i, name := range names {
		e := entry
		e.Name = name
		e.Interfaces = slices.Clone(entry.Interfaces)
		for k := range e.Interfaces {
			e.Interfaces[k].IP, e.Interfaces[k].MAC = "", ""
		}
		n, err := NodeIn(e)
		if err != nil {
			return nil, err
		}
		for k := range n.Interfaces {
			if ips[k] != nil {
				n.Interfaces[k].IP = ips[k][i]
			}
			if macs[k] != nil {
				n.Interfaces[k].MAC = macs[k][i]
			}
		}
		out = append(out, n)
	}
	return out, nil
}

func (a *Admin) apply(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxApplyBody)
	var req ApplyRequest
	if err := decodeLimit(r, &req, maxApplyBody); err != nil {
		writeError(w, err)
		return
	}
	res, err := a.Apply(req)
	if err != nil {
		writeError(w, err)
		return
	}
	if !req.DryRun && (len(res.Nodes) > 0 || len(res.Profiles) > 0) {
		logger(a.Logger).Info("inventory applied", "added", res.Added, "updated", res.Updated, "removed", res.Removed, "profiles", len(res.Profiles))
	}
	writeJSON(w, http.StatusOK, res)
}

// maxApplyBody bounds an apply's body: 10,000 nodes take about 3 MB.
const maxApplyBody = 64 << 20

// Apply makes the inventory what req.Cluster says, in one transaction:
// it creates and updates every node and profile listed and, with Prune,
// removes the others. Nothing is written when anything is invalid.
func (a *Admin) Apply(req ApplyRequest) (ApplyResult, error) {
	nodes, profiles, err := ExpandCluster(req.Cluster)
	if err != nil {
		return ApplyResult{}, badRequest{err}
	}
	var res ApplyResult
	_, err = a.change(req.DryRun, func(inv *inventory.Inventory) error {
		res = ApplyResult{DryRun: req.DryRun}
		wantP := map[string]bool{}
		for _, p := range profiles {
			wantP[p.Name] = true
			p = p.Normalize()
			old, had := inv.Profiles[p.Name]
			switch {
			case !had:
				res.Profiles = append(res.Profiles, ObjectChange{Name: p.Name, Action: "add"})
			case reflect.DeepEqual(old, p):
				continue
			default:
				res.Profiles = append(res.Profiles, ObjectChange{Name: p.Name, Action: "update", Changes: diffFields(flattenProfile(ProfileOut(old)), flattenProfile(ProfileOut(p)))})
			}
			inv.Profiles[p.Name] = p
		}
		want := map[string]bool{}
		for _, n := range nodes {
			want[n.Name] = true
			n = n.Normalize()
			old, had := inv.Nodes[n.Name]
			if had {
				n.Created = old.Created
			}
			switch {
			case !had:
				res.Added++
				res.Nodes = append(res.Nodes, ObjectChange{Name: n.Name, Action: "add"})
			case reflect.DeepEqual(old, n):
				res.Unchanged++
				continue
			default:
				res.Updated++
				res.Nodes = append(res.Nodes, ObjectChange{Name: n.Name, Action: "update", Changes: diffFields(flattenNode(NodeOut(old)), flattenNode(NodeOut(n)))})
			}
			inv.Nodes[n.Name] = n
		}
		if req.Prune {
			for name := range inv.Nodes {
				if !want[name] {
					delete(inv.Nodes, name)
					res.Removed++
					res.Nodes = append(res.Nodes, ObjectChange{Name: name, Action: "remove"})
				}
			}
			for name := range inv.Profiles {
				if !wantP[name] {
					delete(inv.Profiles, name)
					res.Profiles = append(res.Profiles, ObjectChange{Name: name, Action: "remove"})
				}
			}
		}
		return nil
	})
	if err != nil {
		return ApplyResult{}, err
	}
	order := func(a, b ObjectChange) int {
		return cmp.Or(strings.Compare(a.Action, b.Action), hostlist.Natural(a.Name, b.Name))
	}
	slices.SortFunc(res.Nodes, order)
	slices.SortFunc(res.Profiles, order)
	if res.Nodes == nil {
		res.Nodes = []ObjectChange{}
	}
	if res.Profiles == nil {
		res.Profiles = []ObjectChange{}
	}
	return res, nil
}

func (a *Admin) export(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, Export(a.DB.Inventory()))
}

// Export returns the inventory as a cluster file: profiles by name, nodes
// in natural order (n9 before n10), one entry per node.
func Export(inv *inventory.Inventory) Cluster {
	c := Cluster{Profiles: []Profile{}, Nodes: []NodeSpec{}}
	for _, name := range slices.Sorted(mapsKeys(inv.Profiles)) {
		c.Profiles = append(c.Profiles, ProfileOut(inv.Profiles[name]))
	}
	names := slices.Collect(mapsKeys(inv.Nodes))
	slices.SortFunc(names, hostlist.Natural)
	for _, name := range names {
		n := NodeOut(inv.Nodes[name])
		n.Created = n.Created.UTC()
		c.Nodes = append(c.Nodes, n)
	}
	return c
}
