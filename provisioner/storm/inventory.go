package storm

import (
	"context"
	"net"
	"net/netip"
)

// NodeSpec is one simulated node as the inventory holds it.
type NodeSpec struct {
	// Name is its inventory name.
	Name string
	// MAC is its provisioning MAC.
	MAC net.HardwareAddr
	// IP is its reserved address.
	IP netip.Addr
	// Image is its image; empty = the head's default.
	Image string
}

// Inventory creates and removes the storm's nodes on the heads, through
// the admin API. With several heads sharing one store, one head's API is
// enough.
type Inventory interface {
	// Add creates the nodes; it fails, creating none it can avoid, if one
	// exists already.
	Add(ctx context.Context, nodes []NodeSpec) error
	// Remove deletes the nodes, ignoring those that do not exist.
	Remove(ctx context.Context, names []string) error
	// States returns the boot state the head records for each node
	// ("booted", "booting", ...).
	States(ctx context.Context, names []string) (map[string]string, error)
}
