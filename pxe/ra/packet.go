package ra

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// ICMPv6 and Neighbor Discovery constants (RFC 4861).
const (
	typeRouterSolicitation  = 133
	typeRouterAdvertisement = 134

	optSourceLinkLayerAddress = 1
	optPrefixInformation      = 3

	prefixFlagOnLink     = 0x80 // L
	prefixFlagAutonomous = 0x40 // A

	// ndHopLimit is the IPv6 hop limit every Neighbor Discovery message is
	// sent with and must arrive with (RFC 4861 6.1).
	ndHopLimit = 255
)

// Lifetimes of advertised prefixes, the dnsmasq defaults: short enough that
// addresses go away within a day once the head stops advertising.
const (
	prefixValidLifetime     = 24 * 60 * 60 // seconds
	prefixPreferredLifetime = 4 * 60 * 60  // seconds
)

// advert is the content of one Router Advertisement.
type advert struct {
	routerLifetime uint16 // seconds; 0: not a default router
	linkAddr       net.HardwareAddr
	prefixes       []netip.Prefix // /64s
}

// marshal returns the ICMPv6 message with a zero checksum, which the kernel
// fills in for ICMPv6 raw sockets.
//
//	0    type 134 | code 0 | checksum (2)
//	4    cur hop limit 0 (unspecified) | flags 0 (no M, no O) | router lifetime (2)
//	8    reachable time 0 (4) | retrans timer 0 (4)
//	16   options: source link-layer address, prefix information...
func (a advert) marshal() []byte {
	body := make([]byte, 12, 12+8+32*len(a.prefixes))
	binary.BigEndian.PutUint16(body[2:4], a.routerLifetime)
	if len(a.linkAddr) > 0 {
		units := (2 + len(a.linkAddr) + 7) / 8
		opt := make([]byte, units*8)
		opt[0], opt[1] = optSourceLinkLayerAddress, byte(units)
		copy(opt[2:], a.linkAddr)
		body = append(body, opt...)
	}
	for _, p := range a.prefixes {
		var opt [32]byte
		opt[0], opt[1] = optPrefixInformation, 4
		opt[2] = byte(p.Bits())
		opt[3] = prefixFlagOnLink | prefixFlagAutonomous
		binary.BigEndian.PutUint32(opt[4:8], prefixValidLifetime)
		binary.BigEndian.PutUint32(opt[8:12], prefixPreferredLifetime)
		a16 := p.Masked().Addr().As16()
		copy(opt[16:], a16[:])
		body = append(body, opt[:]...)
	}
	m := icmp.Message{Type: ipv6.ICMPTypeRouterAdvertisement, Body: &icmp.RawBody{Data: body}}
	b, err := m.Marshal(nil)
	if err != nil {
		// RawBody and a nil pseudo-header cannot fail.
		panic(fmt.Sprintf("marshal router advertisement: %v", err))
	}
	return b
}

// solicitation is a valid Router Solicitation.
type solicitation struct {
	src      netip.Addr
	linkAddr net.HardwareAddr // from the source link-layer address option; may be nil
}

// errMalformed is wrapped by every parseRS error.
var errMalformed = errors.New("malformed router solicitation")

// parseRS validates a Router Solicitation as RFC 4861 6.1.1 asks: IP hop
// limit 255 (hopLimit < 0 when the kernel did not report it), ICMP code 0,
// at least 8 octets, every option with a non-zero length that fits, and no
// source link-layer address option from the unspecified address.
func parseRS(b []byte, src netip.Addr, hopLimit int) (solicitation, error) {
	rs := solicitation{src: src}
	switch {
	case len(b) < 8:
		return rs, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	case b[0] != typeRouterSolicitation:
		return rs, fmt.Errorf("%w: ICMPv6 type %d", errMalformed, b[0])
	case b[1] != 0:
		return rs, fmt.Errorf("%w: code %d", errMalformed, b[1])
	case hopLimit >= 0 && hopLimit != ndHopLimit:
		return rs, fmt.Errorf("%w: hop limit %d", errMalformed, hopLimit)
	}
	for opts := b[8:]; len(opts) > 0; {
		if len(opts) < 2 {
			return rs, fmt.Errorf("%w: truncated option", errMalformed)
		}
		n := int(opts[1]) * 8
		switch {
		case n == 0:
			return rs, fmt.Errorf("%w: option %d has length 0", errMalformed, opts[0])
		case n > len(opts):
			return rs, fmt.Errorf("%w: option %d overruns the message", errMalformed, opts[0])
		}
		if opts[0] == optSourceLinkLayerAddress {
			if src.IsUnspecified() {
				return rs, fmt.Errorf("%w: link-layer address from the unspecified address", errMalformed)
			}
			if n == 8 { // Ethernet: 6 octets
				rs.linkAddr = net.HardwareAddr(append([]byte(nil), opts[2:8]...))
			}
		}
		opts = opts[n:]
	}
	return rs, nil
}
