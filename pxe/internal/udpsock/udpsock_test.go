package udpsock

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// procDrops is ProcDrops, failing the test on error.
func procDrops(t *testing.T, conn *net.UDPConn) uint64 {
	t.Helper()
	n, err := ProcDrops(conn)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func listen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDropsOnFullQueue fills a small receive buffer that nobody reads with
// real datagrams on loopback and checks that Drops and DropCounter count
// exactly what the kernel reports in /proc/net/udp.
func TestDropsOnFullQueue(t *testing.T) {
	rx := listen(t)
	if err := rx.SetReadBuffer(4096); err != nil { // the kernel's minimum is about 4.6 KiB
		t.Fatal(err)
	}
	var dc DropCounter
	untrack := dc.Track(rx)
	if n, err := Drops(rx); err != nil || n != 0 {
		t.Fatalf("Drops of a new socket = %d, %v; want 0, nil", n, err)
	}
	tx := listen(t)
	payload := make([]byte, 300)
	const sent = 200
	for range sent {
		if _, err := tx.WriteToUDP(payload, rx.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := Drops(rx)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || n >= sent {
		t.Fatalf("Drops = %d after %d datagrams into a 4 KiB buffer, want some but not all", n, sent)
	}
	if kernel := procDrops(t, rx); uint64(n) != kernel {
		t.Errorf("Drops = %d, /proc/net/udp drops = %d", n, kernel)
	}
	if got := dc.Total(); got != uint64(n) {
		t.Errorf("DropCounter.Total = %d, want %d", got, n)
	}
	untrack()
	rx.Close()
	if got := dc.Total(); got != uint64(n) {
		t.Errorf("DropCounter.Total after the socket closed = %d, want %d kept", got, n)
	}

	// A second socket tracked later adds to the first one's drops, and
	// drops from before Track are not counted.
	rx2 := listen(t)
	if err := rx2.SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	for range sent {
		tx.WriteToUDP(payload, rx2.LocalAddr().(*net.UDPAddr))
	}
	before, _ := Drops(rx2)
	defer dc.Track(rx2)()
	for range sent {
		tx.WriteToUDP(payload, rx2.LocalAddr().(*net.UDPAddr))
	}
	after, _ := Drops(rx2)
	if after <= before {
		t.Fatalf("no new drops on the second socket (%d, then %d)", before, after)
	}
	if got, want := dc.Total(), uint64(n)+uint64(after-before); got != want {
		t.Errorf("DropCounter.Total with two sockets = %d, want %d", got, want)
	}
}

func TestSetReceiveBuffer(t *testing.T) {
	c := listen(t)
	got, err := SetReceiveBuffer(c, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel doubles the request; without CAP_NET_ADMIN it caps it at
	// net.core.rmem_max first.
	want := 2 << 20
	if os.Geteuid() != 0 {
		b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
		if err != nil {
			t.Skip("cannot read net.core.rmem_max")
		}
		rmemMax, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		want = 2 * min(1<<20, rmemMax)
	}
	if got != want {
		t.Errorf("SetReceiveBuffer(1 MiB) = %d, want %d", got, want)
	}
}

func TestHolders(t *testing.T) {
	c := listen(t)
	port := c.LocalAddr().(*net.UDPAddr).Port
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("pid %d (%s)", os.Getpid(), strings.TrimSpace(string(comm)))
	if got := Holders(port); got != want {
		t.Errorf("Holders(%d) = %q, want %q", port, got, want)
	}
	c.Close()
	if got := Holders(port); got != "" {
		t.Errorf("Holders(%d) after close = %q, want empty", port, got)
	}
}
