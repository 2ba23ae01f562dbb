package bootserver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// NodeConfig renders node n's configuration as its overlay carries it,
// booting image imgName (manifest m, digest d), without a token, with its
// OverlayGeneration set.
func (s *Server) NodeConfig(n state.NodeStatus, imgName string, m images.Manifest, d images.Digest) (overlay.Config, error) {
	root, _ := s.rootFor(n, m)
	c := overlay.Config{
		Node:    n.Name,
		HeadURL: strings.TrimRight(s.BaseURL, "/"),
		Interface: overlay.Interface{
			MAC:     n.MAC,
			Address: netip.PrefixFrom(n.IP, s.PrefixLen).String(),
		},
		Modules:      s.Modules,
		Image:        overlay.ImageRef{Name: imgName, Digest: string(d), ContentDigest: string(m.ContentDigest)},
		Root:         root,
		ConsoleShell: s.ConsoleShell,
	}
	if s.Gateway.IsValid() {
		c.Interface.Gateway = s.Gateway.String()
	}
	for _, a := range s.DNS {
		c.Interface.DNS = append(c.Interface.DNS, a.String())
	}
	files, err := runtimeFiles(c)
	if err != nil {
		return overlay.Config{}, err
	}
	c.OverlayGeneration, err = Generation(c, files)
	return c, err
}

// RuntimeOverlay returns node name's overlay as the head renders it now,
// for the agent daemon to apply without a reboot: the configuration
// without a token (the head keeps only its hash) and the other files.
func (s *Server) RuntimeOverlay(name string) (overlay.RuntimeOverlay, error) {
	n, err := s.DB.Get(name)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	imgName, m, d, err := s.imageFor(n)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	c, err := s.NodeConfig(n, imgName, m, d)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	files, err := runtimeFiles(c)
	if err != nil {
		return overlay.RuntimeOverlay{}, err
	}
	return overlay.RuntimeOverlay{Generation: c.OverlayGeneration, Config: c, Files: files}, nil
}

// runtimeFiles returns the overlay's regular files but the node
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

// Generation identifies an overlay's content: the SHA-256 of the node
// configuration without its token and generation, and of the files. The
// agent daemon re-fetches the overlay when the head's differs from its
// own.
func Generation(c overlay.Config, files []overlay.File) (string, error) {
	c.Token, c.OverlayGeneration = "", ""
	b, err := json.Marshal(struct {
		Config overlay.Config `json:"config"`
		Files  []overlay.File `json:"files"`
	}{c, files})
	if err != nil {
		return "", fmt.Errorf("overlay generation of node %s: %w", c.Node, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}
