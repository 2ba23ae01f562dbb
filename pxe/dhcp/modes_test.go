package dhcp

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe"
)

// bootServerRequest is what EDK2 sends to port 4011 after a proxy offer:
// a DHCPREQUEST from its new address (ciaddr, from the site's DHCP
// server), to the proxy's server identifier, broadcast flag clear.
func bootServerRequest(mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	return pkt(mac, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_X86_64), []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(false),
		dhcpv4.WithClientIP(net.ParseIP("10.77.0.50")),
		serverID("10.77.0.1"),
	}, mods)...)
}

// httpBoot is what OVMF's HTTP boot client sends (UEFI 2.x, 24.7).
func httpBoot(arch iana.Arch) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:" + pad5(uint16(arch)) + ":UNDI:003001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(arch)),
		dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier,
			append([]byte{0}, bytes.Repeat([]byte{0x42}, 16)...))),
	}
}

func pad5(n uint16) string {
	s := []byte("00000")
	for i := 4; n > 0 && i >= 0; i-- {
		s[i] = byte('0' + n%10)
		n /= 10
	}
	return string(s)
}

// infiniBand is an IPoIB client (RFC 4390): htype 32, no chaddr, option
// 61 = 0xff, IAID, DUID-LL... ending in the port GUID.
func infiniBand(guid net.HardwareAddr) []dhcpv4.Modifier {
	id := append([]byte{0xff, 0, 0, 0, 1, 0, 4}, guid...)
	return []dhcpv4.Modifier{
		func(d *dhcpv4.DHCPv4) { d.HWType, d.ClientHWAddr = HWTypeInfiniBand, nil },
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(id)),
	}
}

func relayedVia(giaddr string) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithGatewayIP(net.ParseIP(giaddr)),
		dhcpv4.WithOption(relayInfo),
		func(d *dhcpv4.DHCPv4) { d.HopCount = 1 },
	}
}

var (
	link77     = []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}
	twoSubnets = []Subnet{
		{Prefix: netip.MustParsePrefix("10.77.0.0/24")},
		{Prefix: netip.MustParsePrefix("10.88.0.0/24")},
		{Prefix: netip.MustParsePrefix("10.99.0.0/24")},
	}
)

func proxyMode(s *Server) { s.Mode = ModeProxy }

func checkProxy(t *testing.T, reply *dhcpv4.DHCPv4, ev Event, file string) {
	t.Helper()
	if !isZero(reply.YourIPAddr) || reply.Options.Has(dhcpv4.OptionIPAddressLeaseTime) ||
		reply.Options.Has(dhcpv4.OptionSubnetMask) || reply.Options.Has(dhcpv4.OptionRouter) {
		t.Errorf("proxy reply hands out an address:\n%s", reply.Summary())
	}
	if reply.ClassIdentifier() != "PXEClient" {
		t.Errorf("option 60 = %q, want PXEClient", reply.ClassIdentifier())
	}
	if reply.BootFileName != file || reply.BootFileNameOption() != file {
		t.Errorf("file %q, option 67 %q, want %q", reply.BootFileName, reply.BootFileNameOption(), file)
	}
	if !reply.ServerIPAddr.Equal(net.ParseIP("10.77.0.1")) {
		t.Errorf("siaddr = %s", reply.ServerIPAddr)
	}
	if !ev.Proxy || ev.IP.IsValid() || ev.BootFile != file {
		t.Errorf("event = %+v, want a proxy reply with %s and no address", ev, file)
	}
}

func TestHandleProxyAndBootServer(t *testing.T) {
	uuid := append([]byte{0}, bytes.Repeat([]byte{0x42}, 16)...)
	cases := []handleCase{
		{
			name:   "proxy: UEFI firmware gets a proxy offer",
			server: proxyMode,
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			want:   dhcpv4.MessageTypeOffer,
			dest:   "255.255.255.255:68",
			golden: "proxy_uefi_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkProxy(t, reply, ev, "snponly.efi")
				if got := reply.TFTPServerName(); got != "10.77.0.1" {
					t.Errorf("option 66 = %q", got)
				}
				if got := reply.Options.Get(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(got, uuid) {
					t.Errorf("option 97 = % x, want it echoed", got)
				}
			},
		},
		{
			name:   "proxy: iPXE gets its script in a proxy offer",
			server: proxyMode,
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, ipxeROM()...),
			want:   dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkProxy(t, reply, ev, node1().ScriptURL)
				if reply.Options.Has(dhcpv4.OptionEtherboot) {
					t.Errorf("proxy offer carries 175.176 no-pxedhcp")
				}
			},
		},
		{
			name:    "proxy: REQUEST on port 67 is the site server's",
			server:  proxyMode,
			req:     pkt(macNode1, dhcpv4.MessageTypeRequest, join(firmware(iana.EFI_X86_64), []dhcpv4.Modifier{requestIP("10.77.0.50")})...),
			reason:  reasonUnsupported,
			ignored: "proxy mode answers DISCOVER",
		},
		{
			name:    "proxy: a client without PXE options is not ours",
			server:  proxyMode,
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover),
			reason:  reasonNotPXE,
			ignored: "not a PXE client",
		},
		{
			name:    "proxy: unknown MAC",
			server:  proxyMode,
			req:     pkt(macNobody, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:  reasonUnknownMAC,
			ignored: "unknown MAC",
		},
		{
			name:    "off: port 67 is not served",
			server:  func(s *Server) { s.Mode = ModeOff },
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:  reasonModeOff,
			ignored: "mode is off",
		},
		{
			name:   "4011: EDK2 boot server request gets an ACK to its port",
			port:   PXEPort,
			peer:   netip.MustParseAddrPort("10.77.0.50:4011"),
			req:    bootServerRequest(macNode1),
			want:   dhcpv4.MessageTypeAck,
			dest:   "10.77.0.50:4011",
			golden: "pxe4011_ack.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkProxy(t, reply, ev, "snponly.efi")
				if !reply.ClientIPAddr.Equal(net.ParseIP("10.77.0.50")) {
					t.Errorf("ciaddr = %s, want the client's", reply.ClientIPAddr)
				}
				if ev.Port != PXEPort {
					t.Errorf("event port %d", ev.Port)
				}
			},
		},
		{
			name:   "4011: answered in proxy mode",
			server: proxyMode,
			port:   PXEPort,
			peer:   netip.MustParseAddrPort("10.77.0.50:4011"),
			req:    bootServerRequest(macNode1),
			want:   dhcpv4.MessageTypeAck,
			check:  func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) { checkProxy(t, reply, ev, "snponly.efi") },
		},
		{
			name:   "4011: answered in mode off",
			server: func(s *Server) { s.Mode = ModeOff },
			port:   PXEPort,
			peer:   netip.MustParseAddrPort("10.77.0.50:68"),
			req:    bootServerRequest(macNode1),
			want:   dhcpv4.MessageTypeAck,
			dest:   "10.77.0.50:68",
			check:  func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) { checkProxy(t, reply, ev, "snponly.efi") },
		},
		{
			name: "4011: iPXE's ProxyDHCP request gets its script",
			port: PXEPort,
			peer: netip.MustParseAddrPort("10.77.0.50:68"),
			req:  bootServerRequest(macNode1, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))),
			want: dhcpv4.MessageTypeAck,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkProxy(t, reply, ev, node1().ScriptURL)
			},
		},
		{
			name:    "4011: DISCOVER is not a boot server request",
			port:    PXEPort,
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:  reasonUnsupported,
			ignored: "port 4011 answers REQUEST and INFORM only",
		},
		{
			name:    "4011: a client without PXE options",
			port:    PXEPort,
			req:     pkt(macNode1, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(net.ParseIP("10.77.0.50"))),
			reason:  reasonNotPXE,
			ignored: "not a PXE client",
		},
		{
			name:    "4011: another boot server's request",
			port:    PXEPort,
			req:     bootServerRequest(macNode1, serverID("10.77.0.9")),
			reason:  reasonOtherServer,
			ignored: "server id 10.77.0.9",
		},
	}
	for _, tt := range cases {
		t.Run(tt.name, tt.run)
	}
}

func TestHandleFirmwareKinds(t *testing.T) {
	arm := func(s *Server) {
		s.BootFiles = BootTable{pxe.ArchEFIARM64: "arm64/snponly.efi", pxe.ArchEFIARM64HTTP: "arm64/snponly.efi"}
		s.HTTPBootURL = "http://:8080/boot/nbp/"
	}
	cases := []handleCase{
		{
			name:   "UEFI HTTP boot gets a URL and option 60 HTTPClient",
			server: func(s *Server) { s.HTTPBootURL = "http://:8080/boot/nbp/" },
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, httpBoot(iana.EFI_X86_64_HTTP)...),
			want:   dhcpv4.MessageTypeOffer,
			golden: "http_boot_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkLease(t, reply, "10.77.0.11")
				checkBootFile(t, reply, "http://10.77.0.1:8080/boot/nbp/snponly.efi")
				if reply.Options.Has(dhcpv4.OptionTFTPServerName) {
					t.Errorf("option 66 sent to an HTTP boot client")
				}
				if ev.Stage != StageHTTPBoot || ev.Arch != pxe.ArchEFIx64HTTP {
					t.Errorf("event stage %s arch %s", ev.Stage, ev.Arch)
				}
			},
		},
		{
			name:   "UEFI HTTP boot with the node's override",
			server: func(s *Server) { s.HTTPBootURL = "http://10.77.0.1/nbp/" },
			req:    pkt(macNode2, dhcpv4.MessageTypeDiscover, httpBoot(iana.EFI_X86_64_HTTP)...),
			want:   dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkBootFile(t, reply, "http://10.77.0.1/nbp/ipxe-quirk.efi")
			},
		},
		{
			name:    "UEFI HTTP boot without an HTTP boot URL",
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, httpBoot(iana.EFI_X86_64_HTTP)...),
			reason:  reasonNoHTTPBoot,
			ignored: "no HTTP boot URL",
		},
		{
			name:   "arm64 PXE firmware (11)",
			server: arm,
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_ARM64)...),
			want:   dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkFirmwareBoot(t, reply, "arm64/snponly.efi")
			},
		},
		{
			name:   "arm64 HTTP boot (19)",
			server: arm,
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, httpBoot(iana.EFI_ARM64_HTTP)...),
			want:   dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkBootFile(t, reply, "http://10.77.0.1:8080/boot/nbp/arm64/snponly.efi")
			},
		},
		{
			name: "architecture from the vendor class when option 93 is missing",
			req: pkt(macNode1, dhcpv4.MessageTypeDiscover,
				dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))),
			want: dhcpv4.MessageTypeOffer,
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkFirmwareBoot(t, reply, "undionly.kpxe")
				if !ev.HasArch || ev.Arch != pxe.ArchBIOS {
					t.Errorf("event arch %v/%v", ev.Arch, ev.HasArch)
				}
			},
		},
		{
			name:   "InfiniBand client known by its client identifier",
			req:    pkt(nil, dhcpv4.MessageTypeDiscover, infiniBand(ibGUID)...),
			want:   dhcpv4.MessageTypeOffer,
			dest:   "255.255.255.255:68",
			golden: "ib_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !reply.YourIPAddr.Equal(net.ParseIP("10.77.0.13")) || reply.HWType != HWTypeInfiniBand || len(reply.ClientHWAddr) != 0 {
					t.Errorf("offer of %s to htype %d chaddr %q", reply.YourIPAddr, reply.HWType, reply.ClientHWAddr)
				}
				if b := reply.ToBytes(); b[1] != 32 || b[2] != 0 {
					t.Errorf("htype/hlen on the wire = %d/%d, want 32/0", b[1], b[2])
				}
				if mtu := reply.Options.Get(dhcpv4.OptionInterfaceMTU); !bytes.Equal(mtu, []byte{0x07, 0xfc}) {
					t.Errorf("option 26 = % x, want 2044", mtu)
				}
				if len(ev.MAC) != 0 || len(ev.ClientID) == 0 {
					t.Errorf("event MAC %q client id %x", ev.MAC, ev.ClientID)
				}
			},
		},
		{
			name:    "InfiniBand client the inventory does not know",
			req:     pkt(nil, dhcpv4.MessageTypeDiscover, infiniBand(mustMAC("00:02:c9:03:00:00:00:01"))...),
			reason:  reasonUnknownMAC,
			ignored: "unknown MAC",
		},
	}
	for _, tt := range cases {
		t.Run(tt.name, tt.run)
	}
}

func TestHandleSubnets(t *testing.T) {
	subnets := func(s *Server) { s.ServerIP, s.Subnets = netip.Addr{}, twoSubnets }
	twoLinks := []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("10.99.0.1/24")}
	cases := []handleCase{
		{
			name:     "relayed: giaddr picks the subnet, the reply goes to the relay",
			server:   subnets,
			link:     link77,
			req:      pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayedVia("10.88.0.1"))...),
			want:     dhcpv4.MessageTypeOffer,
			dest:     "10.88.0.1:67",
			serverID: "10.77.0.1",
			golden:   "relay_subnet_offer.golden",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !reply.YourIPAddr.Equal(net.ParseIP("10.88.0.21")) || ev.Subnet != netip.MustParsePrefix("10.88.0.0/24") {
					t.Errorf("offer of %s on %s", reply.YourIPAddr, ev.Subnet)
				}
			},
		},
		{
			name:    "relayed: a relay on no configured subnet",
			server:  subnets,
			req:     pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayedVia("10.55.0.1"))...),
			reason:  reasonUnknownSubnet,
			ignored: "relay 10.55.0.1 is on no configured subnet",
		},
		{
			name:   "relayed: link selection (82.5) names the subnet, not giaddr",
			server: subnets,
			link:   link77,
			req: pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), []dhcpv4.Modifier{
				dhcpv4.WithGatewayIP(net.ParseIP("10.55.0.1")),
				dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(
					dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("eth0/1/7")),
					dhcpv4.OptGeneric(dhcpv4.LinkSelectionSubOption, []byte{10, 88, 0, 0}))),
			})...),
			want: dhcpv4.MessageTypeOffer,
			dest: "10.55.0.1:67",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !reply.YourIPAddr.Equal(net.ParseIP("10.88.0.21")) || ev.Subnet != netip.MustParsePrefix("10.88.0.0/24") {
					t.Errorf("offer of %s on %s", reply.YourIPAddr, ev.Subnet)
				}
			},
		},
		{
			name:   "relayed: subnet selection (118) names the subnet",
			server: subnets,
			link:   link77,
			req: pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), []dhcpv4.Modifier{
				dhcpv4.WithGatewayIP(net.ParseIP("10.55.0.1")),
				dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionSubnetSelection, []byte{10, 88, 0, 0})),
			})...),
			want: dhcpv4.MessageTypeOffer,
			dest: "10.55.0.1:67",
		},
		{
			name:   "relayed: a link selection on no configured subnet",
			server: subnets,
			link:   link77,
			req: pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), []dhcpv4.Modifier{
				dhcpv4.WithGatewayIP(net.ParseIP("10.88.0.1")),
				dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionSubnetSelection, []byte{10, 66, 0, 0})),
			})...),
			reason:  reasonUnknownSubnet,
			ignored: "link selection 10.66.0.0 is on no configured subnet",
		},
		{
			name:    "relayed: the node's address is on another subnet",
			server:  subnets,
			link:    link77,
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayedVia("10.88.0.1"))...),
			reason:  reasonWrongSubnet,
			ignored: "reserved address 10.77.0.11 is not on the client's subnet 10.88.0.0/24",
		},
		{
			name:    "local: a node reserved on a relayed subnet asks on the head's link",
			server:  subnets,
			link:    link77,
			req:     pkt(macRelayed, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:  reasonWrongSubnet,
			ignored: "not on the client's subnet 10.77.0.0/24",
		},
		{
			name:    "local: an interface on no configured subnet",
			server:  subnets,
			link:    []netip.Prefix{netip.MustParsePrefix("192.168.7.1/24")},
			req:     pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:  reasonUnknownSubnet,
			ignored: "no configured subnet on the interface",
		},
		{
			name:     "multi-homed: server id from the interface's address on the node's subnet",
			server:   subnets,
			link:     twoLinks,
			req:      pkt(macSecond, dhcpv4.MessageTypeDiscover, ipxeROM()...),
			want:     dhcpv4.MessageTypeOffer,
			serverID: "10.99.0.1",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				if !reply.ServerIPAddr.Equal(net.ParseIP("10.99.0.1")) {
					t.Errorf("siaddr = %s, want 10.99.0.1", reply.ServerIPAddr)
				}
				checkBootFile(t, reply, "http://10.99.0.1/boot/ipxe?mac=52:54:00:00:00:99")
			},
		},
		{
			name:     "multi-homed: the first subnet's node",
			server:   subnets,
			link:     twoLinks,
			req:      pkt(macNode1, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			want:     dhcpv4.MessageTypeOffer,
			serverID: "10.77.0.1",
			check: func(t *testing.T, reply *dhcpv4.DHCPv4, ev Event) {
				checkFirmwareBoot(t, reply, "snponly.efi")
			},
		},
		{
			name:     "no subnets configured: the interface's prefix is the subnet",
			server:   func(s *Server) { s.ServerIP = netip.Addr{} },
			link:     link77,
			req:      pkt(macSecond, dhcpv4.MessageTypeDiscover, firmware(iana.EFI_X86_64)...),
			reason:   reasonWrongSubnet,
			ignored:  "10.99.0.21 is not on the client's subnet 10.77.0.0/24",
			serverID: "10.77.0.1",
		},
		{
			name:   "a client asking for unicast gets it at chaddr",
			link:   link77,
			req:    pkt(macNode1, dhcpv4.MessageTypeDiscover, dhcpv4.WithBroadcast(false)),
			want:   dhcpv4.MessageTypeOffer,
			golden: "unicast_offer.golden",
			dest:   "10.77.0.11:68",
		},
	}
	for _, tt := range cases {
		t.Run(tt.name, tt.run)
	}
}

// TestInventoryClient checks what the inventory is told about a request.
func TestInventoryClient(t *testing.T) {
	s, inv := newTestServer()
	s.ServerIP, s.Subnets = netip.Addr{}, twoSubnets
	r := Request{Msg: pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_BC), relayedVia("10.88.0.1"))...),
		Dst: netip.MustParseAddr("10.77.0.1"), LinkAddrs: link77}
	if _, _, err := s.Handle(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	c := inv.lastClient()
	want := Client{HWType: iana.HWTypeEthernet, MAC: macRelayed, Relay: netip.MustParseAddr("10.88.0.1"),
		Subnet: netip.MustParsePrefix("10.88.0.0/24"), Server: netip.MustParseAddr("10.77.0.1"),
		Stage: StageFirmware, Arch: pxe.ArchEFIBC, HasArch: true, VendorClass: "PXEClient:Arch:00009:UNDI:003016"}
	if c.HWType != want.HWType || c.MAC.String() != want.MAC.String() || c.Relay != want.Relay || c.Subnet != want.Subnet ||
		c.Server != want.Server || c.Stage != want.Stage || c.Arch != want.Arch || !c.HasArch || c.VendorClass != want.VendorClass {
		t.Errorf("inventory asked about\n%+v\nwant\n%+v", c, want)
	}
	if c.Key() != "hw1:52:54:00:00:00:88" {
		t.Errorf("key = %q", c.Key())
	}
	ib := Client{ClientID: append([]byte{0xff, 0, 0, 0, 1}, ibGUID...)}
	if g, ok := ib.GUID(); !ok || g.String() != ibGUID.String() || ib.Key() != "id:ff0000000100"+"02c90300a1b2c3" {
		t.Errorf("GUID %s %v key %s", g, ok, ib.Key())
	}
}

func TestWithServer(t *testing.T) {
	a := netip.MustParseAddr("10.9.0.1")
	for in, want := range map[string]string{
		"http://:8080/boot/":           "http://10.9.0.1:8080/boot/",
		"http:///boot/ipxe?mac=${mac}": "http://10.9.0.1/boot/ipxe?mac=${mac}",
		"https://:8443/x":              "https://10.9.0.1:8443/x",
		"http://head:80/x":             "http://head:80/x",
		"snponly.efi":                  "snponly.efi",
		"":                             "",
	} {
		if got := withServer(in, a); got != want {
			t.Errorf("withServer(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSubnetValidate(t *testing.T) {
	good := Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/16"), Router: netip.MustParseAddr("10.0.0.254"),
		Discovery: Range{netip.MustParseAddr("10.0.200.0"), netip.MustParseAddr("10.0.200.255")}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if n := good.Discovery.Size(); n != 256 {
		t.Errorf("range size %d", n)
	}
	bad := Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/24"), Router: netip.MustParseAddr("10.1.0.1"), MTU: 20,
		DNS:       []netip.Addr{netip.MustParseAddr("fd00::1")},
		Discovery: Range{netip.MustParseAddr("10.0.0.200"), netip.MustParseAddr("10.0.1.10")}}
	err := bad.Validate()
	for _, want := range []string{"router 10.1.0.1", "MTU 20", "name server", "not inside 10.0.0.0/24"} {
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("Validate = %v, want it to mention %q", err, want)
		}
	}
	back := Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/24"), Discovery: Range{netip.MustParseAddr("10.0.0.20"), netip.MustParseAddr("10.0.0.10")}}
	if err := back.Validate(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("backwards")) {
		t.Errorf("backwards range: %v", err)
	}
	huge := Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Discovery: Range{netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.2.0.0")}}
	if err := huge.Validate(); err == nil {
		t.Error("a range of 131073 addresses accepted")
	}
}

// TestSetSubnets: a reload's new subnets take effect for the next request
// (a relayed subnet added is answered, one removed is not), and invalid
// ones are refused with the old ones kept.
func TestSetSubnets(t *testing.T) {
	srv, _ := newTestServer()
	srv.ServerIP, srv.Subnets = netip.Addr{}, twoSubnets[:1]
	req := func() Request {
		return Request{Msg: pkt(macRelayed, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), relayedVia("10.88.0.1"))...),
			LinkAddrs: link77}
	}
	if reply, ev, _ := srv.Handle(context.Background(), req()); reply != nil || ev.Reason() != string(reasonUnknownSubnet) {
		t.Fatalf("before: reply %v, reason %q", reply != nil, ev.Reason())
	}
	if err := srv.SetSubnets(twoSubnets); err != nil {
		t.Fatal(err)
	}
	if reply, ev, _ := srv.Handle(context.Background(), req()); reply == nil || !reply.YourIPAddr.Equal(net.ParseIP("10.88.0.21")) {
		t.Fatalf("after adding 10.88.0.0/24: no offer of 10.88.0.21 (%s)", ev.Ignored)
	}
	bad := []Subnet{{Prefix: netip.MustParsePrefix("10.77.0.0/24")}, {Prefix: netip.MustParsePrefix("10.77.0.0/16")}}
	if err := srv.SetSubnets(bad); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("overlapping subnets: err %v", err)
	}
	if reply, _, _ := srv.Handle(context.Background(), req()); reply == nil {
		t.Fatal("refused subnets replaced the good ones")
	}
	if err := srv.SetSubnets(twoSubnets[:1]); err != nil {
		t.Fatal(err)
	}
	if reply, _, _ := srv.Handle(context.Background(), req()); reply != nil {
		t.Fatal("a removed subnet is still answered")
	}
}
