package provisioner

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

// ImageUse says which images the nodes of a state directory use, for
// `ramboot image rm` and `image gc` when no daemon runs (with one, they
// ask it).
type ImageUse struct {
	nodes []state.NodeStatus
	refOf func(state.NodeStatus) string
}

// OfflineImageUse reads the inventory of state directory dir (no database
// means no nodes). Without the daemon's configuration file, nodes whose
// image comes from the configuration get the embedded default's
// boot.default_image.
func OfflineImageUse(dir string) (*ImageUse, error) {
	u := &ImageUse{refOf: func(state.NodeStatus) string { return "" }}
	p := filepath.Join(dir, DBFile)
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return u, nil
	}
	db, err := state.Open(p)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	cfg, err := config.Load("")
	if err != nil {
		return nil, err
	}
	// Every address is on some subnet here: only the image matters.
	d := &plan.Defaults{Image: cfg.Boot.DefaultImage, Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("0.0.0.0/0")}}}
	inv := &inventory.Inventory{Profiles: db.Profiles()}
	u.nodes = db.List()
	u.refOf = func(n state.NodeStatus) string {
		pl, err := d.Resolve(inv, &n.Node, plan.Pin{})
		if err != nil {
			return ""
		}
		return pl.Image
	}
	return u, nil
}

// Assigned returns the nodes whose image reference is ref.
func (u *ImageUse) Assigned(ref images.Reference) []string {
	return api.NodesAssigned(u.nodes, u.refOf, ref)
}

// InUse returns the manifest digests the nodes use (api.InUse).
func (u *ImageUse) InUse(st *images.Store) []images.Digest {
	return api.InUse(u.nodes, st, u.refOf)
}
