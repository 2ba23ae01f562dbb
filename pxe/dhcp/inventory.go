package dhcp

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe"
)

// Client is one client interface as a request shows it, and where the
// request came from: what the server asks the Inventory about.
type Client struct {
	// HWType is the hardware type (htype): iana.HWTypeEthernet, or
	// HWTypeInfiniBand for IPoIB clients.
	HWType iana.HWType
	// MAC is the client hardware address (chaddr). It is empty for
	// InfiniBand clients (RFC 4390: 20-byte IPoIB addresses do not fit
	// chaddr), which are known by ClientID.
	MAC net.HardwareAddr
	// ClientID is option 61 as sent, nil when absent. For InfiniBand it is
	// type 255, a 4-byte IAID and a DUID, whose last 8 bytes are usually
	// the port GUID (see GUID).
	ClientID []byte
	// Relay is the relay agent's address (giaddr); zero for a request from
	// the server's own link.
	Relay netip.Addr
	// Subnet is the subnet the request came from: the configured subnet
	// holding Relay, or the one on the interface the request came in on;
	// zero when the server cannot tell (no Subnets configured and no
	// interface address known).
	Subnet netip.Prefix
	// Server is this server's address on the client's path: server
	// identifier, siaddr and the address in the URLs the client is given.
	// An Inventory builds the node's script URL with it, so that a node
	// behind each interface of a multi-homed head fetches from the address
	// it can reach.
	Server netip.Addr
	// Stage is what the client is: firmware, HTTP boot, iPXE or an
	// operating system.
	Stage Stage
	// Arch is the client architecture (option 93, or the vendor class);
	// HasArch says whether the request carried one.
	Arch    pxe.Arch
	HasArch bool
	// VendorClass is option 60 as sent.
	VendorClass string
}

// HWTypeInfiniBand is the hardware type of IPoIB clients (RFC 4390).
const HWTypeInfiniBand iana.HWType = 32

// GUID returns the last 8 bytes of an InfiniBand client identifier, the
// port GUID that IPoIB clients put there (RFC 4390 with RFC 4361 DUIDs, as
// dhclient and NetworkManager do), as a colon-separated hardware address,
// and false when the client identifier is too short.
func (c Client) GUID() (net.HardwareAddr, bool) {
	if len(c.ClientID) < 9 {
		return nil, false
	}
	return net.HardwareAddr(c.ClientID[len(c.ClientID)-8:]), true
}

// Key is the client's identity: option 61 when present (RFC 2131 section
// 4.2), else the hardware type and address, as text.
func (c Client) Key() string {
	if len(c.ClientID) > 0 {
		return "id:" + hex.EncodeToString(c.ClientID)
	}
	return fmt.Sprintf("hw%d:%s", uint16(c.HWType), c.MAC)
}

// Reservation is what the inventory says a client interface gets.
type Reservation struct {
	// IP is the interface's IPv4 address (yiaddr). Required in reservation
	// mode; proxy mode hands out no address and ignores it.
	IP netip.Addr
	// PrefixLen is the length of the subnet prefix, 1 to 32 (option 1).
	PrefixLen int
	// Router is the default gateway (option 3); the zero value sends none.
	Router netip.Addr
	// DNS lists the name servers (option 6); empty sends none.
	DNS []netip.Addr
	// MTU is the interface MTU (option 26); zero sends none.
	MTU int
	// Hostname is the node's host name (option 12); "" sends none.
	Hostname string
	// BootFile is the node's boot-file override for firmware PXE and HTTP
	// boot clients (ipxe.efi or snponly.efi for a firmware quirk); ""
	// means the Server's BootFiles table by architecture.
	BootFile string
	// ScriptURL is what an iPXE client gets as its boot file name (file and
	// option 67): the HTTP URL of the node's iPXE script.
	ScriptURL string
}

// Validate reports every problem that would make the reservation unusable in
// a reply: a non-IPv4 address, a prefix length outside 1-32 with an
// address, a non-IPv4 router or name server, or an MTU outside 68-65535.
// IPv4-mapped IPv6 addresses are accepted. A missing address is valid here;
// the server refuses it where an address is due.
func (r Reservation) Validate() error {
	var errs []error
	if r.IP.IsValid() && !r.IP.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("address %q is not IPv4", r.IP))
	}
	if r.IP.IsValid() && (r.PrefixLen < 1 || r.PrefixLen > 32) {
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
	if r.MTU != 0 && (r.MTU < 68 || r.MTU > 65535) {
		errs = append(errs, fmt.Errorf("MTU %d is not in 68-65535", r.MTU))
	}
	return errors.Join(errs...)
}

// ErrUnknown is returned by an Inventory for a client it does not know; the
// server ignores such clients, or lends them a discovery address.
var ErrUnknown = errors.New("unknown client")

// Inventory answers which reservation a client interface has. Lookup finds
// the interface by c.MAC (Ethernet) or c.ClientID (InfiniBand, and any
// client the inventory knows by client identifier), and may use the rest
// of c (the subnet or relay the request came through, the server address
// for URLs, the client's stage and architecture). It returns an error
// wrapping ErrUnknown for a client it does not know. It is called
// concurrently from the server's workers, for every packet, so it must be
// fast (an in-memory lookup: no disk, no network) and should honour ctx.
type Inventory interface {
	Lookup(ctx context.Context, c Client) (Reservation, error)
}

// InventoryFunc adapts a function to Inventory.
type InventoryFunc func(ctx context.Context, c Client) (Reservation, error)

// Lookup calls f(ctx, c).
func (f InventoryFunc) Lookup(ctx context.Context, c Client) (Reservation, error) {
	return f(ctx, c)
}

// RequestType is the message type of a request, as Event.Request names it.
type RequestType string

// Request types.
const (
	RequestDiscover RequestType = "discover"
	RequestRequest  RequestType = "request"
	RequestInform   RequestType = "inform"
	RequestRelease  RequestType = "release"
	RequestDecline  RequestType = "decline"
	// RequestBOOTP is a message without option 53.
	RequestBOOTP RequestType = "bootp"
)

// ReplyType is the message type of a reply, as Event.Reply names it.
type ReplyType string

// Reply types; the empty ReplyType means nothing was sent.
const (
	ReplyOffer ReplyType = "offer"
	ReplyAck   ReplyType = "ack"
	ReplyNak   ReplyType = "nak"
)

// Event is one handled (or ignored) packet, for the caller's per-node boot
// timeline (for unknown clients too).
type Event struct {
	// MAC is the client hardware address (chaddr); empty for InfiniBand.
	MAC net.HardwareAddr
	// ClientID is option 61, nil when absent.
	ClientID []byte
	// Request is the message type: "discover", "request", "inform",
	// "release", "decline", "bootp" when option 53 is missing, or
	// "type N" for anything else.
	Request RequestType
	// Reply is "offer", "ack", "nak", or "" when nothing was sent.
	Reply ReplyType
	// Port is the server port the request came in on: 67 or 4011.
	Port int
	// Proxy reports a reply without an address: a proxy offer, or an
	// answer on port 4011.
	Proxy bool
	// Stage is what the client showed itself to be.
	Stage Stage
	// IPXE reports that the client is iPXE (option 175 present or user class
	// "iPXE").
	IPXE bool
	// NetBoot reports a network-boot client: firmware PXE, HTTP boot or
	// iPXE. A client that is none of these (a node's own operating system
	// renewing its address) gets its address and no boot file.
	NetBoot bool
	// Arch is the client architecture from option 93 or the vendor class
	// (ArchBIOS when absent).
	Arch pxe.Arch
	// HasArch reports that the request carried an architecture.
	HasArch bool
	// VendorClass is option 60 as sent.
	VendorClass string
	// Relay is the relay agent's address (giaddr), zero when not relayed.
	Relay netip.Addr
	// Subnet is the subnet the request was judged to come from.
	Subnet netip.Prefix
	// Server is the server address the reply carries (option 54).
	Server netip.Addr
	// IP is the address offered or acknowledged; for a release or decline,
	// the address the client gave up.
	IP netip.Addr
	// Discovery reports an address from the discovery pool, lent to a
	// client the inventory does not know.
	Discovery bool
	// BootFile is the file/option 67 sent: an NBP name, an HTTP boot URL
	// or a script URL.
	BootFile string
	// Ignored says why nothing was sent, such as "unknown MAC" or
	// "not for us (server id 10.0.0.2)"; "" when a reply was sent or the
	// message needs none (release, decline).
	Ignored string
	// Time is when the packet was handled.
	Time time.Time

	// reason is the low-cardinality label for ramboot_dhcp_ignored_total.
	reason ignoreReason
}

// Reason returns the label value of ramboot_dhcp_ignored_total for an
// ignored request ("unknown_mac", "unknown_arch", ...), "" otherwise: a
// short, stable name for Ignored.
func (e Event) Reason() string { return string(e.reason) }
