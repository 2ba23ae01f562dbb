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
)

const (
	// fileFieldLen is the size of the BOOTP file field, NUL included.
	fileFieldLen = 127
	// minMaxMessageSize is the smallest maximum DHCP message size a client
	// must accept (RFC 2131 section 2, RFC 2132 section 9.10).
	minMaxMessageSize = 576
	// ipUDPHeaders is what option 57 counts besides the DHCP message.
	ipUDPHeaders = 28
)

// noPXEDHCP is option 175 with encapsulated option 176 (no-pxedhcp) = 1:
// iPXE skips its wait for ProxyDHCP offers.
var noPXEDHCP = []byte{176, 1, 1}

// trimOrder lists the options a reply may lose, least useful first, when it
// does not fit the client's maximum message size. Everything else (53, 54,
// 51, 1, 3, 60, 175, 82) is kept. Option 67 goes only when the file field
// already carries the same name.
var trimOrder = []dhcpv4.OptionCode{
	dhcpv4.OptionClientMachineIdentifier,
	dhcpv4.OptionTFTPServerName, // siaddr says the same
	dhcpv4.OptionBootfileName,
	dhcpv4.OptionInterfaceMTU,
	dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionHostName,
	dhcpv4.OptionClientIdentifier,
}

// Request is one received DHCP message and where it came from: what
// Handle decides on.
type Request struct {
	// Msg is the decoded message.
	Msg *dhcpv4.DHCPv4
	// Port is the server port it arrived on: 67 (zero means 67) or
	// PXEPort.
	Port int
	// Peer is the sender's address and port.
	Peer netip.AddrPort
	// Dst is the destination address of the datagram (one of the server's
	// addresses for a unicast, 255.255.255.255 for a broadcast); zero when
	// unknown.
	Dst netip.Addr
	// LinkAddrs are the IPv4 addresses, with their prefix lengths, of the
	// interface the request came in on; nil when unknown.
	LinkAddrs []netip.Prefix
}

func (r Request) port() int {
	if r.Port == 0 {
		return dhcpv4.ServerPort
	}
	return r.Port
}

// origin is where a request came from, as the server judges it.
type origin struct {
	relay netip.Addr
	// subnets are the subnets the client may be on: the relay's, or those
	// on the link; nil when unknown (then nothing is checked).
	subnets []Subnet
	// server is this server's address on the client's path.
	server netip.Addr
	links  []netip.Prefix
}

// subnetFor returns the candidate subnet that holds a.
func (o origin) subnetFor(a netip.Addr) (Subnet, bool) { return subnetFor(o.subnets, a) }

// first returns the first candidate subnet's prefix, zero when none.
func (o origin) first() netip.Prefix {
	if len(o.subnets) == 0 {
		return netip.Prefix{}
	}
	return o.subnets[0].Prefix
}

// serverOn returns the server's address on prefix p: a link address in p,
// else the origin's server address.
func (o origin) serverOn(p netip.Prefix, fixed bool) netip.Addr {
	if !fixed {
		for _, la := range o.links {
			if p.Contains(la.Addr()) {
				return la.Addr()
			}
		}
	}
	return o.server
}

// locate works out the request's subnets and the server's address on its
// path. It returns a non-empty reason (and why) when the request comes from
// a subnet the server does not serve.
func (s *Server) locate(r Request) (origin, ignoreReason, string) {
	req := r.Msg
	subnets := s.subnets()
	o := origin{relay: addrFrom(req.GatewayIPAddr), links: r.LinkAddrs}
	dst := r.Dst
	if dst.IsValid() && (!dst.Is4() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || dst.IsMulticast()) {
		dst = netip.Addr{}
	}
	switch {
	case o.relay.IsValid():
		// The client's link is giaddr's, unless the relay names it: the
		// link-selection suboption (82.5, RFC 3527), or option 118 (RFC
		// 3011), for relays whose own address is on another subnet.
		link, how := o.relay, "relay"
		if a, ok := linkSelection(req); ok {
			link, how = a, "link selection"
		}
		sub, ok := subnetFor(subnets, link)
		if !ok && len(subnets) > 0 {
			return o, reasonUnknownSubnet, fmt.Sprintf("%s %s is on no configured subnet", how, link)
		}
		if ok {
			o.subnets = []Subnet{sub}
		}
		o.server = dst
	case r.port() == PXEPort:
		// A boot server request: the client has its address already.
		a := addrFrom(req.ClientIPAddr)
		if !a.IsValid() {
			a = r.Peer.Addr().Unmap()
		}
		if sub, ok := subnetFor(subnets, a); ok {
			o.subnets = []Subnet{sub}
		}
		o.server = dst
	default:
		for _, la := range r.LinkAddrs {
			if sub, ok := subnetFor(subnets, la.Addr()); ok && !slices.ContainsFunc(o.subnets, func(c Subnet) bool { return c.Prefix == sub.Prefix }) {
				o.subnets = append(o.subnets, sub)
			}
		}
		if len(subnets) == 0 {
			for _, la := range r.LinkAddrs {
				o.subnets = append(o.subnets, Subnet{Prefix: la.Masked()})
			}
		}
		if len(o.subnets) == 0 && len(r.LinkAddrs) > 0 {
			return o, reasonUnknownSubnet, fmt.Sprintf("no configured subnet on the interface (%s)", r.LinkAddrs[0])
		}
		if len(o.subnets) > 0 {
			o.server = o.serverOn(o.subnets[0].Prefix, false)
		}
	}
	if !o.server.IsValid() && len(r.LinkAddrs) > 0 {
		o.server = r.LinkAddrs[0].Addr()
	}
	if s.ServerIP.IsValid() {
		o.server = s.ServerIP.Unmap()
	}
	return o, "", ""
}

// linkSelection returns the address that names the client's subnet in a
// relayed request: the link-selection suboption of option 82 (RFC 3527),
// else option 118 (RFC 3011).
func linkSelection(req *dhcpv4.DHCPv4) (netip.Addr, bool) {
	if rai := req.RelayAgentInfo(); rai != nil {
		if v := rai.Get(dhcpv4.LinkSelectionSubOption); len(v) == 4 {
			return netip.AddrFrom4([4]byte(v)), true
		}
	}
	if v := req.Options.Get(dhcpv4.OptionSubnetSelection); len(v) == 4 {
		return netip.AddrFrom4([4]byte(v)), true
	}
	return netip.Addr{}, false
}

// Handle decides the reply to one request: pure logic, with no I/O besides
// the Inventory call (and the Discovery's memory). A nil reply means the
// request is ignored; the Event then says why in Ignored (or, for release
// and decline, that no reply is due). Handle returns an error only when the
// server is misconfigured or the Inventory fails (anything but ErrUnknown)
// or returns an invalid reservation; the reply is then nil too. It is safe
// for concurrent use.
func (s *Server) Handle(ctx context.Context, r Request) (*dhcpv4.DHCPv4, Event, error) {
	req := r.Msg
	port := r.port()
	mt := msgType(req)
	br := ParseBootRequest(req, port)
	stage := br.Stage()
	// The event shares the request's slices: a decoded request owns its
	// memory and is never reused.
	ev := Event{
		MAC:         req.ClientHWAddr,
		ClientID:    req.Options.Get(dhcpv4.OptionClientIdentifier),
		Request:     requestName(mt, req.Options.Has(dhcpv4.OptionDHCPMessageType)),
		Port:        port,
		Stage:       stage,
		IPXE:        stage == StageIPXE,
		NetBoot:     stage.NetBoot(),
		Arch:        br.Arch,
		HasArch:     br.HasArch,
		VendorClass: br.VendorClass,
		Relay:       addrFrom(req.GatewayIPAddr),
		Time:        time.Now(),
	}
	if err := s.checkConfig(); err != nil {
		return nil, ev, err
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return ignore(ev, reasonNotRequest, "not a BOOTREQUEST")
	}
	if len(ev.MAC) == 0 && len(ev.ClientID) == 0 {
		return ignore(ev, reasonNoHWAddr, "no client hardware address and no client identifier")
	}
	mode := s.mode()
	if port != PXEPort && mode == ModeOff {
		return ignore(ev, reasonModeOff, "DHCP mode is off (port 4011 only)")
	}
	o, reason, why := s.locate(r)
	ev.Subnet, ev.Server = o.first(), o.server
	if reason != "" {
		return ignore(ev, reason, why)
	}
	if !o.server.Is4() {
		return nil, ev, errors.New("handle dhcp request: no server address: set ServerIP or serve on a socket with IP_PKTINFO (Listen)")
	}
	serverIP := o.server.As4()

	switch mt {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeInform:
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		// A server identifier naming another server means the client chose
		// that server's offer (or is releasing its lease): not ours.
		if sid := req.Options.Get(dhcpv4.OptionServerIdentifier); sid != nil && !bytesEqual(sid, serverIP[:]) {
			return ignore(ev, reasonOtherServer, fmt.Sprintf("not for us (server id %s)", net.IP(sid)))
		}
	case dhcpv4.MessageTypeNone:
		return ignore(ev, reasonNoType, "no DHCP message type (BOOTP)")
	default:
		return ignore(ev, reasonUnsupported, "unsupported message type "+mt.String())
	}
	client := Client{
		HWType: req.HWType, MAC: ev.MAC, ClientID: ev.ClientID, Relay: ev.Relay,
		Subnet: ev.Subnet, Server: o.server, Stage: stage, Arch: br.Arch, HasArch: br.HasArch, VendorClass: br.VendorClass,
	}
	if mt == dhcpv4.MessageTypeRelease || mt == dhcpv4.MessageTypeDecline {
		return s.giveBack(req, mt, client, ev)
	}
	if port == PXEPort || mode == ModeProxy {
		if !stage.NetBoot() {
			return ignore(ev, reasonNotPXE, fmt.Sprintf("not a PXE client (%s mode, port %d)", mode, port))
		}
		if port != PXEPort && mt != dhcpv4.MessageTypeDiscover {
			return ignore(ev, reasonUnsupported, fmt.Sprintf("proxy mode answers DISCOVER on port 67, not %s", mt))
		}
	}

	res, err := s.Inventory.Lookup(ctx, client)
	if errors.Is(err, ErrUnknown) {
		return s.unknown(req, br, o, client, ev)
	}
	if err != nil {
		ev.Ignored, ev.reason = "inventory error", reasonInventory
		return nil, ev, fmt.Errorf("look up reservation for %s: %w", clientName(client), err)
	}
	if err := res.Validate(); err != nil {
		ev.Ignored, ev.reason = "invalid reservation", reasonInventory
		return nil, ev, fmt.Errorf("check reservation for %s: %w", clientName(client), err)
	}
	if s.Discovery != nil {
		s.Discovery.adopted(client.Key())
	}
	br.Override = res.BootFile

	if port == PXEPort || mode == ModeProxy {
		boot := s.choose(br)
		if boot.Ignore != "" {
			return ignore(ev, boot.reason, boot.Ignore)
		}
		return s.proxyReply(req, mt, port, o.server, boot, res.ScriptURL, ev)
	}

	// Reservation mode, port 67: the node's address.
	if !res.IP.IsValid() {
		ev.Ignored, ev.reason = "reservation has no address", reasonInventory
		return nil, ev, fmt.Errorf("check reservation for %s: no address", clientName(client))
	}
	resIP := res.IP.Unmap()
	server := o.server
	if len(o.subnets) > 0 {
		sub, ok := o.subnetFor(resIP)
		if !ok {
			return ignore(ev, reasonWrongSubnet, fmt.Sprintf("reserved address %s is not on the client's subnet %s", resIP, o.first()))
		}
		ev.Subnet = sub.Prefix
		server = o.serverOn(sub.Prefix, s.ServerIP.IsValid())
		ev.Server = server
	}
	if mt == dhcpv4.MessageTypeRequest {
		requested := addrFrom(req.RequestedIPAddress())
		if !requested.IsValid() {
			requested = addrFrom(req.ClientIPAddr) // RENEWING or REBINDING
		}
		if requested.IsValid() && requested != resIP {
			ev.Reply = ReplyNak
			return s.nak(req, server, fmt.Sprintf("address %s is not reserved for this client", requested)), ev, nil
		}
	}
	boot := s.choose(br)
	if boot.Ignore != "" {
		return ignore(ev, boot.reason, boot.Ignore)
	}
	res.IP = resIP
	return s.leaseReply(req, mt, server, res, s.leaseTime(), boot, ev)
}

// choose is BootTable.Choose on the server's table, with HTTP-boot clients
// ignored when no HTTP boot URL is configured.
func (s *Server) choose(br BootRequest) Boot {
	b := s.table().Choose(br)
	if b.Ignore == "" && b.Stage == StageHTTPBoot && s.HTTPBootURL == "" {
		return b.ignore(reasonNoHTTPBoot, "UEFI HTTP boot client, but no HTTP boot URL is configured")
	}
	return b
}

// unknown handles a client the inventory does not know: recorded for
// discovery when a Discovery is set, lent a discovery address on a subnet
// with a range (reservation mode, port 67), ignored otherwise.
func (s *Server) unknown(req *dhcpv4.DHCPv4, br BootRequest, o origin, c Client, ev Event) (*dhcpv4.DHCPv4, Event, error) {
	d := s.Discovery
	if d == nil {
		return ignore(ev, reasonUnknownMAC, "unknown MAC")
	}
	if !d.see(c, req) {
		return ignore(ev, reasonUnknownMAC, "unknown MAC (not recorded: the discovered list is full)")
	}
	if br.Port == PXEPort || s.mode() != ModeReservation {
		return ignore(ev, reasonUnknownMAC, "unknown MAC (recorded for discovery)")
	}
	var sub Subnet
	for _, cand := range o.subnets {
		if !cand.Discovery.IsZero() {
			sub = cand
			break
		}
	}
	if sub.Discovery.IsZero() {
		return ignore(ev, reasonUnknownMAC, "unknown MAC (recorded for discovery; no discovery range on its subnet)")
	}
	boot := s.choose(br)
	if boot.Ignore != "" {
		return ignore(ev, boot.reason, boot.Ignore)
	}
	server := o.serverOn(sub.Prefix, s.ServerIP.IsValid())
	ev.Subnet, ev.Server, ev.Discovery = sub.Prefix, server, true
	res := Reservation{PrefixLen: sub.Prefix.Bits(), Router: sub.Router, DNS: sub.DNS, MTU: sub.MTU, ScriptURL: s.DiscoveryScriptURL}
	key := c.Key()
	switch br.Type {
	case dhcpv4.MessageTypeDiscover:
		ip, ok := d.offer(key, sub.Prefix, sub.Discovery, server)
		if !ok {
			return ignore(ev, reasonPoolExhausted, fmt.Sprintf("unknown MAC; discovery range %s has no free address", sub.Discovery))
		}
		res.IP = ip
	case dhcpv4.MessageTypeRequest:
		requested := addrFrom(req.RequestedIPAddress())
		if !requested.IsValid() {
			requested = addrFrom(req.ClientIPAddr)
		}
		if !requested.IsValid() {
			return ignore(ev, reasonUnknownMAC, "unknown MAC; request names no address")
		}
		switch d.request(key, requested, sub.Prefix, sub.Discovery, server) {
		case verdictIgnore:
			return ignore(ev, reasonUnknownMAC, fmt.Sprintf("unknown MAC; %s is outside discovery range %s", requested, sub.Discovery))
		case verdictNak:
			ev.Reply = ReplyNak
			return s.nak(req, server, fmt.Sprintf("address %s is not free", requested)), ev, nil
		}
		res.IP = requested
	}
	return s.leaseReply(req, br.Type, server, res, d.leaseTime(), boot, ev)
}

// giveBack handles DHCPRELEASE and DHCPDECLINE: nothing is sent back. A
// discovery address is freed (release) or held back (decline).
func (s *Server) giveBack(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, c Client, ev Event) (*dhcpv4.DHCPv4, Event, error) {
	if mt == dhcpv4.MessageTypeRelease {
		ev.IP = addrFrom(req.ClientIPAddr)
		if s.Discovery != nil && ev.IP.IsValid() {
			ev.Discovery = s.Discovery.release(c.Key(), ev.IP)
		}
		return nil, ev, nil
	}
	ev.IP = addrFrom(req.RequestedIPAddress())
	if s.Discovery != nil && ev.IP.IsValid() {
		ev.Discovery = s.Discovery.decline(c.Key(), ev.IP)
	}
	return nil, ev, nil
}

// leaseReply builds the OFFER or ACK that gives the client res.IP (or, for
// INFORM, only the settings).
func (s *Server) leaseReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, server netip.Addr, res Reservation, lease time.Duration, boot Boot, ev Event) (*dhcpv4.DHCPv4, Event, error) {
	reply := newReply(req, server)
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		reply.messageType(dhcpv4.MessageTypeOffer)
		ev.Reply = ReplyOffer
	default: // request, inform
		reply.messageType(dhcpv4.MessageTypeAck)
		reply.ClientIPAddr = req.ClientIPAddr
		ev.Reply = ReplyAck
	}
	if mt != dhcpv4.MessageTypeInform {
		// RFC 2131 4.3.5: an ACK to INFORM carries neither yiaddr nor a lease.
		reply.YourIPAddr = reply.ip(res.IP)
		reply.setUint32(dhcpv4.OptionIPAddressLeaseTime, uint32(lease/time.Second))
		ev.IP = res.IP
	}
	mask := maskBytes(res.PrefixLen)
	reply.set(dhcpv4.OptionSubnetMask, mask[:]...)
	if res.Router.IsValid() {
		reply.setIP(dhcpv4.OptionRouter, res.Router)
	}
	if len(res.DNS) > 0 {
		reply.setIPs(dhcpv4.OptionDomainNameServer, res.DNS)
	}
	if res.MTU > 0 {
		reply.setUint16(dhcpv4.OptionInterfaceMTU, uint16(res.MTU))
	}
	if res.Hostname != "" {
		reply.setString(dhcpv4.OptionHostName, res.Hostname)
	}
	s.setBoot(reply, server, boot, res.ScriptURL, false, &ev)
	if boot.Script {
		reply.set(dhcpv4.OptionEtherboot, noPXEDHCP...)
	}
	return finish(req, reply, ev)
}

// proxyReply builds the answer without an address: a proxy OFFER on port
// 67 (proxy mode), or the ACK of a boot server request on port 4011. Both
// carry option 60 "PXEClient" (or "HTTPClient"), which is what makes PXE
// firmware and iPXE take them as proxy offers.
func (s *Server) proxyReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, port int, server netip.Addr, boot Boot, script string, ev Event) (*dhcpv4.DHCPv4, Event, error) {
	reply := newReply(req, server)
	ev.Proxy = true
	if port == PXEPort {
		reply.messageType(dhcpv4.MessageTypeAck)
		reply.ClientIPAddr = req.ClientIPAddr
		ev.Reply = ReplyAck
	} else {
		reply.messageType(dhcpv4.MessageTypeOffer)
		ev.Reply = ReplyOffer
	}
	s.setBoot(reply, server, boot, script, true, &ev)
	return finish(req, reply, ev)
}

// setBoot puts the boot file in reply: siaddr, file and option 67, option
// 66 for TFTP, option 60 for HTTP boot (and, with proxy, "PXEClient"
// otherwise).
func (s *Server) setBoot(reply *replyMsg, server netip.Addr, boot Boot, script string, proxy bool, ev *Event) {
	reply.ServerIPAddr = reply.ip(server)
	var file string
	switch {
	case boot.Script:
		file = withServer(script, server)
	case boot.Stage == StageHTTPBoot:
		file = withServer(s.HTTPBootURL, server) + boot.File
		reply.setString(dhcpv4.OptionClassIdentifier, "HTTPClient")
	case boot.File != "":
		file = boot.File
		reply.setString(dhcpv4.OptionTFTPServerName, server.String())
	}
	if proxy && boot.Stage != StageHTTPBoot {
		reply.setString(dhcpv4.OptionClassIdentifier, "PXEClient")
	}
	if file == "" {
		return
	}
	if len(file) <= fileFieldLen {
		reply.BootFileName = file
	}
	reply.setString(dhcpv4.OptionBootfileName, file)
	ev.BootFile = file
}

// withServer puts server in a URL whose host is empty ("http://:8080/x",
// "http:///x"); other strings are returned as they are.
func withServer(u string, server netip.Addr) string {
	for _, scheme := range []string{"http://", "https://"} {
		rest, ok := strings.CutPrefix(u, scheme)
		if !ok {
			continue
		}
		if strings.HasPrefix(rest, ":") || strings.HasPrefix(rest, "/") {
			return scheme + server.String() + rest
		}
	}
	return u
}

// finish trims reply to the client's maximum message size, or ignores the
// request when it cannot fit.
func finish(req *dhcpv4.DHCPv4, reply *replyMsg, ev Event) (*dhcpv4.DHCPv4, Event, error) {
	if err := fit(reply.DHCPv4, maxReplySize(req)); err != nil {
		ev.Reply, ev.IP, ev.BootFile, ev.Proxy = "", netip.Addr{}, "", false
		return ignore(ev, reasonReplyTooLarge, err.Error())
	}
	return reply.DHCPv4, ev, nil
}

// ignore returns Handle's result for a request that gets no reply.
func ignore(ev Event, reason ignoreReason, why string) (*dhcpv4.DHCPv4, Event, error) {
	ev.Ignored, ev.reason = why, reason
	return nil, ev, nil
}

// clientName names a client in errors: its MAC, else its client id.
func clientName(c Client) string {
	if len(c.MAC) > 0 {
		return c.MAC.String()
	}
	return "client id " + fmt.Sprintf("%x", c.ClientID)
}

// nak builds a DHCPNAK (RFC 2131 table 3 and 4.3.2).
func (s *Server) nak(req *dhcpv4.DHCPv4, server netip.Addr, msg string) *dhcpv4.DHCPv4 {
	reply := newReply(req, server)
	reply.DeleteOption(dhcpv4.OptionClientMachineIdentifier)
	if !isZero(req.GatewayIPAddr) {
		// The relay must broadcast the NAK: the client's address is wrong.
		reply.SetBroadcast()
	}
	reply.messageType(dhcpv4.MessageTypeNak)
	reply.setString(dhcpv4.OptionMessage, msg)
	if fit(reply.DHCPv4, maxReplySize(req)) != nil {
		reply.DeleteOption(dhcpv4.OptionMessage)
	}
	return reply.DHCPv4
}

// newReply starts a BOOTREPLY to req from server: xid, htype, chaddr,
// flags and giaddr copied; option 54 set; options 61 (RFC 6842), 97 (PXE)
// and 82 (RFC 3046, sent last) echoed.
func newReply(req *dhcpv4.DHCPv4, server netip.Addr) *replyMsg {
	reply := &replyMsg{arena: make([]byte, 0, 512), DHCPv4: &dhcpv4.DHCPv4{
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
	}}
	if !isZero(req.GatewayIPAddr) {
		reply.GatewayIPAddr = req.GatewayIPAddr
	}
	reply.setIP(dhcpv4.OptionServerIdentifier, server)
	// The request's option values are its own (never reused): shared, not
	// copied.
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionClientIdentifier, dhcpv4.OptionClientMachineIdentifier, dhcpv4.OptionRelayAgentInformation} {
		if v := req.Options.Get(code); v != nil {
			reply.Options[code.Code()] = v
		}
	}
	return reply
}

// fit trims optional options from reply until it fits size bytes, and fails
// if it cannot.
func fit(reply *dhcpv4.DHCPv4, size int) error {
	for _, code := range trimOrder {
		if messageSize(reply) <= size {
			return nil
		}
		if code == dhcpv4.OptionBootfileName && reply.BootFileName == "" {
			continue
		}
		reply.DeleteOption(code)
	}
	if n := messageSize(reply); n > size {
		return fmt.Errorf("reply too large for client (%d > %d bytes)", n, size)
	}
	return nil
}

// maxReplySize is the largest DHCP message (without IP and UDP headers) the
// client accepts: option 57 if present and legal, else 576 bytes.
func maxReplySize(req *dhcpv4.DHCPv4) int {
	size := minMaxMessageSize
	if v := req.Options.Get(dhcpv4.OptionMaximumDHCPMessageSize); len(v) == 2 {
		size = max(size, int(binary.BigEndian.Uint16(v)))
	}
	return size - ipUDPHeaders
}

// requestName is Event.Request for a message type.
func requestName(mt dhcpv4.MessageType, present bool) RequestType {
	switch {
	case !present:
		return RequestBOOTP
	case mt == dhcpv4.MessageTypeDiscover:
		return RequestDiscover
	case mt == dhcpv4.MessageTypeRequest:
		return RequestRequest
	case mt == dhcpv4.MessageTypeInform:
		return RequestInform
	case mt == dhcpv4.MessageTypeRelease:
		return RequestRelease
	case mt == dhcpv4.MessageTypeDecline:
		return RequestDecline
	default:
		return RequestType(fmt.Sprintf("type %d", uint8(mt)))
	}
}

// bytesEqual reports whether a and b hold the same bytes.
func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

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
