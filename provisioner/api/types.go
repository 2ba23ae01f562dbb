package api

import (
	"time"
)

// The admin API's wire types. They are the API's own: the state package's
// storage types never reach a client, and the CLI and apiclient import
// only this package. The same types are the YAML of `ramboot apply` and
// `ramboot export`.

// Settings are what a node and a profile may set; a zero field inherits.
type Settings struct {
	// Image is the image reference the node boots.
	Image string `json:"image,omitempty" yaml:"image,omitempty"`
	// KernelArgs replaces the inherited kernel arguments; null inherits,
	// "" sets none.
	KernelArgs *string `json:"kernelArgs,omitempty" yaml:"kernel_args,omitempty"`
	// Modules replaces the inherited kernel modules; null (absent)
	// inherits, [] loads none.
	Modules *[]string `json:"modules,omitempty" yaml:"modules,omitempty"`
	// BootFile is the iPXE binary firmware gets instead of its
	// architecture's.
	BootFile string `json:"bootFile,omitempty" yaml:"boot_file,omitempty"`
	// Root is the RAM root's mode and size cap.
	Root *Root `json:"root,omitempty" yaml:"root,omitempty"`
	// Network is the image's network stack (networkd, networkmanager,
	// ifupdown, none).
	Network string `json:"network,omitempty" yaml:"network,omitempty"`
	// Tags are key/values.
	Tags map[string]string `json:"tags,omitempty" yaml:"tags,omitempty"`
	// Values are key/values for overlay templates.
	Values map[string]string `json:"values,omitempty" yaml:"values,omitempty"`
}

// Root is the RAM root's settings.
type Root struct {
	// Mode is tmpfs (the image unpacked) or compressed (the image's
	// squashfs kept in RAM under a writable upper).
	Mode string `json:"mode,omitempty" yaml:"mode,omitempty"`
	// Size caps it (in the compressed mode, its upper): bytes with a suffix (16G) or a percentage of RAM (50%).
	Size string `json:"size,omitempty" yaml:"size,omitempty"`
}

// Interface is one network interface of a node.
type Interface struct {
	// Name is its name on the node (eth0, ib0); optional.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// MAC is its hardware address.
	MAC string `json:"mac,omitempty" yaml:"mac,omitempty"`
	// ClientID is its DHCP client identifier (InfiniBand), hex.
	ClientID string `json:"clientId,omitempty" yaml:"client_id,omitempty"`
	// IP is its reserved IPv4 address.
	IP string `json:"ip,omitempty" yaml:"ip,omitempty"`
	// Gateway overrides its subnet's gateway.
	Gateway string `json:"gateway,omitempty" yaml:"gateway,omitempty"`
	// MTU is its MTU; 0 leaves the default.
	MTU int `json:"mtu,omitempty" yaml:"mtu,omitempty"`
}

// NodeSpec is one inventory node.
type NodeSpec struct {
	// Name is its unique name.
	Name string `json:"name" yaml:"name"`
	// Hostname is its host name; empty means Name.
	Hostname string `json:"hostname,omitempty" yaml:"hostname,omitempty"`
	// Profiles are the profiles it inherits, in order.
	Profiles []string `json:"profiles,omitempty" yaml:"profiles,omitempty"`
	// Interfaces are its interfaces; the first is the provisioning one.
	Interfaces []Interface `json:"interfaces" yaml:"interfaces"`
	// Settings are its own settings.
	Settings `yaml:",inline"`
	// Created is when it was added (not in YAML).
	Created time.Time `json:"created,omitzero" yaml:"-"`
}

// Profile is a named set of settings nodes and profiles inherit.
type Profile struct {
	// Name is its unique name.
	Name string `json:"name" yaml:"name"`
	// Inherits are its parent profiles, in order.
	Inherits []string `json:"inherits,omitempty" yaml:"inherits,omitempty"`
	// Settings are its settings.
	Settings `yaml:",inline"`
}

// Event is one step of a boot, as the head saw it.
type Event struct {
	// Time is when the head saw it.
	Time time.Time `json:"time"`
	// Step names it: dhcp-offer, dhcp-ack, dhcp-ignored, dhcp-lease, tftp,
	// script, kernel, image, agent, overlay, ready, failed, stalled.
	Step string `json:"step"`
	// Detail says more.
	Detail string `json:"detail,omitempty"`
}

// Report is what the head recorded from a node agent's report.
type Report struct {
	// Received is when the head accepted it.
	Received time.Time `json:"received"`
	// State is ready or failed.
	State string `json:"state"`
	// Error is the agent's error for a failed boot.
	Error string `json:"error,omitempty"`
	// ImageName is the image the node runs.
	ImageName string `json:"imageName"`
	// ImageDigest is its manifest digest; empty when its content matches
	// no image.
	ImageDigest string `json:"imageDigest"`
	// ContentDigest is what the node read from its root.
	ContentDigest string `json:"contentDigest"`
	// Kernel is the node's kernel release.
	Kernel string `json:"kernel"`
	// MemTotalBytes is its RAM.
	MemTotalBytes int64 `json:"memTotalBytes"`
	// UptimeSeconds is its uptime at the report.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// The agent daemon's registration adds what follows.
	Registration
}

// Boot is one boot of a node.
type Boot struct {
	// ID numbers the node's boots from 1; 0: none seen yet.
	ID int `json:"boot"`
	// Started is when its first event arrived.
	Started time.Time `json:"started,omitzero"`
	// State is new, booting, stalled, booted or failed.
	State string `json:"state"`
	// Timeline lists its events in order.
	Timeline []Event `json:"timeline"`
	// Report is the agent's report, if any.
	Report *Report `json:"report,omitempty"`
}

// Pin is the image digest a node boots until an admin moves it.
type Pin struct {
	// Ref is the reference it was resolved from.
	Ref string `json:"ref"`
	// Digest is the manifest digest.
	Digest string `json:"digest"`
	// Boot is the boot it was first given in.
	Boot int `json:"boot,omitempty"`
}

// Status is a node's boot status: its current boot, and the earlier ones
// kept.
type Status struct {
	Boot
	// Boots counts the boots seen.
	Boots int `json:"boots"`
	// History lists the earlier boots kept, newest first.
	History []int `json:"history,omitempty"`
	// Pin is the image it is pinned to, if any.
	Pin *Pin `json:"pin,omitempty"`
}

// PlanInterface is one interface of a node's plan.
type PlanInterface struct {
	// Name, MAC and ClientID identify it.
	Name     string `json:"name,omitempty"`
	MAC      string `json:"mac,omitempty"`
	ClientID string `json:"clientId,omitempty"`
	// Address is its address with its prefix length.
	Address string `json:"address,omitempty"`
	// Gateway is its default router.
	Gateway string `json:"gateway,omitempty"`
	// DNS are its name servers.
	DNS []string `json:"dns,omitempty"`
	// MTU is its MTU.
	MTU int `json:"mtu,omitempty"`
}

// Plan is a node's effective boot plan (docs/plan.md), with where each
// value came from.
type Plan struct {
	// Hostname is its host name.
	Hostname string `json:"hostname"`
	// Profiles is its profile chain, most general first.
	Profiles []string `json:"profiles,omitempty"`
	// Interfaces are its interfaces with their effective settings.
	Interfaces []PlanInterface `json:"interfaces"`
	// Image is the image reference it boots.
	Image string `json:"image"`
	// Digest is the digest it is pinned to; empty until its next script.
	Digest string `json:"digest,omitempty"`
	// KernelArgs are its kernel arguments.
	KernelArgs string `json:"kernelArgs"`
	// Modules are its kernel modules.
	Modules []string `json:"modules"`
	// BootFile is its iPXE binary override.
	BootFile string `json:"bootFile,omitempty"`
	// Root is its root setting.
	Root Root `json:"root"`
	// Network is its image's network stack.
	Network string `json:"network"`
	// Tags and Values are merged from its profiles and itself.
	Tags   map[string]string `json:"tags,omitempty"`
	Values map[string]string `json:"values,omitempty"`
	// Sources maps each value to where it came from: node, profile NAME,
	// config KEY, subnet ...
	Sources map[string]string `json:"sources"`
}

// NodeStatus is a node with its boot status and, from GET of one node,
// its plan (or the reason it has none).
type NodeStatus struct {
	NodeSpec
	// Status is its boot status.
	Status Status `json:"status"`
	// Agent is its agent daemon's last registration or heartbeat since the
	// head started, if any.
	Agent *AgentStatus `json:"agent,omitempty"`
	// Plan is its effective plan (GET /api/v1/nodes/{name} only).
	Plan *Plan `json:"plan,omitempty"`
	// PlanError says why it has no plan.
	PlanError string `json:"planError,omitempty"`
}

// NodeRow is one line of a node listing (GET /api/v1/nodes?view=rows):
// what `ramboot node list` prints, a tenth of a NodeStatus's size.
type NodeRow struct {
	// Name is the node's name.
	Name string `json:"name"`
	// IP and MAC are its first interface's; ClientID when it has no MAC.
	IP       string `json:"ip,omitempty"`
	MAC      string `json:"mac,omitempty"`
	ClientID string `json:"clientId,omitempty"`
	// Profiles are its profiles.
	Profiles []string `json:"profiles,omitempty"`
	// Image is the reference it is pinned to ("ref@digest"), or its own
	// image setting before its first boot.
	Image string `json:"image,omitempty"`
	// State is its current boot's state.
	State string `json:"state"`
	// Boots counts its boots.
	Boots int `json:"boots"`
	// Last is its current boot's last event, if any.
	Last *Event `json:"last,omitempty"`
}

// Registration is what the agent daemon's registration adds to a Report.
type Registration struct {
	// Warnings are problems that failed no boot step.
	Warnings []string `json:"warnings,omitempty"`
	// Steps are the agent's boot steps with the node's uptime at each end.
	Steps []AgentStep `json:"steps,omitempty"`
	// CPUs is the number of CPUs online.
	CPUs int `json:"cpus,omitempty"`
	// RootMode is the root's mode (tmpfs, compressed, or rootfs when it
	// could not move); RootSizeBytes its cap and RootUsedBytes the RAM its
	// files take (in the compressed mode, the writable upper's).
	RootMode      string `json:"rootMode,omitempty"`
	RootSizeBytes int64  `json:"rootSizeBytes,omitempty"`
	RootUsedBytes int64  `json:"rootUsedBytes,omitempty"`
	// RootLowerBytes is the RAM of the compressed image under a
	// compressed root (0 in the tmpfs mode).
	RootLowerBytes int64 `json:"rootLowerBytes,omitempty"`
	// KernelStart is the wall-clock time the node's uptime counts from.
	KernelStart time.Time `json:"kernelStart,omitzero"`
	// InitSeconds, HandoverSeconds and ReadySeconds are the node's uptime
	// when the agent started as /init, handed over, and the node was ready.
	InitSeconds     float64 `json:"initSeconds,omitempty"`
	HandoverSeconds float64 `json:"handoverSeconds,omitempty"`
	ReadySeconds    float64 `json:"readySeconds,omitempty"`
	// Init is PID 1 after the hand-over.
	Init string `json:"init,omitempty"`
	// AgentVersion is the agent's version.
	AgentVersion string `json:"agentVersion,omitempty"`
}

// AgentStep is one of the agent's boot steps on the node.
type AgentStep struct {
	// Name is the step's name.
	Name string `json:"name"`
	// UptimeSeconds is the node's uptime when it finished.
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// AgentStatus is the agent daemon's last registration or heartbeat, which
// the head keeps in memory only.
type AgentStatus struct {
	// LastSeen is when the head accepted it.
	LastSeen time.Time `json:"lastSeen"`
	// Remote is the address (ip:port) it came from.
	Remote string `json:"remote"`
	// PrivilegedPort is true when that port is below 1024.
	PrivilegedPort bool `json:"privilegedPort"`
	// Heartbeats counts the heartbeats since the head started.
	Heartbeats int64 `json:"heartbeats"`
	// UptimeSeconds is the node's uptime.
	UptimeSeconds float64 `json:"uptimeSeconds"`
	// Load1 is the one-minute load average.
	Load1 float64 `json:"load1"`
	// MemAvailableBytes is the available RAM.
	MemAvailableBytes int64 `json:"memAvailableBytes"`
	// RootUsedBytes and RootSizeBytes are the root's RAM and its cap (in
	// the compressed mode, the writable upper's), RootLowerBytes the
	// compressed image's under a compressed root.
	RootUsedBytes  int64 `json:"rootUsedBytes"`
	RootSizeBytes  int64 `json:"rootSizeBytes"`
	RootLowerBytes int64 `json:"rootLowerBytes,omitempty"`
	// SystemState is the node's init system's state.
	SystemState string `json:"systemState,omitempty"`
	// ReadySeconds is the node's uptime when it became ready.
	ReadySeconds float64 `json:"readySeconds,omitempty"`
	// OverlayGeneration is the overlay the node has applied.
	OverlayGeneration string `json:"overlayGeneration,omitempty"`
	// AgentRSSBytes is the agent daemon's resident memory.
	AgentRSSBytes int64 `json:"agentRSSBytes,omitempty"`
	// Workload is the node's jobs and containers.
	Workload *Workload `json:"workload,omitempty"`
}

// Workload is a node's jobs and containers, as its last heartbeat listed
// them.
type Workload struct {
	Jobs              []WorkloadJob       `json:"jobs"`
	Containers        []WorkloadContainer `json:"containers"`
	OmittedJobs       int                 `json:"omittedJobs,omitempty"`
	OmittedContainers int                 `json:"omittedContainers,omitempty"`
}

// WorkloadJob is one scheduler job on a node.
type WorkloadJob struct {
	ID          string    `json:"id"`
	User        string    `json:"user"`
	UID         int       `json:"uid"`
	MemoryBytes int64     `json:"memoryBytes,omitempty"`
	Registered  time.Time `json:"registered,omitzero"`
}

// WorkloadContainer is one container on a node.
type WorkloadContainer struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Image    string    `json:"image"`
	Job      string    `json:"job,omitempty"`
	UID      int       `json:"uid"`
	State    string    `json:"state"`
	ExitCode int       `json:"exitCode"`
	Started  time.Time `json:"started,omitzero"`
}

// Discovered is a machine the DHCP server saw that the inventory does not
// know (GET /api/v1/discovered), for an admin to adopt.
type Discovered struct {
	// Key identifies it: "id:HEX" for a DHCP client identifier, else
	// "hw1:MAC".
	Key string `json:"key"`
	// MAC is its hardware address; "" for InfiniBand.
	MAC string `json:"mac,omitempty"`
	// ClientID is its DHCP client identifier (option 61), hex.
	ClientID string `json:"clientId,omitempty"`
	// HWType is its hardware type: 1 Ethernet, 32 InfiniBand.
	HWType int `json:"hwType"`
	// Stage is what its last request showed it to be: firmware,
	// http-boot, ipxe or os.
	Stage string `json:"stage"`
	// Arch is its architecture (bios, efi-x64, ...), "" when it sent none.
	Arch string `json:"arch,omitempty"`
	// VendorClass, UserClass and Hostname are DHCP options 60, 77 and 12.
	VendorClass string   `json:"vendorClass,omitempty"`
	UserClass   []string `json:"userClass,omitempty"`
	Hostname    string   `json:"hostname,omitempty"`
	// Subnet and Relay are where it asked from; CircuitID and RemoteID the
	// relay agent's option 82 (typically switch port and switch).
	Subnet    string `json:"subnet,omitempty"`
	Relay     string `json:"relay,omitempty"`
	CircuitID string `json:"circuitId,omitempty"`
	RemoteID  string `json:"remoteId,omitempty"`
	// IP is the discovery address it holds or last held.
	IP string `json:"ip,omitempty"`
	// FirstSeen and LastSeen are its first and latest requests.
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

// AdoptRequest is the body of POST /api/v1/discovered/adopt: it adds a
// discovered machine as a node, its first interface the MAC or client id
// the machine was seen with, and forgets it from the discovery pool.
type AdoptRequest struct {
	// ID is the machine's MAC, client id or key.
	ID string `json:"id"`
	// Name is the new node's name.
	Name string `json:"name"`
	// IP is the address reserved for it.
	IP string `json:"ip"`
	// Interface names the interface on the node (eth0, ib0); optional.
	Interface string `json:"interface,omitempty"`
	// Hostname is the host name, when not the node's name.
	Hostname string `json:"hostname,omitempty"`
	// Profiles are its profiles, in order.
	Profiles []string `json:"profiles,omitempty"`
	// Settings are its own settings.
	Settings
}

// BootEvents is GET /api/v1/boot/events: what the head's DHCP and TFTP
// servers did with one client's packets, newest last, kept in memory (the
// last 32 per client, for the 8192 clients seen last), known to the
// inventory or not.
type BootEvents struct {
	// Client is the MAC or client id asked about.
	Client string `json:"client"`
	// Node is the inventory node it is, "" when none.
	Node string `json:"node,omitempty"`
	// Events are its events, oldest first.
	Events []BootEvent `json:"events"`
}

// BootEvent is one packet or transfer of a client.
type BootEvent struct {
	// Time is when it was handled.
	Time time.Time `json:"time"`
	// Protocol is dhcp or tftp.
	Protocol string `json:"protocol"`
	// Request is the DHCP message type (discover, request, ...) or the
	// TFTP file read; Port the server port it came to (67, 4011, 69).
	Request string `json:"request"`
	Port    int    `json:"port,omitempty"`
	// Reply is the DHCP reply (offer, ack, nak), "" when none.
	Reply string `json:"reply,omitempty"`
	// Proxy marks a reply without an address (proxy mode, port 4011).
	Proxy bool `json:"proxy,omitempty"`
	// Stage is what the client showed itself to be: firmware, http-boot,
	// ipxe or os; Arch its architecture; VendorClass option 60.
	Stage       string `json:"stage,omitempty"`
	Arch        string `json:"arch,omitempty"`
	VendorClass string `json:"vendorClass,omitempty"`
	// Relay, Subnet and Server are where the request came from and the
	// server address that answered.
	Relay  string `json:"relay,omitempty"`
	Subnet string `json:"subnet,omitempty"`
	Server string `json:"server,omitempty"`
	// IP is the address offered or acknowledged (DHCP), or the client's
	// (TFTP); Discovery marks one from the discovery pool.
	IP        string `json:"ip,omitempty"`
	Discovery bool   `json:"discovery,omitempty"`
	// BootFile is the boot file or URL sent.
	BootFile string `json:"bootFile,omitempty"`
	// Ignored says why no reply was sent, and Reason is its short name
	// (the label of ramboot_dhcp_ignored_total); for TFTP, why the
	// transfer failed.
	Ignored string `json:"ignored,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Detail is the TFTP transfer's size, time and block size.
	Detail string `json:"detail,omitempty"`
}
