package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/pxe/internal/netnstest"
)

// link joins namespace a (interface aName, address aAddr) and namespace b
// (bName, bAddr) with a veth pair; an empty address leaves that end
// without one. The pair is born in a and its peer moved straight to b: no
// end ever exists on the host.
func link(t *testing.T, a netnstest.NS, aName, aAddr string, b netnstest.NS, bName, bAddr, bMAC string) {
	t.Helper()
	netnstest.IP(t, "-n", a.Name, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	if bMAC != "" {
		netnstest.IP(t, "-n", b.Name, "link", "set", bName, "address", bMAC)
	}
	for _, e := range []struct{ ns, dev, addr string }{{a.Name, aName, aAddr}, {b.Name, bName, bAddr}} {
		if e.addr != "" {
			netnstest.IP(t, "-n", e.ns, "addr", "add", e.addr, "dev", e.dev)
		}
		netnstest.IP(t, "-n", e.ns, "link", "set", e.dev, "up")
	}
}

// frame is one captured IPv4/UDP frame.
type frame struct {
	ethDst, ethSrc   net.HardwareAddr
	ipSrc, ipDst     netip.Addr
	srcPort, dstPort uint16
	payload          []byte
}

// capture records the IPv4 UDP frames to port 68 that arrive at iface in
// ns, with their Ethernet header, until the test ends.
type capture struct {
	mu     sync.Mutex
	frames []frame
}

func startCapture(t *testing.T, ns netnstest.NS, iface string, port uint16) *capture {
	t.Helper()
	var conn *packet.Conn
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_IP, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c := &capture{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			b := buf[:n]
			if len(b) < 14+20+8 || b[14]>>4 != 4 || b[14+9] != unix.IPPROTO_UDP {
				continue
			}
			ihl := int(b[14]&0x0f) * 4
			udp := b[14+ihl:]
			f := frame{
				ethDst: net.HardwareAddr(bytes.Clone(b[0:6])), ethSrc: net.HardwareAddr(bytes.Clone(b[6:12])),
				ipSrc: netip.AddrFrom4([4]byte(b[14+12 : 14+16])), ipDst: netip.AddrFrom4([4]byte(b[14+16 : 14+20])),
				srcPort: binary.BigEndian.Uint16(udp[0:2]), dstPort: binary.BigEndian.Uint16(udp[2:4]),
				payload: bytes.Clone(udp[8:]),
			}
			if f.dstPort != port {
				continue
			}
			c.mu.Lock()
			c.frames = append(c.frames, f)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return c
}

// find returns the first captured frame carrying a DHCP message of type mt
// with transaction id xid.
func (c *capture) find(xid dhcpv4.TransactionID, mt dhcpv4.MessageType) (frame, *dhcpv4.DHCPv4, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		m, err := dhcpv4.FromBytes(f.payload)
		if err == nil && m.TransactionID == xid && m.MessageType() == mt {
			return f, m, true
		}
	}
	return frame{}, nil, false
}

// serveIn runs srv on sockets opened in ns (Listen on each interface, and
// ListenPXE on the first) until the test ends.
func serveIn(t *testing.T, ns netnstest.NS, srv *Server, ifaces ...string) {
	t.Helper()
	var conns []net.PacketConn
	if err := ns.Do(func() error {
		for _, iface := range ifaces {
			c, err := Listen(t.Context(), iface)
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		c, err := ListenPXE(t.Context(), ifaces[0])
		conns = append(conns, c)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		// Serve opens its netlink handle on the calling thread: run it
		// from inside the namespace so interface lookups see the
		// server's links.
		runServer(t, func(ctx context.Context) error { return ns.Do(func() error { return srv.Serve(ctx, c) }) })
	}
}

// inventoryOf answers for the MACs of m (by string) with their address on a
// /24, script URLs on the server's address.
func inventoryOf(m map[string]string) Inventory {
	return InventoryFunc(func(_ context.Context, c Client) (Reservation, error) {
		ip, ok := m[c.MAC.String()]
		if !ok {
			return Reservation{}, ErrUnknown
		}
		return Reservation{IP: netip.MustParseAddr(ip), PrefixLen: 24, Hostname: "n-" + ip,
			ScriptURL: "http://" + c.Server.String() + "/boot/ipxe?mac=" + c.MAC.String()}, nil
	})
}

// dhcpClient runs fn with an nclient4 client on iface in ns.
func dhcpClient(t *testing.T, ns netnstest.NS, iface string, fn func(c *nclient4.Client, ctx context.Context) error) {
	t.Helper()
	err := ns.Do(func() error {
		c, err := nclient4.New(iface, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(5))
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		return fn(c, ctx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestNetnsUnicastAndMultiHomed runs one server on two interfaces of a head
// (two subnets, no ServerIP), each with a client namespace behind it. Each
// client's replies carry its own interface's address as server identifier
// and IP source; a client that clears the broadcast flag gets its OFFER and
// ACK unicast to its MAC and new address (the kernel's neighbour entry
// set the way dnsmasq does), one that sets it gets broadcasts.
func TestNetnsUnicastAndMultiHomed(t *testing.T) {
	head := netnstest.New(t, "rb-mh-head")
	cliA, cliB := netnstest.New(t, "rb-mh-a"), netnstest.New(t, "rb-mh-b")
	macA, macB := "02:72:62:00:0a:01", "02:72:62:00:0b:01"
	link(t, head, "ha", "10.231.0.1/24", cliA, "ca", "", macA)
	link(t, head, "hb", "10.232.0.1/24", cliB, "cb", "", macB)

	srv := &Server{
		Inventory: inventoryOf(map[string]string{macA: "10.231.0.11", macB: "10.232.0.22"}),
		Subnets:   []Subnet{{Prefix: netip.MustParsePrefix("10.231.0.0/24")}, {Prefix: netip.MustParsePrefix("10.232.0.0/24")}},
		Metrics:   NewMetrics(nil),
	}
	serveIn(t, head, srv, "ha", "hb")
	capA, capB := startCapture(t, cliA, "ca", 68), startCapture(t, cliB, "cb", 68)

	var leaseA, leaseB *nclient4.Lease
	dhcpClient(t, cliA, "ca", func(c *nclient4.Client, ctx context.Context) (err error) {
		leaseA, err = c.Request(ctx, dhcpv4.WithBroadcast(false),
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")))
		return err
	})
	dhcpClient(t, cliB, "cb", func(c *nclient4.Client, ctx context.Context) (err error) {
		leaseB, err = c.Request(ctx, dhcpv4.WithBroadcast(true), dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")))
		return err
	})

	for _, tc := range []struct {
		name     string
		lease    *nclient4.Lease
		cap      *capture
		server   string
		ip       string
		mac      string
		unicast  bool
		bootFile string
	}{
		{"a (unicast)", leaseA, capA, "10.231.0.1", "10.231.0.11", macA, true, "snponly.efi"},
		{"b (broadcast)", leaseB, capB, "10.232.0.1", "10.232.0.22", macB, false, "http://10.232.0.1/boot/ipxe?mac=" + macB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ack := tc.lease.ACK
			if !ack.YourIPAddr.Equal(net.ParseIP(tc.ip)) || !ack.ServerIdentifier().Equal(net.ParseIP(tc.server)) ||
				!ack.ServerIPAddr.Equal(net.ParseIP(tc.server)) || ack.BootFileNameOption() != tc.bootFile {
				t.Errorf("ACK: yiaddr %s, server id %s, siaddr %s, file %q; want %s from %s with %s",
					ack.YourIPAddr, ack.ServerIdentifier(), ack.ServerIPAddr, ack.BootFileNameOption(), tc.ip, tc.server, tc.bootFile)
			}
			for _, mt := range []dhcpv4.MessageType{dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck} {
				var f frame
				waitFor(t, 5*time.Second, "the captured "+mt.String(), func() (ok bool) {
					f, _, ok = tc.cap.find(tc.lease.Offer.TransactionID, mt)
					return ok
				})
				if f.ipSrc.String() != tc.server || f.srcPort != 67 {
					t.Errorf("%s from %s:%d, want %s:67", mt, f.ipSrc, f.srcPort, tc.server)
				}
				wantDst, wantMAC := "255.255.255.255", "ff:ff:ff:ff:ff:ff"
				if tc.unicast {
					wantDst, wantMAC = tc.ip, tc.mac
				}
				if f.ipDst.String() != wantDst || f.ethDst.String() != wantMAC {
					t.Errorf("%s to %s at %s, want %s at %s", mt, f.ipDst, f.ethDst, wantDst, wantMAC)
				}
			}
		})
	}
}

// TestNetnsBootServerPort sends a real EDK2-shaped boot server request from
// a client's port 4011 to the server's port 4011 (ListenPXE): the ACK comes
// back from port 4011 to the client's port, unicast, with the boot file and
// option 60 PXEClient, in proxy mode; port 67 stays silent to the same
// client's DISCOVER when it has no PXE options.
func TestNetnsBootServerPort(t *testing.T) {
	head, cli := netnstest.New(t, "rb-4011-head"), netnstest.New(t, "rb-4011-cli")
	mac := "02:72:62:00:40:11"
	link(t, head, "h0", "10.233.0.1/24", cli, "c0", "10.233.0.50/24", mac)
	srv := &Server{Mode: ModeProxy, Inventory: inventoryOf(map[string]string{mac: "10.233.0.50"})}
	serveIn(t, head, srv, "h0")

	req := bootServerRequest(mustMAC(mac), serverID("10.233.0.1"), dhcpv4.WithClientIP(net.ParseIP("10.233.0.50")))
	var reply *dhcpv4.DHCPv4
	var from *net.UDPAddr
	if err := cli.Do(func() error {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.233.0.50"), Port: PXEPort})
		if err != nil {
			return err
		}
		defer conn.Close()
		buf := make([]byte, 1500)
		for try := 0; try < 10 && reply == nil; try++ {
			if _, err := conn.WriteTo(req.ToBytes(), &net.UDPAddr{IP: net.ParseIP("10.233.0.1"), Port: PXEPort}); err != nil {
				return err
			}
			conn.SetReadDeadline(time.Now().Add(time.Second))
			n, addr, err := conn.ReadFromUDP(buf)
			if err != nil {
				continue // the server may still be binding
			}
			from = addr
			if reply, err = dhcpv4.FromBytes(buf[:n]); err != nil {
				return err
			}
		}
		if reply == nil {
			return fmt.Errorf("no answer on port 4011")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if from.Port != PXEPort || !from.IP.Equal(net.ParseIP("10.233.0.1")) {
		t.Errorf("answer from %s, want 10.233.0.1:4011 (iPXE drops answers from other ports)", from)
	}
	if reply.MessageType() != dhcpv4.MessageTypeAck || reply.BootFileNameOption() != "snponly.efi" ||
		reply.ClassIdentifier() != "PXEClient" || !isZero(reply.YourIPAddr) || !reply.ClientIPAddr.Equal(net.ParseIP("10.233.0.50")) {
		t.Errorf("answer:\n%s", reply.Summary())
	}
}

// TestNetnsRelay puts a real DHCP relay (dnsmasq --dhcp-relay) between a
// client and the server: client link 10.234.0.0/24, relay to server link
// 10.235.0.0/24. The server picks the client's subnet from giaddr, answers
// the relay at giaddr:67 with option 82 echoed, and the client gets its
// reserved address on its own subnet through the relay.
func TestNetnsRelay(t *testing.T) {
	head, relay, cli := netnstest.New(t, "rb-rel-head"), netnstest.New(t, "rb-rel-relay"), netnstest.New(t, "rb-rel-cli")
	mac := "02:72:62:00:23:04"
	link(t, head, "h0", "10.235.0.1/24", relay, "r1", "10.235.0.2/24", "")
	link(t, relay, "r0", "10.234.0.1/24", cli, "c0", "", mac)
	netnstest.IP(t, "-n", head.Name, "route", "add", "10.234.0.0/24", "via", "10.235.0.2")

	var mu sync.Mutex
	var events []Event
	srv := &Server{
		Inventory: InventoryFunc(func(_ context.Context, c Client) (Reservation, error) {
			if c.MAC.String() != mac {
				return Reservation{}, ErrUnknown
			}
			return Reservation{IP: netip.MustParseAddr("10.234.0.44"), PrefixLen: 24, Router: netip.MustParseAddr("10.234.0.1"),
				Hostname: "r1n44", ScriptURL: "http://" + c.Server.String() + "/boot/ipxe"}, nil
		}),
		Subnets: []Subnet{{Prefix: netip.MustParsePrefix("10.235.0.0/24")}, {Prefix: netip.MustParsePrefix("10.234.0.0/24")}},
		Observer: func(ev Event) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, ev)
		},
	}
	serveIn(t, head, srv, "h0")
	dir := t.TempDir()
	dm := relay.Start(t, "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface=r0", "--interface=r1", "--bind-interfaces", "--except-interface=lo", "--log-dhcp", "--log-facility=-",
		"--pid-file="+filepath.Join(dir, "pid"), "--dhcp-relay=10.234.0.1,10.235.0.1")

	var lease *nclient4.Lease
	dhcpClient(t, cli, "c0", func(c *nclient4.Client, ctx context.Context) (err error) {
		lease, err = c.Request(ctx, dhcpv4.WithBroadcast(true),
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00009:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_BC)))
		if err != nil {
			err = fmt.Errorf("%w\ndnsmasq relay:\n%s", err, dm.Output())
		}
		return err
	})
	ack := lease.ACK
	if !ack.YourIPAddr.Equal(net.ParseIP("10.234.0.44")) || ack.BootFileNameOption() != "snponly.efi" ||
		!ack.ServerIdentifier().Equal(net.ParseIP("10.235.0.1")) {
		t.Errorf("ACK through the relay:\n%s", ack.Summary())
	}
	mu.Lock()
	defer mu.Unlock()
	var seen []string
	for _, ev := range events {
		seen = append(seen, fmt.Sprintf("%s>%s relay=%s subnet=%s", ev.Request, ev.Reply, ev.Relay, ev.Subnet))
	}
	if got := strings.Join(seen, "; "); !strings.Contains(got, "discover>offer relay=10.234.0.1 subnet=10.234.0.0/24") ||
		!strings.Contains(got, "request>ack relay=10.234.0.1 subnet=10.234.0.0/24") {
		t.Errorf("events: %s", got)
	}
	if os.Getenv("RAMBOOT_TEST_VERBOSE") != "" {
		t.Log(dm.Output())
	}
}
