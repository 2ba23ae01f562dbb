package dhcp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// loopback is a Server serving on 127.0.0.1:0 and a client socket on
// 127.0.0.1 that receives the replies meant for the relay (giaddr
// 127.0.0.1).
type loopback struct {
	srv     *Server
	reg     *prometheus.Registry
	client  net.PacketConn
	srvAddr net.Addr
	cancel  context.CancelFunc
	done    chan error

	mu     sync.Mutex
	events []Event
	logs   bytes.Buffer
}

// startLoopback starts s (ServerIP and Inventory set) with fresh metrics.
// wrap, if set, wraps the server's socket to inject faults.
func startLoopback(t *testing.T, s *Server, wrap func(net.PacketConn) net.PacketConn) *loopback {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	l := &loopback{srv: s, reg: prometheus.NewRegistry(), client: client, srvAddr: conn.LocalAddr(), done: make(chan error, 1)}
	s.Metrics = NewMetrics(l.reg)
	s.relayPort = client.LocalAddr().(*net.UDPAddr).Port
	s.Observer = func(ev Event) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.events = append(l.events, ev)
	}
	s.Logger = slog.New(slog.NewTextHandler(syncWriter{&l.mu, &l.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if wrap != nil {
		conn = wrap(conn)
	}
	ctx, cancel := context.WithCancel(t.Context())
	l.cancel = cancel
	go func() { l.done <- s.Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-l.done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return l
}

type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (l *loopback) send(t *testing.T, b []byte) {
	t.Helper()
	if _, err := l.client.WriteTo(b, l.srvAddr); err != nil {
		t.Fatal(err)
	}
}

// receive waits up to d for a reply; nil if none came.
func (l *loopback) receive(t *testing.T, d time.Duration) *dhcpv4.DHCPv4 {
	t.Helper()
	buf := make([]byte, 1500)
	l.client.SetReadDeadline(time.Now().Add(d))
	n, from, err := l.client.ReadFrom(buf)
	if errors.Is(err, syscall.EAGAIN) || isTimeout(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	if from.(*net.UDPAddr).Port != l.srvAddr.(*net.UDPAddr).Port {
		t.Errorf("reply from %s, want the server's socket %s", from, l.srvAddr)
	}
	reply, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatalf("reply does not decode: %v", err)
	}
	return reply
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// relayedDiscover is a DISCOVER from mac through a relay at 127.0.0.1.
func relayedDiscover(mac net.HardwareAddr, x byte) *dhcpv4.DHCPv4 {
	return pkt(mac, dhcpv4.MessageTypeDiscover, join(firmware(iana.EFI_X86_64), []dhcpv4.Modifier{
		dhcpv4.WithTransactionID(dhcpv4.TransactionID{1, 2, 3, x}),
		dhcpv4.WithGatewayIP(net.ParseIP("127.0.0.1")),
		dhcpv4.WithOption(relayInfo),
	})...)
}

func TestServeLoopback(t *testing.T) {
	s, _ := newTestServer()
	l := startLoopback(t, s, nil)

	valid := relayedDiscover(macNode1, 1).ToBytes()
	badCookie := bytes.Clone(valid)
	badCookie[236] = 0
	header := valid[:240] // BOOTP header and magic cookie
	malformed := [][]byte{
		nil,
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		valid[:100],                           // truncated header
		badCookie,                             // wrong magic cookie
		append(bytes.Clone(header), 53, 1, 1), // no end option
		append(bytes.Clone(header), 60, 50, 'P', 255), // option longer than the packet
	}
	for _, b := range malformed {
		l.send(t, b)
	}
	// Unknown MAC and not-a-request: decoded, ignored, no reply.
	l.send(t, relayedDiscover(macNobody, 2).ToBytes())
	l.send(t, pkt(macNode1, dhcpv4.MessageTypeOffer, dhcpv4.WithGatewayIP(net.ParseIP("127.0.0.1")),
		func(d *dhcpv4.DHCPv4) { d.OpCode = dhcpv4.OpcodeBootReply }).ToBytes())
	l.send(t, valid)

	reply := l.receive(t, 5*time.Second)
	if reply == nil {
		t.Fatal("no reply to a valid relayed DISCOVER after malformed packets")
	}
	if reply.MessageType() != dhcpv4.MessageTypeOffer || reply.TransactionID != (dhcpv4.TransactionID{1, 2, 3, 1}) {
		t.Fatalf("got %s, want the OFFER for xid 0x01020301", reply)
	}
	if !reply.YourIPAddr.Equal(net.ParseIP("10.77.0.11")) || reply.BootFileName != "snponly.efi" {
		t.Errorf("offer of %s with %q, want 10.77.0.11 with snponly.efi", reply.YourIPAddr, reply.BootFileName)
	}
	if !reply.GatewayIPAddr.Equal(net.ParseIP("127.0.0.1")) || !bytes.Equal(reply.Options.Get(dhcpv4.OptionRelayAgentInformation), relayInfo.Value.ToBytes()) {
		t.Errorf("relay fields not kept: giaddr %s, option 82 % x", reply.GatewayIPAddr, reply.Options.Get(dhcpv4.OptionRelayAgentInformation))
	}
	if extra := l.receive(t, 200*time.Millisecond); extra != nil {
		t.Errorf("unexpected second reply: %s", extra)
	}

	start := time.Now()
	l.cancel()
	select {
	case err := <-l.done:
		if err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
		l.done <- nil // for the cleanup
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return within 2s of cancel")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Serve took %v to stop", d)
	}

	// Serve has waited for its handlers: every count is final.
	if got := testutil.ToFloat64(s.Metrics.malformed); got != float64(len(malformed)) {
		t.Errorf("ramboot_dhcp_malformed_total = %v, want %d", got, len(malformed))
	}
	wantCounts := map[string]float64{
		`ramboot_dhcp_requests_total{port="67",type="discover"}`: 2,
		`ramboot_dhcp_requests_total{port="67",type="other"}`:    1,
		`ramboot_dhcp_replies_total{port="67",type="offer"}`:     1,
		`ramboot_dhcp_ignored_total{reason="unknown_mac"}`:       1,
		`ramboot_dhcp_ignored_total{reason="not_bootrequest"}`:   1,
	}
	for name, want := range wantCounts {
		if got := gather(t, l.reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(l.reg, "ramboot_dhcp_malformed_total"); err != nil || n != 1 {
		t.Errorf("malformed metric registered %d times (%v), want 1", n, err)
	}

	l.mu.Lock()
	events, logs := len(l.events), l.logs.String()
	l.mu.Unlock()
	if events != 3 {
		t.Errorf("observer saw %d events, want 3 (unknown, offer-as-request, offer)", events)
	}
	for _, want := range []string{"drop malformed dhcp packet", "mac=52:54:00:00:00:77", "reason=\"unknown MAC\"", "bytes=18"} {
		if !strings.Contains(logs, want) {
			t.Errorf("debug log lacks %q:\n%s", want, logs)
		}
	}
}

// gather returns the value of one counter series, by its text name, and
// fails the test if there is no such series.
func gather(t testing.TB, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	v, ok := lookupSeries(t, reg, series)
	if !ok {
		t.Fatalf("no series %s", series)
	}
	return v
}

// gatherOr0 is gather for a series that may not exist yet (a label value
// not seen so far).
func gatherOr0(t testing.TB, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	v, _ := lookupSeries(t, reg, series)
	return v
}

func lookupSeries(t testing.TB, reg *prometheus.Registry, series string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName() + "{"
			for i, lp := range m.GetLabel() {
				if i > 0 {
					name += ","
				}
				name += lp.GetName() + `="` + lp.GetValue() + `"`
			}
			if name+"}" == series {
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

// runServer runs serve until the test ends, then cancels its context and
// fails the test if it does not return nil within 5 s.
func runServer(t *testing.T, serve func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server returned %v after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("server did not stop within 5 s")
		}
	})
}

// TestServeStopsDuringSlowLookup checks that Serve returns promptly when ctx
// ends while an Inventory call is in flight.
func TestServeStopsDuringSlowLookup(t *testing.T) {
	entered := make(chan struct{})
	var once sync.Once
	s := &Server{ServerIP: serverIP, Inventory: InventoryFunc(func(ctx context.Context, _ Client) (Reservation, error) {
		once.Do(func() { close(entered) })
		<-ctx.Done()
		return Reservation{}, ctx.Err()
	})}
	l := startLoopback(t, s, nil)
	l.send(t, relayedDiscover(macNode1, 1).ToBytes())
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the inventory")
	}
	l.cancel()
	select {
	case err := <-l.done:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
		l.done <- nil
	case <-time.After(2 * time.Second):
		t.Fatal("Serve waited for a stuck lookup after cancel")
	}
	if got := gather(t, l.reg, `ramboot_dhcp_replies_total{port="67",type="offer"}`); got != 0 {
		t.Errorf("offers = %v, want 0", got)
	}
}

// flakyConn fails its first reads with a transient error.
type flakyConn struct {
	net.PacketConn
	fails atomic.Int32
}

func (c *flakyConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if c.fails.Add(-1) >= 0 {
		return 0, nil, &net.OpError{Op: "read", Net: "udp", Err: syscall.ECONNREFUSED}
	}
	return c.PacketConn.ReadFrom(b)
}

func TestServeSurvivesReadErrors(t *testing.T) {
	s, _ := newTestServer()
	l := startLoopback(t, s, func(c net.PacketConn) net.PacketConn {
		fc := &flakyConn{PacketConn: c}
		fc.fails.Store(3)
		return fc
	})
	l.send(t, relayedDiscover(macNode1, 7).ToBytes())
	if reply := l.receive(t, 5*time.Second); reply == nil || reply.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("no offer after transient read errors: %v", reply)
	}
}

// closingConn reports net.ErrClosed although nobody cancelled Serve.
type closingConn struct{ net.PacketConn }

func (c closingConn) ReadFrom([]byte) (int, net.Addr, error) {
	return 0, nil, &net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed}
}

func TestServeReturnsConnError(t *testing.T) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestServer()
	err = s.Serve(t.Context(), closingConn{conn})
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve = %v, want net.ErrClosed", err)
	}
	if _, err := conn.WriteTo([]byte{0}, conn.LocalAddr()); err == nil {
		t.Error("Serve returned without closing conn")
	}
}
