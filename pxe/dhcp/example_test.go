package dhcp_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe/dhcp"
)

// A UEFI firmware client gets its reserved address and the iPXE binary for
// its architecture; iPXE then gets the URL of its script.
func ExampleServer_Handle() {
	node := dhcp.Reservation{
		IP:        netip.MustParseAddr("10.77.0.11"),
		PrefixLen: 24,
		Hostname:  "n001",
		ScriptURL: "http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:01",
	}
	srv := &dhcp.Server{
		ServerIP: netip.MustParseAddr("10.77.0.1"),
		Inventory: dhcp.InventoryFunc(func(_ context.Context, mac net.HardwareAddr) (dhcp.Reservation, error) {
			if mac.String() != "52:54:00:00:00:01" {
				return dhcp.Reservation{}, dhcp.ErrUnknown
			}
			return node, nil
		}),
	}
	mac, _ := net.ParseMAC("52:54:00:00:00:01")

	firmware, _ := dhcpv4.NewDiscovery(mac,
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
	reply, ev, _ := srv.Handle(context.Background(), firmware)
	fmt.Println(ev.Request, ev.Reply, ev.Arch, reply.YourIPAddr, reply.ServerIPAddr, reply.BootFileName)

	ipxe, _ := dhcpv4.NewDiscovery(mac, dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
	reply, ev, _ = srv.Handle(context.Background(), ipxe)
	fmt.Println(ev.Reply, ev.IPXE, reply.BootFileName)

	stranger, _ := net.ParseMAC("52:54:00:00:00:99")
	unknown, _ := dhcpv4.NewDiscovery(stranger)
	reply, ev, _ = srv.Handle(context.Background(), unknown)
	fmt.Println(reply == nil, ev.Ignored)
	// Output:
	// discover offer efi-x64 10.77.0.11 10.77.0.1 snponly.efi
	// offer true http://10.77.0.1/boot/ipxe?mac=52:54:00:00:00:01
	// true unknown MAC
}
