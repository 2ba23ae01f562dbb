package dhcp

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// procUDPDrops is the kernel's count of drops for conn's socket, as
// /proc/net/udp shows it, to check the metric against. Loopback delivers
// in softirq context, which a busy machine defers, so it waits until the
// count has not changed for 100 ms (at most 10 s).
func procUDPDrops(t *testing.T, conn *net.UDPConn) float64 {
	t.Helper()
	read := func() float64 {
		n, err := udpsock.ProcDrops(conn)
		if err != nil {
			t.Fatal(err)
		}
		return float64(n)
	}
	last := read()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		n := read()
		if n == last {
			return n
		}
		last = n
	}
	t.Fatal("drops of the socket still changing after 10 s")
	return 0
}

// TestSocketDrops overflows the server socket for real: a 4 KiB receive
// buffer (ReceiveBuffer), an inventory that stalls so the server stops
// reading once its 64 handlers are busy, and 1,000 real DISCOVERs on
// loopback. ramboot_dhcp_socket_drops_total must count the kernel's drops
// for the socket, as /proc/net/udp shows them, and keep the count once
// Serve has returned. Issue 12 measured 52,582 datagrams dropped under a
// DHCP flood with no metric showing it.
func TestSocketDrops(t *testing.T) {
	release := make(chan struct{})
	reg := prometheus.NewRegistry()
	s := &Server{
		ServerIP: serverIP,
		Inventory: InventoryFunc(func(ctx context.Context, _ Client) (Reservation, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return node1(), nil
		}),
		Metrics:       NewMetrics(reg),
		ReceiveBuffer: 4096,
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn := pc.(*net.UDPConn)
	client, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s.relayPort = client.LocalAddr().(*net.UDPAddr).Port
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
		cancel()
		<-done
	}()

	drops := func() float64 { return gather(t, reg, "ramboot_dhcp_socket_drops_total{}") }
	discover := relayedDiscover(macNode1, 1).ToBytes()
	deadline := time.Now().Add(20 * time.Second)
	for drops() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no drops counted after 20 s of DISCOVERs into a 4 KiB receive buffer")
		}
		for range 1000 {
			if _, err := client.WriteTo(discover, conn.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	kernel := procUDPDrops(t, conn)
	if got := drops(); got != kernel {
		t.Errorf("ramboot_dhcp_socket_drops_total = %v, kernel says %v for the socket", got, kernel)
	}
	close(release)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	done <- nil
	if got := drops(); got != kernel {
		t.Errorf("drops after Serve returned = %v, want the socket's last count %v kept", got, kernel)
	}
	t.Logf("%v DISCOVERs dropped at the socket", kernel)
}
