package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ramboot/ramboot/pxe"
)

const (
	// minMaxMessageSize is the size every DHCP client must accept
	// (RFC 2131 section 2, RFC 2132 section 9.10), IP and UDP headers
	// included.
	minMaxMessageSize = 576
	// ipUDPHeaders is what option 57 counts besides the DHCP message.
	ipUDPHeaders = 20 + 8
	// fileFieldLen is the usable length of the BOOTP file field (128 bytes,
	// NUL-terminated).
	fileFieldLen = 127
)

// noPXEDHCP is option 175 (iPXE encapsulated options) holding sub-option 176
// (no-pxedhcp) = 1: iPXE then skips its ~3 s wait for ProxyDHCP offers.
var noPXEDHCP = []byte{176, 1, 1}

// defaultBootFiles is what a Server with nil BootFiles uses; never modified.
var defaultBootFiles = pxe.DefaultBootFiles()

// trimOrder lists the options a reply may lose, least useful first, when it
// does not fit the client's maximum message size. Everything else (53, 54,
// 51, 1, 3, 175, 82) is kept. Option 67 goes only when the file field
// already carries the same name.
var trimOrder = []dhcpv4.OptionCode{
	dhcpv4.OptionClientMachineIdentifier,
	dhcpv4.OptionTFTPServerName, // siaddr says the same
	dhcpv4.OptionBootfileName,
	dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionHostName,
	dhcpv4.OptionClientIdentifier,
}

// Handle decides the reply to one request: pure logic, with no I/O besides
// the Inventory call. A nil reply means the request is ignored; the Event
// then says why in Ignored (or, for release and decline, that no reply is
// due). Handle returns an error only when the server is misconfigured or the
// Inventory fails (anything but ErrUnknown) or returns an invalid
// reservation; the reply is then nil too. It is safe for concurrent use.
func (s *Server) Handle(ctx context.Context, req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, Event, error) {
	ev := Event{
		MAC:     slices.Clone(req.ClientHWAddr),
		Request: requestName(req.MessageType(), req.Options.Has(dhcpv4.OptionDHCPMessageType)),
		IPXE:    isIPXE(req),
		Time:    time.Now(),
	}
	ev.Arch, ev.HasArch = clientArch(req)
	vc := req.ClassIdentifier()
	ev.NetBoot = ev.IPXE || ev.HasArch || strings.HasPrefix(vc, "PXEClient") || strings.HasPrefix(vc, "HTTPClient")

	serverIP, err := s.serverIP()
	if err != nil {
		return nil, ev, err
	}
	if s.Inventory == nil {
		return nil, ev, errNoInventory
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return ignore(ev, reasonNotRequest, "not a BOOTREQUEST")
	}
	if len(req.ClientHWAddr) == 0 {
		return ignore(ev, reasonNoHWAddr, "no client hardware address")
	}

	mt := req.MessageType()
	switch mt {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeInform:
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		// A server identifier naming another server means the client chose
		// that server's offer (or is releasing its lease): not ours.
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(net.IP(serverIP.AsSlice())) {
			return ignore(ev, reasonOtherServer, fmt.Sprintf("not for us (server id %s)", sid))
		}
		if mt == dhcpv4.MessageTypeRelease {
			ev.IP = addrFrom(req.ClientIPAddr)
			return nil, ev, nil
		}
		if mt == dhcpv4.MessageTypeDecline {
			ev.IP = addrFrom(req.RequestedIPAddress())
			return nil, ev, nil
		}
	case dhcpv4.MessageTypeNone:
		return ignore(ev, reasonNoType, "no DHCP message type (BOOTP)")
	default:
		return ignore(ev, reasonUnsupported, "unsupported message type "+mt.String())
	}

	res, err := s.Inventory.Reservation(ctx, slices.Clone(req.ClientHWAddr))
	if errors.Is(err, ErrUnknown) {
		return ignore(ev, reasonUnknownMAC, "unknown MAC")
	}
	if err != nil {
		ev.Ignored, ev.reason = "inventory error", reasonInventory
		return nil, ev, fmt.Errorf("look up reservation for %s: %w", req.ClientHWAddr, err)
	}
	if err := res.Validate(); err != nil {
		ev.Ignored, ev.reason = "invalid reservation", reasonInventory
		return nil, ev, fmt.Errorf("check reservation for %s: %w", req.ClientHWAddr, err)
	}
	resIP := res.IP.Unmap()

	if mt == dhcpv4.MessageTypeRequest {
		requested := addrFrom(req.RequestedIPAddress())
		if !requested.IsValid() {
			requested = addrFrom(req.ClientIPAddr) // RENEWING or REBINDING
		}
		if requested.IsValid() && requested != resIP {
			ev.Reply = "nak"
			return s.nak(req, serverIP, fmt.Sprintf("address %s is not reserved for this client", requested)), ev, nil
		}
	}

	bootFile, ok := s.bootFile(req, res, ev)
	if !ok {
		return ignore(ev, reasonUnknownArch, fmt.Sprintf("no boot file for arch %s (%d)", ev.Arch, uint16(ev.Arch)))
	}

	reply := newReply(req)
	reply.ServerIPAddr = net.IP(serverIP.AsSlice())
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		reply.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeOffer))
		ev.Reply = "offer"
	default: // request, inform
		reply.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeAck))
		reply.ClientIPAddr = req.ClientIPAddr
		ev.Reply = "ack"
	}
	if mt != dhcpv4.MessageTypeInform {
		// RFC 2131 4.3.5: an ACK to INFORM carries neither yiaddr nor a lease.
		reply.YourIPAddr = net.IP(resIP.AsSlice())
		reply.UpdateOption(dhcpv4.OptIPAddressLeaseTime(s.leaseTime()))
		ev.IP = resIP
	}
	reply.UpdateOption(dhcpv4.OptServerIdentifier(net.IP(serverIP.AsSlice())))
	reply.UpdateOption(dhcpv4.OptSubnetMask(net.CIDRMask(res.PrefixLen, 32)))
	if res.Router.IsValid() {
		reply.UpdateOption(dhcpv4.OptRouter(net.IP(res.Router.Unmap().AsSlice())))
	}
	if len(res.DNS) > 0 {
		dns := make([]net.IP, len(res.DNS))
		for i, d := range res.DNS {
			dns[i] = net.IP(d.Unmap().AsSlice())
		}
		reply.UpdateOption(dhcpv4.OptDNS(dns...))
	}
	if res.Hostname != "" {
		reply.UpdateOption(dhcpv4.OptHostName(res.Hostname))
	}
	if bootFile != "" {
		if len(bootFile) <= fileFieldLen {
			reply.BootFileName = bootFile
		}
		reply.UpdateOption(dhcpv4.OptBootFileName(bootFile))
		ev.BootFile = bootFile
	}
	if ev.IPXE {
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionEtherboot, noPXEDHCP))
	} else if bootFile != "" {
		reply.UpdateOption(dhcpv4.OptTFTPServerName(serverIP.String()))
	}
	copyOption(reply, req, dhcpv4.OptionClientMachineIdentifier)

	if err := fit(reply, maxReplySize(req)); err != nil {
		ev.Reply, ev.IP, ev.BootFile = "", netip.Addr{}, ""
		return ignore(ev, reasonReplyTooLarge, err.Error())
	}
	return reply, ev, nil
}

// ignore returns Handle's result for a request that gets no reply.
func ignore(ev Event, reason, why string) (*dhcpv4.DHCPv4, Event, error) {
	ev.Ignored, ev.reason = why, reason
	return nil, ev, nil
}

// nak builds a DHCPNAK (RFC 2131 table 3 and 4.3.2).
func (s *Server) nak(req *dhcpv4.DHCPv4, serverIP netip.Addr, msg string) *dhcpv4.DHCPv4 {
	reply := newReply(req)
	if !isZero(req.GatewayIPAddr) {
		// The relay must broadcast the NAK: the client's address is wrong.
		reply.SetBroadcast()
	}
	reply.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeNak))
	reply.UpdateOption(dhcpv4.OptServerIdentifier(net.IP(serverIP.AsSlice())))
	reply.UpdateOption(dhcpv4.OptMessage(msg))
	if fit(reply, maxReplySize(req)) != nil {
		reply.DeleteOption(dhcpv4.OptionMessage)
	}
	return reply
}

// newReply starts a BOOTREPLY to req: xid, chaddr, flags and giaddr copied,
// options 61 (RFC 6842) and 82 (RFC 3046) echoed.
func newReply(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	reply := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		ClientHWAddr:  slices.Clone(req.ClientHWAddr),
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		Options:       make(dhcpv4.Options),
	}
	if !isZero(req.GatewayIPAddr) {
		reply.GatewayIPAddr = req.GatewayIPAddr
	}
	copyOption(reply, req, dhcpv4.OptionClientIdentifier)
	copyOption(reply, req, dhcpv4.OptionRelayAgentInformation)
	return reply
}

// bootFile picks the boot file name for the client: the script URL for iPXE,
// else the reservation's NBP, else the NBP for its architecture. ok is false
// when a network-boot client's architecture has no NBP. A client that is no
// network boot (a node's OS) gets no boot file at all.
func (s *Server) bootFile(_ *dhcpv4.DHCPv4, res Reservation, ev Event) (file string, ok bool) {
	if ev.IPXE {
		return res.ScriptURL, true
	}
	if !ev.NetBoot {
		return "", true
	}
	if res.BootFile != "" {
		return res.BootFile, true
	}
	files := s.BootFiles
	if files == nil {
		files = defaultBootFiles
	}
	if f, found := files[ev.Arch]; found {
		return f, true
	}
	return "", false
}

// fit trims optional options from reply until it fits size bytes, and fails
// if it cannot.
func fit(reply *dhcpv4.DHCPv4, size int) error {
	for _, code := range trimOrder {
		if len(reply.ToBytes()) <= size {
			return nil
		}
		if code == dhcpv4.OptionBootfileName && reply.BootFileName == "" {
			continue
		}
		reply.DeleteOption(code)
	}
	if n := len(reply.ToBytes()); n > size {
		return fmt.Errorf("reply too large for client (%d > %d bytes)", n, size)
	}
	return nil
}

// maxReplySize is the largest DHCP message (without IP and UDP headers) the
// client accepts: option 57 if present and legal, else 576 bytes.
func maxReplySize(req *dhcpv4.DHCPv4) int {
	size := minMaxMessageSize
	if v, err := req.MaxMessageSize(); err == nil && int(v) > size {
		size = int(v)
	}
	return size - ipUDPHeaders
}

// replyAddr is where a reply to req goes (RFC 2131 section 4.1): the relay
// at giaddr:67 (relayPort in tests); else, except for a NAK, the client at
// ciaddr:68; else broadcast to 255.255.255.255:68. A client that has no
// address yet and asked for unicast still gets a broadcast: unicasting to
// yiaddr needs an ARP entry the server cannot add through a UDP socket.
func (s *Server) replyAddr(req, reply *dhcpv4.DHCPv4) *net.UDPAddr {
	if !isZero(req.GatewayIPAddr) {
		port := dhcpv4.ServerPort
		if s.relayPort != 0 {
			port = s.relayPort
		}
		return &net.UDPAddr{IP: req.GatewayIPAddr.To4(), Port: port}
	}
	if reply.MessageType() != dhcpv4.MessageTypeNak && !isZero(req.ClientIPAddr) {
		return &net.UDPAddr{IP: req.ClientIPAddr.To4(), Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

// requestName is Event.Request for a message type.
func requestName(mt dhcpv4.MessageType, present bool) string {
	switch {
	case !present:
		return "bootp"
	case mt == dhcpv4.MessageTypeDiscover:
		return "discover"
	case mt == dhcpv4.MessageTypeRequest:
		return "request"
	case mt == dhcpv4.MessageTypeInform:
		return "inform"
	case mt == dhcpv4.MessageTypeRelease:
		return "release"
	case mt == dhcpv4.MessageTypeDecline:
		return "decline"
	default:
		return fmt.Sprintf("type %d", uint8(mt))
	}
}

// isIPXE reports whether req comes from iPXE: option 175 present, or user
// class (option 77, RFC 3004 or raw) "iPXE".
func isIPXE(req *dhcpv4.DHCPv4) bool {
	if req.Options.Has(dhcpv4.OptionEtherboot) {
		return true
	}
	if !req.Options.Has(dhcpv4.OptionUserClassInformation) {
		return false
	}
	return slices.Contains(req.UserClass(), "iPXE")
}

// clientArch returns the first architecture of option 93.
func clientArch(req *dhcpv4.DHCPv4) (pxe.Arch, bool) {
	v := req.Options.Get(dhcpv4.OptionClientSystemArchitectureType)
	if len(v) < 2 {
		return pxe.ArchBIOS, false
	}
	return pxe.Arch(binary.BigEndian.Uint16(v)), true
}

// copyOption echoes option code of req into reply, if present.
func copyOption(reply, req *dhcpv4.DHCPv4, code dhcpv4.OptionCode) {
	if v := req.Options.Get(code); v != nil {
		reply.UpdateOption(dhcpv4.OptGeneric(code, v))
	}
}

// addrFrom converts an IPv4 address from a packet, zero for 0.0.0.0 or nil.
func addrFrom(ip net.IP) netip.Addr {
	if isZero(ip) {
		return netip.Addr{}
	}
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok {
		return netip.Addr{}
	}
	return a
}

// isZero reports whether ip is nil, unparsable or 0.0.0.0.
func isZero(ip net.IP) bool {
	ip4 := ip.To4()
	return ip4 == nil || ip4.Equal(net.IPv4zero)
}
