package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ramboot/ramboot/pxe"
)

// Reservation is what the inventory says a known MAC gets.
type Reservation struct {
	// IP is the node's IPv4 address (yiaddr).
	IP netip.Addr
	// PrefixLen is the length of the subnet prefix, 1 to 32 (option 1).
	PrefixLen int
	// Router is the default gateway (option 3); the zero value sends none.
	Router netip.Addr
	// DNS lists the name servers (option 6); empty sends none.
	DNS []netip.Addr
	// Hostname is the node's host name (option 12); "" sends none.
	Hostname string
	// BootFile is a per-node network bootstrap program for firmware PXE
	// clients (file and option 67); "" means Server.BootFiles by architecture.
	BootFile string
	// ScriptURL is what an iPXE client gets as its boot file name (file and
	// option 67): the HTTP URL of the node's iPXE script.
	ScriptURL string
}

// Validate reports every problem that would make the reservation unusable in
// a reply: a missing or non-IPv4 address, a prefix length outside 1-32, or a
// non-IPv4 router or name server. IPv4-mapped IPv6 addresses are accepted.
func (r Reservation) Validate() error {
	var errs []error
	if !r.IP.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("address %q is not IPv4", r.IP))
	}
	if r.PrefixLen < 1 || r.PrefixLen > 32 {
		errs = append(errs, fmt.Errorf("prefix length %d is not in 1-32", r.PrefixLen))
	}
	if r.Router.IsValid() && !r.Router.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("router %s is not IPv4", r.Router))
	}
	for _, d := range r.DNS {
		if !d.Unmap().Is4() {
			errs = append(errs, fmt.Errorf("name server %q is not IPv4", d))
		}
	}
	return errors.Join(errs...)
}

// ErrUnknown is returned by an Inventory for a MAC it does not know; the
// server ignores such clients.
var ErrUnknown = errors.New("unknown client")

// Inventory answers which reservation a MAC has. It returns an error wrapping
// ErrUnknown for a MAC it does not know. Reservation is called concurrently
// from the server's per-packet goroutines and should honour ctx.
type Inventory interface {
	Reservation(ctx context.Context, mac net.HardwareAddr) (Reservation, error)
}

// InventoryFunc adapts a function to Inventory.
type InventoryFunc func(ctx context.Context, mac net.HardwareAddr) (Reservation, error)

// Reservation calls f(ctx, mac).
func (f InventoryFunc) Reservation(ctx context.Context, mac net.HardwareAddr) (Reservation, error) {
	return f(ctx, mac)
}

// Event is one handled (or ignored) packet, for the caller's per-node boot
// timeline.
type Event struct {
	// MAC is the client hardware address (chaddr).
	MAC net.HardwareAddr
	// Request is the message type: "discover", "request", "inform",
	// "release", "decline", "bootp" when option 53 is missing, or
	// "type N" for anything else.
	Request string
	// Reply is "offer", "ack", "nak", or "" when nothing was sent.
	Reply string
	// IPXE reports that the client is iPXE (option 175 present or user class
	// "iPXE").
	IPXE bool
	// Arch is the client architecture from option 93 (ArchBIOS when absent).
	Arch pxe.Arch
	// HasArch reports that the request carried option 93.
	HasArch bool
	// NetBoot reports a network-boot client: firmware PXE or HTTP boot
	// (option 93, or vendor class PXEClient or HTTPClient) or iPXE. A
	// client that is none of these (a node's own OS renewing its address)
	// gets its address and no boot file.
	NetBoot bool
	// IP is the address offered or acknowledged; for a release or decline,
	// the address the client gave up.
	IP netip.Addr
	// BootFile is the file/option 67 sent: an NBP name or a script URL.
	BootFile string
	// Ignored says why nothing was sent, such as "unknown MAC" or
	// "not for us (server id 10.0.0.2)"; "" when a reply was sent or the
	// message needs none (release, decline).
	Ignored string
	// Time is when the packet was handled.
	Time time.Time

	// reason is the low-cardinality label for ramboot_dhcp_ignored_total.
	reason string
}
