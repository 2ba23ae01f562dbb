package dhcp

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// replyMsg is a reply being built: the message, and an arena its option
// values and addresses are cut from, so that a reply costs a handful of
// allocations instead of one or two per option (the library's option
// constructors each encode into a new slice).
type replyMsg struct {
	*dhcpv4.DHCPv4
	arena []byte
}

// cut appends v to the arena and returns the appended bytes, capacity
// capped so that a later append cannot write over the next value.
func (r *replyMsg) cut(v []byte) []byte {
	start := len(r.arena)
	r.arena = append(r.arena, v...)
	return r.arena[start:len(r.arena):len(r.arena)]
}

// set sets option code to v.
func (r *replyMsg) set(code dhcpv4.OptionCode, v ...byte) { r.Options[code.Code()] = r.cut(v) }

// setString sets option code to s.
func (r *replyMsg) setString(code dhcpv4.OptionCode, s string) {
	start := len(r.arena)
	r.arena = append(r.arena, s...)
	r.Options[code.Code()] = r.arena[start:len(r.arena):len(r.arena)]
}

// setIP sets option code to the IPv4 address a.
func (r *replyMsg) setIP(code dhcpv4.OptionCode, a netip.Addr) {
	a4 := a.Unmap().As4()
	r.set(code, a4[:]...)
}

// setIPs sets option code to the IPv4 addresses as.
func (r *replyMsg) setIPs(code dhcpv4.OptionCode, as []netip.Addr) {
	start := len(r.arena)
	for _, a := range as {
		a4 := a.Unmap().As4()
		r.arena = append(r.arena, a4[:]...)
	}
	r.Options[code.Code()] = r.arena[start:len(r.arena):len(r.arena)]
}

// setUint32 and setUint16 set option code to a big-endian number.
func (r *replyMsg) setUint32(code dhcpv4.OptionCode, v uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	r.set(code, b[:]...)
}

func (r *replyMsg) setUint16(code dhcpv4.OptionCode, v uint16) {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	r.set(code, b[:]...)
}

// ip returns a as a net.IP cut from the arena.
func (r *replyMsg) ip(a netip.Addr) net.IP {
	a4 := a.Unmap().As4()
	return net.IP(r.cut(a4[:]))
}

// messageType sets option 53.
func (r *replyMsg) messageType(mt dhcpv4.MessageType) { r.set(dhcpv4.OptionDHCPMessageType, byte(mt)) }

// maskBytes returns the subnet mask of a prefix length, big-endian.
func maskBytes(bits int) [4]byte {
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], ^uint32(0)<<(32-bits))
	return m
}

// msgType returns option 53 of m, MessageTypeNone when it is missing or
// malformed; m.MessageType() decodes it through a new buffer each time.
func msgType(m *dhcpv4.DHCPv4) dhcpv4.MessageType {
	if v := m.Options[dhcpv4.OptionDHCPMessageType.Code()]; len(v) == 1 {
		return dhcpv4.MessageType(v[0])
	}
	return dhcpv4.MessageTypeNone
}
