package bootserver

import (
	"context"
	"strings"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
	"github.com/ramboot/ramboot/provisioner/plan"
)

// NodeConfig returns the minimal overlay's node configuration (when the
// server has no Overlays) for plan p booting image imgName (manifest m,
// digest d), without a token, with its OverlayGeneration set.
func (s *Server) NodeConfig(p plan.Plan, imgName string, m images.Manifest, d images.Digest) (overlay.Config, error) {
	root, _ := RootFor(p, m)
	c := overlay.Config{
		Node:         p.Node,
		Hostname:     hostnameIfNotName(p),
		HeadURL:      strings.TrimRight(s.BaseURL, "/"),
		Modules:      p.Modules,
		Image:        overlay.ImageRef{Name: imgName, Digest: string(d), ContentDigest: string(m.ContentDigest)},
		Root:         root,
		ConsoleShell: p.ConsoleShell,
	}
	if len(p.Interfaces) > 0 {
		ifc := p.Interfaces[0]
		c.Interface = overlay.Interface{MAC: ifc.MAC, Address: ifc.Address.String()}
		if ifc.Gateway.IsValid() {
			c.Interface.Gateway = ifc.Gateway.String()
		}
		for _, a := range ifc.DNS {
			c.Interface.DNS = append(c.Interface.DNS, a.String())
		}
	}
	files, err := runtimeFiles(c)
	if err != nil {
		return overlay.Config{}, err
	}
	for _, f := range files {
		c.OverlayFiles = append(c.OverlayFiles, f.Path)
	}
	c.OverlayGeneration, err = overlayrender.Generation(c, files)
	return c, err
}

// RuntimeOverlay returns node name's overlay as the head renders it now,
// for the agent daemon to apply without a reboot: the configuration
// without a token (the head keeps only its hash) and the other files.
func (s *Server) RuntimeOverlay(name string) (overlay.RuntimeOverlay, error) {
	if s.Overlays != nil {
		return s.Overlays.RuntimeOverlay(name)
	}
	p, err := s.Nodes.Plan(name)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	imgName, m, d, err := s.imageFor(context.Background(), p)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	c, err := s.NodeConfig(p, imgName, m, d)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	files, err := runtimeFiles(c)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	return overlay.RuntimeOverlay{Generation: c.OverlayGeneration, Config: c, Files: files}, nil
}

// runtimeFiles returns the minimal overlay's regular files but the node
// configuration, as RuntimeOverlay carries them.
func runtimeFiles(c overlay.Config) ([]overlay.File, error) {
	all, err := OverlayFiles(c)
	if err != nil {
		return nil, err
	}
	var out []overlay.File
	for _, f := range all {
		if !f.Mode.IsRegular() || f.Name == overlay.ConfigPath {
			continue
		}
		out = append(out, overlay.File{Path: f.Name, Mode: uint32(f.Mode.Perm()), Data: f.Data})
	}
	return out, nil
}
