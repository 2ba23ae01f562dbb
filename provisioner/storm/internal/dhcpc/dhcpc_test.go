package dhcpc

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/storm/stormtest"
)

// dnsmasq starts a real dnsmasq in the head's namespace, reserving ip for
// mac, and returns when it listens.
func dnsmasq(t *testing.T, n *lab.StormNet, mac, ip string) {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Skip("needs dnsmasq (Debian package dnsmasq-base; make deps installs it)")
	}
	dir := t.TempDir()
	p, err := n.Start(n.Head, filepath.Join(dir, "out"), bin, "-k", "--port=0", "--interface="+n.HeadIface, "--bind-interfaces",
		"--dhcp-range=10.88.0.0,static,255.255.0.0", "--dhcp-host="+mac+","+ip,
		"--dhcp-boot=undionly.kpxe", "--no-ping", "--leasefile-ro", "--pid-file="+filepath.Join(dir, "pid"),
		"--log-facility="+filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := n.Command(context.Background(), n.Head, "ss", "-Hlun", "sport = :67").Output()
		if len(out) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("dnsmasq does not listen on port 67 after 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func discover(t *testing.T, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	d, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithBroadcast(true))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func isType(mt dhcpv4.MessageType) func(*dhcpv4.DHCPv4) bool {
	return func(m *dhcpv4.DHCPv4) bool { return m.MessageType() == mt }
}

// exchange runs DISCOVER/OFFER and REQUEST/ACK for mac and checks the
// address.
func exchange(t *testing.T, c *Conn, mac net.HardwareAddr, want string) {
	t.Helper()
	ctx := context.Background()
	sched := []time.Duration{2 * time.Second, 2 * time.Second}
	offer, st, err := c.Exchange(ctx, discover(t, mac), sched, isType(dhcpv4.MessageTypeOffer))
	if err != nil {
		t.Fatalf("discover: %v (%+v)", err, st)
	}
	if offer.YourIPAddr.String() != want {
		t.Fatalf("offered %s, want %s", offer.YourIPAddr, want)
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithBroadcast(true))
	if err != nil {
		t.Fatal(err)
	}
	ack, _, err := c.Exchange(ctx, req, sched, isType(dhcpv4.MessageTypeAck))
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if ack.YourIPAddr.String() != want || ack.BootFileName != "undionly.kpxe" {
		t.Fatalf("ack %s file %q", ack.YourIPAddr, ack.BootFileName)
	}
}

// TestRelay: the generator relays for a node to a real dnsmasq; the
// answers come back to giaddr:67.
func TestRelay(t *testing.T) {
	n := stormtest.New(t)
	mac, _ := net.ParseMAC("02:00:00:00:00:05")
	dnsmasq(t, n, mac.String(), "10.88.128.5")
	var c *Conn
	err := n.Do(n.Gen, func() (err error) {
		c, err = ListenRelay(n.GenIP, []netip.AddrPort{netip.AddrPortFrom(n.HeadIP.Addr(), 0)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, mac, "10.88.128.5")

	// An unknown MAC is retried on the schedule, then given up.
	other, _ := net.ParseMAC("02:00:00:00:00:99")
	sched := []time.Duration{100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond}
	_, st, err := c.Exchange(context.Background(), discover(t, other), sched, isType(dhcpv4.MessageTypeOffer))
	if !errors.Is(err, ErrTimeout) || st.Sent != 3 {
		t.Fatalf("unknown MAC: %v after %d sends, want ErrTimeout after 3", err, st.Sent)
	}
	if cn := c.Counters(); cn.Sent != 5 || cn.Received != 2 || cn.Dropped != 0 {
		t.Errorf("counters %+v, want 5 sent, 2 received, none dropped", cn)
	}
}

// TestDirect: the generator broadcasts on the link as the node itself.
func TestDirect(t *testing.T) {
	n := stormtest.New(t)
	mac, _ := net.ParseMAC("02:00:00:00:00:06")
	dnsmasq(t, n, mac.String(), "10.88.0.6")
	var c *Conn
	err := n.Do(n.Gen, func() (err error) {
		c, err = ListenDirect(context.Background(), n.GenIface)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, mac, "10.88.0.6")
}

func TestClosed(t *testing.T) {
	c, err := ListenRelayPort(netip.MustParseAddr("127.0.0.1"), 0, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")})
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:07")
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.Exchange(context.Background(), discover(t, mac), []time.Duration{time.Minute}, isType(dhcpv4.MessageTypeOffer))
		errc <- err
	}()
	// Close may come before or after the exchange registers: both end it.
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("error %v, want ErrClosed", err)
	}
}
