package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
)

type head struct {
	db      *state.DB
	url     string
	boot    *bootserver.Server
	heads   *provisioner.Nodes
	agents  *api.Node
	reg     *prometheus.Registry
	content images.Digest
}

// newHead runs the agent routes of a head on 127.0.0.1 with a real state
// database, image store and boot server (the overlay source), with node
// n1 at 127.0.0.11 and n2 at 127.0.0.12.
func newHead(t *testing.T, requirePrivileged bool) *head {
	t.Helper()
	dir := t.TempDir()
	heads := provisioner.NewNodes(nil, &plan.Defaults{Image: "default", Root: inventory.Root{Mode: "tmpfs", Size: "50%"}, ConsoleShell: true,
		Subnets: []plan.Subnet{{Prefix: netip.MustParsePrefix("127.0.0.1/8")}}}, "")
	db, err := state.OpenWith(filepath.Join(dir, "s.db"), state.Options{Check: heads.Check})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	heads = provisioner.NewNodes(db, heads.Defaults(), "")
	store := &images.Store{Dir: filepath.Join(dir, "images")}
	h := &head{db: db, content: images.DigestOf([]byte("content")), reg: prometheus.NewRegistry()}
	put := func(b []byte, mt string) images.Artifact {
		a, err := store.Put(context.Background(), bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		a.MediaType = mt
		return a
	}
	m := images.Manifest{SchemaVersion: 1, Name: "default", Created: time.Unix(1700000000, 0).UTC(), Source: "/t",
		Kernel: put([]byte("kernel"), images.MediaTypeKernel), Rootfs: put([]byte("rootfs"), images.MediaTypeRootfs),
		RootfsUncompressedSize: 1, ContentDigest: h.content}
	if _, err := store.Commit("default", m); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"n1", "n2"} {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)})
		if err := db.AddNode(state.Node{Name: name, Interfaces: []inventory.Interface{{MAC: "52:54:00:00:00:0" + string(rune('1'+i)), IP: ip}}}); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + ln.Addr().String()
	h.heads = heads
	h.boot = &bootserver.Server{Nodes: heads, Images: store, BaseURL: h.url}
	h.agents = &api.Node{DB: db, Images: store, Plan: heads.Plan, Overlays: h.boot, Interval: 2 * time.Second,
		DownAfter: 8 * time.Second, RequirePrivilegedPort: requirePrivileged, Metrics: api.NewMetrics(h.reg)}
	mux := http.NewServeMux()
	mux.Handle("/api/", h.agents.Handler())
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return h
}

// token starts a boot of node name and returns its token.
func (h *head) token(t *testing.T, name string) string {
	t.Helper()
	if err := h.db.Record(name, state.Event{Step: state.StepDHCPOffer}, true); err != nil {
		t.Fatal(err)
	}
	nonce, err := h.db.NewBootNonce(name, state.Event{Step: state.StepScript})
	if err != nil {
		t.Fatal(err)
	}
	tok := state.NewToken()
	if err := h.db.ConsumeNonce(name, nonce, tok, state.Event{Step: state.StepOverlay}); err != nil {
		t.Fatal(err)
	}
	return tok
}

// call makes a request from source address src (and port, when not 0) and
// returns the status and body.
func (h *head) call(t *testing.T, src string, port int, method, path, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, _ := json.Marshal(b)
		rd = bytes.NewReader(js)
	}
	req, _ := http.NewRequest(method, h.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src), Port: port}, Control: reuseAddr}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// reuseAddr lets a test bind a fixed source port that an earlier run
// left in TIME_WAIT.
func reuseAddr(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
	if err != nil {
		return err
	}
	return serr
}

var report = overlay.Report{
	State: overlay.StateReady, ContentDigest: string(images.DigestOf([]byte("content"))), Kernel: "6.1.0-test", MemTotalBytes: 2 << 30,
	UptimeSeconds: 30, CPUs: 2, Init: "systemd", AgentVersion: "v1",
	Steps: []overlay.Step{{Name: "mounts", UptimeSeconds: 6}, {Name: "root", UptimeSeconds: 8}},
	Root:  &overlay.RootUsage{Mode: "tmpfs", SizeBytes: 1 << 30, UsedBytes: 600 << 20},
	Boot:  &overlay.BootTimes{InitSeconds: 6, HandoverSeconds: 9, KernelStart: time.Now().Add(-30 * time.Second)},
}

func TestAgentRoutes(t *testing.T) {
	h := newHead(t, false)
	tok := h.token(t, "n1")
	const n1 = "127.0.0.11"
	reg := "/api/v1/nodes/n1/register"
	hb := "/api/v1/nodes/n1/heartbeat"

	// Refusals first: nothing is recorded.
	for _, tc := range []struct {
		name, src, path, token string
		body                   any
		code                   int
		msg                    string
	}{
		{"wrong address", "127.0.0.12", reg, tok, report, http.StatusForbidden, "not from the node's reserved address"},
		{"no token", n1, reg, "", report, http.StatusUnauthorized, "missing bearer token"},
		{"wrong token", n1, reg, "x" + tok, report, http.StatusUnauthorized, "bad token"},
		{"unknown node", n1, "/api/v1/nodes/n9/register", tok, report, http.StatusNotFound, "not found"},
		{"bad state", n1, reg, tok, overlay.Report{State: "dancing"}, http.StatusBadRequest, `state \"dancing\": not ready or failed`},
		{"unknown field", n1, reg, tok, []byte(`{"state":"ready","surprise":1}`), http.StatusBadRequest, "unknown field"},
		{"too big", n1, reg, tok, []byte(`{"state":"ready","error":"` + strings.Repeat("x", 70<<10) + `"}`), http.StatusRequestEntityTooLarge, "request body too large"},
		{"heartbeat before registering", n1, hb, tok, overlay.Heartbeat{}, http.StatusConflict, "not registered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := h.call(t, tc.src, 0, http.MethodPost, tc.path, tc.token, tc.body)
			if code != tc.code || !strings.Contains(string(body), tc.msg) {
				t.Errorf("%d %s, want %d with %q", code, body, tc.code, tc.msg)
			}
		})
	}
	if n, _ := h.db.Get("n1"); n.Status.State != state.StateBooting {
		t.Fatalf("state after refused requests: %s", n.Status.State)
	}

	code, body := h.call(t, n1, 0, http.MethodPost, reg, tok, report)
	if code != http.StatusOK {
		t.Fatalf("register: %d %s", code, body)
	}
	var s overlay.Schedule
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	ro, err := h.boot.RuntimeOverlay("n1")
	if err != nil {
		t.Fatal(err)
	}
	if s.IntervalSeconds != 2 || s.DownAfterSeconds != 8 || s.OverlayGeneration != ro.Generation || s.OverlayGeneration == "" || time.Since(s.HeadTime) > time.Minute {
		t.Errorf("schedule %+v, generation %s", s, ro.Generation)
	}
	n, _ := h.db.Get("n1")
	r := n.Status.Report
	if n.Status.State != state.StateBooted || r == nil || r.ImageName != "default" || r.ImageDigest == "" || r.Init != "systemd" || len(r.Steps) != 2 ||
		r.RootMode != "tmpfs" || r.RootUsedBytes != 600<<20 || r.InitSeconds != 6 || r.HandoverSeconds != 9 || r.KernelStart.IsZero() || r.CPUs != 2 {
		t.Errorf("after registration: %s %+v", n.Status.State, r)
	}
	if n.Agent == nil || n.Agent.Remote[:len(n1)] != n1 {
		t.Errorf("agent %+v", n.Agent)
	}

	code, body = h.call(t, n1, 0, http.MethodPost, hb, tok, overlay.Heartbeat{UptimeSeconds: 33, SystemState: "running", Load1: 0.5, Root: &overlay.RootUsage{Mode: "tmpfs", UsedBytes: 601 << 20, SizeBytes: 1 << 30}})
	if code != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", code, body)
	}
	if n, _ := h.db.Get("n1"); n.Agent == nil || n.Agent.SystemState != "running" || n.Agent.Heartbeats != 1 || n.Agent.RootUsedBytes != 601<<20 {
		t.Errorf("agent after a heartbeat: %+v", n.Agent)
	}

	// The runtime overlay: the configuration without any token.
	code, body = h.call(t, n1, 0, http.MethodGet, "/api/v1/nodes/n1/overlay", tok, nil)
	if code != http.StatusOK || strings.Contains(string(body), tok) {
		t.Fatalf("overlay: %d %s", code, body)
	}
	var o overlay.RuntimeOverlay
	json.Unmarshal(body, &o)
	if o.Generation != s.OverlayGeneration || o.Config.Token != "" || o.Config.Node != "n1" || o.Config.Root.Size != "50%" || !o.Config.ConsoleShell ||
		len(o.Files) != 1 || o.Files[0].Path != "etc/hostname" || string(o.Files[0].Data) != "n1\n" {
		t.Errorf("runtime overlay %+v", o)
	}
	if code, _ := h.call(t, n1, 0, http.MethodGet, "/api/v1/nodes/n1/overlay", "x"+tok, nil); code != http.StatusUnauthorized {
		t.Errorf("overlay with a wrong token: %d", code)
	}
	if code, _ := h.call(t, "127.0.0.12", 0, http.MethodGet, "/api/v1/nodes/n1/overlay", tok, nil); code != http.StatusForbidden {
		t.Errorf("overlay to another address: %d", code)
	}

	// The head's clock, to anyone.
	code, body = h.call(t, "127.0.0.99", 0, http.MethodGet, "/api/v1/time", "", nil)
	var ht overlay.HeadTime
	if json.Unmarshal(body, &ht); code != http.StatusOK || time.Since(ht.Time).Abs() > time.Minute {
		t.Errorf("time: %d %s", code, body)
	}

	if code, body := h.call(t, n1, 0, http.MethodPost, "/api/v1/nodes/n1/shutdown", tok, overlay.Shutdown{Action: "explode"}); code != http.StatusBadRequest {
		t.Errorf("shutdown with a bad action: %d %s", code, body)
	}
	if code, body := h.call(t, n1, 0, http.MethodPost, "/api/v1/nodes/n1/shutdown", tok, overlay.Shutdown{Action: overlay.ActionReboot, UptimeSeconds: 99}); code != http.StatusNoContent {
		t.Errorf("shutdown: %d %s", code, body)
	}
	if n, _ := h.db.Get("n1"); n.Status.State != state.StateOff {
		t.Errorf("state after shutdown: %s", n.Status.State)
	}
	if code, _ := h.call(t, n1, 0, http.MethodPost, hb, tok, overlay.Heartbeat{}); code != http.StatusConflict {
		t.Errorf("heartbeat after shutdown: %d, want 409 (register again)", code)
	}
	if got := testutil.ToFloat64(h.agentsCounter("heartbeat", "200")); got != 1 {
		t.Errorf("ramboot_agent_requests_total{route=heartbeat,code=200} = %v", got)
	}
	if got := testutil.ToFloat64(h.agentsCounter("register", "403")); got != 1 {
		t.Errorf("ramboot_agent_requests_total{route=register,code=403} = %v", got)
	}
}

// agentsCounter finds a ramboot_agent_requests_total series.
func (h *head) agentsCounter(route, code string) prometheus.Collector {
	return counterOf{h.reg, route, code}
}

type counterOf struct {
	reg         *prometheus.Registry
	route, code string
}

func (c counterOf) Describe(ch chan<- *prometheus.Desc) {}

func (c counterOf) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := c.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "ramboot_agent_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == c.route && labels["code"] == c.code {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("c", "c", nil, nil), prometheus.CounterValue, m.GetCounter().GetValue())
			}
		}
	}
}

// TestRequirePrivilegedPort: with agent.require_privileged_port, only a
// request from a port below 1024 is served.
func TestRequirePrivilegedPort(t *testing.T) {
	h := newHead(t, true)
	tok := h.token(t, "n1")
	code, body := h.call(t, "127.0.0.11", 0, http.MethodPost, "/api/v1/nodes/n1/register", tok, report)
	if code != http.StatusForbidden || !strings.Contains(string(body), "port below 1024") {
		t.Errorf("register from an ephemeral port: %d %s", code, body)
	}
	if os.Geteuid() != 0 {
		t.Skip("binding a privileged port needs root")
	}
	port := 900 + os.Getpid()%100 // a port an earlier run's TIME_WAIT is unlikely to hold
	code, body = h.call(t, "127.0.0.11", port, http.MethodPost, "/api/v1/nodes/n1/register", tok, report)
	if code != http.StatusOK {
		t.Fatalf("register from port %d: %d %s", port, code, body)
	}
	if n, _ := h.db.Get("n1"); n.Agent == nil || !n.Agent.PrivilegedPort {
		t.Errorf("agent %+v", n.Agent)
	}
}

// TestGenerationFollowsConfiguration: the overlay generation the head
// announces changes with what the node's overlay would hold, and only then.
func TestGenerationFollowsConfiguration(t *testing.T) {
	h := newHead(t, false)
	a, err := h.boot.RuntimeOverlay("n1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := h.boot.RuntimeOverlay("n1")
	if a.Generation != b.Generation {
		t.Errorf("generation not stable: %s, %s", a.Generation, b.Generation)
	}
	d := *h.heads.Defaults()
	d.Subnets = []plan.Subnet{{Prefix: netip.MustParsePrefix("127.0.0.1/8"), DNS: []netip.Addr{netip.MustParseAddr("10.0.0.53")}}}
	h.heads.SetDefaults(&d) // a reload with a name server
	c, _ := h.boot.RuntimeOverlay("n1")
	if c.Generation == a.Generation || len(c.Config.Interface.DNS) != 1 {
		t.Errorf("generation %s unchanged by a new name server", c.Generation)
	}
	other, _ := h.boot.RuntimeOverlay("n2")
	if other.Generation == c.Generation {
		t.Error("two nodes share a generation")
	}
}

// TestAgentRoutesStaleToken: after a new boot started (a DHCP offer to
// firmware) the previous boot's token is refused on every agent route with
// 409; after a new script, revoked, with 401. The earlier boot stays in
// the history.
func TestAgentRoutesStaleToken(t *testing.T) {
	h := newHead(t, false)
	tok := h.token(t, "n1")
	const n1 = "127.0.0.11"
	if code, body := h.call(t, n1, 0, http.MethodPost, "/api/v1/nodes/n1/register", tok, report); code != http.StatusOK {
		t.Fatalf("register: %d %s", code, body)
	}
	routes := []struct{ method, path string }{
		{http.MethodPost, "/api/v1/nodes/n1/register"}, {http.MethodPost, "/api/v1/nodes/n1/heartbeat"},
		{http.MethodPost, "/api/v1/nodes/n1/shutdown"}, {http.MethodGet, "/api/v1/nodes/n1/overlay"},
	}
	bodies := map[string]any{"/api/v1/nodes/n1/register": report, "/api/v1/nodes/n1/heartbeat": overlay.Heartbeat{},
		"/api/v1/nodes/n1/shutdown": overlay.Shutdown{Action: overlay.ActionReboot}}
	if err := h.db.Record("n1", state.Event{Step: state.StepDHCPOffer}, true); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if code, body := h.call(t, n1, 0, r.method, r.path, tok, bodies[r.path]); code != http.StatusConflict {
			t.Errorf("%s %s with the previous boot's token: %d %s, want 409", r.method, r.path, code, body)
		}
	}
	if _, err := h.db.NewBootNonce("n1", state.Event{Step: state.StepScript}); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if code, body := h.call(t, n1, 0, r.method, r.path, tok, bodies[r.path]); code != http.StatusUnauthorized {
			t.Errorf("%s %s with a revoked token: %d %s, want 401", r.method, r.path, code, body)
		}
	}
	n, _ := h.db.Get("n1")
	if n.Status.ID != 2 || n.Status.State != state.StateBooting || len(n.Status.History) != 1 {
		t.Errorf("after the refusals: %+v", n.Status)
	}
	if b1, err := h.db.BootByID("n1", 1); err != nil || b1.State != state.StateBooted || b1.Report.Init != "systemd" {
		t.Errorf("boot 1: %+v, %v", b1, err)
	}
	for _, c := range []struct{ result, want string }{{api.ReportApplied, "1"}, {api.ReportConflict, "1"}, {api.ReportBadToken, "1"}} {
		if got := testutil.ToFloat64(reportsCounter{h.reg, c.result}); fmt.Sprint(got) != c.want {
			t.Errorf("ramboot_node_reports_total{result=%s} = %v, want %s", c.result, got, c.want)
		}
	}
}

// TestAgentFieldBounds: every field of a heartbeat and of a registration
// is bounded; what is out of bounds is refused with 400 and changes
// nothing.
func TestAgentFieldBounds(t *testing.T) {
	h := newHead(t, false)
	tok := h.token(t, "n1")
	const n1 = "127.0.0.11"
	reg, hb := "/api/v1/nodes/n1/register", "/api/v1/nodes/n1/heartbeat"
	long := strings.Repeat("w", 100)
	for name, rep := range map[string]overlay.Report{
		"kernel":       {State: overlay.StateReady, Kernel: strings.Repeat("k", 300)},
		"steps":        {State: overlay.StateReady, Steps: make([]overlay.Step, 40)},
		"step name":    {State: overlay.StateReady, Steps: []overlay.Step{{Name: "a\x1b[2J"}}},
		"warnings":     {State: overlay.StateReady, Warnings: make([]string, 20)},
		"init":         {State: overlay.StateReady, Init: long},
		"version":      {State: overlay.StateReady, AgentVersion: "v1\x1b]0;pwned\a"},
		"root mode":    {State: overlay.StateReady, Root: &overlay.RootUsage{Mode: long}},
		"boot times":   {State: overlay.StateReady, Boot: &overlay.BootTimes{InitSeconds: -1}},
		"cpus":         {State: overlay.StateReady, CPUs: -2},
		"unknown copy": {State: "booted"},
	} {
		if code, body := h.call(t, n1, 0, http.MethodPost, reg, tok, rep); code != http.StatusBadRequest {
			t.Errorf("registration, %s out of bounds: %d %s, want 400", name, code, body)
		}
	}
	if n, _ := h.db.Get("n1"); n.Status.State != state.StateBooting || n.Status.Report != nil {
		t.Fatalf("refused registrations changed the node: %+v", n.Status)
	}
	// Warnings are kept, each cut to its bound and made printable.
	ok := report
	ok.Warnings = []string{"clock: \x1b[31m" + strings.Repeat("e", 1000)}
	if code, body := h.call(t, n1, 0, http.MethodPost, reg, tok, ok); code != http.StatusOK {
		t.Fatalf("register: %d %s", code, body)
	}
	n, _ := h.db.Get("n1")
	if w := n.Status.Report.Warnings; len(w) != 1 || len(w[0]) > api.MaxWarning || strings.ContainsRune(w[0], 0x1b) {
		t.Errorf("stored warnings %q", w)
	}
	for name, beat := range map[string]overlay.Heartbeat{
		"system state": {SystemState: long},
		"generation":   {OverlayGeneration: "g\n1"},
		"uptime":       {UptimeSeconds: -5},
		"load":         {Load1: -1},
		"memory":       {MemAvailableBytes: -1},
		"root":         {Root: &overlay.RootUsage{Mode: "tmpfs", UsedBytes: -1}},
	} {
		if code, body := h.call(t, n1, 0, http.MethodPost, hb, tok, beat); code != http.StatusBadRequest {
			t.Errorf("heartbeat, %s out of bounds: %d %s, want 400", name, code, body)
		}
	}
	if n, _ := h.db.Get("n1"); n.Agent == nil || n.Agent.Heartbeats != 0 {
		t.Errorf("refused heartbeats counted: %+v", n.Agent)
	}
	big := []byte(`{"systemState":"` + strings.Repeat("x", 200<<10) + `"}`)
	if code, _ := h.call(t, n1, 0, http.MethodPost, hb, tok, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("200 KiB heartbeat: %d, want 413", code)
	}
	// The largest workload a node sends fits.
	full := overlay.Workload{}
	long128 := strings.Repeat("n", overlay.MaxWorkloadText)
	for range overlay.MaxWorkloadJobs {
		full.Jobs = append(full.Jobs, overlay.WorkloadJob{ID: long128, User: long128, UID: 1 << 30, MemoryBytes: 1 << 50, Registered: time.Now()})
	}
	for range overlay.MaxWorkloadContainers {
		full.Containers = append(full.Containers, overlay.WorkloadContainer{ID: long128, Name: long128, Image: long128, Job: long128, State: "running", UID: 1 << 30, ExitCode: -1, Started: time.Now()})
	}
	if code, body := h.call(t, n1, 0, http.MethodPost, hb, tok, overlay.Heartbeat{UptimeSeconds: 50, Workload: &full}); code != http.StatusOK {
		t.Errorf("a heartbeat with the largest workload: %d %.200s", code, body)
	}
}

// reportsCounter is one series of ramboot_node_reports_total.
type reportsCounter struct {
	reg    *prometheus.Registry
	result string
}

func (c reportsCounter) Describe(ch chan<- *prometheus.Desc) {}

func (c reportsCounter) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := c.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "ramboot_node_reports_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == c.result {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("c", "c", nil, nil), prometheus.CounterValue, m.GetCounter().GetValue())
			}
		}
	}
}

// TestHeartbeatWorkload: the jobs and containers a heartbeat lists are
// what `node show` has; past the bounds they are counted, not refused,
// and odd text is made printable.
func TestHeartbeatWorkload(t *testing.T) {
	h := newHead(t, false)
	tok := h.token(t, "n1")
	const n1 = "127.0.0.11"
	if code, body := h.call(t, n1, 0, http.MethodPost, "/api/v1/nodes/n1/register", tok, report); code != http.StatusOK {
		t.Fatalf("register: %d %s", code, body)
	}
	w := &overlay.Workload{Jobs: []overlay.WorkloadJob{{ID: "42", User: "alice", UID: 1000}}}
	for i := range overlay.MaxWorkloadContainers + 5 {
		w.Containers = append(w.Containers, overlay.WorkloadContainer{ID: fmt.Sprintf("c%03d", i), Name: "x\x1b[2J", Image: "busybox", Job: "42", State: "running"})
	}
	code, body := h.call(t, n1, 0, http.MethodPost, "/api/v1/nodes/n1/heartbeat", tok, overlay.Heartbeat{UptimeSeconds: 40, Workload: w})
	if code != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", code, body)
	}
	n, _ := h.db.Get("n1")
	got := n.Agent.Workload
	if got == nil || len(got.Jobs) != 1 || got.Jobs[0].User != "alice" || len(got.Containers) != overlay.MaxWorkloadContainers || got.OmittedContainers != 5 {
		t.Fatalf("workload %+v", got)
	}
	if c := got.Containers[0]; c.Name != "x?[2J" || c.ID != "c000" || c.Job != "42" {
		t.Errorf("container %+v", c)
	}
	// A heartbeat without a workload (a daemon without containers) clears it.
	h.call(t, n1, 0, http.MethodPost, "/api/v1/nodes/n1/heartbeat", tok, overlay.Heartbeat{UptimeSeconds: 41})
	if n, _ := h.db.Get("n1"); n.Agent.Workload != nil {
		t.Errorf("workload after a heartbeat without one: %+v", n.Agent.Workload)
	}
}
