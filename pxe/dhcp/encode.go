package dhcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Why this exists: the library's DHCPv4.ToBytes sorts the option codes into
// a new slice and grows its buffer as it goes, trimming a reply to the
// client's maximum size encoded it once per option tried, and FromBytes
// allocates every address and option value on its own. On the reply path
// of a boot storm that was more than half of the allocations and a third
// of the CPU time. appendMessage writes the same bytes
// (TestEncodeMatchesLibrary and FuzzServe hold it to that) into a buffer
// the worker reuses, messageSize computes the length without encoding,
// and decodeMessage parses like FromBytes (FuzzDecode) from one copy of
// the packet.

const (
	// headerLen is the fixed BOOTP header plus the magic cookie.
	headerLen = 236 + 4
	// bootpMinLen is the smallest message BOOTP relays accept (RFC 951).
	bootpMinLen  = 300
	optAgentInfo = uint8(dhcpv4.OptionRelayAgentInformation)
)

var magicCookie = [4]byte{99, 130, 83, 99}

// messageSize returns len(m.ToBytes()) without encoding m.
func messageSize(m *dhcpv4.DHCPv4) int {
	n := headerLen + 1 // the End option
	for code, v := range m.Options {
		if code == 0 || code == 255 {
			continue
		}
		n += optionLen(len(v))
	}
	return max(n, bootpMinLen)
}

// optionLen is the encoded size of an option with n bytes of data:
// RFC 3396 splits data longer than 255 bytes into several options.
func optionLen(n int) int {
	if n == 0 {
		return 2
	}
	return n + 2*((n+254)/255)
}

// appendMessage appends m as m.ToBytes() encodes it to b.
func appendMessage(b []byte, m *dhcpv4.DHCPv4) []byte {
	b = append(b, byte(m.OpCode), byte(m.HWType), byte(len(m.ClientHWAddr)), m.HopCount)
	b = append(b, m.TransactionID[:]...)
	b = append(b, byte(m.NumSeconds>>8), byte(m.NumSeconds), byte(m.Flags>>8), byte(m.Flags))
	for _, ip := range []net.IP{m.ClientIPAddr, m.YourIPAddr, m.ServerIPAddr, m.GatewayIPAddr} {
		b = appendIP4(b, ip)
	}
	var chaddr [16]byte
	copy(chaddr[:], m.ClientHWAddr)
	b = append(b, chaddr[:]...)
	var sname [64]byte
	copy(sname[:63], m.ServerHostName)
	b = append(b, sname[:]...)
	var file [128]byte
	copy(file[:127], m.BootFileName)
	b = append(b, file[:]...)
	b = append(b, magicCookie[:]...)
	// Options in code order, Relay Agent Information last (RFC 3046).
	var codes [255]uint8
	n := 0
	for code := range m.Options {
		if code != 0 && code != 255 && code != optAgentInfo {
			codes[n] = code
			n++
		}
	}
	sorted := codes[:n]
	for i := 1; i < len(sorted); i++ { // insertion sort: a reply has about ten
		for j := i; j > 0 && sorted[j] < sorted[j-1]; j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	for _, code := range sorted {
		b = appendOption(b, code, m.Options[code])
	}
	if v, ok := m.Options[optAgentInfo]; ok {
		b = appendOption(b, optAgentInfo, v)
	}
	b = append(b, 255)
	for len(b) < bootpMinLen {
		b = append(b, 0)
	}
	return b
}

// appendIP4 appends the 4 bytes of ip, or zeros when it is not IPv4.
func appendIP4(b []byte, ip net.IP) []byte {
	if ip4 := ip.To4(); ip4 != nil {
		return append(b, ip4...)
	}
	return append(b, 0, 0, 0, 0)
}

// appendOption appends one option, split into 255-byte pieces.
func appendOption(b []byte, code uint8, v []byte) []byte {
	if len(v) == 0 {
		return append(b, code, 0)
	}
	for len(v) > 0 {
		n := min(len(v), 255)
		b = append(b, code, byte(n))
		b = append(b, v[:n]...)
		v = v[n:]
	}
	return b
}

// errShortMessage is decodeMessage's error for less than a BOOTP header
// and magic cookie.
var errShortMessage = errors.New("malformed DHCP packet: shorter than the BOOTP header and magic cookie")

// decodeMessage parses b as dhcpv4.FromBytes does (FuzzDecode holds it to
// the same result and the same failures), with one copy of b that the
// message's addresses and option values point into, instead of one
// allocation per field and option.
func decodeMessage(q []byte) (*dhcpv4.DHCPv4, error) {
	if len(q) < headerLen {
		return nil, errShortMessage
	}
	b := bytes.Clone(q)
	if [4]byte(b[236:240]) != magicCookie {
		return nil, fmt.Errorf("malformed DHCP packet: got magic cookie %v, want %v", b[236:240], magicCookie[:])
	}
	hlen := int(min(b[2], 16))
	p := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeType(b[0]),
		HWType:        iana.HWType(b[1]),
		HopCount:      b[3],
		TransactionID: dhcpv4.TransactionID(b[4:8]),
		NumSeconds:    binary.BigEndian.Uint16(b[8:]),
		Flags:         binary.BigEndian.Uint16(b[10:]),
		ClientIPAddr:  net.IP(b[12:16:16]),
		YourIPAddr:    net.IP(b[16:20:20]),
		ServerIPAddr:  net.IP(b[20:24:24]),
		GatewayIPAddr: net.IP(b[24:28:28]),
		ClientHWAddr:  net.HardwareAddr(b[28 : 28+hlen : 28+hlen]),
		Options:       make(dhcpv4.Options),
	}
	p.ServerHostName = cString(b[44:108])
	p.BootFileName = cString(b[108:236])
	opts := b[headerLen:]
	if len(opts) == 0 {
		return p, nil // the library accepts a message without options
	}
	for i := 0; ; {
		if i >= len(opts) {
			return nil, io.ErrUnexpectedEOF // no End option
		}
		code := opts[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 {
			return p, nil
		}
		if i+1 >= len(opts) {
			return nil, io.ErrUnexpectedEOF
		}
		n := int(opts[i+1])
		if i+2+n > len(opts) {
			return nil, fmt.Errorf("error collecting options: option %d: %d bytes, %d left", code, n, len(opts)-i-2)
		}
		v := opts[i+2 : i+2+n : i+2+n]
		// RFC 3396: repeated options are concatenated. A value of length
		// zero is nil, as the library has it.
		if old, ok := p.Options[code]; ok {
			p.Options[code] = append(old, v...)
		} else if n > 0 {
			p.Options[code] = v
		} else {
			p.Options[code] = nil
		}
		i += 2 + n
	}
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
