package tftp_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/pxe/tftp"
	"github.com/ramboot/ramboot/pxe/tftp/tftptest"
)

// Issue 12's reproduction: read requests that never acknowledge, about
// 3,000 a second (for 8 s there; 3 s here, RAMBOOT_FLOOD_SECONDS
// changes it). Each one held a transfer (its socket, the open file, a
// goroutine) for its whole retransmit timeout.
const floodRate = 3000 // requests per second

// floodFor is how long the flood tests flood.
var floodFor = func() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("RAMBOOT_FLOOD_SECONDS")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 3 * time.Second
}()

// refusalSlack is the descriptors allowed besides the held transfers'
// during a flood. Refusals are sent from the server socket and hold none;
// the slack covers the test's own sockets and the runtime's. (With
// pin/tftp, which bound a socket for every request before the server could
// refuse it, 150 to 260 were measured under -race; the server without
// limits held 18,000.)
const refusalSlack = 512

// openFDs counts the process's open file descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdLimit is the process's soft RLIMIT_NOFILE.
func fdLimit(t testing.TB) int {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	return int(rl.Cur)
}

// peaks samples the process's open descriptors and goroutines every 10 ms
// until stop is called, and returns the largest of each.
type peaks struct {
	fds, goroutines atomic.Int64
	stop            func()
}

func samplePeaks(t testing.TB) *peaks {
	p := &peaks{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := int64(openFDs(t)); n > p.fds.Load() {
				p.fds.Store(n)
			}
			if n := int64(runtime.NumGoroutine()); n > p.goroutines.Load() {
				p.goroutines.Store(n)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	p.stop = func() { cancel(); wg.Wait() }
	t.Cleanup(p.stop)
	return p
}

// The flood's source ports: floodPortsPerAddr open sockets per address,
// on ports below the kernel's ephemeral range (32768 and up by default),
// used in turn. The sockets stay open and are never read: the clients are
// silent, so a transfer the server admits waits for its acknowledgements
// until it times out (a closed port would answer with ICMP port
// unreachable, and the server would end the transfer at once). Their
// answers never reach the good client's socket, which takes an ephemeral
// port.
const (
	floodPortBase     = 20000
	floodPortsPerAddr = 64
)

// flooder is the flood's silent client sockets.
type flooder struct{ conns []*net.UDPConn }

// newFlooder opens the flood's sockets on the given addresses; they are
// closed when the test ends. Open it before counting the process's
// descriptors.
func newFlooder(t testing.TB, from []netip.Addr) *flooder {
	t.Helper()
	f := &flooder{}
	for i := range floodPortsPerAddr {
		for j, src := range from {
			port := uint16(floodPortBase + j*floodPortsPerAddr + i)
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, port)))
			if err != nil {
				t.Fatal(err)
			}
			f.conns = append(f.conns, c)
		}
	}
	t.Cleanup(func() {
		for _, c := range f.conns {
			c.Close()
		}
	})
	return f
}

// flood sends rate read requests a second for d from the flooder's
// sockets in turn (so from its addresses in turn); nothing is ever
// acknowledged. It returns the number of requests sent.
func (f *flooder) flood(t testing.TB, server netip.AddrPort, rate int, d time.Duration) int {
	t.Helper()
	failed := 0
	defer func() {
		if failed > 0 {
			t.Logf("flood: %d requests could not be sent", failed)
		}
	}()
	req := rrq("snponly.efi", "octet", "blksize", "1468", "tsize", "0")
	dst := net.UDPAddrFromAddrPort(server)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	sent := 0
	for time.Since(start) < d {
		<-tick.C
		for sent < int(time.Since(start).Seconds()*float64(rate)) {
			c := f.conns[sent%len(f.conns)]
			sent++
			if _, err := c.WriteToUDP(req, dst); err != nil {
				failed++
			}
		}
	}
	return sent
}

// median returns the median of ds, 0 for none.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(100 * time.Microsecond)
}

// pinGet fetches name with pin's client from 127.0.0.1. It waits 4 s
// before it sends a request again, as PXE firmware does: each retransmitted
// request is a transfer of its own on the server until it times out, and
// counts against the per-client limit.
func pinGet(server netip.AddrPort, name string) ([]byte, error) {
	c, err := pintftp.NewClient(server.String())
	if err != nil {
		return nil, err
	}
	c.SetTimeout(4 * time.Second)
	c.SetRetries(3)
	c.SetBlockSize(1468)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	_, err = wt.WriteTo(&buf)
	return buf.Bytes(), err
}

// loopbackAddrs returns n addresses 127.0.x.y from base on; Linux answers
// for the whole of 127/8 on lo, so each can be a distinct client.
func loopbackAddrs(base netip.Addr, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	a := base
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out
}

// floodServer serves snponly.efi and undionly.kpxe from a directory, as in
// production (each transfer opens the file), with default timeouts.
func floodServer(t *testing.T, configure func(*tftp.Server)) (netip.AddrPort, *prometheus.Registry, []byte) {
	t.Helper()
	nbp := randomBytes(200_000, 21)
	dir := t.TempDir()
	for _, name := range []string{"snponly.efi", "undionly.kpxe"} {
		if err := os.WriteFile(filepath.Join(dir, name), nbp, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	s := &tftp.Server{
		Root:    os.DirFS(dir),
		Files:   []string{"snponly.efi", "undionly.kpxe"},
		Metrics: tftp.NewMetrics(reg),
		Logger:  slog.New(slog.DiscardHandler),
	}
	if configure != nil {
		configure(s)
	}
	return tftptest.Start(t, s), reg, nbp
}

// waitSettled waits until the descriptors and goroutines are back near
// their level before the flood: every transfer has ended and nothing
// leaked. A silent client is given up after Timeout*(Retries+1) = 6 s.
func waitSettled(t *testing.T, fds0, g0 int) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(time.Duration(tftp.DefaultRetries+1)*tftp.DefaultTimeout + 10*time.Second)
	for {
		fds, g := openFDs(t), runtime.NumGoroutine()
		if fds <= fds0+4 && g <= g0+4 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the flood: %d fds (%d before), %d goroutines (%d before): transfers leaked", fds, fds0, g, g0)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFloodBounded is issue 12's TFTP flood: never-acknowledging read
// requests at 3,000/s for 3 s from many source ports of four addresses.
// Before the limits, every request held a transfer for 6 s (about 18,000
// descriptors here). Now each address holds at most
// DefaultMaxTransfersPerClient transfers, the rest are refused, the
// process's descriptors stay well under its limit, a real client fetching
// during the flood is served, and every transfer goroutine ends after it.
func TestFloodBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods for 3 s and waits 6 s for the transfers to time out")
	}
	addr, reg, nbp := floodServer(t, nil)
	attackers := loopbackAddrs(netip.MustParseAddr("127.0.0.2"), 4)
	fetch := func() (time.Duration, error) {
		start := time.Now()
		got, err := pinGet(addr, "undionly.kpxe")
		if err == nil && !bytes.Equal(got, nbp) {
			err = fmt.Errorf("got %d bytes, want %d identical bytes", len(got), len(nbp))
		}
		return time.Since(start), err
	}
	var quiet []time.Duration
	for range 5 {
		d, err := fetch()
		if err != nil {
			t.Fatalf("fetch before the flood: %v", err)
		}
		quiet = append(quiet, d)
	}
	fl := newFlooder(t, attackers)
	fds0, g0 := openFDs(t), runtime.NumGoroutine()
	p := samplePeaks(t)

	// A good client fetches every floodFor/10 while the flood runs.
	var during []time.Duration
	var fetchErrs []error
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; i < 10; i++ {
			time.Sleep(floodFor / 10)
			d, err := fetch()
			if err != nil {
				fetchErrs = append(fetchErrs, err)
				continue
			}
			during = append(during, d)
		}
	})
	sent := fl.flood(t, addr, floodRate, floodFor)
	wg.Wait()
	p.stop()
	for _, err := range fetchErrs {
		t.Errorf("fetch during the flood: %v", err)
	}

	held := len(attackers) * tftp.DefaultMaxTransfersPerClient
	over := testutil.ToFloat64(gathered{reg, "ramboot_tftp_over_limit_total", "client"})
	t.Logf("flood: %d requests from %d addresses in %v; peak %d fds (%d before), peak %d goroutines (%d before); %v refused over the per-client limit",
		sent, len(attackers), floodFor, p.fds.Load(), fds0, p.goroutines.Load(), g0, over)
	t.Logf("fetch of %d bytes by pin's client: median %v before the flood, median %v max %v during it (%d of 9 fetches served)",
		len(nbp), median(quiet), median(during), slices.Max(append(during, 0)).Round(100*time.Microsecond), len(during))
	// Each held transfer is two descriptors (socket, file); a refused
	// request's socket lives only until its ERROR is sent.
	if limit, peak := fdLimit(t), int(p.fds.Load()); peak > fds0+2*held+refusalSlack || peak > limit/10 {
		t.Errorf("peak %d open fds during the flood (%d before, limit %d), want at most %d", peak, fds0, limit, fds0+2*held+refusalSlack)
	}
	settled := waitSettled(t, fds0, g0)
	t.Logf("after the flood: descriptors and goroutines back to their level in %v", settled.Round(time.Millisecond))
	// Every request has been handled now (a busy machine may still have
	// had some queued when the flood ended, and admitted a few of those
	// as the first transfers timed out): nearly all were refused.
	if over := testutil.ToFloat64(gathered{reg, "ramboot_tftp_over_limit_total", "client"}); over < float64(sent)*0.9 {
		t.Errorf("%v of %d requests refused over the per-client limit, want at least 90%%", over, sent)
	}

	if got, err := pinGet(addr, "snponly.efi"); err != nil || !bytes.Equal(got, nbp) {
		t.Errorf("fetch after the flood: %d bytes, %v", len(got), err)
	}
}

// TestFloodTotalLimit floods from more addresses than MaxTransfers allows
// (32 addresses x 8 > 64) and checks that the total stays at the limit,
// the descriptors with it, and that atftp, a real client, is served once
// the flood's transfers end. (TestTotalLimit checks the ERROR a request
// over the limit gets.)
func TestFloodTotalLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("floods for 3 s and waits 6 s for the transfers to time out")
	}
	const maxTotal = 64
	addr, reg, nbp := floodServer(t, func(s *tftp.Server) { s.MaxTransfers = maxTotal })
	attackers := loopbackAddrs(netip.MustParseAddr("127.0.1.1"), 32)
	fl := newFlooder(t, attackers)
	fds0, g0 := openFDs(t), runtime.NumGoroutine()
	p := samplePeaks(t)
	var maxInFlight atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if n := int64(testutil.ToFloat64(gathered{reg, "ramboot_tftp_transfers_in_flight", ""})); n > maxInFlight.Load() {
				maxInFlight.Store(n)
			}
		}
	})
	sent := fl.flood(t, addr, floodRate, floodFor)
	close(stop)
	wg.Wait()
	p.stop()

	over := testutil.ToFloat64(gathered{reg, "ramboot_tftp_over_limit_total", "total"})
	t.Logf("flood: %d requests from %d addresses; peak %d transfers in flight; peak %d fds (%d before), peak %d goroutines (%d before); %v refused over the total limit",
		sent, len(attackers), maxInFlight.Load(), p.fds.Load(), fds0, p.goroutines.Load(), g0, over)
	if n := maxInFlight.Load(); n > maxTotal {
		t.Errorf("peak %d transfers in flight, want at most %d", n, maxTotal)
	}
	if over == 0 {
		t.Error("no request refused over the total limit")
	}
	if peak := int(p.fds.Load()); peak > fds0+2*maxTotal+refusalSlack {
		t.Errorf("peak %d open fds during the flood (%d before), want at most %d", peak, fds0, fds0+2*maxTotal+refusalSlack)
	}
	waitSettled(t, fds0, g0)

	atftp := clients[1]
	atftp.lookPath(t)
	got, err := atftp.fetch(t, int(addr.Port()), "snponly.efi")
	if err != nil || !bytes.Equal(got, nbp) {
		t.Errorf("atftp after the flood: %d bytes, %v", len(got), err)
	}
}

// TestFloodAtftpServed runs atftp, a real client, during a flood from four
// addresses: the per-client limit keeps the flood from taking the slots
// the client needs.
func TestFloodAtftpServed(t *testing.T) {
	if testing.Short() {
		t.Skip("floods for 3 s and waits 6 s for the transfers to time out")
	}
	atftp := clients[1]
	atftp.lookPath(t)
	addr, _, nbp := floodServer(t, nil)
	attackers := loopbackAddrs(netip.MustParseAddr("127.0.0.2"), 4)
	fl := newFlooder(t, attackers)
	fds0, g0 := openFDs(t), runtime.NumGoroutine()
	var wg sync.WaitGroup
	var got []byte
	var err error
	var dur time.Duration
	wg.Go(func() {
		time.Sleep(floodFor / 3)
		start := time.Now()
		got, err = atftp.fetch(t, int(addr.Port()), "undionly.kpxe")
		dur = time.Since(start)
	})
	fl.flood(t, addr, floodRate, floodFor)
	wg.Wait()
	if err != nil || !bytes.Equal(got, nbp) {
		t.Fatalf("atftp during the flood: %d bytes, %v", len(got), err)
	}
	t.Logf("atftp fetched %d bytes during the flood in %v", len(got), dur.Round(time.Millisecond))
	waitSettled(t, fds0, g0)
}
