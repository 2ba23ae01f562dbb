package tftp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/pxe/internal/udpsock"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// dialRawFrom is dialRaw from a given loopback address.
func dialRawFrom(t testing.TB, from netip.Addr, server netip.AddrPort) *rawClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{conn: conn, server: net.UDPAddrFromAddrPort(server)}
}

// TestPerClientLimit holds two transfers from one address that never
// acknowledge, with MaxTransfersPerClient 2: the third request from that
// address gets a TFTP ERROR at once, is counted and logged but not
// observed, while another address is still served.
func TestPerClientLimit(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.MaxTransfersPerClient = 2
		s.Timeout = 500 * time.Millisecond // the held transfers end 3 s later
	})
	busy := netip.MustParseAddr("127.0.0.1")
	for range 2 {
		c := dialRawFrom(t, busy, h.addr)
		c.send(t, rrq("undionly.kpxe", "octet"))
		if op, _ := c.recv(t); op != opDATA {
			t.Fatalf("held transfer: opcode %d, want DATA", op)
		}
	}
	c := dialRawFrom(t, busy, h.addr)
	c.send(t, rrq("undionly.kpxe", "octet"))
	op, body := c.recv(t)
	if op != opERROR || !bytes.Contains(body, []byte("server busy: too many transfers from this address")) {
		t.Fatalf("third request: opcode %d %q, want ERROR server busy", op, body)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_over_limit_total", "client"}); got != 1 {
		t.Errorf("over_limit{client} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_transfers_in_flight", ""}); got != 2 {
		t.Errorf("transfers in flight = %v, want 2", got)
	}
	if n := h.logs.count(slog.LevelWarn, "tftp request refused: transfer limit reached"); n != 1 {
		t.Errorf("%d Warn lines for the refusal, want 1", n)
	}

	// Another client is not affected.
	other := dialRawFrom(t, netip.MustParseAddr("127.0.0.2"), h.addr)
	other.send(t, rrq("ipxe.efi", "octet"))
	for block := uint16(1); ; block++ {
		op, body := other.recv(t)
		if op != opDATA {
			t.Fatalf("other client: opcode %d %q, want DATA", op, body)
		}
		other.tryAck(block)
		if len(body)-2 < 512 {
			break
		}
	}
	ev := h.event(t)
	if ev.Err != nil || ev.Remote.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("first event: %+v, want the other client's transfer (the refusal is not observed)", ev)
	}
	for len(h.events) > 0 {
		if ev := <-h.events; errors.Is(ev.Err, tftp.ErrBusy) {
			t.Errorf("refusal observed: %+v", ev)
		}
	}
}

// TestTotalLimit holds MaxTransfers transfers from two addresses that
// never acknowledge: with no queue (QueueWait negative), a request from a
// third address gets a TFTP ERROR at once, not silence, and is counted
// under limit="total".
func TestTotalLimit(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.MaxTransfers, s.MaxTransfersPerClient, s.QueueWait = 2, 1, -1
		s.Timeout = 500 * time.Millisecond // the held transfers end 3 s later
	})
	for _, from := range []string{"127.0.0.2", "127.0.0.3"} {
		c := dialRawFrom(t, netip.MustParseAddr(from), h.addr)
		c.send(t, rrq("undionly.kpxe", "octet"))
		if op, _ := c.recv(t); op != opDATA {
			t.Fatalf("held transfer from %s: opcode %d, want DATA", from, op)
		}
	}
	c := dialRawFrom(t, netip.MustParseAddr("127.0.0.4"), h.addr)
	start := time.Now()
	c.send(t, rrq("undionly.kpxe", "octet"))
	op, body := c.recv(t)
	if op != opERROR || !bytes.Contains(body, []byte("server busy: 2 transfers in flight")) {
		t.Fatalf("request over the total: opcode %d %q, want ERROR server busy", op, body)
	}
	t.Logf("refusal answered in %v", time.Since(start).Round(time.Microsecond))
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_over_limit_total", "total"}); got != 1 {
		t.Errorf("over_limit{total} = %v, want 1", got)
	}
}

// fetchRest reads the rest of a file on c in lock-step, from block
// first on, and returns the number of blocks read.
func fetchRest(t *testing.T, c *rawClient, first uint16, blksize int) int {
	t.Helper()
	n := 0
	for block := first; ; block++ {
		op, body := c.recv(t)
		if op != opDATA {
			t.Fatalf("opcode %d %q, want DATA", op, body)
		}
		n++
		c.tryAck(block)
		if len(body)-2 < blksize {
			return n
		}
	}
}

// TestTotalLimitQueues: a request over MaxTransfers waits for a slot
// instead of being refused (a rack powered on queues for a moment, its
// boots do not fail), silently meanwhile, and is served as soon as a
// transfer ends; its wait is measured. On the code that refused at once
// it gets an ERROR.
func TestTotalLimitQueues(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.MaxTransfers, s.MaxTransfersPerClient, s.QueueWait = 1, 1, 5*time.Second
	})
	first := dialRawFrom(t, netip.MustParseAddr("127.0.0.2"), h.addr)
	first.send(t, rrq("undionly.kpxe", "octet"))
	if op, _ := first.recv(t); op != opDATA {
		t.Fatalf("first transfer: opcode %d, want DATA", op)
	}
	waiting := dialRawFrom(t, netip.MustParseAddr("127.0.0.3"), h.addr)
	waiting.send(t, rrq("undionly.kpxe", "octet"))
	if op, body, err := waiting.tryRecv(300 * time.Millisecond); err == nil {
		t.Fatalf("the waiting request was answered at once: opcode %d %q", op, body)
	}
	// A third request over the total from the waiting client's address is
	// over its per-client limit (waiting counts): refused at once.
	third := dialRawFrom(t, netip.MustParseAddr("127.0.0.3"), h.addr)
	third.send(t, rrq("undionly.kpxe", "octet"))
	if op, body := third.recv(t); op != opERROR || !bytes.Contains(body, []byte("too many transfers from this address")) {
		t.Fatalf("a second request of a waiting client: opcode %d %q, want ERROR", op, body)
	}
	// The first transfer ends; the slot goes to the waiting request.
	first.tryAck(1)
	fetchRest(t, first, 2, 512)
	got := fetchRest(t, waiting, 1, 512)
	if want := len(h.fsys["undionly.kpxe"].Data)/512 + 1; got != want {
		t.Errorf("the waiting request got %d blocks, want %d", got, want)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_over_limit_total", "total"}); got != 0 {
		t.Errorf("over_limit{total} = %v, want 0", got)
	}
	var waited uint64
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ramboot_tftp_queue_wait_seconds" {
			waited = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if waited != 1 {
		t.Errorf("%d requests waited, want 1", waited)
	}
}

// TestTotalLimitQueueWait: a request that finds no slot within QueueWait
// is refused then, and counted; so is one that finds the queue full.
func TestTotalLimitQueueWait(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.MaxTransfers, s.MaxTransfersPerClient, s.QueueWait = 1, 1, 300*time.Millisecond
		s.Timeout = time.Second // the held transfer lasts 6 s
	})
	held := dialRawFrom(t, netip.MustParseAddr("127.0.0.2"), h.addr)
	held.send(t, rrq("undionly.kpxe", "octet"))
	if op, _ := held.recv(t); op != opDATA {
		t.Fatalf("held transfer: opcode %d, want DATA", op)
	}
	c := dialRawFrom(t, netip.MustParseAddr("127.0.0.3"), h.addr)
	began := time.Now()
	c.send(t, rrq("undionly.kpxe", "octet"))
	// The queue holds MaxTransfers (1) requests: the next one is refused
	// at once.
	full := dialRawFrom(t, netip.MustParseAddr("127.0.0.4"), h.addr)
	full.send(t, rrq("undionly.kpxe", "octet"))
	if op, body := full.recv(t); op != opERROR || !bytes.Contains(body, []byte("1 waiting")) {
		t.Fatalf("request with the queue full: opcode %d %q, want ERROR ... 1 waiting", op, body)
	}
	op, body := c.recv(t)
	waited := time.Since(began)
	if op != opERROR || !bytes.Contains(body, []byte("none ended within 300ms")) {
		t.Fatalf("opcode %d %q, want ERROR server busy ... none ended within 300ms", op, body)
	}
	if waited < 250*time.Millisecond || waited > 3*time.Second {
		t.Errorf("refused after %v, want after the 300ms wait", waited)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_over_limit_total", "total"}); got != 2 {
		t.Errorf("over_limit{total} = %v, want 2", got)
	}
}

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

// TestSocketDrops overflows the server socket's receive queue for real:
// a 4 KiB buffer (ReceiveBuffer) and datagrams sent faster than the server
// reads them, on loopback. ramboot_tftp_socket_drops_total must rise and
// match the kernel's count for the socket, and keep its value once the
// server has stopped.
func TestSocketDrops(t *testing.T) {
	conn, err := tftp.Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s := &tftp.Server{Root: testFS(), Files: testFiles, Metrics: tftp.NewMetrics(reg), ReceiveBuffer: 4096}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, conn) }()
	drops := func() float64 { return testutil.ToFloat64(gathered{reg, "ramboot_tftp_socket_drops_total", ""}) }

	junk := []byte{0, 99, 'x', 0} // not a request: cheap for the server
	deadline := time.Now().Add(20 * time.Second)
	senders := make([]*net.UDPConn, 4)
	for i := range senders {
		senders[i] = dialRawFrom(t, netip.MustParseAddr("127.0.0.1"), conn.LocalAddr().(*net.UDPAddr).AddrPort()).conn
	}
	for drops() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no drops counted after 20 s of sending into a 4 KiB receive buffer")
		}
		for range 2000 {
			for _, c := range senders {
				c.WriteToUDP(junk, conn.LocalAddr().(*net.UDPAddr))
			}
		}
	}
	kernel := procUDPDrops(t, conn)
	if got := drops(); got != kernel {
		t.Errorf("ramboot_tftp_socket_drops_total = %v, kernel says %v for the socket", got, kernel)
	}
	cancel()
	waitServe(t, done, 10*time.Second)
	if after := drops(); after != kernel {
		t.Errorf("drops after Serve returned = %v, want the socket's last count %v kept", after, kernel)
	}
	t.Logf("%v datagrams dropped at the socket", drops())
}

// TestListenInUse starts a second server on the address of a first one:
// Listen must fail with an error that says so and names the holder.
func TestListenInUse(t *testing.T) {
	first, err := tftp.Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	addr := first.LocalAddr().String()
	second, err := tftp.Listen(t.Context(), addr)
	if err == nil {
		second.Close()
		t.Fatalf("second Listen on %s succeeded", addr)
	}
	want := fmt.Sprintf("listen tftp %s: another TFTP server is already serving this address (pid %d (", addr, os.Getpid())
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("second Listen: %v\nwant EADDRINUSE and prefix %q", err, want)
	}
}
