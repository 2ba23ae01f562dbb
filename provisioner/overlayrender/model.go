package overlayrender

import (
	"fmt"
	"io/fs"
	"net/netip"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/accounts"
)

// Cluster is everything every node's overlay may show about the cluster.
// The head builds one from its inventory and configuration and hands it to
// Renderer.Prepare; templates see it as .Cluster.
type Cluster struct {
	// Name names the cluster, e.g. "hpc1"; optional, shown in comments.
	Name string
	// Domain is the cluster's DNS domain, e.g. "cluster.local"; optional.
	// When set, /etc/hosts and known_hosts list "n001.cluster.local"
	// besides "n001", and network configurations search it.
	Domain string
	// Head is the head node.
	Head Head
	// Nodes are every node of the cluster, in the order /etc/hosts and
	// known_hosts list them.
	Nodes []Node
	// Values are site values from configuration, for templates
	// (.Values.key, where a node's own Values win).
	Values map[string]any
	// AuthorizedKeys is root's authorized_keys on every node, e.g. the
	// head's /root/.ssh/authorized_keys; empty means none is written.
	AuthorizedKeys []byte
	// ModTime is the modification time of every file in the overlays; the
	// zero time means the Unix epoch, so that overlays are reproducible.
	ModTime time.Time
}

// Head is the head node as nodes see it.
type Head struct {
	// Name is the head's host name in /etc/hosts, e.g. "head"; empty leaves
	// the head out of /etc/hosts.
	Name string
	// Addresses are the head's addresses on the nodes' networks.
	Addresses []netip.Addr
	// URL is the base URL of the head's HTTP server, e.g.
	// "http://10.0.0.1"; it becomes the agent's headURL.
	URL string
	// Peers, when set, returns the base URLs of the other live heads
	// serving the cluster (several heads on one shared store); it is
	// asked at each render, so a node's overlay names the heads alive
	// when it booted. They become the agent's peers, the heads it calls
	// when its own does not answer, in an order rotated by the node's
	// name so that the nodes of a dead head spread over the others.
	// They are not part of the overlay's generation: a head coming or
	// going changes no node's content.
	Peers func() []string
}

// Node is one node, with every value resolved from its profiles and the
// configuration (the head's boot plan). Templates see it as .Node.
type Node struct {
	// Name is the node's inventory name, e.g. "n001".
	Name string
	// Hostname is the host name to set; empty means Name.
	Hostname string
	// Profiles is the node's profile chain, most general first: templates
	// of a later profile replace those of an earlier one at the same path.
	Profiles []string
	// Interfaces are the node's network interfaces; the first is the
	// provisioning interface, the one the agent configures at boot.
	Interfaces []Interface
	// Tags are the node's tags (key/value).
	Tags map[string]string
	// Values are the node's values from its profile chain and its own
	// settings, for templates; they win over Cluster.Values.
	Values map[string]any
	// Image is the image the node boots.
	Image Image
	// Modules are kernel modules the agent loads at boot, in order.
	Modules []string
	// Network is the image's network stack the configuration is written
	// for; empty means Networkd.
	Network NetworkStack
	// Root is how the agent sets up the node's root file system (mode,
	// size cap), written into the agent's configuration.
	Root overlay.Root
	// ConsoleShell gives a root shell on the console of a node whose agent
	// stays PID 1, written into the agent's configuration.
	ConsoleShell bool
}

// HostnameOrName returns Hostname, or Name when Hostname is empty.
func (n *Node) HostnameOrName() string {
	if n.Hostname != "" {
		return n.Hostname
	}
	return n.Name
}

// Interface is one network interface of a node.
type Interface struct {
	// Name is the interface's name on the node, e.g. "eth0" or "ib0";
	// optional (interfaces are matched by MAC). It names the interface's
	// configuration files and its /etc/hosts alias "<node>-<name>".
	Name string
	// MAC is the interface's hardware address, e.g. "52:54:00:12:34:56".
	MAC string
	// Address is the interface's address and prefix, e.g. 10.0.0.11/24.
	Address netip.Prefix
	// Gateway is the default route's next hop; the zero Addr means none.
	Gateway netip.Addr
	// DNS are name servers.
	DNS []netip.Addr
	// MTU is the interface's MTU; 0 leaves the default.
	MTU int
}

// Image is the image a node boots, with what the renderer needs from it.
type Image struct {
	// Name is the image's name in the head's store.
	Name string
	// Digest is the image's manifest digest, "sha256:<hex>". It keys the
	// renderer's per-image work (accounts), so it must change when the
	// image does.
	Digest string
	// ContentDigest is the content digest the image records in
	// etc/ramboot/image-id.
	ContentDigest string
	// Accounts are the image's own etc/passwd, group, shadow and gshadow;
	// nil means unknown: no accounts are merged, and owners in attribute
	// files resolve only to "root".
	Accounts *accounts.Files
	// Dirs are the image's directories that overlay files go into, by
	// path ("etc/ssh"), with their mode and owner. The kernel applies a
	// directory entry's mode and owner to a directory that already exists,
	// so the overlay repeats the image's own; a directory missing here gets
	// the defaults (see the package documentation).
	Dirs map[string]Attr
}

// Attr is a file's mode and owner.
type Attr struct {
	// Mode holds the permission bits, with fs.ModeSetuid, fs.ModeSetgid
	// and fs.ModeSticky.
	Mode fs.FileMode
	// UID and GID are the numeric owner and group.
	UID, GID int
}

// NetworkStack names an image's network configuration system.
type NetworkStack string

// The network stacks the renderer writes configuration for.
const (
	// Networkd writes a systemd-networkd .network file per interface and
	// enables systemd-networkd (Debian, Ubuntu, most systemd images).
	Networkd NetworkStack = "networkd"
	// NetworkManager writes a NetworkManager keyfile per interface (Rocky,
	// Alma, RHEL and other EL images).
	NetworkManager NetworkStack = "networkmanager"
	// Ifupdown writes /etc/network/interfaces.d/ramboot (Debian without
	// systemd-networkd).
	Ifupdown NetworkStack = "ifupdown"
	// NoNetwork writes nothing: the agent's own configuration of the
	// provisioning interface is all the node gets.
	NoNetwork NetworkStack = "none"
)

// ParseNetworkStack checks a configuration's network.stack value; empty
// means Networkd.
func ParseNetworkStack(s string) (NetworkStack, error) {
	switch st := NetworkStack(s); st {
	case "":
		return Networkd, nil
	case Networkd, NetworkManager, Ifupdown, NoNetwork:
		return st, nil
	}
	return "", fmt.Errorf("network stack %q: want networkd, networkmanager, ifupdown or none", s)
}

// Data is what a template sees as ".". Its fields point into the Cluster
// given to Prepare; templates must not change them.
type Data struct {
	// Node is the node being rendered.
	Node *Node
	// Cluster is the whole cluster: .Cluster.Nodes for every node.
	Cluster *Cluster
	// Head is .Cluster.Head.
	Head *Head
	// Image is .Node.Image.
	Image *Image
	// Interface is the node's first (provisioning) interface; the zero
	// Interface when it has none.
	Interface Interface
	// Hostname is the node's host name (Hostname, or Name).
	Hostname string
	// FQDN is Hostname.Domain, or Hostname without a domain.
	FQDN string
	// Tags are .Node.Tags.
	Tags map[string]string
	// Values are .Cluster.Values overlaid with .Node.Values.
	Values map[string]any
}
