package dhcp

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

var (
	serverIP   = netip.MustParseAddr("10.77.0.1")
	macNode1   = mustMAC("52:54:00:00:00:01")
	macNode2   = mustMAC("52:54:00:00:00:02") // has a per-node BootFile
	macBroken  = mustMAC("52:54:00:00:00:0e") // inventory fails
	macBad     = mustMAC("52:54:00:00:00:0b") // invalid reservation
	macLong    = mustMAC("52:54:00:00:00:0c") // very long script URL
	macNobody  = mustMAC("52:54:00:00:00:77") // unknown
	macRelayed = mustMAC("52:54:00:00:00:88") // reserved 10.88.0.21, behind a relay
	macSecond  = mustMAC("52:54:00:00:00:99") // reserved 10.99.0.21, the head's second subnet
	// ibGUID is the port GUID of an InfiniBand client known by option 61.
	ibGUID    = mustMAC("00:02:c9:03:00:a1:b2:c3")
	xid       = dhcpv4.TransactionID{0xde, 0xad, 0xbe, 0xef}
	errBroken = errors.New("database is closed")
)

func mustMAC(s string) net.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return mac
}

func node1() Reservation {
	return Reservation{
		IP:        netip.MustParseAddr("10.77.0.11"),
		PrefixLen: 24,
		Router:    netip.MustParseAddr("10.77.0.254"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")},
		Hostname:  "n001",
		ScriptURL: "http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:01",
	}
}

// testInventory knows node1, node2, a node on a relayed subnet, one on a
// second local subnet, an InfiniBand interface, a broken lookup and a bad
// reservation. It counts its calls and keeps the last Client asked about.
type testInventory struct {
	calls atomic.Int32
	// extra, when set, adds 52:54:00:dd:00:XX (XX its value) with node1's
	// reservation: a machine adopted while the server runs.
	extra atomic.Pointer[byte]
	mu    sync.Mutex
	last  Client
}

// lastClient returns the Client of the last lookup.
func (inv *testInventory) lastClient() Client {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.last
}

func (inv *testInventory) Lookup(_ context.Context, c Client) (Reservation, error) {
	inv.calls.Add(1)
	inv.mu.Lock()
	inv.last = c
	inv.mu.Unlock()
	if guid, ok := c.GUID(); ok && len(c.MAC) == 0 && guid.String() == ibGUID.String() {
		r := node1()
		r.IP = netip.MustParseAddr("10.77.0.13")
		r.Hostname = "n003-ib0"
		r.MTU = 2044
		return r, nil
	}
	mac := c.MAC
	if x := inv.extra.Load(); x != nil && mac.String() == macN(*x).String() {
		return node1(), nil
	}
	switch mac.String() {
	case macNode1.String():
		return node1(), nil
	case macNode2.String():
		r := node1()
		r.IP = netip.MustParseAddr("10.77.0.12")
		r.Hostname = "n002"
		r.BootFile = "ipxe-quirk.efi"
		r.ScriptURL = "http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:02"
		return r, nil
	case macLong.String():
		r := node1()
		r.ScriptURL = "http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:0c&x=" + strings.Repeat("a", 200)
		return r, nil
	case macRelayed.String():
		return Reservation{
			IP: netip.MustParseAddr("10.88.0.21"), PrefixLen: 24, Router: netip.MustParseAddr("10.88.0.1"),
			Hostname: "r01n21", ScriptURL: "http:///boot/ipxe?mac=" + mac.String(),
		}, nil
	case macSecond.String():
		return Reservation{
			IP: netip.MustParseAddr("10.99.0.21"), PrefixLen: 24,
			Hostname: "m01n21", ScriptURL: "http:///boot/ipxe?mac=" + mac.String(),
		}, nil
	case macBroken.String():
		return Reservation{}, errBroken
	case macBad.String():
		r := node1()
		r.PrefixLen = 0
		return r, nil
	}
	return Reservation{}, fmt.Errorf("node %s: %w", clientName(c), ErrUnknown)
}

func newTestServer() (*Server, *testInventory) {
	inv := &testInventory{}
	return &Server{ServerIP: serverIP, Inventory: inv}, inv
}

// Request builders: what real clients send, reduced to the options that
// matter here.

func pkt(mac net.HardwareAddr, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m := []dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithMessageType(mt),
	}
	p, err := dhcpv4.New(append(m, mods...)...)
	if err != nil {
		panic(err)
	}
	return p
}

// firmware is what OVMF's PXE client or a NIC's PXE ROM adds.
func firmware(arch iana.Arch) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(fmt.Sprintf("PXEClient:Arch:%05d:UNDI:003016", arch))),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1472)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier,
			append([]byte{0}, bytes.Repeat([]byte{0x42}, 16)...))),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionBootfileName,
			dhcpv4.OptionTFTPServerName, dhcpv4.OptionVendorSpecificInformation),
	}
}

// ipxeROM is what iPXE (a NIC ROM under SeaBIOS) sends: option 175 with its
// feature flags, raw user class "iPXE", PXEClient vendor class, arch 0.
func ipxeROM() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1472)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionEtherboot, []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01})),
		dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
	}
}

func requestIP(ip string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(ip)))
}

func serverID(ip string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(ip)))
}

var relayInfo = dhcpv4.OptRelayAgentInfo(
	dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("eth0/1/7")),
	dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(2), []byte("leaf-03")),
)

func relayed() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithGatewayIP(net.ParseIP("10.88.0.1")),
		dhcpv4.WithOption(relayInfo),
		func(d *dhcpv4.DHCPv4) { d.HopCount = 1 },
	}
}

func join(mods ...[]dhcpv4.Modifier) []dhcpv4.Modifier {
	var all []dhcpv4.Modifier
	for _, m := range mods {
		all = append(all, m...)
	}
	return all
}

// handleCase is one request to Handle and what must come of it.
type handleCase struct {
	name   string
	req    *dhcpv4.DHCPv4
	server func(*Server) // adjusts the default test server
	// want: reply message type, or MessageTypeNone for no reply.
	want dhcpv4.MessageType
	// reason is the ignored_total label when want is None.
	reason ignoreReason
	// port, link and peer place the request (default: port 67, no
	// interface addresses, no sender).
	port int
	link []netip.Prefix
	peer netip.AddrPort
	// serverID is the expected server identifier; default 10.77.0.1.
	serverID string
	// ignored is a substring of Event.Ignored.
	ignored string
	// golden names a file under testdata/ holding the full reply.
	golden string
	// dest is where the reply goes, if checked.
	dest  string
	check func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event)
}

func TestHandle(t *testing.T) {
	tests := []handleCase{
		{
			name:   "BIOS iPXE ROM",
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, ipxeROM()...),
			want:   dhcpv4.MessageTypeOffer,
			golden: "bios_ipxe_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.11")
				checkBootFile(t, reply, node1().ScriptURL)
				if got := reply.Options.Get(dhcpv4.OptionEtherboot); !bytes.Equal(got, []byte{176, 1, 1}) {
					t.Errorf("option 175 = % x, want b0 01 01 (no-pxedhcp)", got)
				}
				if reply.Options.Has(dhcpv4.OptionTFTPServerName) {
					t.Errorf("option 66 sent to iPXE")
				}
				if !ev.IPXE || !ev.HasArch || ev.Arch != pxe.ArchBIOS || ev.BootFile != node1().ScriptURL {
					t.Errorf("event = %+v, want iPXE, arch bios, script URL", ev)
				}
			},
		},
		{
			name:   "UEFI firmware",
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			want:   dhcpv4.MessageTypeOffer,
			golden: "uefi_firmware_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.11")
				checkFirmwareBoot(t, reply, "snponly.efi")
				if !reply.IsBroadcast() {
					t.Errorf("broadcast flag cleared, want it kept as the client sent it")
				}
				if got, want := reply.Options.Get(dhcpv4.OptionClientMachineIdentifier), append([]byte{0}, bytes.Repeat([]byte{0x42}, 16)...); !bytes.Equal(got, want) {
					t.Errorf("option 97 = % x, want echo % x", got, want)
				}
				if ev.IPXE || ev.Arch != pxe.ArchEFIx64 || ev.Reply != "offer" || ev.IP != netip.MustParseAddr("10.77.0.11") {
					t.Errorf("event = %+v, want firmware efi-x64 offer of 10.77.0.11", ev)
				}
			},
		},
		{
			name: "UEFI arch 9 request",
			req: pkt(macNode1, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_BC),
				[]dhcpv4.Modifier{requestIP("10.77.0.11"), serverID("10.77.0.1")})...),
			want:   dhcpv4.MessageTypeAck,
			golden: "uefi_bc_ack.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.11")
				checkFirmwareBoot(t, reply, "snponly.efi")
			},
		},
		{
			name: "BIOS firmware without iPXE ROM",
			req:  pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.INTEL_X86PC)...),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkFirmwareBoot(t, reply, "undionly.kpxe")
			},
		},
		{
			name: "iPXE user class only RFC 3004",
			req: pkt(macNode1, dhcpv4.MessageTypeRequest, dhcpv4.WithUserClass("iPXE", true),
				requestIP("10.77.0.11"), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))),
			want: dhcpv4.MessageTypeAck,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkBootFile(t, reply, node1().ScriptURL)
				if !reply.Options.Has(dhcpv4.OptionEtherboot) {
					t.Errorf("no option 175 for iPXE")
				}
			},
		},
		{
			name:    "unknown MAC ignored",
			req:     pkt(macNobody, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:  reasonUnknownMAC,
			ignored: "unknown MAC",
		},
		{
			name: "request for wrong IP NAK",
			dest: "255.255.255.255:68",
			req: pkt(macNode1, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_X86_64),
				[]dhcpv4.Modifier{requestIP("10.77.0.50"), dhcpv4.WithBroadcast(false)})...),
			want:   dhcpv4.MessageTypeNak,
			golden: "wrong_ip_nak.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !isZero(reply.YourIPAddr) || reply.BootFileName != "" || reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
					t.Errorf("NAK carries a lease: yiaddr %s file %q", reply.YourIPAddr, reply.BootFileName)
				}
				if sid := reply.ServerIdentifier(); !sid.Equal(net.ParseIP("10.77.0.1")) {
					t.Errorf("NAK server id = %s, want 10.77.0.1", sid)
				}
			},
		},
		{
			name: "renewing request for wrong ciaddr NAK",
			dest: "255.255.255.255:68", // a NAK never goes to the wrong ciaddr
			req: pkt(macNode1, dhcpv4.MessageTypeRequest,
				dhcpv4.WithClientIP(net.ParseIP("10.77.0.50"))),
			want: dhcpv4.MessageTypeNak,
		},
		{
			name: "request with other server id ignored",
			req: pkt(macNode1, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_X86_64),
				[]dhcpv4.Modifier{requestIP("10.77.0.11"), serverID("10.77.0.2")})...),
			reason:  reasonOtherServer,
			ignored: "not for us (server id 10.77.0.2)",
		},
		{
			name:    "release to other server ignored",
			req:     pkt(macNode1, dhcpv4.MessageTypeRelease, serverID("10.77.0.2")),
			reason:  reasonOtherServer,
			ignored: "not for us",
		},
		{
			name: "per-node BootFile override",
			req:  pkt(macNode2, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.12")
				checkFirmwareBoot(t, reply, "ipxe-quirk.efi")
			},
		},
		{
			name: "per-node BootFile not for iPXE",
			req:  pkt(macNode2, dhcpv4.MessageTypeDiscover, ipxeROM()...),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkBootFile(t, reply, "http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:02")
			},
		},
		{
			name:   "relay",
			dest:   "10.88.0.1:67",
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayed())...),
			want:   dhcpv4.MessageTypeOffer,
			golden: "relay_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !reply.GatewayIPAddr.Equal(net.ParseIP("10.88.0.1")) {
					t.Errorf("giaddr = %s, want 10.88.0.1", reply.GatewayIPAddr)
				}
				if got := reply.Options.Get(dhcpv4.OptionRelayAgentInformation); !bytes.Equal(got, relayInfo.Value.ToBytes()) {
					t.Errorf("option 82 = % x, want echo % x", got, relayInfo.Value.ToBytes())
				}
				if reply.HopCount != 0 {
					t.Errorf("hops = %d, want 0", reply.HopCount)
				}
			},
		},
		{
			name: "relayed request for wrong IP NAK broadcast by relay",
			dest: "10.88.0.1:67",
			req: pkt(macNode1, dhcpv4.MessageTypeRequest, join(relayed(),
				[]dhcpv4.Modifier{requestIP("10.77.0.50"), dhcpv4.WithBroadcast(false)})...),
			want: dhcpv4.MessageTypeNak,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !reply.IsBroadcast() {
					t.Errorf("NAK through a relay without broadcast flag (RFC 2131 4.3.2)")
				}
			},
		},
		{
			name:    "unknown arch ignored",
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_ARM64)...),
			reason:  reasonUnknownArch,
			ignored: "no boot file for arch efi-arm64 (11)",
		},
		{
			name: "unknown arch with custom BootFiles",
			req:  pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_ARM64)...),
			server: func(s *Server) {
				s.BootFiles = map[pxe.Arch]string{pxe.ArchEFIARM64: "arm64/snponly.efi"}
			},
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkFirmwareBoot(t, reply, "arm64/snponly.efi")
			},
		},
		{
			// A node's own OS (systemd-networkd, dhclient) renewing its
			// address: no option 60/93, not iPXE. It gets its address and
			// no boot file, and the event says it is no network boot.
			name: "plain client (a node's OS) gets its address and no boot file",
			req:  pkt(macNode1, dhcpv4.MessageTypeDiscover),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.11")
				if reply.BootFileName != "" || reply.Options.Has(dhcpv4.OptionBootfileName) || reply.Options.Has(dhcpv4.OptionTFTPServerName) {
					t.Errorf("boot file sent to a plain client: %q", reply.BootFileName)
				}
				if ev.HasArch || ev.Arch != pxe.ArchBIOS || ev.NetBoot || ev.Stage != StageOS {
					t.Errorf("event arch = %v/%v netboot %v stage %s, want absent/bios, no network boot", ev.Arch, ev.HasArch, ev.NetBoot, ev.Stage)
				}
			},
		},
		{
			name: "inform",
			dest: "10.77.0.11:68",
			req: pkt(macNode1, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(net.ParseIP("10.77.0.11")),
				dhcpv4.WithBroadcast(false)),
			want: dhcpv4.MessageTypeAck,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !isZero(reply.YourIPAddr) || reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
					t.Errorf("ACK to INFORM has yiaddr %s / lease time", reply.YourIPAddr)
				}
				if !reply.ClientIPAddr.Equal(net.ParseIP("10.77.0.11")) {
					t.Errorf("ciaddr = %s, want the client's", reply.ClientIPAddr)
				}
				if got := reply.SubnetMask(); net.IP(got).String() != "255.255.255.0" {
					t.Errorf("mask = %s", net.IP(got))
				}
			},
		},
		{
			name: "renewing request acked to ciaddr",
			dest: "10.77.0.11:68",
			req: pkt(macNode1, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(net.ParseIP("10.77.0.11")),
				dhcpv4.WithBroadcast(false)),
			want: dhcpv4.MessageTypeAck,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.11")
			},
		},
		{
			name: "release",
			req:  pkt(macNode1, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(net.ParseIP("10.77.0.11")), serverID("10.77.0.1")),
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if ev.Request != "release" || ev.IP != netip.MustParseAddr("10.77.0.11") {
					t.Errorf("event = %+v, want release of 10.77.0.11", ev)
				}
			},
		},
		{
			name: "decline",
			req:  pkt(macNode1, dhcpv4.MessageTypeDecline, requestIP("10.77.0.11"), serverID("10.77.0.1")),
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if ev.Request != "decline" || ev.IP != netip.MustParseAddr("10.77.0.11") {
					t.Errorf("event = %+v, want decline of 10.77.0.11", ev)
				}
			},
		},
		{
			name:    "BOOTREPLY ignored",
			req:     pkt(macNode1, dhcpv4.MessageTypeOffer, func(d *dhcpv4.DHCPv4) { d.OpCode = dhcpv4.OpcodeBootReply }),
			reason:  reasonNotRequest,
			ignored: "not a BOOTREQUEST",
		},
		{
			name:    "BOOTP ignored",
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, dhcpv4.WithoutOption(dhcpv4.OptionDHCPMessageType)),
			reason:  reasonNoType,
			ignored: "BOOTP",
		},
		{
			name:    "DHCPOFFER as request ignored",
			req:     pkt(macNode1, dhcpv4.MessageTypeOffer),
			reason:  reasonUnsupported,
			ignored: "unsupported message type",
		},
		{
			name: "no chaddr ignored",
			req: pkt(macNode1, dhcpv4.MessageTypeDiscover, func(d *dhcpv4.DHCPv4) {
				d.ClientHWAddr = nil
			}),
			reason: reasonNoHWAddr,
		},
		{
			name: "long script URL trimmed to fit 576",
			req: pkt(macLong, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
				dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, macLong...)))),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if n := len(reply.ToBytes()); n > 576-28 {
					t.Errorf("reply is %d bytes, client takes %d", n, 576-28)
				}
				if reply.BootFileName != "" {
					t.Errorf("file field holds a truncated URL %q", reply.BootFileName)
				}
				if got := reply.BootFileNameOption(); got != ev.BootFile || len(got) < 200 {
					t.Errorf("option 67 = %q, want the whole URL", got)
				}
			},
		},
		{
			name: "reply too large ignored",
			req: pkt(macLong, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
				dhcpv4.WithGatewayIP(net.ParseIP("10.88.0.1")),
				dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, bytes.Repeat([]byte{1}, 250)))),
			reason:  reasonReplyTooLarge,
			ignored: "reply too large",
		},
		{
			name: "large reply fits a larger option 57",
			req: pkt(macLong, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
				dhcpv4.WithGatewayIP(net.ParseIP("10.88.0.1")),
				dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1500)),
				dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, bytes.Repeat([]byte{1}, 250)))),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionDomainNameServer, dhcpv4.OptionHostName, dhcpv4.OptionRelayAgentInformation} {
					if !reply.Options.Has(code) {
						t.Errorf("option %s trimmed although the reply fits", code)
					}
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}

// run sends the case's request to a test server's Handle and checks the
// outcome.
func (tt handleCase) run(t *testing.T) {
	s, _ := newTestServer()
	if tt.server != nil {
		tt.server(s)
	}
	before := time.Now()
	r := Request{Msg: tt.req, Port: tt.port, LinkAddrs: tt.link, Peer: tt.peer}
	reply, ev, err := s.Handle(t.Context(), r)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if ev.Time.Before(before) || !bytes.Equal(ev.MAC, tt.req.ClientHWAddr) {
		t.Errorf("event MAC %s time %v, want %s and now", ev.MAC, ev.Time, tt.req.ClientHWAddr)
	}
	if tt.want == dhcpv4.MessageTypeNone {
		if reply != nil {
			t.Fatalf("got reply, want none:\n%s", reply.Summary())
		}
		if ev.reason != tt.reason || !strings.Contains(ev.Ignored, tt.ignored) {
			t.Errorf("ignored = %q (reason %q), want %q (reason %q)", ev.Ignored, ev.reason, tt.ignored, tt.reason)
		}
		if ev.Reply != "" {
			t.Errorf("event reply = %q, want empty", ev.Reply)
		}
		if tt.check != nil {
			tt.check(t, reply, ev)
		}
		return
	}
	if reply == nil {
		t.Fatalf("no reply, want %s; event %+v", tt.want, ev)
	}
	if got := reply.MessageType(); got != tt.want {
		t.Fatalf("reply type = %s, want %s", got, tt.want)
	}
	if ev.Ignored != "" || ev.reason != "" {
		t.Errorf("event says ignored (%q) but a reply was sent", ev.Ignored)
	}
	if string(ev.Reply) != strings.ToLower(tt.want.String()) {
		t.Errorf("event reply = %q, want %q", ev.Reply, strings.ToLower(tt.want.String()))
	}
	sid := tt.serverID
	if sid == "" {
		sid = "10.77.0.1"
	}
	checkCommon(t, tt.req, reply, ev, sid)
	if got, _ := s.replyAddr(r, reply); tt.dest != "" && got.String() != tt.dest {
		t.Errorf("reply goes to %s, want %s", got, tt.dest)
	}
	if tt.check != nil {
		tt.check(t, reply, ev)
	}
	if tt.golden != "" {
		checkGolden(t, tt.golden, goldenText(s, r, reply))
	}
}

// checkCommon checks what every reply must do.
func checkCommon(t *testing.T, req, reply *dhcpv4.DHCPv4, ev Event, server string) {
	t.Helper()
	if reply.OpCode != dhcpv4.OpcodeBootReply || reply.TransactionID != req.TransactionID ||
		!bytes.Equal(reply.ClientHWAddr, req.ClientHWAddr) || reply.HWType != req.HWType {
		t.Errorf("reply header does not answer the request: %s", reply)
	}
	if want := req.Flags; reply.MessageType() != dhcpv4.MessageTypeNak && reply.Flags != want {
		t.Errorf("flags = %#x, want %#x as the client sent", reply.Flags, want)
	}
	if sid := reply.ServerIdentifier(); !sid.Equal(net.ParseIP(server)) {
		t.Errorf("server id = %s, want %s", sid, server)
	}
	if reply.Options.Has(dhcpv4.OptionVendorSpecificInformation) {
		t.Errorf("reply carries option 43")
	}
	switch vc := reply.ClassIdentifier(); {
	case ev.Stage == StageHTTPBoot && reply.MessageType() != dhcpv4.MessageTypeNak:
		if vc != "HTTPClient" {
			t.Errorf("HTTP boot reply has option 60 %q, want HTTPClient", vc)
		}
	case ev.Proxy:
		if vc != "PXEClient" {
			t.Errorf("proxy reply has option 60 %q, want PXEClient", vc)
		}
	case reply.Options.Has(dhcpv4.OptionClassIdentifier):
		t.Errorf("reply carries option 60 %q, which lease replies must not have", vc)
	}
	if b := reply.ToBytes(); reply.Options.Has(dhcpv4.OptionRelayAgentInformation) && !relayLast(b) {
		t.Errorf("option 82 is not the last option:\n%s", hex.Dump(b))
	}
	if !bytes.Equal(reply.Options.Get(dhcpv4.OptionClientIdentifier), req.Options.Get(dhcpv4.OptionClientIdentifier)) {
		t.Errorf("option 61 not echoed")
	}
	back, err := dhcpv4.FromBytes(reply.ToBytes())
	if err != nil {
		t.Fatalf("reply does not decode: %v", err)
	}
	if back.Summary() != reply.Summary() {
		t.Errorf("reply changes on the wire:\n%s\nvs\n%s", back.Summary(), reply.Summary())
	}
	size := maxReplySize(req)
	if n := len(reply.ToBytes()); n > size {
		t.Errorf("reply is %d bytes, client accepts %d", n, size)
	}
}

func checkLease(t *testing.T, reply *dhcpv4.DHCPv4, ip string) {
	t.Helper()
	if !reply.YourIPAddr.Equal(net.ParseIP(ip)) {
		t.Errorf("yiaddr = %s, want %s", reply.YourIPAddr, ip)
	}
	if got := net.IP(reply.SubnetMask()).String(); got != "255.255.255.0" {
		t.Errorf("mask = %s, want 255.255.255.0", got)
	}
	if r := reply.Router(); len(r) != 1 || !r[0].Equal(net.ParseIP("10.77.0.254")) {
		t.Errorf("router = %v, want 10.77.0.254", r)
	}
	if d := reply.DNS(); len(d) != 2 || !d[0].Equal(net.ParseIP("10.77.0.1")) || !d[1].Equal(net.ParseIP("10.77.0.2")) {
		t.Errorf("dns = %v, want 10.77.0.1 10.77.0.2", d)
	}
	if h := reply.HostName(); h == "" {
		t.Errorf("no host name")
	}
	if lt := reply.IPAddressLeaseTime(0); lt != 7*24*time.Hour {
		t.Errorf("lease time = %v, want 168h", lt)
	}
	if !reply.ServerIPAddr.Equal(net.ParseIP("10.77.0.1")) {
		t.Errorf("siaddr = %s, want 10.77.0.1", reply.ServerIPAddr)
	}
}

func checkBootFile(t *testing.T, reply *dhcpv4.DHCPv4, file string) {
	t.Helper()
	if reply.BootFileName != file || reply.BootFileNameOption() != file {
		t.Errorf("file = %q, option 67 = %q, want %q", reply.BootFileName, reply.BootFileNameOption(), file)
	}
}

func checkFirmwareBoot(t *testing.T, reply *dhcpv4.DHCPv4, file string) {
	t.Helper()
	checkBootFile(t, reply, file)
	if got := reply.TFTPServerName(); got != "10.77.0.1" {
		t.Errorf("option 66 = %q, want 10.77.0.1", got)
	}
	if !reply.ServerIPAddr.Equal(net.ParseIP("10.77.0.1")) {
		t.Errorf("siaddr = %s, want 10.77.0.1", reply.ServerIPAddr)
	}
	if reply.Options.Has(dhcpv4.OptionEtherboot) {
		t.Errorf("option 175 sent to firmware")
	}
}

// goldenText is the full reply: where it goes, its summary and its bytes.
func goldenText(s *Server, r Request, reply *dhcpv4.DHCPv4) string {
	to, unicast := s.replyAddr(r, reply)
	how := ""
	if unicast {
		how = " (unicast to chaddr)"
	}
	return fmt.Sprintf("to %s%s\n%s\n%s", to, how, reply.Summary(), hex.Dump(reply.ToBytes()))
}

// relayLast reports whether option 82 is the last option of an encoded
// message (RFC 3046 2.1).
func relayLast(b []byte) bool {
	last := -1
	for i := 240; i < len(b); {
		code := b[i]
		if code == 255 {
			break
		}
		if code == 0 {
			i++
			continue
		}
		if i+1 >= len(b) {
			return false
		}
		last = int(code)
		i += 2 + int(b[i+1])
	}
	return last == 82
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (go test ./pxe/dhcp -update writes it): %v", err)
	}
	if got != string(want) {
		t.Errorf("reply differs from %s (rewrite with -update if intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestHandleErrors(t *testing.T) {
	req := func(mac net.HardwareAddr) Request {
		return Request{Msg: pkt(mac, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...)}
	}
	t.Run("inventory error", func(t *testing.T) {
		s, _ := newTestServer()
		reply, ev, err := s.Handle(t.Context(), req(macBroken))
		if !errors.Is(err, errBroken) || reply != nil {
			t.Fatalf("Handle = %v, %v, want nil, %v", reply, err, errBroken)
		}
		if !strings.Contains(err.Error(), macBroken.String()) {
			t.Errorf("error %q does not name the MAC", err)
		}
		if ev.reason != reasonInventory {
			t.Errorf("reason = %q, want %q", ev.reason, reasonInventory)
		}
	})
	t.Run("invalid reservation", func(t *testing.T) {
		s, _ := newTestServer()
		reply, _, err := s.Handle(t.Context(), req(macBad))
		if err == nil || reply != nil || !strings.Contains(err.Error(), "prefix length 0") {
			t.Fatalf("Handle = %v, %v, want a prefix length error", reply, err)
		}
	})
	t.Run("no server address", func(t *testing.T) {
		s, _ := newTestServer()
		s.ServerIP = netip.Addr{}
		if _, _, err := s.Handle(t.Context(), req(macNode1)); err == nil || !strings.Contains(err.Error(), "no server address") {
			t.Fatalf("Handle without ServerIP or interface address = %v, want a no server address error", err)
		}
	})
	t.Run("bad configuration", func(t *testing.T) {
		s, _ := newTestServer()
		s.Mode = "dhcp-relay"
		s.Subnets = []Subnet{{Prefix: netip.MustParsePrefix("10.77.0.1/24")}, {Prefix: netip.MustParsePrefix("10.77.0.0/16")}}
		err := s.Serve(t.Context(), nopConn{})
		for _, want := range []string{`unknown dhcp mode "dhcp-relay"`, "host bits set", "overlaps"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Serve with a bad configuration = %v, want it to say %q", err, want)
			}
		}
	})
	t.Run("no inventory", func(t *testing.T) {
		s := &Server{ServerIP: serverIP}
		if _, _, err := s.Handle(t.Context(), req(macNode1)); err == nil {
			t.Fatal("Handle without Inventory succeeded")
		}
	})
	t.Run("other server id skips the inventory", func(t *testing.T) {
		s, inv := newTestServer()
		s.Handle(t.Context(), Request{Msg: pkt(macNode1, dhcpv4.MessageTypeRequest, serverID("10.77.0.2"))})
		if n := inv.calls.Load(); n != 0 {
			t.Errorf("inventory called %d times for another server's transaction", n)
		}
	})
}

func TestReservationValidate(t *testing.T) {
	good := node1()
	if err := good.Validate(); err != nil {
		t.Fatalf("valid reservation: %v", err)
	}
	mapped := good
	mapped.IP = netip.AddrFrom16(good.IP.As16())
	if err := mapped.Validate(); err != nil {
		t.Errorf("IPv4-mapped address rejected: %v", err)
	}
	bad := Reservation{IP: netip.MustParseAddr("fd00::1"), PrefixLen: 33,
		Router: netip.MustParseAddr("fd00::2"), DNS: []netip.Addr{{}}}
	err := bad.Validate()
	for _, want := range []string{"not IPv4", "prefix length 33", "router fd00::2", "name server"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}

func TestLeaseTime(t *testing.T) {
	for _, tt := range []struct {
		set, want time.Duration
	}{
		{0, 7 * 24 * time.Hour},
		{time.Hour, time.Hour},
		{200 * 365 * 24 * time.Hour, dhcpv4.MaxLeaseTime - time.Second},
	} {
		s := &Server{LeaseTime: tt.set}
		if got := s.leaseTime(); got != tt.want {
			t.Errorf("LeaseTime %v: sent %v, want %v", tt.set, got, tt.want)
		}
	}
}

// nopConn is a PacketConn that is never read.
type nopConn struct{ net.PacketConn }

func (nopConn) Close() error { return nil }
