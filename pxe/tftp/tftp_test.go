package tftp_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	pintftp "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/ramboot/ramboot/pxe/tftp"
	"github.com/ramboot/ramboot/pxe/tftp/tftptest"
)

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// testFS is the catalogue most tests serve: sizes around block boundaries.
func testFS() fstest.MapFS {
	return fstest.MapFS{
		"undionly.kpxe":    {Data: randomBytes(70_001, 1)},
		"snponly.efi":      {Data: randomBytes(1468*3, 2)}, // exact multiple of the block size
		"ipxe.efi":         {Data: randomBytes(512*4, 3)},  // exact multiple of 512
		"empty.bin":        {Data: nil},
		"efi/x64/ipxe.efi": {Data: randomBytes(3000, 4)},
		"secret.txt":       {Data: []byte("not in the catalogue")},
		"dir/inner":        {Data: []byte("x")},
	}
}

var testFiles = []string{"undionly.kpxe", "snponly.efi", "ipxe.efi", "empty.bin", "efi/x64/ipxe.efi", "dir"}

// harness is a running server with its metrics, events and logs.
type harness struct {
	addr    netip.AddrPort
	reg     *prometheus.Registry
	metrics *tftp.Metrics
	events  chan tftp.Event
	logs    *recorder
	fsys    fstest.MapFS
}

func start(t testing.TB, configure func(*tftp.Server)) *harness {
	t.Helper()
	h := &harness{
		reg:    prometheus.NewRegistry(),
		events: make(chan tftp.Event, 1024),
		logs:   &recorder{},
		fsys:   testFS(),
	}
	h.metrics = tftp.NewMetrics(h.reg)
	s := &tftp.Server{
		Root:     h.fsys,
		Files:    testFiles,
		Observer: func(ev tftp.Event) { h.events <- ev },
		Logger:   slog.New(h.logs),
		Metrics:  h.metrics,
	}
	if configure != nil {
		configure(s)
	}
	h.addr = tftptest.Start(t, s)
	return h
}

// event waits for the next transfer event.
func (h *harness) event(t *testing.T) tftp.Event {
	t.Helper()
	select {
	case ev := <-h.events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no transfer event within 10s")
		return tftp.Event{}
	}
}

// count returns ramboot_tftp_transfers_total{result=result}.
func (h *harness) count(result string) float64 {
	return testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_transfers_total", result})
}

// get fetches name with pin's client.
func (h *harness) get(t testing.TB, name string, blksize int, tsize bool) ([]byte, int64, error) {
	t.Helper()
	c, err := pintftp.NewClient(h.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(3)
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(tsize)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, 0, err
	}
	size, _ := wt.(pintftp.IncomingTransfer).Size()
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return nil, size, err
	}
	return buf.Bytes(), size, nil
}

func TestServeCatalogue(t *testing.T) {
	h := start(t, nil)
	tests := []struct {
		name, request, file string
		blksize             int
	}{
		{"plain", "undionly.kpxe", "undionly.kpxe", 0},
		{"leading slash", "/undionly.kpxe", "undionly.kpxe", 0},
		{"double slash", "//snponly.efi", "snponly.efi", 1468},
		{"blksize 1468", "snponly.efi", "snponly.efi", 1468},
		{"blksize above cap", "undionly.kpxe", "undionly.kpxe", 9000},
		{"exact 512 multiple", "ipxe.efi", "ipxe.efi", 512},
		{"empty file", "empty.bin", "empty.bin", 0},
		{"subdirectory", "/efi/x64/ipxe.efi", "efi/x64/ipxe.efi", 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := h.get(t, tt.request, tt.blksize, false)
			if err != nil {
				t.Fatalf("get %s: %v", tt.request, err)
			}
			want := h.fsys[tt.file].Data
			if !bytes.Equal(got, want) {
				t.Fatalf("get %s: got %d bytes, want %d identical bytes", tt.request, len(got), len(want))
			}
			ev := h.event(t)
			if ev.Err != nil || ev.File != tt.file || ev.Bytes != int64(len(want)) {
				t.Errorf("event = %+v, want file %s, %d bytes, no error", ev, tt.file, len(want))
			}
			if !ev.Remote.Addr().Is4() || !ev.Remote.Addr().IsLoopback() || ev.Remote.Port() == 0 {
				t.Errorf("event remote = %v, want 127.0.0.1:port", ev.Remote)
			}
			if ev.Time.IsZero() || ev.Dur <= 0 {
				t.Errorf("event time %v dur %v", ev.Time, ev.Dur)
			}
		})
	}
	if got := h.count("ok"); got != float64(len(tests)) {
		t.Errorf("transfers ok = %v, want %d", got, len(tests))
	}
	var total int
	for _, tt := range tests {
		total += len(h.fsys[tt.file].Data)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_bytes_total", ""}); got != float64(total) {
		t.Errorf("bytes = %v, want %d", got, total)
	}
}

func TestRefused(t *testing.T) {
	h := start(t, nil)
	tests := []struct {
		name, request string
		want          error
	}{
		{"not in catalogue", "pxelinux.0", tftp.ErrNotFound},
		{"exists but not in catalogue", "secret.txt", tftp.ErrNotFound},
		{"traversal", "../etc/passwd", tftp.ErrAccessViolation},
		{"absolute traversal", "/../../etc/passwd", tftp.ErrAccessViolation},
		{"dot element", "efi/./x64/ipxe.efi", tftp.ErrAccessViolation},
		{"inner traversal", "efi/../undionly.kpxe", tftp.ErrAccessViolation},
		{"trailing slash", "undionly.kpxe/", tftp.ErrAccessViolation},
		{"empty", "", tftp.ErrAccessViolation},
		{"backslash", `\undionly.kpxe`, tftp.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := h.get(t, tt.request, 0, false)
			if err == nil {
				t.Fatalf("get %q: no error", tt.request)
			}
			ev := h.event(t)
			if !errors.Is(ev.Err, tt.want) {
				t.Errorf("event error = %v, want %v", ev.Err, tt.want)
			}
		})
	}
	t.Run("write request", func(t *testing.T) {
		c, err := pintftp.NewClient(h.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetTimeout(2 * time.Second)
		if rf, err := c.Send("undionly.kpxe", "octet"); err == nil {
			_, err = rf.ReadFrom(strings.NewReader("overwrite"))
			if err == nil {
				t.Fatal("write request accepted")
			}
		}
		ev := h.event(t)
		if !errors.Is(ev.Err, tftp.ErrAccessViolation) {
			t.Errorf("event error = %v, want %v", ev.Err, tftp.ErrAccessViolation)
		}
		if got := string(h.fsys["undionly.kpxe"].Data[:9]); got == "overwrite" {
			t.Error("file was overwritten")
		}
	})
	if got, want := h.count("refused"), float64(len(tests)+1); got != want {
		t.Errorf("transfers refused = %v, want %v", got, want)
	}
	if got := h.count("ok") + h.count("error"); got != 0 {
		t.Errorf("transfers ok+error = %v, want 0", got)
	}
	// One Warn line per ten seconds; the other refusals go to Debug, so a
	// flood of bad requests costs one line.
	if n := h.logs.count(slog.LevelWarn, "tftp request refused"); n != 1 {
		t.Errorf("%d refusals logged at Warn, want 1", n)
	}
	if n := h.logs.count(slog.LevelDebug, "tftp request refused"); n != len(tests) {
		t.Errorf("%d refusals logged at Debug, want %d", n, len(tests))
	}
}

func TestCatalogueEntryMissing(t *testing.T) {
	h := start(t, func(s *tftp.Server) { s.Files = append(s.Files, "gone.efi") })
	for _, name := range []string{"gone.efi", "dir"} {
		if _, _, err := h.get(t, name, 0, false); err == nil {
			t.Fatalf("get %s: no error", name)
		}
		if ev := h.event(t); ev.Err == nil || errors.Is(ev.Err, tftp.ErrNotFound) {
			t.Errorf("get %s: event error = %v, want an open/stat error", name, ev.Err)
		}
	}
	if got := h.count("error"); got != 2 {
		t.Errorf("transfers error = %v, want 2", got)
	}
}

func TestTsize(t *testing.T) {
	h := start(t, nil)
	for _, name := range []string{"undionly.kpxe", "snponly.efi"} {
		t.Run(name, func(t *testing.T) {
			got, size, err := h.get(t, name, 1468, true)
			if err != nil {
				t.Fatal(err)
			}
			want := h.fsys[name].Data
			if size != int64(len(want)) {
				t.Errorf("tsize = %d, want %d", size, len(want))
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want %d identical bytes", len(got), len(want))
			}
			h.event(t)
		})
	}
}

// TestOptionNegotiation checks the OACK a raw client gets.
func TestOptionNegotiation(t *testing.T) {
	h := start(t, nil)
	size := strconv.Itoa(len(h.fsys["undionly.kpxe"].Data))
	tests := []struct {
		name    string
		opts    []string
		want    map[string]string
		dataLen int
	}{
		{"blksize", []string{"blksize", "1468"}, map[string]string{"blksize": "1468"}, 1468},
		{"blksize capped", []string{"blksize", "65464"}, map[string]string{"blksize": "1468"}, 1468},
		{"tsize", []string{"tsize", "0"}, map[string]string{"tsize": size}, 512},
		{"both", []string{"tsize", "0", "blksize", "1024"}, map[string]string{"tsize": size, "blksize": "1024"}, 1024},
		{"bad blksize ignored", []string{"blksize", "7", "tsize", "0"}, map[string]string{"tsize": size}, 512},
		{"small blksize granted (RFC 2348: 8 and up)", []string{"blksize", "12"}, map[string]string{"blksize": "12"}, 12},
		{"timeout acknowledged", []string{"timeout", "3"}, map[string]string{"timeout": "3"}, 512},
		{"bad timeout ignored", []string{"timeout", "0", "blksize", "600"}, map[string]string{"blksize": "600"}, 600},
		{"unknown option ignored", []string{"windowsize", "4", "blksize", "600"}, map[string]string{"blksize": "600"}, 600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, h.addr)
			c.send(t, rrq("undionly.kpxe", "octet", tt.opts...))
			op, body := c.recv(t)
			if op != opOACK {
				t.Fatalf("got opcode %d, want OACK", op)
			}
			if got := parseOACK(body); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("OACK = %v, want %v", got, tt.want)
			}
			c.send(t, ack(0))
			op, body = c.recv(t)
			if op != opDATA || binary.BigEndian.Uint16(body) != 1 || len(body)-2 != tt.dataLen {
				t.Errorf("got opcode %d with %d bytes, want DATA block 1 with %d bytes", op, len(body)-2, tt.dataLen)
			}
			c.send(t, errPacket(0, "test done"))
			h.event(t)
		})
	}
}

// TestTsizeProbeAbort does what OVMF does: read tsize from the OACK, abort
// with "error 8 User aborted", then fetch the file.
func TestTsizeProbeAbort(t *testing.T) {
	h := start(t, nil)
	c := dialRaw(t, h.addr)
	c.send(t, rrq("snponly.efi", "octet", "tsize", "0", "blksize", "1468"))
	op, body := c.recv(t)
	if op != opOACK {
		t.Fatalf("got opcode %d, want OACK", op)
	}
	want := strconv.Itoa(len(h.fsys["snponly.efi"].Data))
	if got := parseOACK(body)["tsize"]; got != want {
		t.Errorf("tsize = %q, want %q", got, want)
	}
	c.send(t, errPacket(8, "User aborted"))

	ev := h.event(t)
	if !errors.Is(ev.Err, tftp.ErrAborted) || ev.Bytes != 0 || ev.File != "snponly.efi" {
		t.Errorf("event = %+v, want an ErrAborted event for snponly.efi with 0 bytes", ev)
	}
	if n := h.logs.count(slog.LevelDebug, ""); n == 0 {
		t.Error("abort not logged at Debug")
	}
	if n := h.logs.count(slog.LevelWarn, ""); n != 0 {
		t.Errorf("%d Warn records, want none for a tsize probe", n)
	}
	if got := h.count("error"); got != 1 {
		t.Errorf("transfers error = %v, want 1", got)
	}
	if got := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_option_probes_total", ""}); got != 1 {
		t.Errorf("option probes = %v, want 1", got)
	}

	got, _, err := h.get(t, "snponly.efi", 1468, true)
	if err != nil || !bytes.Equal(got, h.fsys["snponly.efi"].Data) {
		t.Fatalf("fetch after abort: %d bytes, %v", len(got), err)
	}
	if ev := h.event(t); ev.Err != nil {
		t.Errorf("fetch after abort: %v", ev.Err)
	}
}

// TestClientGone: pin's client reads tsize, then never acknowledges.
func TestClientGone(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.Timeout = 50 * time.Millisecond
		s.Retries = 2
	})
	c, err := pintftp.NewClient(h.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.RequestTSize(true)
	wt, err := c.Receive("undionly.kpxe", "octet")
	if err != nil {
		t.Fatal(err)
	}
	if size, _ := wt.(pintftp.IncomingTransfer).Size(); size != int64(len(h.fsys["undionly.kpxe"].Data)) {
		t.Errorf("tsize = %d", size)
	}
	// Walk away without acknowledging the OACK.
	ev := h.event(t)
	var ne net.Error
	if !errors.As(ev.Err, &ne) || !ne.Timeout() || errors.Is(ev.Err, tftp.ErrAborted) {
		t.Errorf("event error = %v, want a timeout", ev.Err)
	}
	if n := h.logs.count(slog.LevelWarn, "tftp transfer failed"); n != 1 {
		t.Errorf("%d failures logged at Warn, want 1", n)
	}
	if _, _, err := h.get(t, "ipxe.efi", 0, false); err != nil {
		t.Fatalf("fetch after timeout: %v", err)
	}
}

func TestServeStopsPromptly(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		conn, err := tftp.Listen(context.Background(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- (&tftp.Server{Root: testFS(), Files: testFiles}).Serve(ctx, conn)
		}()
		// One transfer shows that Serve is in its read loop.
		h := &harness{addr: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
		if _, _, err := h.get(t, "ipxe.efi", 0, false); err != nil {
			t.Fatal(err)
		}
		cancel()
		waitServe(t, done, time.Second)
	})
	t.Run("transfer in flight", func(t *testing.T) {
		big := randomBytes(8<<20, 9)
		conn, err := tftp.Listen(context.Background(), "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		events := make(chan tftp.Event, 1)
		s := &tftp.Server{
			Root:     fstest.MapFS{"big": {Data: big}},
			Files:    []string{"big"},
			Observer: func(ev tftp.Event) { events <- ev },
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, conn) }()

		c := dialRaw(t, conn.LocalAddr().(*net.UDPAddr).AddrPort())
		c.send(t, rrq("big", "octet"))
		for block := uint16(1); block <= 10; block++ {
			if op, _ := c.recv(t); op != opDATA {
				t.Fatalf("block %d: opcode %d", block, op)
			}
			c.send(t, ack(block))
		}
		cancel()
		// The client keeps acknowledging until the server gives up.
		go func() {
			for {
				op, body, err := c.tryRecv(2 * time.Second)
				if err != nil || op != opDATA {
					return
				}
				c.tryAck(binary.BigEndian.Uint16(body))
			}
		}()
		waitServe(t, done, 2*time.Second)
		ev := <-events
		if ev.Err == nil || ev.Bytes >= int64(len(big)) {
			t.Errorf("event = %+v, want an interrupted transfer", ev)
		}
	})
}

func waitServe(t *testing.T, done <-chan error, d time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v, want nil", err)
		}
	case <-time.After(d):
		t.Fatalf("Serve did not return within %v of cancel", d)
	}
}

func TestListenAndServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	logs := &recorder{listening: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		s := &tftp.Server{Root: testFS(), Files: testFiles, Logger: slog.New(logs)}
		done <- s.ListenAndServe(ctx, "127.0.0.1:0")
	}()
	select {
	case <-logs.listening:
	case err := <-done:
		t.Fatalf("ListenAndServe: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("server not listening within 5s")
	}
	cancel()
	waitServe(t, done, time.Second)

	err := (&tftp.Server{Root: testFS(), Files: testFiles}).ListenAndServe(context.Background(), "256.0.0.1:69")
	if err == nil || !strings.HasPrefix(err.Error(), "listen tftp 256.0.0.1:69: ") {
		t.Errorf("ListenAndServe(bad address) = %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		s     tftp.Server
		wants []string
	}{
		{"zero value", tftp.Server{}, []string{"Root is nil", "(Files)"}},
		{"bad names", tftp.Server{Root: testFS(), Files: []string{"../x", "/abs", "ok", "."}},
			[]string{`"../x"`, `"/abs"`, `"."`}},
		{"bad numbers", tftp.Server{Root: testFS(), Files: testFiles, Timeout: -1, Retries: -1, MaxBlockSize: 100},
			[]string{"(Timeout)", "(Retries)", "(MaxBlockSize)"}},
		{"negative limits", tftp.Server{Root: testFS(), Files: testFiles, MaxTransfers: -1, MaxTransfersPerClient: -1},
			[]string{"(MaxTransfers)", "(MaxTransfersPerClient)"}},
		{"per-client above total", tftp.Server{Root: testFS(), Files: testFiles, MaxTransfers: 4, MaxTransfersPerClient: 5},
			[]string{"max transfers per client 5 is above max transfers 4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			err = tt.s.Serve(context.Background(), conn)
			if err == nil {
				t.Fatal("Serve accepted an invalid configuration")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
			if _, err := conn.WriteTo([]byte("x"), conn.LocalAddr()); err == nil {
				t.Error("Serve did not close conn")
			}
		})
	}
}

// TestGarbage sends malformed and random datagrams; the server must count
// them and keep serving.
func TestGarbage(t *testing.T) {
	h := start(t, func(s *tftp.Server) {
		s.Timeout = 20 * time.Millisecond
		s.Retries = 1
	})
	c := dialRaw(t, h.addr)
	for _, b := range garbageSeeds() {
		c.send(t, b)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		b := make([]byte, r.IntN(600))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if len(b) >= 2 && r.IntN(2) == 0 {
			b[0], b[1] = 0, byte(r.IntN(8)) // mostly valid opcodes
		}
		c.send(t, b)
	}
	// The server still serves. Its 20 ms timeout (so that the garbage's
	// transfers die fast) can end a fetch on a loaded machine: a few
	// tries, never an endless loop.
	var got []byte
	var err error
	for try := 0; try < 5; try++ {
		if got, _, err = h.get(t, "undionly.kpxe", 1468, true); err == nil {
			break
		}
		t.Logf("fetch after garbage, try %d: %v", try+1, err)
	}
	if err != nil || !bytes.Equal(got, h.fsys["undionly.kpxe"].Data) {
		t.Fatalf("fetch after garbage: %d bytes, %v", len(got), err)
	}
	if n := testutil.ToFloat64(gathered{h.reg, "ramboot_tftp_malformed_total", ""}); n < 10 {
		t.Errorf("malformed = %v, want at least 10", n)
	}
}

// garbageSeeds are hand-made malformed datagrams, also the fuzz seeds.
func garbageSeeds() [][]byte {
	return [][]byte{
		{},
		{0},
		{0, 1},
		{0, 9, 'x', 0},
		{0xff, 0xff, 0xff, 0xff},
		[]byte("\x00\x01undionly.kpxe"),      // no NUL, no mode
		[]byte("\x00\x01undionly.kpxe\x00"),  // no mode
		[]byte("\x00\x01\x00\x00"),           // empty name and mode
		[]byte("\x00\x04\x00\x01"),           // ACK to the server port
		[]byte("\x00\x03\x00\x01data"),       // DATA to the server port
		[]byte("\x00\x05\x00\x01oops\x00"),   // ERROR to the server port
		[]byte("\x00\x06blksize\x00512\x00"), // OACK to the server port
		rrq("undionly.kpxe", "octet", "blksize", "abc", "tsize", "-1"),
		rrq("undionly.kpxe", "octet", "blksize", "99999999999999999999999"),
		rrq("undionly.kpxe", "octet", "blksize"),
		rrq("undionly.kpxe", "NETASCII", "", ""),
		rrq("undionly.kpxe", "mail"),
		rrq(strings.Repeat("a", 600), "octet"),
		rrq("../../../../etc/shadow", "octet"),
		append(rrq("undionly.kpxe", "octet"), bytes.Repeat([]byte("opt\x00"), 200)...),
	}
}

// Raw client helpers.

const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

func rrq(name, mode string, opts ...string) []byte {
	b := []byte{0, opRRQ}
	for _, s := range append([]string{name, mode}, opts...) {
		b = append(append(b, s...), 0)
	}
	return b
}

func ack(block uint16) []byte { return []byte{0, opACK, byte(block >> 8), byte(block)} }

func errPacket(code uint16, msg string) []byte {
	return append([]byte{0, opERROR, byte(code >> 8), byte(code)}, append([]byte(msg), 0)...)
}

func parseOACK(b []byte) map[string]string {
	fields := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	m := map[string]string{}
	for i := 0; i+1 < len(fields); i += 2 {
		m[fields[i]] = fields[i+1]
	}
	return m
}

// rawClient speaks TFTP datagrams directly, to do what firmware does and
// pin's client cannot.
type rawClient struct {
	conn   *net.UDPConn
	server *net.UDPAddr
	peer   *net.UDPAddr // the server's transfer port, once known
}

func dialRaw(t testing.TB, server netip.AddrPort) *rawClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{conn: conn, server: net.UDPAddrFromAddrPort(server)}
}

func (c *rawClient) send(t testing.TB, b []byte) {
	t.Helper()
	to := c.server
	if c.peer != nil && len(b) >= 2 && b[1] != opRRQ && b[1] != opWRQ {
		to = c.peer
	}
	if _, err := c.conn.WriteToUDP(b, to); err != nil {
		t.Fatal(err)
	}
}

func (c *rawClient) tryAck(block uint16) { c.conn.WriteToUDP(ack(block), c.peer) }

func (c *rawClient) recv(t testing.TB) (op uint16, body []byte) {
	t.Helper()
	op, body, err := c.tryRecv(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return op, body
}

func (c *rawClient) tryRecv(d time.Duration) (op uint16, body []byte, err error) {
	buf := make([]byte, 65536)
	c.conn.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.conn.ReadFromUDP(buf)
	if err != nil {
		return 0, nil, err
	}
	if n < 2 {
		return 0, nil, fmt.Errorf("short datagram")
	}
	c.peer = from
	return binary.BigEndian.Uint16(buf), buf[2:n], nil
}

// recorder is a slog.Handler that keeps records for inspection.
type recorder struct {
	mu        sync.Mutex
	recs      []slog.Record
	listening chan struct{} // if not nil, closed at "tftp server listening"
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	if r.listening != nil && rec.Message == "tftp server listening" {
		close(r.listening)
	}
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// count returns how many records have the level and, if msg is not empty,
// the message.
func (r *recorder) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level == level && (msg == "" || rec.Message == msg) && !strings.Contains(rec.Message, "listening") {
			n++
		}
	}
	return n
}

// gathered is a collector that reads one metric back from a registry, so
// tests check the exported names and labels.
type gathered struct {
	reg    *prometheus.Registry
	name   string
	result string
}

func (g gathered) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(g, ch) }

func (g gathered) Collect(ch chan<- prometheus.Metric) {
	mfs, err := g.reg.Gather()
	if err != nil {
		panic(err)
	}
	// The sum over every series of the name with the label value.
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if g.result != "" && !hasLabel(m.GetLabel(), g.result) {
				continue
			}
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.UntypedValue, v)
}

// hasLabel reports whether one of the labels has value v.
func hasLabel(labels []*dto.LabelPair, v string) bool {
	for _, l := range labels {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}
