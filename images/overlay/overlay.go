// Package overlay defines the contract between the head and a booting node:
// the node configuration the head renders into each node's overlay archive,
// and the report the node agent sends back once it is up.
//
// The head writes a [Config] as JSON to [ConfigPath] inside the node's
// overlay (a newc cpio that the kernel unpacks over the image), and the agent
// reads it from the same path in its RAM root:
//
//	cfg, err := overlay.ReadConfig(os.DirFS("/"))
//	...
//	req := overlay.Report{State: overlay.StateReady, ContentDigest: id, ...}
//
// The agent finds the identity of the image it actually runs in
// [ImageIDPath], a file that `ramboot image build` appends to every image, so
// the digest a node reports comes from its root file system and not from
// anything the head told it.
package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
)

// ConfigPath is where the node configuration lives in the node's root file
// system, without the leading slash (an fs.FS path).
const ConfigPath = "etc/ramboot/node.json"

// ImageIDPath is where an image records the digest of its own content, as
// "sha256:<hex>\n", without the leading slash.
const ImageIDPath = "etc/ramboot/image-id"

// Config is everything a node needs to know about itself at boot.
type Config struct {
	// Node is the node's inventory name.
	Node string `json:"node"`
	// Hostname is the host name to set; it defaults to Node.
	Hostname string `json:"hostname,omitempty"`
	// HeadURL is the base URL of the head's HTTP server, e.g.
	// "http://10.77.0.1:80".
	HeadURL string `json:"headURL"`
	// Peers are the base URLs of the other heads serving the cluster
	// (several heads on one shared store), live when the overlay was
	// rendered. The agent daemon calls them, in order, when HeadURL does
	// not answer (no connection, or none in time): a node's token is
	// good on every head. Empty with a single head, and then left out of
	// node.json, which stays as before.
	Peers []string `json:"peers,omitempty"`
	// Token authenticates the node's reports (HTTP bearer token). It is
	// minted by the head for this boot only.
	Token string `json:"token"`
	// Interface is the provisioning interface's configuration.
	Interface Interface `json:"interface"`
	// Modules are kernel module names the agent loads before it configures
	// the network, in order; each module's dependencies are loaded first.
	Modules []string `json:"modules,omitempty"`
	// Image names the image the head assigned to the node.
	Image ImageRef `json:"image"`
	// Root says how the agent sets up the node's root file system; the
	// zero value is the tmpfs mode with DefaultRootSize.
	Root Root `json:"root,omitzero"`
	// ConsoleShell makes the agent run a root shell on the console when it
	// stays PID 1 (the image has no init to hand over to), so that a
	// broken node can be diagnosed there.
	ConsoleShell bool `json:"consoleShell,omitempty"`
	// OverlayGeneration identifies the overlay's content (see
	// RuntimeOverlay); the agent daemon compares it with the one the head
	// announces in every heartbeat reply.
	OverlayGeneration string `json:"overlayGeneration,omitempty"`
	// OverlayFiles lists the regular files the overlay carries besides
	// this configuration: paths relative to the root, slash-separated,
	// sorted. The agent leaves those of its own name files (etc/hostname,
	// etc/hosts, etc/resolv.conf) that are listed as the overlay has them,
	// so a templated cluster-wide /etc/hosts is what the node gets.
	OverlayFiles []string `json:"overlayFiles,omitempty"`
}

// Provides reports whether the overlay carries the file at path (relative
// to the root, slash-separated, as in OverlayFiles).
func (c Config) Provides(path string) bool {
	return slices.Contains(c.OverlayFiles, path)
}

// Interface is the static IPv4 configuration of one network interface,
// selected by its MAC address.
type Interface struct {
	// MAC selects the interface, e.g. "52:54:00:12:34:56".
	MAC string `json:"mac"`
	// Address is the interface address with its prefix length, e.g.
	// "10.77.0.10/24".
	Address string `json:"address"`
	// Gateway is the default route's next hop; empty means no default route.
	Gateway string `json:"gateway,omitempty"`
	// DNS lists name servers for /etc/resolv.conf.
	DNS []string `json:"dns,omitempty"`
}

// ImageRef names an image and the digest of its manifest.
type ImageRef struct {
	// Name is the image's name in the head's store.
	Name string `json:"name"`
	// Digest is the manifest digest, "sha256:<hex>".
	Digest string `json:"digest"`
	// ContentDigest is the content digest the image records in ImageIDPath.
	ContentDigest string `json:"contentDigest"`
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node: empty"))
	}
	if !strings.HasPrefix(c.HeadURL, "http://") && !strings.HasPrefix(c.HeadURL, "https://") {
		errs = append(errs, fmt.Errorf("headURL: %q is not an http(s) URL", c.HeadURL))
	}
	for i, p := range c.Peers {
		if !strings.HasPrefix(p, "http://") && !strings.HasPrefix(p, "https://") {
			errs = append(errs, fmt.Errorf("peers[%d]: %q is not an http(s) URL", i, p))
		}
	}
	if c.Token == "" {
		errs = append(errs, errors.New("token: empty"))
	}
	if _, err := netip.ParsePrefix(c.Interface.Address); err != nil {
		errs = append(errs, fmt.Errorf("interface.address: %w", err))
	}
	if c.Interface.MAC == "" {
		errs = append(errs, errors.New("interface.mac: empty"))
	}
	if c.Interface.Gateway != "" {
		if _, err := netip.ParseAddr(c.Interface.Gateway); err != nil {
			errs = append(errs, fmt.Errorf("interface.gateway: %w", err))
		}
	}
	for i, d := range c.Interface.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			errs = append(errs, fmt.Errorf("interface.dns[%d]: %w", i, err))
		}
	}
	if err := c.Root.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("root: %w", err))
	}
	return errors.Join(errs...)
}

// HostnameOrNode returns Hostname, or Node when Hostname is empty.
func (c Config) HostnameOrNode() string {
	if c.Hostname != "" {
		return c.Hostname
	}
	return c.Node
}

// URL returns the absolute URL of a node API route such as HeartbeatPath,
// with "{node}" replaced by c.Node.
func (c Config) URL(route string) string {
	return strings.TrimRight(c.HeadURL, "/") + strings.ReplaceAll(route, "{node}", c.Node)
}

// Heads returns the heads the node may call, in the order to try them:
// HeadURL, then each of Peers not already listed, without trailing
// slashes.
func (c Config) Heads() []string {
	out := make([]string, 0, 1+len(c.Peers))
	for _, u := range append([]string{c.HeadURL}, c.Peers...) {
		u = strings.TrimRight(u, "/")
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// OnHead returns c calling head first: HeadURL is head, and Peers the
// other heads of Heads in their order (the one HeadURL was included).
// The agent daemon moves to a peer so when its head stops answering.
func (c Config) OnHead(head string) Config {
	head = strings.TrimRight(head, "/")
	var peers []string
	for _, u := range c.Heads() {
		if u != head {
			peers = append(peers, u)
		}
	}
	c.HeadURL, c.Peers = head, peers
	return c
}

// ReadConfig reads and validates the node configuration at ConfigPath in
// root.
func ReadConfig(root fs.FS) (Config, error) {
	b, err := fs.ReadFile(root, ConfigPath)
	if err != nil {
		return Config{}, fmt.Errorf("read node config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig decodes and validates a node configuration. Unknown fields
// are errors.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("decode node config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("invalid node config: %w", err)
	}
	return c, nil
}

// State is what the agent says about the node.
type State string

// The states an agent reports.
const (
	// StateReady means init finished: modules loaded, network up.
	StateReady State = "ready"
	// StateFailed means a boot step failed; Report.Error says which.
	StateFailed State = "failed"
)

// Report is what the agent says about the node's boot: the body of the
// agent daemon's POST to RegisterPath.
type Report struct {
	// State is the node's state.
	State State `json:"state"`
	// Error is the failed step and its error, when State is StateFailed.
	Error string `json:"error,omitempty"`
	// Warnings are problems that failed no step, e.g. the head's clock
	// could not be read at boot.
	Warnings []string `json:"warnings,omitempty"`
	// ContentDigest is read from ImageIDPath in the node's root: the image
	// the node actually runs. Empty when the image has no such file.
	ContentDigest string `json:"contentDigest"`
	// Kernel is the running kernel's release (uname -r).
	Kernel string `json:"kernel"`
	// MemTotalBytes is the node's RAM (MemTotal from /proc/meminfo).
	MemTotalBytes int64 `json:"memTotalBytes"`
	// UptimeSeconds is the node's uptime when the report was made.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// Steps are the agent's boot steps with the uptime (seconds) at which
	// each finished, in order: e.g. "mounts", "modules", "network".
	Steps []Step `json:"steps,omitempty"`
	// CPUs is the number of CPUs the kernel brought online.
	CPUs int `json:"cpus,omitempty"`
	// Root is the root file system's mode and the RAM it takes.
	Root *RootUsage `json:"root,omitempty"`
	// Boot are the boot's timings as the node measured them.
	Boot *BootTimes `json:"boot,omitempty"`
	// Init names PID 1 after the agent's init handed over: "systemd" (or
	// the image's init's name) or "ramboot-agent" when the agent stayed.
	Init string `json:"init,omitempty"`
	// AgentVersion is the agent's version string.
	AgentVersion string `json:"agentVersion,omitempty"`
	// OverlayGeneration is the generation of the overlay the node applied.
	OverlayGeneration string `json:"overlayGeneration,omitempty"`
}

// Step is one timed boot step on the node.
type Step struct {
	// Name names the step.
	Name string `json:"name"`
	// UptimeSeconds is the node's uptime when the step finished.
	UptimeSeconds float64 `json:"uptimeSeconds"`
}
