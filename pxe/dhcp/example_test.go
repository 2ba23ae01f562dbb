package dhcp_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// A UEFI firmware client gets its reserved address and the iPXE binary for
// its architecture; iPXE then gets the URL of its script.
func ExampleServer_Handle() {
	srv := &dhcp.Server{
		ServerIP: netip.MustParseAddr("10.77.0.1"),
		Inventory: dhcp.InventoryFunc(func(_ context.Context, c dhcp.Client) (dhcp.Reservation, error) {
			if c.MAC.String() != "52:54:00:00:00:01" {
				return dhcp.Reservation{}, dhcp.ErrUnknown
			}
			return dhcp.Reservation{
				IP:        netip.MustParseAddr("10.77.0.11"),
				PrefixLen: 24,
				Hostname:  "n001",
				ScriptURL: "http://" + c.Server.String() + "/boot/ipxe?mac=" + c.MAC.String(),
			}, nil
		}),
	}
	mac, _ := net.ParseMAC("52:54:00:00:00:01")

	firmware, _ := dhcpv4.NewDiscovery(mac,
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
	reply, ev, _ := srv.Handle(context.Background(), dhcp.Request{Msg: firmware})
	fmt.Println(ev.Request, ev.Reply, ev.Stage, ev.Arch, reply.YourIPAddr, reply.ServerIPAddr, reply.BootFileName)

	ipxe, _ := dhcpv4.NewDiscovery(mac, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	reply, ev, _ = srv.Handle(context.Background(), dhcp.Request{Msg: ipxe})
	fmt.Println(ev.Reply, ev.Stage, reply.BootFileName)

	// In proxy mode the same firmware gets the boot file and no address.
	srv.Mode = dhcp.ModeProxy
	reply, ev, _ = srv.Handle(context.Background(), dhcp.Request{Msg: firmware})
	fmt.Println(ev.Reply, ev.Proxy, reply.YourIPAddr, reply.ClassIdentifier(), reply.BootFileName)

	stranger, _ := net.ParseMAC("52:54:00:00:00:99")
	unknown, _ := dhcpv4.NewDiscovery(stranger, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
	reply, ev, _ = srv.Handle(context.Background(), dhcp.Request{Msg: unknown})
	fmt.Println(reply == nil, ev.Ignored, ev.Reason())
	// Output:
	// discover offer firmware efi-x64 10.77.0.11 10.77.0.1 snponly.efi
	// offer ipxe http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:01
	// offer true 0.0.0.0 PXEClient snponly.efi
	// true unknown MAC unknown_mac
}

// The boot-file choice is a pure function of the request and the table.
func ExampleBootTable_Choose() {
	table := dhcp.BootTable{
		pxe.ArchBIOS:         "undionly.kpxe",
		pxe.ArchEFIx64:       "snponly.efi",
		pxe.ArchEFIx64HTTP:   "snponly.efi",
		pxe.ArchEFIARM64:     "arm64/snponly.efi",
		pxe.ArchEFIARM64HTTP: "arm64/snponly.efi",
	}
	for _, r := range []dhcp.BootRequest{
		{Type: dhcpv4.MessageTypeDiscover, VendorClass: "PXEClient:Arch:00000:UNDI:002001", Arch: pxe.ArchBIOS, HasArch: true},
		{Type: dhcpv4.MessageTypeDiscover, VendorClass: "HTTPClient:Arch:00016", Arch: pxe.ArchEFIx64HTTP, HasArch: true},
		{Type: dhcpv4.MessageTypeRequest, Port: dhcp.PXEPort, VendorClass: "PXEClient:Arch:00011", Arch: pxe.ArchEFIARM64, HasArch: true},
		{Type: dhcpv4.MessageTypeDiscover, VendorClass: "PXEClient:Arch:00007", Arch: pxe.ArchEFIx64, HasArch: true, Override: "ipxe.efi"},
		{Type: dhcpv4.MessageTypeDiscover, UserClass: []string{"iPXE"}, Arch: pxe.ArchEFIx64, HasArch: true},
		{Type: dhcpv4.MessageTypeDiscover},
		{Type: dhcpv4.MessageTypeDiscover, VendorClass: "PXEClient:Arch:00010", Arch: pxe.ArchEFIARM32, HasArch: true},
	} {
		b := table.Choose(r)
		fmt.Printf("%-9s file=%q script=%v ignore=%q\n", b.Stage, b.File, b.Script, b.Ignore)
	}
	// Output:
	// firmware  file="undionly.kpxe" script=false ignore=""
	// http-boot file="snponly.efi" script=false ignore=""
	// firmware  file="arm64/snponly.efi" script=false ignore=""
	// firmware  file="ipxe.efi" script=false ignore=""
	// ipxe      file="" script=true ignore=""
	// os        file="" script=false ignore=""
	// firmware  file="" script=false ignore="no boot file for arch efi-arm32 (10)"
}
