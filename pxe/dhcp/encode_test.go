package dhcp

import (
	"bytes"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// TestEncodeMatchesLibrary: the reply path's encoder writes exactly what
// the library's ToBytes writes, and messageSize is its length, for
// messages with long (split) options, empty ones, option 82, no chaddr and
// a long file field.
func TestEncodeMatchesLibrary(t *testing.T) {
	msgs := map[string]*dhcpv4.DHCPv4{
		"firmware":   pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
		"relayed":    pkt(macNode1, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_BC), relayed())...),
		"infiniband": pkt(nil, dhcpv4.MessageTypeDiscover, infiniBand(ibGUID)...),
		"long options": pkt(macNode1, dhcpv4.MessageTypeOffer,
			dhcpv4.WithOption(dhcpv4.OptBootFileName(strings.Repeat("u", 600))),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, bytes.Repeat([]byte{7}, 256))),
			dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(224), nil)),
			func(d *dhcpv4.DHCPv4) {
				d.BootFileName = strings.Repeat("f", 200)
				d.ServerHostName = strings.Repeat("s", 90)
				d.YourIPAddr = net.ParseIP("10.77.0.11")
				d.HopCount, d.NumSeconds = 3, 513
			}),
		"empty": {OpCode: dhcpv4.OpcodeBootReply, Options: dhcpv4.Options{}},
	}
	for name, m := range msgs {
		want := m.ToBytes()
		if got := appendMessage(nil, m); !bytes.Equal(got, want) {
			t.Errorf("%s: appendMessage\n% x\nwant\n% x", name, got, want)
		}
		if n := messageSize(m); n != len(want) {
			t.Errorf("%s: messageSize %d, want %d", name, n, len(want))
		}
	}
}

// FuzzDecode: decodeMessage accepts what dhcpv4.FromBytes accepts, refuses
// what it refuses, and yields the same message.
func FuzzDecode(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	// A header and cookie with no options at all: the library accepts it
	// (an early decodeMessage did not).
	f.Add(append(make([]byte, 236), 99, 130, 83, 99))
	f.Fuzz(func(t *testing.T, b []byte) {
		want, werr := dhcpv4.FromBytes(b)
		got, gerr := decodeMessage(b)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("FromBytes error %v, decodeMessage error %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeMessage\n%#v\nFromBytes\n%#v", got, want)
		}
	})
}
