package bootserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/state"
)

// secretsFixture is a fixture with node n1 on 127.0.0.1 and n2 on
// 127.0.0.2, n1's script fetched.
type secretsFixture struct {
	*fixture
	n1, n2 *http.Client
	urls   []string // n1's script: kernel, rootfs, agent, overlay
}

func newSecretsFixture(t *testing.T) *secretsFixture {
	t.Helper()
	return newSecretsFixtureWith(t, nil)
}

// newSecretsFixtureWith is newSecretsFixture with the server changed by
// change (when not nil) before any request.
func newSecretsFixtureWith(t *testing.T, change func(*bootserver.Server)) *secretsFixture {
	t.Helper()
	f := newFixture(t)
	if change != nil {
		change(f.boot)
	}
	for _, n := range []state.Node{
		{Name: "n1", MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("127.0.0.1")},
		{Name: "n2", MAC: "52:54:00:00:00:02", IP: netip.MustParseAddr("127.0.0.2")},
	} {
		if err := f.db.AddNode(n); err != nil {
			t.Fatal(err)
		}
	}
	sf := &secretsFixture{fixture: f, n1: client("127.0.0.1"), n2: client("127.0.0.2")}
	sf.script(t)
	return sf
}

// script fetches n1's script and returns its overlay URL.
func (f *secretsFixture) script(t *testing.T) string {
	t.Helper()
	resp, script := get(t, f.n1, f.srv.URL+"/boot/ipxe?mac=52:54:00:00:00:01")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("script: %d", resp.StatusCode)
	}
	f.urls = scriptURLs(string(script))
	return f.urls[3]
}

// token fetches an overlay and returns the token inside, or "" with the
// status code when it is refused.
func (f *secretsFixture) token(t *testing.T, c *http.Client, url string, hdr ...string) (string, int) {
	t.Helper()
	resp, b := get(t, c, url, hdr...)
	if resp.StatusCode != http.StatusOK {
		return "", resp.StatusCode
	}
	cfg, err := overlay.ParseConfig(unpack(t, b)[overlay.ConfigPath])
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Token, resp.StatusCode
}

// report posts body to n1's registration route, the agent daemon's report
// of the boot, and returns the status code.
func (f *secretsFixture) report(t *testing.T, c *http.Client, token string, body any) int {
	t.Helper()
	b, ok := body.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/api/v1/nodes/n1/register", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

var ready = overlay.Report{State: overlay.StateReady, Kernel: "6.1.0-test", UptimeSeconds: 5}

// TestOverlaySingleUse: the first full GET spends the nonce; a second GET
// with it mints nothing, and the token the node holds stays valid.
func TestOverlaySingleUse(t *testing.T) {
	f := newSecretsFixture(t)
	tok, code := f.token(t, f.n1, f.urls[3])
	if code != http.StatusOK || tok == "" {
		t.Fatalf("first overlay GET: %d", code)
	}
	if _, code := f.token(t, f.n1, f.urls[3]); code != http.StatusForbidden {
		t.Fatalf("second overlay GET with the same nonce: %d, want 403", code)
	}
	if code := f.report(t, f.n1, tok, ready); code != http.StatusOK {
		t.Fatalf("report with the first overlay's token after a replayed GET: %d, want 204", code)
	}
}

// TestOverlayOnlyWhole: HEAD, Range and conditional requests on the overlay
// are refused and spend nothing.
func TestOverlayOnlyWhole(t *testing.T) {
	f := newSecretsFixture(t)
	req, _ := http.NewRequest(http.MethodHead, f.urls[3], nil)
	resp, err := f.n1.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("HEAD: %d, want 405", resp.StatusCode)
	}
	for _, h := range [][]string{{"Range", "bytes=0-10"}, {"If-None-Match", `"x"`}, {"If-Modified-Since", "Mon, 02 Jan 2006 15:04:05 GMT"}, {"If-Range", `"x"`}} {
		if _, code := f.token(t, f.n1, f.urls[3], h...); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", h[0], code)
		}
	}
	if tok, code := f.token(t, f.n1, f.urls[3]); code != http.StatusOK || f.report(t, f.n1, tok, ready) != http.StatusOK {
		t.Fatalf("the refused requests spent the nonce: GET %d", code)
	}
}

// headDiesAfterSend is a head that, while dies is set, dies the moment it
// has sent an overlay: it never records it (ConsumeNonce).
type headDiesAfterSend struct {
	bootserver.Nodes
	dies  atomic.Bool
	calls atomic.Int32 // ConsumeNonce calls
}

func (h *headDiesAfterSend) ConsumeNonce(node, nonce, token, detail string) error {
	defer h.calls.Add(1)
	if h.dies.Load() {
		return errors.New("killed after the overlay's last byte")
	}
	return h.Nodes.ConsumeNonce(node, nonce, token, detail)
}

func dyingHead(h **headDiesAfterSend) func(*bootserver.Server) {
	return func(s *bootserver.Server) {
		*h = &headDiesAfterSend{Nodes: s.Nodes}
		(*h).dies.Store(true)
		s.Nodes = *h
	}
}

// TestTokenGoodOnceOverlaySent: the token in an overlay is the node's as
// soon as the node has the overlay, even when the head that sent it never
// records the overlay (killed right after the last byte): the node's
// registration, with this head or a peer on a shared store, is taken.
// Before, the token was made the node's only after the send, and a head
// killed in between left a node that had booted with a token no head
// would ever take (401 at every registration: TestStormThreeHeadsKills).
// The nonce stays unspent until an overlay is recorded as sent whole.
func TestTokenGoodOnceOverlaySent(t *testing.T) {
	var h *headDiesAfterSend
	f := newSecretsFixtureWith(t, dyingHead(&h))
	tok, code := f.token(t, f.n1, f.urls[3])
	if code != http.StatusOK || tok == "" {
		t.Fatalf("overlay GET: %d", code)
	}
	if code := f.report(t, f.n1, tok, ready); code != http.StatusOK {
		t.Fatalf("registration with the token of an overlay sent by a head that died before recording it: %d, want 200", code)
	}
	if _, err := f.db.Authenticate("n1", tok, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Errorf("the token after the registration: %v", err)
	}
}

// TestOverlayRetryReplacesToken: an overlay GET that never recorded its
// overlay (not sent whole) leaves the nonce to iPXE's retry, whose new
// token replaces the first: one token per boot.
func TestOverlayRetryReplacesToken(t *testing.T) {
	var h *headDiesAfterSend
	f := newSecretsFixtureWith(t, dyingHead(&h))
	first, code := f.token(t, f.n1, f.urls[3])
	if code != http.StatusOK {
		t.Fatalf("first overlay GET: %d", code)
	}
	// The head records the overlay after the node has it: wait for that.
	for deadline := time.Now().Add(10 * time.Second); h.calls.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the overlay was never recorded")
		}
	}
	h.dies.Store(false)
	second, code := f.token(t, f.n1, f.urls[3])
	if code != http.StatusOK || second == first {
		t.Fatalf("retried overlay GET: %d (the same token: %v)", code, second == first)
	}
	if code := f.report(t, f.n1, first, ready); code != http.StatusUnauthorized {
		t.Errorf("registration with the replaced token: %d, want 401", code)
	}
	if code := f.report(t, f.n1, second, ready); code != http.StatusOK {
		t.Errorf("registration with the retry's token: %d, want 200", code)
	}
	if _, code := f.token(t, f.n1, f.urls[3]); code != http.StatusForbidden {
		t.Errorf("a third overlay GET after one was recorded: %d, want 403 (the nonce is spent)", code)
	}
}

// refusingHead refuses every token reservation: the nonce replaced
// meanwhile.
type refusingHead struct{ bootserver.Nodes }

func (refusingHead) ReserveToken(node, nonce, token string) error {
	return fmt.Errorf("token for node %s: replaced meanwhile: %w", node, state.ErrBadToken)
}

// twoParts renders an overlay in two parts, the token in the second only,
// as provisioner's overlays do (the shared part, then the node's own).
type twoParts struct{}

func (twoParts) Overlay(_ context.Context, node, token string, _ bootserver.Compression) ([][]byte, error) {
	return [][]byte{bytes.Repeat([]byte("shared "), 1<<14), []byte("node " + node + " token " + token)}, nil
}

func (twoParts) RuntimeOverlay(string) (overlay.RuntimeOverlay, error) {
	return overlay.RuntimeOverlay{}, errors.New("not used")
}

// TestOverlayCutWhenTokenNotCommitted: the token is committed while the
// overlay's shared part is sent; when the commit fails, the node never
// gets the part that carries the token: the transfer is cut (its retry
// asks again), and a single-part overlay is refused before anything is
// sent.
func TestOverlayCutWhenTokenNotCommitted(t *testing.T) {
	f := newSecretsFixtureWith(t, func(s *bootserver.Server) { s.Nodes = refusingHead{s.Nodes} })
	if _, code := f.token(t, f.n1, f.urls[3]); code != http.StatusForbidden {
		t.Errorf("one part, the token refused: %d, want 403", code)
	}
	f2 := newSecretsFixtureWith(t, func(s *bootserver.Server) { s.Nodes, s.Overlays = refusingHead{s.Nodes}, twoParts{} })
	resp, err := f2.n1.Get(f2.urls[3])
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || bytes.Contains(b, []byte("token")) {
		t.Errorf("two parts, the token refused: %d, %d bytes, read error %v: want a cut transfer without the token", resp.StatusCode, len(b), err)
	}
}

// TestNewScriptRevokesToken: serving a new script revokes the previous
// boot's token at once, before any overlay is fetched.
func TestNewScriptRevokesToken(t *testing.T) {
	f := newSecretsFixture(t)
	tok, _ := f.token(t, f.n1, f.urls[3])
	f.script(t)
	if code := f.report(t, f.n1, tok, ready); code != http.StatusUnauthorized {
		t.Fatalf("report with the previous boot's token after a new script: %d, want 401", code)
	}
}

// TestReportRules: a report needs the node's reserved address; a repeated
// report is accepted and not applied again; a different one is refused.
func TestReportRules(t *testing.T) {
	f := newSecretsFixture(t)
	tok, _ := f.token(t, f.n1, f.urls[3])
	if code := f.report(t, f.n2, tok, ready); code != http.StatusForbidden {
		t.Fatalf("n1's report with n1's token from n2's address: %d, want 403", code)
	}
	if code := f.report(t, f.n1, tok, ready); code != http.StatusOK {
		t.Fatalf("report: %d", code)
	}
	before, _ := f.db.Get("n1")
	if code := f.report(t, f.n1, tok, ready); code != http.StatusOK {
		t.Fatalf("the same report again (a retry): %d, want 204", code)
	}
	if code := f.report(t, f.n1, tok, overlay.Report{State: overlay.StateFailed, Error: "later"}); code != http.StatusConflict {
		t.Fatalf("a different report for the same boot: %d, want 409", code)
	}
	after, _ := f.db.Get("n1")
	if len(after.Status.Timeline) != len(before.Status.Timeline) || after.Status.State != state.StateBooted || !after.Status.Report.Received.Equal(before.Status.Report.Received) {
		t.Fatalf("replayed reports changed the boot:\n%+v\n%+v", before.Status, after.Status)
	}
}

// TestReportBounds: the body and every field are bounded.
func TestReportBounds(t *testing.T) {
	f := newSecretsFixture(t)
	tok, _ := f.token(t, f.n1, f.urls[3])
	huge := overlay.Report{State: overlay.StateFailed, Error: strings.Repeat("x", 900<<10)}
	if code := f.report(t, f.n1, tok, huge); code != http.StatusRequestEntityTooLarge {
		t.Errorf("900 KiB report: %d, want 413", code)
	}
	for name, rep := range map[string]overlay.Report{
		"kernel":       {State: overlay.StateReady, Kernel: strings.Repeat("k", 300)},
		"steps":        {State: overlay.StateReady, Steps: make([]overlay.Step, 40)},
		"step name":    {State: overlay.StateReady, Steps: []overlay.Step{{Name: "a\x1b[2J"}}},
		"digest":       {State: overlay.StateReady, ContentDigest: "sha256:../../etc"},
		"memory":       {State: overlay.StateReady, MemTotalBytes: -1},
		"uptime":       {State: overlay.StateReady, UptimeSeconds: -3},
		"unknown copy": {State: "booted"},
	} {
		if code := f.report(t, f.n1, tok, rep); code != http.StatusBadRequest {
			t.Errorf("%s out of bounds: %d, want 400", name, code)
		}
	}
	if code := f.report(t, f.n1, tok, []byte(`{"state":"ready","extra":1}`)); code != http.StatusBadRequest {
		t.Errorf("unknown field: %d, want 400", code)
	}
	// A long error is kept, cut to its bound, and made printable.
	long := overlay.Report{State: overlay.StateFailed, Error: "modules: \x1b[31m" + strings.Repeat("e", 10000)}
	if code := f.report(t, f.n1, tok, long); code != http.StatusOK {
		t.Fatalf("failed report with a long error: %d", code)
	}
	n, _ := f.db.Get("n1")
	if e := n.Status.Report.Error; len(e) > 2048 || strings.ContainsRune(e, 0x1b) || !strings.HasPrefix(e, "modules: ") {
		t.Fatalf("stored error of %d bytes: %.60q", len(e), e)
	}
	if n.Status.State != state.StateFailed {
		t.Fatalf("state %s", n.Status.State)
	}
}
