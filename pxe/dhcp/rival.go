package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/pxe/internal/ratelog"
)

// DefaultRivalLogInterval is the shortest time between two log lines about
// one rival server when RivalDetector.LogInterval is zero.
const DefaultRivalLogInterval = time.Minute

// RivalDetector watches the provisioning link for the classic PXE outage:
// another DHCP server answering the nodes ramboot serves, so that a node
// takes whichever offer comes first and boots something else, or nothing.
// It sees every DHCP reply on the link that is broadcast (PXE firmware and
// iPXE ask for broadcast replies) and counts each OFFER that another server
// makes to a MAC the Inventory knows in ramboot_dhcp_rival_offers_total
// {server}, with a Warn log at most once per LogInterval and server. Offers
// to other MACs are another server's business: they are counted in
// ramboot_dhcp_other_offers_total and logged at Debug.
//
// It only listens (a packet socket with a kernel filter, CAP_NET_RAW), so
// it disturbs nothing on the link. Set the fields, then call ListenAndServe.
type RivalDetector struct {
	// ServerIP is this server's address: offers whose server identifier
	// (option 54) is ServerIP are this server's own. Required.
	ServerIP netip.Addr
	// Inventory says which MACs ramboot serves. Required.
	Inventory Inventory
	// Mode is the Server's mode. In ModeProxy the site's DHCP server is
	// meant to offer the nodes their addresses, so only offers that carry
	// a boot file or option 60 "PXEClient" (another PXE or proxy server)
	// count as a rival's.
	Mode Mode
	// LogInterval is the shortest time between two Warn lines about one
	// rival server; the offers in between are logged at Debug and counted
	// in the next Warn line. Default 1m (DefaultRivalLogInterval).
	LogInterval time.Duration
	// Logger receives the Warn lines about rivals and Debug detail; nil
	// discards.
	Logger *slog.Logger
	// Metrics, if set, counts rival and other offers; it may be the
	// Server's.
	Metrics *Metrics
	// Peer, if set, reports whether an address is a peer head's: several
	// heads serving one cluster from a shared inventory all answer, and
	// their offers are not a rival's.
	Peer func(netip.Addr) bool
}

// ListenAndServe opens the watching socket on iface with ListenRivals and
// calls Serve.
func (d *RivalDetector) ListenAndServe(ctx context.Context, iface string) error {
	if err := d.check(); err != nil {
		return err
	}
	conn, err := ListenRivals(iface)
	if err != nil {
		return err
	}
	return d.Serve(ctx, conn)
}

// ListenRivals opens a receive-only packet socket (AF_PACKET, SOCK_DGRAM)
// on the interface iface that delivers, as IPv4 packets, the DHCP replies
// seen on the link (UDP from port 67 to port 68, not fragmented), except
// those this host sends. A classic BPF filter in the kernel drops
// everything else. It needs CAP_NET_RAW.
func ListenRivals(iface string) (net.PacketConn, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("watch dhcp replies on %s: %w", iface, err)
	}
	filter, err := bpf.Assemble(replyFilter)
	if err != nil {
		return nil, fmt.Errorf("watch dhcp replies on %s: assemble filter: %w", iface, err)
	}
	conn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("watch dhcp replies on %s: %w", iface, err)
	}
	return conn, nil
}

// replyFilter keeps IPv4 UDP packets from port 67 to port 68 that are not
// fragments and not sent by this host. A SOCK_DGRAM packet socket runs it
// on the packet from its IPv4 header on.
var replyFilter = []bpf.Instruction{
	bpf.LoadExtension{Num: bpf.ExtType}, // 0: packet type
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_OUTGOING, SkipTrue: 9},
	bpf.LoadAbsolute{Off: 9, Size: 1}, // 2: IP protocol
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_UDP, SkipTrue: 7},
	bpf.LoadAbsolute{Off: 6, Size: 2}, // 4: flags, fragment offset
	bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 5},
	bpf.LoadMemShift{Off: 0},          // 6: X = IP header length
	bpf.LoadIndirect{Off: 0, Size: 2}, // 7: UDP source port
	bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: dhcpv4.ServerPort, SkipTrue: 2},
	bpf.LoadIndirect{Off: 2, Size: 2}, // 9: UDP destination port
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: dhcpv4.ClientPort, SkipTrue: 1},
	bpf.RetConstant{Val: 0},       // 11: drop
	bpf.RetConstant{Val: 1 << 16}, // 12: keep
}

// Serve reads IPv4 packets carrying DHCP replies from conn (from
// ListenRivals) until ctx ends, then closes conn and returns nil. It
// returns an error, after closing conn, if the detector is misconfigured or
// conn fails. Packets that do not parse are ignored.
func (d *RivalDetector) Serve(ctx context.Context, conn net.PacketConn) error {
	if err := d.check(); err != nil {
		conn.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		stop()
		conn.Close()
	}()
	limit := &ratelog.Limiter{Interval: d.LogInterval}
	if limit.Interval <= 0 {
		limit.Interval = DefaultRivalLogInterval
	}
	return readLoop(ctx, conn.ReadFrom, "watch dhcp replies", d.logger(), func(b []byte, _ net.Addr) bool {
		if reply, src, ok := parseReply(b); ok {
			d.observe(ctx, reply, src, limit)
		}
		return true
	})
}

// observe judges one DHCP reply seen on the link.
func (d *RivalDetector) observe(ctx context.Context, reply *dhcpv4.DHCPv4, src netip.Addr, limit *ratelog.Limiter) {
	if reply.OpCode != dhcpv4.OpcodeBootReply || reply.MessageType() != dhcpv4.MessageTypeOffer || len(reply.ClientHWAddr) == 0 {
		return
	}
	server := addrFrom(reply.ServerIdentifier())
	if !server.IsValid() {
		server = src
	}
	self := d.ServerIP.Unmap()
	if server == self || src == self || d.Peer != nil && (d.Peer(server) || d.Peer(src)) {
		return
	}
	log := d.logger()
	mac := reply.ClientHWAddr.String()
	ctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	if d.Mode == ModeProxy && !bootOffer(reply) {
		d.Metrics.otherOffer()
		return
	}
	res, err := d.Inventory.Lookup(ctx, Client{HWType: reply.HWType, MAC: reply.ClientHWAddr,
		ClientID: reply.Options.Get(dhcpv4.OptionClientIdentifier), Stage: StageFirmware})
	switch {
	case errors.Is(err, ErrUnknown):
		d.Metrics.otherOffer()
		log.Debug("dhcp offer from another server to a MAC ramboot does not serve", "server", server.String(), "mac", mac, "ip", addrFrom(reply.YourIPAddr).String())
		return
	case err != nil:
		log.Debug("dhcp offer from another server: inventory lookup failed", "server", server.String(), "mac", mac, "err", err)
		return
	}
	d.Metrics.rivalOffer(server.String())
	attrs := []any{"server", server.String(), "mac", mac, "node", res.Hostname,
		"ip", addrFrom(reply.YourIPAddr).String(), "reserved", res.IP.String()}
	ok, held := limit.Allow(server.String())
	if !ok {
		log.Debug("rival dhcp server offered an address to a node ramboot serves", attrs...)
		return
	}
	if held > 0 {
		attrs = append(attrs, "suppressed", held)
	}
	log.Warn("rival dhcp server offered an address to a node ramboot serves; the node may boot from it", attrs...)
}

// bootOffer reports whether an offer tells a client what to boot: a boot
// file, or option 60 naming a PXE or HTTP boot server.
func bootOffer(m *dhcpv4.DHCPv4) bool {
	vc := m.ClassIdentifier()
	return m.BootFileName != "" || m.Options.Has(dhcpv4.OptionBootfileName) ||
		strings.HasPrefix(vc, "PXEClient") || strings.HasPrefix(vc, "HTTPClient")
}

// parseReply decodes an IPv4 packet holding a UDP datagram from port 67 to
// port 68 and its DHCP message. It returns the sender's IP address.
func parseReply(b []byte) (*dhcpv4.DHCPv4, netip.Addr, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return nil, netip.Addr{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl+8 || b[9] != unix.IPPROTO_UDP {
		return nil, netip.Addr{}, false
	}
	src := netip.AddrFrom4([4]byte(b[12:16]))
	udp := b[ihl:]
	if binary.BigEndian.Uint16(udp[0:2]) != dhcpv4.ServerPort || binary.BigEndian.Uint16(udp[2:4]) != dhcpv4.ClientPort {
		return nil, netip.Addr{}, false
	}
	payload := udp[8:]
	if l := int(binary.BigEndian.Uint16(udp[4:6])); l >= 8 && l-8 <= len(payload) {
		payload = payload[:l-8]
	}
	msg, err := dhcpv4.FromBytes(payload)
	if err != nil {
		return nil, netip.Addr{}, false
	}
	return msg, src, true
}

// check reports a misconfigured RivalDetector.
func (d *RivalDetector) check() error {
	if !d.ServerIP.Unmap().Is4() {
		return fmt.Errorf("check dhcp rival detector: ServerIP %q is not IPv4", d.ServerIP)
	}
	if d.Inventory == nil {
		return errors.New("check dhcp rival detector: Inventory is nil")
	}
	return nil
}

// logger returns Logger or a discarding one.
func (d *RivalDetector) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}
