package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/ramboot/ramboot/pxe/dhcp"
)

// servePXE runs pxe/dhcp's Server alone (no provisioner) on iface with the
// reservations of the MAC list: the protocol server's own cost.
func servePXE(ctx context.Context, iface, macFile string, workers int) error {
	macs, err := readMACs(macFile)
	if err != nil {
		return err
	}
	res := make(map[string]dhcp.Reservation, len(macs))
	for i, m := range macs {
		res[m] = dhcp.Reservation{IP: nodeIP(i), PrefixLen: 16, Router: gatewayIP, Hostname: fmt.Sprintf("n%05d", i),
			ScriptURL: "http://" + serverIP.String() + "/boot/ipxe?mac=" + m}
	}
	srv := &dhcp.Server{
		Inventory: dhcp.InventoryFunc(func(_ context.Context, c dhcp.Client) (dhcp.Reservation, error) {
			r, ok := res[c.MAC.String()]
			if !ok {
				return dhcp.Reservation{}, dhcp.ErrUnknown
			}
			return r, nil
		}),
		Subnets: []dhcp.Subnet{{Prefix: subnet}},
		Workers: workers,
	}
	conn, err := dhcp.Listen(ctx, iface)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "pxe dhcp server ready")
	return srv.Serve(ctx, conn)
}

func readMACs(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Fields(string(b)) {
		hw, err := net.ParseMAC(l)
		if err != nil {
			return nil, err
		}
		out = append(out, hw.String())
	}
	return out, nil
}

var (
	subnet    = netip.MustParsePrefix("10.240.0.0/16")
	serverIP  = netip.MustParseAddr("10.240.0.1")
	clientIP  = netip.MustParseAddr("10.240.0.2")
	gatewayIP = netip.MustParseAddr("10.240.0.1")
)

// firstNodeIP is node 0's reserved address; node i has the i-th after it,
// as a host list's "10.240.1.1+" gives them.
var firstNodeIP = netip.MustParseAddr("10.240.1.1")

// nodeIP is node i's reserved address.
func nodeIP(i int) netip.Addr {
	a := firstNodeIP.As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
