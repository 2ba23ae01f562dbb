// Package netconf configures the node's provisioning interface with
// netlink: it waits for the interface with a given MAC address to appear,
// brings it and the loopback interface up, sets its address and, if given,
// the default route. It works in the network namespace of the calling
// thread.
//
//	iface, err := netconf.Configure(ctx, netconf.Config{
//		MAC:     mac,                                    // 52:54:00:12:34:56
//		Address: netip.MustParsePrefix("10.77.0.10/24"),
//		Gateway: netip.MustParseAddr("10.77.0.1"),
//	})
//	// iface == "eth0"
package netconf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// DefaultWait is how long Configure waits for the interface by default.
const DefaultWait = 30 * time.Second

// pollInterval is how often LinkByMAC lists the links.
const pollInterval = 50 * time.Millisecond

// Config is the static configuration of one interface.
type Config struct {
	// MAC selects the interface. Required.
	MAC net.HardwareAddr
	// Address is the interface address with its prefix length. Required.
	Address netip.Prefix
	// Gateway is the default route's next hop; the zero Addr means no
	// default route.
	Gateway netip.Addr
	// Wait bounds the wait for the interface to appear (its driver may
	// still be probing). Zero means DefaultWait.
	Wait time.Duration
}

// LinkByMAC returns the link whose hardware address is mac, waiting for it
// to appear until ctx ends. When several links have mac (a bond or VLAN
// on top of the NIC), the physical device wins.
func LinkByMAC(ctx context.Context, mac net.HardwareAddr) (netlink.Link, error) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		links, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("list links: %w", err)
		}
		if l := pick(links, mac); l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for interface with MAC %s: %w", mac, ctx.Err())
		case <-t.C:
		}
	}
}

// pick returns the link with mac, preferring a physical device.
func pick(links []netlink.Link, mac net.HardwareAddr) netlink.Link {
	var found netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if len(mac) == 0 || !bytes.Equal(a.HardwareAddr, mac) || a.Flags&net.FlagLoopback != 0 {
			continue
		}
		if l.Type() == "device" {
			return l
		}
		if found == nil {
			found = l
		}
	}
	return found
}

// Configure brings up lo and the interface with c.MAC (waiting up to
// c.Wait for it), sets c.Address on it (replacing the same address if
// present) and, when c.Gateway is set, the default route through it. It
// returns the interface's name.
func Configure(ctx context.Context, c Config) (string, error) {
	if len(c.MAC) == 0 || !c.Address.IsValid() {
		return "", fmt.Errorf("configure interface %s: MAC and address are required", c.MAC)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return "", fmt.Errorf("find interface lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return "", fmt.Errorf("bring up lo: %w", err)
	}
	wait := c.Wait
	if wait <= 0 {
		wait = DefaultWait
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	link, err := LinkByMAC(wctx, c.MAC)
	if err != nil {
		return "", err
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return name, fmt.Errorf("bring up %s (MAC %s): %w", name, c.MAC, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   c.Address.Addr().AsSlice(),
		Mask: net.CIDRMask(c.Address.Bits(), c.Address.Addr().BitLen()),
	}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return name, fmt.Errorf("add address %s to %s: %w", c.Address, name, err)
	}
	if c.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: c.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return name, fmt.Errorf("add default route via %s on %s: %w", c.Gateway, name, err)
		}
	}
	return name, nil
}
