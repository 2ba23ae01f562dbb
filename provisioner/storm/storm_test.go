package storm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

func TestValidate(t *testing.T) {
	ok := Config{Nodes: 10, Heads: []Head{{DHCP: netip.MustParseAddrPort("10.0.0.1:67")}}, Relay: netip.MustParseAddr("10.0.0.2"), FirstIP: netip.MustParseAddr("10.0.1.1")}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	bad := Config{Nodes: 0, FirstIP: netip.MustParseAddr("255.255.255.250"), Firmware: "coreboot", Until: numPhases,
		Misbehave: Misbehave{Kinds: []MisbehaveKind{"ddos"}}, Compare: []Target{{Name: "nginx"}}, Spread: -time.Second}
	err := bad.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"nodes: 0", "heads: at least one", "relay or interface", "firmware", "until", "misbehave: kind", "compare[0]", "spread"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	bad = ok
	bad.Nodes, bad.FirstIP = 10, netip.MustParseAddr("255.255.255.250")
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "runs past") {
		t.Errorf("addresses past the end: %v", err)
	}
}

func TestNodeSpecs(t *testing.T) {
	c := Config{Nodes: 300, FirstIP: netip.MustParseAddr("10.0.0.250"), FirstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 0xff}}
	specs := c.NodeSpecs()
	if len(specs) != 300 {
		t.Fatalf("%d specs", len(specs))
	}
	first, second, last := specs[0], specs[1], specs[299]
	if first.Name != "storm00001" || first.IP.String() != "10.0.0.250" || first.MAC.String() != "02:00:00:00:00:ff" {
		t.Errorf("first %+v", first)
	}
	if second.IP.String() != "10.0.0.251" || second.MAC.String() != "02:00:00:00:01:00" {
		t.Errorf("second: %s %s (carries)", second.IP, second.MAC)
	}
	if last.Name != "storm00300" || last.IP.String() != "10.0.2.37" {
		t.Errorf("last %+v", last)
	}
}

func TestParsePhase(t *testing.T) {
	for _, p := range Phases() {
		got, err := ParsePhase(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePhase(%q) = %v, %v", p, got, err)
		}
	}
	for _, bad := range []string{"boot", ""} {
		if _, err := ParsePhase(bad); err == nil || !strings.Contains(err.Error(), "dhcp, tftp") {
			t.Errorf("ParsePhase(%q): %v", bad, err)
		}
	}
	// The first phase is a real choice, not the zero value's default.
	if c := (Config{Until: PhaseDHCP}).withDefaults(); c.Until != PhaseDHCP {
		t.Errorf("until dhcp became %v", c.Until)
	}
	if c := (Config{}).withDefaults(); c.Until != PhaseRegister {
		t.Errorf("zero until became %v", c.Until)
	}
}

// TestGet checks a download against what the server says: Content-Length,
// the digest in the ETag, the status, and a server that stalls.
func TestGet(t *testing.T) {
	body := bytes.Repeat([]byte("ramboot"), 100_000)
	good := fmt.Sprintf(`"sha256:%x"`, sha256.Sum256(body))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good":
			w.Header().Set("ETag", good)
			http.ServeContent(w, r, "f", time.Time{}, bytes.NewReader(body))
		case "/corrupt":
			w.Header().Set("ETag", good)
			b := bytes.Clone(body)
			b[12345] ^= 1
			_, _ = w.Write(b)
		case "/short":
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			_, _ = w.Write(body[:1000])
			panic(http.ErrAbortHandler) // close the connection midway
		case "/stall":
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			_, _ = w.Write(body[:1000])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	var bufs sync.Pool
	hc := newNodeHTTP(netip.MustParseAddr("127.0.0.1"), 300*time.Millisecond)
	defer hc.Close()
	ctx := context.Background()
	res, err := hc.get(ctx, &bufs, srv.URL+"/good", getOpts{verify: true})
	if err != nil || res.size != int64(len(body)) || res.etagDigest != strings.Trim(good, `"`) {
		t.Fatalf("good: %+v, %v", res, err)
	}
	want := fmt.Sprintf("sha256:%x", sha256.Sum256(body))
	if _, err := hc.get(ctx, &bufs, srv.URL+"/good", getOpts{verify: true, want: want}); err != nil {
		t.Errorf("good against an expected digest: %v", err)
	}
	// Unverified, the body goes to /dev/null by splice.
	if res, err := hc.get(ctx, &bufs, srv.URL+"/good", getOpts{}); err != nil || res.size != int64(len(body)) {
		t.Errorf("good, discarded: %+v, %v", res, err)
	}
	for path, reason := range map[string]string{"/corrupt": "digest", "/short": "", "/stall": "stall", "/missing": "http-404"} {
		_, err := hc.get(ctx, &bufs, srv.URL+path, getOpts{verify: true})
		var pe *PhaseError
		if !errors.As(err, &pe) {
			t.Errorf("%s: error %v, want a PhaseError", path, err)
			continue
		}
		if reason != "" && pe.Reason != reason {
			t.Errorf("%s: reason %q (%v), want %q", path, pe.Reason, err, reason)
		}
	}
	// Without verify the corrupt body passes: only every Nth node pays
	// for the hash.
	if _, err := hc.get(ctx, &bufs, srv.URL+"/corrupt", getOpts{}); err != nil {
		t.Errorf("corrupt, unverified: %v", err)
	}
	// A short body and a stall on the zero-copy path too.
	for path, reason := range map[string]string{"/short": "", "/stall": "stall"} {
		_, err := hc.get(ctx, &bufs, srv.URL+path, getOpts{})
		var pe *PhaseError
		if !errors.As(err, &pe) || (reason != "" && pe.Reason != reason) {
			t.Errorf("%s, discarded: %v, want reason %q", path, err, reason)
		}
	}
	// The server's idle keep-alive connections are closed under the
	// client: the next GET opens a new one.
	srv.CloseClientConnections()
	if _, err := hc.get(ctx, &bufs, srv.URL+"/good", getOpts{}); err != nil {
		t.Errorf("after the server closed the kept connection: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := hc.get(cctx, &bufs, srv.URL+"/good", getOpts{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

// TestReadOverlay reads the node configuration from an overlay built the
// way the head builds it.
func TestReadOverlay(t *testing.T) {
	cfg := overlay.Config{Node: "n1", HeadURL: "http://10.0.0.1", Token: "secret",
		Interface: overlay.Interface{MAC: "02:00:00:00:00:01", Address: "10.0.1.1/16"},
		Image:     overlay.ImageRef{Name: "default", Digest: "sha256:aa", ContentDigest: "sha256:bb"}}
	files, err := bootserver.OverlayFiles(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	if err := newc.WriteFiles(&raw, files); err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	archive := enc.EncodeAll(raw.Bytes(), nil)
	got, err := readOverlay(archive)
	if err != nil {
		t.Fatal(err)
	}
	if got.Token != "secret" || got.Node != "n1" || got.Image.ContentDigest != "sha256:bb" {
		t.Errorf("config %+v", got)
	}
	if _, err := readOverlay(archive[:len(archive)/2]); err == nil {
		t.Error("a truncated overlay: no error")
	}
	raw.Reset()
	_ = newc.WriteFiles(&raw, files[:2]) // directories only
	if _, err := readOverlay(enc.EncodeAll(raw.Bytes(), nil)); err == nil || !strings.Contains(err.Error(), overlay.ConfigPath) {
		t.Errorf("no node.json: %v", err)
	}
}

func TestEtagDigest(t *testing.T) {
	d := "sha256:" + strings.Repeat("ab", 32)
	for in, want := range map[string]string{`"` + d + `"`: d, d: d, `"abc"`: "", `W/"` + d + `"`: "", `"sha256:` + strings.Repeat("AB", 32) + `"`: ""} {
		if got := etagDigest(in); got != want {
			t.Errorf("etagDigest(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReport sums node runs into a report and prints it three ways.
func TestReport(t *testing.T) {
	cfg := Config{Nodes: 4, Heads: []Head{{Name: "head1"}}, Relay: netip.MustParseAddr("10.0.0.2"), FirstIP: netip.MustParseAddr("10.0.1.1"), LinkRate: 10e9}.withDefaults()
	r := &runner{cfg: cfg}
	var nodes []*nodeRun
	for i, spec := range cfg.NodeSpecs() {
		n := &nodeRun{spec: spec, index: i + 1, start: time.Unix(1000, 0), head: "head1"}
		if i < 3 {
			for p := range numPhases {
				n.phases[p] = span{start: time.Duration(p) * time.Second, end: time.Duration(p)*time.Second + time.Duration(i+1)*100*time.Millisecond, started: true, ok: true}
			}
			n.bytes[PhaseImage] = 64 << 20
			n.done, n.ended = true, 9*time.Second
		} else {
			n.phases[PhaseDHCP] = span{end: time.Second, started: true, ok: true}
			n.failure = &PhaseError{Phase: PhaseTFTP, Reason: "timeout", Err: errors.New("tftp: server did not answer")}
			n.retries = map[string]int{"tftp retransmit": 6}
			n.ended = 30 * time.Second
		}
		nodes = append(nodes, n)
	}
	rep := newReport(cfg)
	rep.Heads = []HeadReport{{Name: "head1"}}
	rep.collect(r, nodes)
	if rep.Completed != 3 || rep.Lost != 1 || rep.Seconds != 30 {
		t.Fatalf("completed %d lost %d seconds %v", rep.Completed, rep.Lost, rep.Seconds)
	}
	if rep.Failures["tftp timeout"] != 1 || rep.Retries["tftp retransmit"] != 6 || rep.LostNodes[0].Name != "storm00004" {
		t.Errorf("failures %v retries %v lost %v", rep.Failures, rep.Retries, rep.LostNodes)
	}
	if rep.Heads[0].Nodes != 4 {
		t.Errorf("head answered %d", rep.Heads[0].Nodes)
	}
	img := rep.Phases[PhaseImage-PhaseDHCP]
	if img.Name != "image" || img.Done != 3 || img.P50 != 0.2 || img.Max != 0.3 {
		t.Errorf("image phase %+v", img)
	}
	if rep.Throughput.Bytes != 3*64<<20 || rep.Throughput.OfLink <= 0 {
		t.Errorf("throughput %+v", rep.Throughput)
	}
	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"finished 3 of 4", "1 LOST", "tftp timeout", "lost storm00004", "of the 10.00 Gbit/s"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.Lost != 1 || len(back.Timeline["register"]) != 3 {
		t.Errorf("JSON round trip: %v %+v", err, back.Timeline)
	}
	var svg bytes.Buffer
	if err := rep.WriteSVG(&svg, "test"); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&svg)
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("plot: %v", err)
		}
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for p, want := range map[float64]float64{50: 5, 99: 10, 10: 1, 100: 10} {
		if got := percentile(xs, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("empty")
	}
}

// TestRequestsAsTheHeadSeesThem runs the storm's DHCP requests through
// the head's own decision (pxe/dhcp's Handle): firmware gets its
// architecture's iPXE binary, iPXE gets the script's URL.
func TestRequestsAsTheHeadSeesThem(t *testing.T) {
	mac := net.HardwareAddr{2, 0x52, 0x42, 0, 0, 1}
	ip := netip.MustParseAddr("10.0.1.1")
	srv := &dhcp.Server{
		ServerIP: netip.MustParseAddr("10.0.0.1"),
		Inventory: dhcp.InventoryFunc(func(_ context.Context, c dhcp.Client) (dhcp.Reservation, error) {
			m := c.MAC
			if m.String() != mac.String() {
				return dhcp.Reservation{}, dhcp.ErrUnknown
			}
			return dhcp.Reservation{IP: ip, PrefixLen: 16, Hostname: "n1", ScriptURL: "http://10.0.0.1/boot/ipxe?mac=" + m.String()}, nil
		}),
	}
	for _, tc := range []struct {
		fw   Firmware
		who  client
		want string
	}{
		{FirmwareUEFI, asFirmware, "snponly.efi"},
		{FirmwareBIOS, asFirmware, "undionly.kpxe"},
		{FirmwareUEFI, asIPXE, "http://10.0.0.1/boot/ipxe?mac=02:52:42:00:00:01"},
		{FirmwareBIOS, asIPXE, "http://10.0.0.1/boot/ipxe?mac=02:52:42:00:00:01"},
	} {
		r := &runner{cfg: Config{Firmware: tc.fw}}
		n := &nodeRun{spec: NodeSpec{Name: "n1", MAC: mac, IP: ip}, uuid: nodeUUID(mac)}
		disc, err := r.request(n, tc.who, dhcpv4.TransactionID{1, 2, 3, 4}, nil)
		if err != nil {
			t.Fatal(err)
		}
		offer, ev, err := srv.Handle(context.Background(), dhcp.Request{Msg: disc})
		if err != nil || offer == nil {
			t.Fatalf("%s %v: no offer: %v (%+v)", tc.fw, tc.who, err, ev)
		}
		if got := offer.BootFileNameOption(); got != tc.want || ev.IPXE != (tc.who == asIPXE) {
			t.Errorf("%s %v: boot file %q (iPXE %v), want %q", tc.fw, tc.who, got, ev.IPXE, tc.want)
		}
		req, err := r.request(n, tc.who, disc.TransactionID, offer)
		if err != nil {
			t.Fatal(err)
		}
		ack, _, err := srv.Handle(context.Background(), dhcp.Request{Msg: req})
		if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || ack.YourIPAddr.String() != ip.String() {
			t.Errorf("%s %v: ack %v, %v", tc.fw, tc.who, ack, err)
		}
	}
}

// FuzzReadOverlay: whatever the head sends as an overlay, reading it ends
// with a configuration or an error, within bounded memory.
func FuzzReadOverlay(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	files, _ := bootserver.OverlayFiles(overlay.Config{Node: "n1", HeadURL: "http://h", Token: "t",
		Interface: overlay.Interface{MAC: "02:00:00:00:00:01", Address: "10.0.1.1/16"}})
	var raw bytes.Buffer
	_ = newc.WriteFiles(&raw, files)
	f.Add(enc.EncodeAll(raw.Bytes(), nil))
	f.Add(enc.EncodeAll([]byte("070701not a cpio"), nil))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := readOverlay(b)
		if err == nil && cfg.Token == "" {
			t.Fatal("a configuration without a token passed")
		}
	})
}
