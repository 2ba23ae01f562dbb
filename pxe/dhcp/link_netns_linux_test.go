package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/internal/netnstest"
	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// waitFor polls cond every 10 ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dnsmasqArgs runs dnsmasq as a DHCP server only (no DNS, no TFTP) on
// iface, with its files in dir, as the lab does.
func dnsmasqArgs(dir, iface, rangeArg string) []string {
	return []string{"-k", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface=" + iface, "--bind-interfaces", "--except-interface=lo",
		"--no-resolv", "--no-hosts", "--no-ping", "--log-dhcp",
		"--dhcp-range=" + rangeArg,
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"),
		"--pid-file=" + filepath.Join(dir, "pid"),
		"--log-facility=-"}
}

// TestNetnsSecondServerFails is issue 12's item 6: a second server on the
// interface of a running one must not start (before, both bound port 67
// with SO_REUSEADDR and both answered: one DISCOVER, two OFFERs). It must
// fail with an error that says another DHCP server serves the interface
// and names the process.
func TestNetnsSecondServerFails(t *testing.T) {
	ns := netnstest.New(t, "rb-dhcp-two")
	netnstest.IP(t, "-n", ns.Name, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1")
	netnstest.IP(t, "-n", ns.Name, "addr", "add", "10.216.0.1/24", "dev", "eth1")
	netnstest.IP(t, "-n", ns.Name, "link", "set", "eth1", "up")
	netnstest.IP(t, "-n", ns.Name, "link", "set", "peer1", "up")

	inv := &testInventory{}
	first := &Server{ServerIP: netip.MustParseAddr("10.216.0.1"), Inventory: inv}
	var conn net.PacketConn
	if err := ns.Do(func() (err error) { conn, err = Listen(t.Context(), "eth1"); return err }); err != nil {
		t.Fatal(err)
	}
	runServer(t, func(ctx context.Context) error { return first.Serve(ctx, conn) })

	// The second server, as another ramboot with another state directory
	// and HTTP port would run it: same interface, its own socket.
	second := &Server{ServerIP: netip.MustParseAddr("10.216.0.1"), Inventory: inv}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	err := ns.Do(func() error { return second.ListenAndServe(ctx, "eth1") })
	if err == nil {
		t.Fatal("a second DHCP server started on eth1 and served until cancelled")
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	want := fmt.Sprintf("listen dhcp on eth1: another DHCP server is already serving eth1 (pid %d (%s))", os.Getpid(), strings.TrimSpace(string(comm)))
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("second server: %v\nwant EADDRINUSE and prefix %q", err, want)
	}

	// A server on another interface of the same host is another link.
	netnstest.IP(t, "-n", ns.Name, "link", "add", "eth2", "type", "veth", "peer", "name", "peer2")
	netnstest.IP(t, "-n", ns.Name, "link", "set", "eth2", "up")
	var other net.PacketConn
	if err := ns.Do(func() (err error) { other, err = Listen(t.Context(), "eth2"); return err }); err != nil {
		t.Errorf("server on eth2 beside one on eth1: %v", err)
	} else {
		other.Close()
	}
}

// TestNetnsDnsmasqHoldsPort starts a real dnsmasq serving DHCP on the
// interface first: ramboot must refuse to start there and name dnsmasq.
func TestNetnsDnsmasqHoldsPort(t *testing.T) {
	ns := netnstest.New(t, "rb-dhcp-dm")
	netnstest.IP(t, "-n", ns.Name, "link", "add", "eth1", "type", "veth", "peer", "name", "peer1")
	netnstest.IP(t, "-n", ns.Name, "addr", "add", "10.217.0.1/24", "dev", "eth1")
	netnstest.IP(t, "-n", ns.Name, "link", "set", "eth1", "up")
	dm := ns.Start(t, "dnsmasq", dnsmasqArgs(t.TempDir(), "eth1", "10.217.0.100,10.217.0.199,255.255.255.0,1h")...)
	waitFor(t, 10*time.Second, "dnsmasq to bind port 67", func() bool {
		var h string
		_ = ns.Do(func() error { h = udpsock.Holders(67); return nil })
		return strings.Contains(h, "dnsmasq")
	})

	var conn net.PacketConn
	err := ns.Do(func() (err error) { conn, err = Listen(t.Context(), "eth1"); return err })
	if err == nil {
		conn.Close()
		t.Fatalf("ramboot's DHCP socket bound eth1 beside dnsmasq:\n%s", dm.Output())
	}
	want := fmt.Sprintf("another DHCP server is already serving eth1 (pid %d (dnsmasq))", dm.Cmd.Process.Pid)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("Listen beside dnsmasq: %v\nwant it to contain %q", err, want)
	}
}

// TestNetnsRivalDnsmasq is the classic PXE outage with real parts: ramboot
// and a rival dnsmasq (another host, so another namespace) on one bridge,
// and a client broadcasting DISCOVERs with nclient4. The rival's OFFER to
// a node ramboot serves is counted under its server address; its OFFER to
// a MAC ramboot does not serve is not a rival's, and ramboot's own offers
// never count.
func TestNetnsRivalDnsmasq(t *testing.T) {
	head, rivalNS, cli := netnstest.New(t, "rb-riv-head"), netnstest.New(t, "rb-riv-dm"), netnstest.New(t, "rb-riv-cli")
	// head: bridge br0 (10.218.0.1) with one port to each other namespace.
	netnstest.IP(t, "-n", head.Name, "link", "add", "br0", "type", "bridge")
	netnstest.IP(t, "-n", head.Name, "addr", "add", "10.218.0.1/24", "dev", "br0")
	for _, p := range []struct{ port, peer, ns string }{{"p-dm", "eth0", rivalNS.Name}, {"p-cli", "eth0", cli.Name}} {
		netnstest.IP(t, "-n", head.Name, "link", "add", p.port, "type", "veth", "peer", "name", p.peer, "netns", p.ns)
		netnstest.IP(t, "-n", head.Name, "link", "set", p.port, "master", "br0")
		netnstest.IP(t, "-n", head.Name, "link", "set", p.port, "up")
		netnstest.IP(t, "-n", p.ns, "link", "set", p.peer, "up")
	}
	netnstest.IP(t, "-n", head.Name, "link", "set", "br0", "up")
	netnstest.IP(t, "-n", rivalNS.Name, "addr", "add", "10.218.0.2/24", "dev", "eth0")

	dm := rivalNS.Start(t, "dnsmasq", dnsmasqArgs(t.TempDir(), "eth0", "10.218.0.100,10.218.0.199,255.255.255.0,1h")...)
	waitFor(t, 10*time.Second, "dnsmasq to bind port 67", func() bool {
		var h string
		_ = rivalNS.Do(func() error { h = udpsock.Holders(67); return nil })
		return strings.Contains(h, "dnsmasq")
	})

	known := mustMAC("52:54:00:00:00:01") // macNode1: node1() reserves 10.77.0.11
	stranger := mustMAC("52:54:00:00:00:77")
	inv := InventoryFunc(func(_ context.Context, c Client) (Reservation, error) {
		if !bytes.Equal(c.MAC, known) {
			return Reservation{}, ErrUnknown
		}
		r := node1()
		r.IP, r.Router, r.DNS = netip.MustParseAddr("10.218.0.11"), netip.Addr{}, nil
		return r, nil
	})
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	headIP := netip.MustParseAddr("10.218.0.1")
	srv := &Server{ServerIP: headIP, Inventory: inv, Metrics: metrics}
	det := &RivalDetector{ServerIP: headIP, Inventory: inv, Metrics: metrics}
	var srvConn, detConn net.PacketConn
	if err := head.Do(func() (err error) {
		if srvConn, err = Listen(t.Context(), "br0"); err != nil {
			return err
		}
		detConn, err = ListenRivals("br0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	runServer(t, func(ctx context.Context) error { return srv.Serve(ctx, srvConn) })
	runServer(t, func(ctx context.Context) error { return det.Serve(ctx, detConn) })

	// discover broadcasts DISCOVERs for mac (broadcast flag set, as PXE
	// firmware and iPXE do) and returns the first offer.
	discover := func(mac net.HardwareAddr) *dhcpv4.DHCPv4 {
		t.Helper()
		var offer *dhcpv4.DHCPv4
		err := cli.Do(func() error {
			c, err := nclient4.New("eth0", nclient4.WithHWAddr(mac), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(5))
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			offer, err = c.DiscoverOffer(ctx, dhcpv4.WithBroadcast(true))
			return err
		})
		if err != nil {
			t.Fatalf("DISCOVER from %s: %v\ndnsmasq:\n%s", mac, err, dm.Output())
		}
		return offer
	}
	rivals := func(server string) float64 {
		return gatherOr0(t, reg, `ramboot_dhcp_rival_offers_total{server="`+server+`"}`)
	}
	other := func() float64 { return gatherOr0(t, reg, `ramboot_dhcp_other_offers_total{}`) }

	// A stranger: only dnsmasq answers, and that is none of ramboot's
	// business.
	if o := discover(stranger); !o.ServerIdentifier().Equal(net.ParseIP("10.218.0.2")) {
		t.Fatalf("offer to the stranger from %v, want dnsmasq 10.218.0.2", o.ServerIdentifier())
	}
	waitFor(t, 10*time.Second, "the offer to the stranger to be seen", func() bool { return other() >= 1 })
	if n := rivals("10.218.0.2"); n != 0 {
		t.Fatalf("rival offers = %v after an offer to a MAC ramboot does not serve", n)
	}

	// A node: both servers offer; dnsmasq's offer is a rival's.
	discover(known)
	waitFor(t, 10*time.Second, "dnsmasq's offer to the node to be counted", func() bool { return rivals("10.218.0.2") >= 1 })
	waitFor(t, 10*time.Second, "ramboot's own offer", func() bool {
		return gatherOr0(t, reg, `ramboot_dhcp_replies_total{port="67",type="offer"}`) >= 1
	})
	if n := rivals(headIP.String()); n != 0 {
		t.Errorf("ramboot's own offers counted as a rival's: %v", n)
	}
}
