package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/internal/etcfiles"
)

// refresh fetches the node's overlay and applies it: every file is written
// beside its target and renamed over it, the node configuration keeps the
// node's own token, and a changed host name or name server list is applied
// (sethostname, /etc/hostname, /etc/hosts, /etc/resolv.conf). What cannot
// change without a reboot (the interface, the image) is only logged.
func (d *Daemon) refresh(ctx context.Context, client *headapi.Client) error {
	o, err := client.Overlay(ctx)
	if err != nil {
		return err
	}
	old := client.NodeConfig()
	cfg := o.Config
	cfg.Token, cfg.OverlayGeneration = old.Token, o.Generation
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("overlay %s: %w", o.Generation, err)
	}
	if cfg.Node != old.Node {
		return fmt.Errorf("overlay %s is for node %q, this is %q", o.Generation, cfg.Node, old.Node)
	}
	for _, f := range o.Files {
		if err := overlay.ValidPath(f.Path); err != nil {
			return err
		}
	}
	root := d.root()
	// Names first, but those the overlay provides (a templated /etc/hosts):
	// the overlay's files win.
	if cfg.HostnameOrNode() != old.HostnameOrNode() || !slices.Equal(cfg.Interface.DNS, old.Interface.DNS) {
		if err := d.applyNames(root, cfg); err != nil {
			return err
		}
	}
	for _, f := range o.Files {
		p := filepath.Join(root, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("apply overlay: %w", err)
		}
		if err := etcfiles.WriteFile(p, f.Data, os.FileMode(f.Mode&0o7777)); err != nil {
			return fmt.Errorf("apply overlay: %w", err)
		}
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := etcfiles.WriteFile(filepath.Join(root, overlay.ConfigPath), append(js, '\n'), 0o600); err != nil {
		return fmt.Errorf("apply overlay: %w", err)
	}
	if !sameInterface(cfg.Interface, old.Interface) || cfg.Image != old.Image {
		d.log().Warn("the new overlay changes the interface or the image: that takes a reboot", "node", cfg.Node)
	}
	client.SetConfig(cfg)
	d.update(func(s *Status) {
		s.OverlayGeneration, s.OverlayRefreshed = o.Generation, time.Now()
		s.Head, s.Image = cfg.HeadURL, cfg.Image
	})
	d.log().Info("overlay refreshed", "node", cfg.Node, "generation", o.Generation, "files", len(o.Files))
	return nil
}

// sameInterface compares two interfaces but their name servers, which a
// refresh applies.
func sameInterface(a, b overlay.Interface) bool {
	a.DNS, b.DNS = nil, nil
	return a.MAC == b.MAC && a.Address == b.Address && a.Gateway == b.Gateway
}

// applyNames sets the host name and rewrites the name files.
func (d *Daemon) applyNames(root string, cfg overlay.Config) error {
	name := cfg.HostnameOrNode()
	set := d.SetHostname
	if set == nil {
		set = func(n string) error { return unix.Sethostname([]byte(n)) }
	}
	if err := set(name); err != nil {
		return fmt.Errorf("set host name %s: %w", name, err)
	}
	files := etcfiles.Files{Hostname: name, DNS: cfg.Interface.DNS, Keep: cfg.Provides}
	if p, err := netip.ParsePrefix(cfg.Interface.Address); err == nil {
		files.Address = p.Addr()
	}
	return etcfiles.Write(root, files)
}
