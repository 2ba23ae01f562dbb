package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
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

// ImageUse says which images the nodes use, for `ramboot image rm` and
// `image gc` when no daemon runs (with one, they ask it), and removes
// references as the daemon would: on a site whose heads share etcd, it
// reads the inventory from etcd and records the removal for every head.
// Close it when done.
type ImageUse struct {
	nodes    []state.NodeStatus
	refOf    func(state.NodeStatus) string
	db       *state.DB
	removals *imageRemovals
}

// BackendFile, in a state directory, names the configuration file of a
// daemon that keeps its state in etcd (written by `ramboot serve`), so
// that commands run on the state directory without --config still find
// the inventory.
const BackendFile = "state-backend.json"

type backendRecord struct {
	Backend string `json:"backend"`
	Config  string `json:"config"`
}

// RecordBackend writes BackendFile into cfg's state directory when the
// state is in etcd (configured by the file cfgPath), and removes it
// otherwise.
func RecordBackend(cfg config.Config, cfgPath string) error {
	p := filepath.Join(cfg.StateDir, BackendFile)
	if cfg.State.Backend != "etcd" {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	abs, err := filepath.Abs(cfgPath)
	if err != nil {
		return err
	}
	b, err := json.Marshal(backendRecord{Backend: "etcd", Config: abs})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	return WritePrivateFile(p, func(w io.Writer) error { _, err := w.Write(append(b, '\n')); return err })
}

// WritePrivateFile writes path through fill: into a temporary file beside
// it, mode 0600, synced, and renamed over path only once fill succeeded,
// so that path is never seen half-written nor readable by others (see
// state.WritePrivateFile).
func WritePrivateFile(path string, fill func(io.Writer) error) error {
	return state.WritePrivateFile(path, fill, nil)
}

// OfflineImageUse reads the inventory of state directory dir: from the
// etcd cluster of configuration file cfgPath, or, without one, of the
// file BackendFile names; else from dir's database (none means no
// nodes). A state directory whose daemon keeps its state in etcd, when
// that configuration cannot be read or etcd not reached, is an error:
// never "no node uses it". Without a configuration file, nodes whose
// image comes from the configuration get the embedded default's
// boot.default_image.
func OfflineImageUse(ctx context.Context, dir, cfgPath string) (*ImageUse, error) {
	if cfgPath == "" {
		b, err := os.ReadFile(filepath.Join(dir, BackendFile))
		switch {
		case err == nil:
			var rec backendRecord
			if err := json.Unmarshal(b, &rec); err != nil || rec.Config == "" {
				return nil, fmt.Errorf("%s: not a state backend record (%v): pass the daemon's --config", filepath.Join(dir, BackendFile), err)
			}
			cfgPath = rec.Config
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("the daemon's configuration, to find which nodes use the images: %w", err)
	}
	u := &ImageUse{refOf: func(state.NodeStatus) string { return "" }}
	var db *state.DB
	if cfg.State.Backend == "etcd" {
		st, err := OpenEtcdStore(ctx, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, fmt.Errorf("the inventory is in etcd (%s): %w", cfgPath, err)
		}
		if db, err = state.OpenStore(st, state.Options{}); err != nil {
			st.Close()
			return nil, fmt.Errorf("the inventory is in etcd (%s): %w", cfgPath, err)
		}
		host, _ := os.Hostname()
		u.removals = newImageRemovals(st, &images.Store{Dir: filepath.Join(dir, ImagesDir)}, "cli@"+host, nil)
	} else {
		p := filepath.Join(dir, DBFile)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return u, nil
		}
		if db, err = state.Open(p); err != nil {
			return nil, err
		}
	}
	u.db = db
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

// Close closes the state it read.
func (u *ImageUse) Close() error {
	if u.db == nil {
		return nil
	}
	return u.db.Close() // and the etcd client under it
}

// Remove removes reference ref from st; on a site sharing etcd it records
// the removal for every head first (see imagerm.go).
func (u *ImageUse) Remove(ctx context.Context, st *images.Store, ref images.Reference) (images.Digest, error) {
	if u.removals == nil {
		return st.Remove(ref.String())
	}
	u.removals.images = st
	return u.removals.Remove(ctx, ref.String())
}

// Assigned returns the nodes whose image reference is ref.
func (u *ImageUse) Assigned(ref images.Reference) []string {
	return api.NodesAssigned(u.nodes, u.refOf, ref)
}

// InUse returns the manifest digests the nodes use (api.InUse).
func (u *ImageUse) InUse(st *images.Store) []images.Digest {
	return api.InUse(u.nodes, st, u.refOf)
}
