package api

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// OverlaySource renders a node's overlay as the head would serve it now.
type OverlaySource interface {
	RuntimeOverlay(node string) (overlay.RuntimeOverlay, error)
}

// agentRoutes adds the routes the node agent daemon calls: registration,
// heartbeats, shutdown, the runtime overlay (all with the node's token,
// only from its reserved address) and the head's clock.
func (n *Node) agentRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+overlay.RegisterPath, n.counted("register", n.register))
	mux.HandleFunc("POST "+overlay.HeartbeatPath, n.counted("heartbeat", n.heartbeat))
	mux.HandleFunc("POST "+overlay.ShutdownPath, n.counted("shutdown", n.shutdown))
	mux.HandleFunc("GET "+overlay.OverlayPath, n.counted("overlay", n.overlay))
	mux.HandleFunc("GET "+overlay.TimePath, n.counted("time", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, overlay.HeadTime{Time: time.Now()})
	}))
}

// statusRecorder remembers the status code written.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (n *Node) counted(route string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sr := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(sr, r)
		if n.Metrics != nil {
			n.Metrics.requests.WithLabelValues(route, strconv.Itoa(sr.code)).Inc()
		}
	}
}

// caller is an authenticated agent request.
type caller struct {
	node       state.NodeStatus
	token      string
	from       netip.Addr
	remote     string
	privileged bool
}

// authenticate checks that r has a bearer token and comes from a
// privileged port when required, then that it is node name's current
// token from its reserved address (state.DB.Authenticate), and decodes
// its body, bounded by MaxAgentBody, into v (if not nil). It answers r
// and returns an error when r is refused. The state database checks the
// token again, atomically, in the change the route makes.
func (n *Node) authenticate(w http.ResponseWriter, r *http.Request, v any) (caller, error) {
	return n.authenticateMax(w, r, v, MaxAgentBody)
}

// authenticateMax is authenticate with a body bounded by limit.
func (n *Node) authenticateMax(w http.ResponseWriter, r *http.Request, v any, limit int64) (caller, error) {
	name := r.PathValue("node")
	fail := func(err error) (caller, error) {
		writeError(w, err)
		return caller{}, err
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return fail(fmt.Errorf("node %s: missing bearer token: %w", name, state.ErrBadToken))
	}
	from, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return fail(badRequest{fmt.Errorf("node %s: remote address %q: %w", name, r.RemoteAddr, err)})
	}
	privileged := from.Port() > 0 && from.Port() < 1024
	if n.RequirePrivilegedPort && !privileged {
		return fail(fmt.Errorf("node %s: request from port %d: agent requests must come from a port below 1024 (agent.require_privileged_port): %w",
			name, from.Port(), state.ErrWrongAddress))
	}
	node, err := n.DB.Authenticate(name, token, from.Addr())
	if err != nil {
		return fail(err)
	}
	if v != nil {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(agentReadTimeout))
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		if err := decode(r, v); err != nil {
			return fail(fmt.Errorf("node %s: %w", name, err))
		}
	}
	return caller{node: node, token: token, from: from.Addr(), remote: r.RemoteAddr, privileged: privileged}, nil
}

// schedule answers a registration or heartbeat.
func (n *Node) schedule(w http.ResponseWriter, node string) {
	s := overlay.Schedule{IntervalSeconds: n.Interval.Seconds(), DownAfterSeconds: n.DownAfter.Seconds(), HeadTime: time.Now()}
	if o, err := n.Overlays.RuntimeOverlay(node); err == nil {
		s.OverlayGeneration = o.Generation
	} else {
		logger(n.Logger).Warn("render overlay for the heartbeat", "node", node, "err", err)
	}
	writeJSON(w, http.StatusOK, s)
}

// reportResult is the result label of a refused registration.
func reportResult(err error) string {
	switch {
	case errors.Is(err, state.ErrBadToken):
		return ReportBadToken
	case errors.Is(err, state.ErrWrongAddress):
		return ReportWrongAddress
	case errors.Is(err, state.ErrConflict):
		return ReportConflict
	case errors.As(err, new(badRequest)), errors.As(err, new(*http.MaxBytesError)), errors.Is(err, state.ErrNotFound):
		return ReportInvalid
	}
	return ReportError
}

func (n *Node) register(w http.ResponseWriter, r *http.Request) {
	l := logger(n.Logger)
	refuse := func(err error) {
		res := reportResult(err)
		n.count(res)
		switch res {
		case ReportConflict:
			l.Warn("conflicting registration refused", "node", r.PathValue("node"), "ip", r.RemoteAddr, "err", err)
		case ReportError:
			l.Error("registration not recorded", "node", r.PathValue("node"), "err", err)
		default:
			l.Debug("registration refused", "node", r.PathValue("node"), "ip", r.RemoteAddr, "result", res, "err", err)
		}
	}
	var rep overlay.Report
	c, err := n.authenticate(w, r, &rep)
	if err != nil {
		refuse(err)
		return
	}
	if rep, err = checkReport(rep); err != nil {
		err = fmt.Errorf("registration of node %s: %w", c.node.Name, err)
		writeError(w, err)
		refuse(err)
		return
	}
	p, err := n.Plan(c.node.Name)
	if err != nil {
		err = fmt.Errorf("registration of node %s: %w", c.node.Name, err)
		writeError(w, err)
		refuse(err)
		return
	}
	imgName, imgDigest := resolveImage(n.Images, p.Image, rep.ContentDigest)
	sr := state.Report{
		State: string(rep.State), Error: rep.Error, ImageName: imgName, ImageDigest: imgDigest,
		ContentDigest: rep.ContentDigest, Kernel: rep.Kernel, MemTotalBytes: rep.MemTotalBytes, UptimeSeconds: rep.UptimeSeconds,
		Registration: state.Registration{
			Warnings: rep.Warnings, CPUs: rep.CPUs, Init: rep.Init, AgentVersion: rep.AgentVersion,
		},
	}
	for _, s := range rep.Steps {
		sr.Steps = append(sr.Steps, state.AgentStep{Name: s.Name, UptimeSeconds: s.UptimeSeconds})
	}
	if rep.Root != nil {
		sr.RootMode, sr.RootSizeBytes, sr.RootUsedBytes, sr.RootLowerBytes = rep.Root.Mode, rep.Root.SizeBytes, rep.Root.UsedBytes, rep.Root.LowerBytes
	}
	if b := rep.Boot; b != nil {
		sr.KernelStart, sr.InitSeconds, sr.HandoverSeconds, sr.ReadySeconds = b.KernelStart, b.InitSeconds, b.HandoverSeconds, b.ReadySeconds
	}
	live := state.Agent{Remote: c.remote, PrivilegedPort: c.privileged, UptimeSeconds: rep.UptimeSeconds, OverlayGeneration: rep.OverlayGeneration, ReadySeconds: sr.ReadySeconds}
	if rep.Root != nil {
		live.RootUsedBytes, live.RootSizeBytes, live.RootLowerBytes = rep.Root.UsedBytes, rep.Root.SizeBytes, rep.Root.LowerBytes
	}
	applied, err := n.DB.Register(c.node.Name, c.token, c.from, sr, live)
	switch {
	case err != nil:
		writeError(w, err)
		refuse(err)
		return
	case !applied:
		n.count(ReportRepeated)
		l.Info("agent registered again in the same boot", "node", c.node.Name, "ip", c.from, "init", rep.Init, "uptime", rep.UptimeSeconds)
	case rep.State == overlay.StateReady:
		n.count(ReportApplied)
		n.observe(c.node.Name, rep.State)
		l.Info("node booted", "node", c.node.Name, "ip", c.from, "image", imgName, "digest", imgDigest, "kernel", rep.Kernel, "init", rep.Init, "uptime", rep.UptimeSeconds)
	default:
		n.count(ReportApplied)
		n.observe(c.node.Name, rep.State)
		l.Warn("node boot failed", "node", c.node.Name, "ip", c.from, "init", rep.Init, "err", rep.Error)
	}
	n.schedule(w, c.node.Name)
}

// checkReport checks every field of a registration against its bound and
// returns it made safe to store and print.
func checkReport(rep overlay.Report) (overlay.Report, error) {
	var errs []error
	if rep.State != overlay.StateReady && rep.State != overlay.StateFailed {
		errs = append(errs, fmt.Errorf("state %q: not ready or failed", state.Clip(string(rep.State), 32)))
	}
	rep.Error = state.Clip(state.Printable(rep.Error), MaxReportError)
	if len(rep.Kernel) > MaxReportKernel {
		errs = append(errs, fmt.Errorf("kernel: %d bytes, more than %d", len(rep.Kernel), MaxReportKernel))
	}
	rep.Kernel = state.Printable(rep.Kernel)
	if rep.ContentDigest != "" {
		if _, err := images.ParseDigest(rep.ContentDigest); err != nil {
			errs = append(errs, fmt.Errorf("contentDigest: %w", err))
		}
	}
	if rep.MemTotalBytes < 0 {
		errs = append(errs, fmt.Errorf("memTotalBytes: %d is negative", rep.MemTotalBytes))
	}
	if rep.CPUs < 0 {
		errs = append(errs, fmt.Errorf("cpus: %d is negative", rep.CPUs))
	}
	errs = append(errs, checkSeconds("uptimeSeconds", rep.UptimeSeconds))
	if len(rep.Steps) > MaxReportSteps {
		errs = append(errs, fmt.Errorf("steps: %d, more than %d", len(rep.Steps), MaxReportSteps))
	}
	for i, st := range rep.Steps {
		if len(st.Name) == 0 || len(st.Name) > MaxStepName || state.Printable(st.Name) != st.Name {
			errs = append(errs, fmt.Errorf("steps[%d].name: must be 1-%d printable bytes", i, MaxStepName))
		}
		errs = append(errs, checkSeconds(fmt.Sprintf("steps[%d].uptimeSeconds", i), st.UptimeSeconds))
	}
	if len(rep.Warnings) > MaxReportWarnings {
		errs = append(errs, fmt.Errorf("warnings: %d, more than %d", len(rep.Warnings), MaxReportWarnings))
	}
	for i, s := range rep.Warnings {
		rep.Warnings[i] = state.Clip(state.Printable(s), MaxWarning)
	}
	errs = append(errs, checkWord("init", rep.Init), checkWord("agentVersion", rep.AgentVersion), checkWord("overlayGeneration", rep.OverlayGeneration))
	if ru := rep.Root; ru != nil {
		errs = append(errs, checkWord("root.mode", ru.Mode))
		if ru.SizeBytes < 0 || ru.UsedBytes < 0 || ru.LowerBytes < 0 {
			errs = append(errs, fmt.Errorf("root: negative size"))
		}
	}
	if b := rep.Boot; b != nil {
		errs = append(errs, checkSeconds("boot.initSeconds", b.InitSeconds), checkSeconds("boot.handoverSeconds", b.HandoverSeconds),
			checkSeconds("boot.readySeconds", b.ReadySeconds))
	}
	if err := errors.Join(errs...); err != nil {
		return rep, badRequest{err}
	}
	return rep, nil
}

// checkSeconds checks that v is a duration in seconds.
func checkSeconds(field string, v float64) error {
	if v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return fmt.Errorf("%s: %v is not a duration", field, v)
	}
	return nil
}

// checkWord checks a short word an agent sends: at most MaxWord printable
// bytes.
func checkWord(field, s string) error {
	if len(s) > MaxWord || state.Printable(s) != s {
		return fmt.Errorf("%s: must be at most %d printable bytes", field, MaxWord)
	}
	return nil
}

// checkHeartbeat checks every field of a heartbeat against its bound.
func checkHeartbeat(hb overlay.Heartbeat) error {
	errs := []error{
		checkSeconds("uptimeSeconds", hb.UptimeSeconds), checkSeconds("readySeconds", hb.ReadySeconds),
		checkWord("systemState", hb.SystemState), checkWord("overlayGeneration", hb.OverlayGeneration),
	}
	if hb.Load1 < 0 || math.IsInf(hb.Load1, 0) || math.IsNaN(hb.Load1) {
		errs = append(errs, fmt.Errorf("load1: %v is not a load", hb.Load1))
	}
	if hb.MemAvailableBytes < 0 || hb.AgentRSSBytes < 0 || hb.Root != nil && (hb.Root.SizeBytes < 0 || hb.Root.UsedBytes < 0 || hb.Root.LowerBytes < 0) {
		errs = append(errs, errors.New("a negative size"))
	}
	if hb.Root != nil {
		errs = append(errs, checkWord("root.mode", hb.Root.Mode))
	}
	if err := errors.Join(errs...); err != nil {
		return badRequest{err}
	}
	return nil
}

func (n *Node) heartbeat(w http.ResponseWriter, r *http.Request) {
	var hb overlay.Heartbeat
	c, err := n.authenticateMax(w, r, &hb, MaxHeartbeatBody)
	if err != nil {
		return
	}
	if err := checkHeartbeat(hb); err != nil {
		writeError(w, fmt.Errorf("heartbeat of node %s: %w", c.node.Name, err))
		return
	}
	live := state.Agent{
		Remote: c.remote, PrivilegedPort: c.privileged, UptimeSeconds: hb.UptimeSeconds, Load1: hb.Load1,
		MemAvailableBytes: hb.MemAvailableBytes, SystemState: hb.SystemState, ReadySeconds: hb.ReadySeconds,
		OverlayGeneration: hb.OverlayGeneration, AgentRSSBytes: hb.AgentRSSBytes,
	}
	if hb.Root != nil {
		live.RootUsedBytes, live.RootSizeBytes, live.RootLowerBytes = hb.Root.UsedBytes, hb.Root.SizeBytes, hb.Root.LowerBytes
	}
	live.Workload = workload(hb.Workload)
	wasDown := c.node.Status.State == state.StateDown
	if err := n.DB.Heartbeat(c.node.Name, c.token, c.from, live); err != nil {
		writeError(w, err)
		return
	}
	if wasDown {
		logger(n.Logger).Info("node up again", "node", c.node.Name, "ip", c.from, "uptime", hb.UptimeSeconds)
	}
	n.schedule(w, c.node.Name)
}

func (n *Node) shutdown(w http.ResponseWriter, r *http.Request) {
	var sd overlay.Shutdown
	c, err := n.authenticate(w, r, &sd)
	if err != nil {
		return
	}
	switch sd.Action {
	case overlay.ActionPoweroff, overlay.ActionReboot, overlay.ActionHalt, overlay.ActionStop:
	default:
		writeError(w, badRequest{fmt.Errorf("shutdown of node %s: unknown action %q", c.node.Name, state.Clip(state.Printable(string(sd.Action)), 32))})
		return
	}
	if err := checkSeconds("uptimeSeconds", sd.UptimeSeconds); err != nil {
		writeError(w, badRequest{fmt.Errorf("shutdown of node %s: %w", c.node.Name, err)})
		return
	}
	if err := n.DB.Shutdown(c.node.Name, c.token, c.from, string(sd.Action), sd.UptimeSeconds); err != nil {
		writeError(w, err)
		return
	}
	logger(n.Logger).Info("node going down", "node", c.node.Name, "ip", c.from, "action", sd.Action, "uptime", sd.UptimeSeconds)
	w.WriteHeader(http.StatusNoContent)
}

func (n *Node) overlay(w http.ResponseWriter, r *http.Request) {
	c, err := n.authenticate(w, r, nil)
	if err != nil {
		return
	}
	o, err := n.Overlays.RuntimeOverlay(c.node.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, o)
}

// workload copies the jobs and containers a heartbeat lists, as bounded
// as the node should have sent them: at most overlay.MaxWorkloadJobs and
// MaxWorkloadContainers (the rest counted as omitted), each text field cut
// to MaxWorkloadText and made printable. A node's odd container name must
// not cost it its heartbeat.
func workload(w *overlay.Workload) *state.Workload {
	if w == nil {
		return nil
	}
	text := func(s string) string { return state.Clip(state.Printable(s), overlay.MaxWorkloadText) }
	out := &state.Workload{
		Jobs: []state.WorkloadJob{}, Containers: []state.WorkloadContainer{},
		OmittedJobs: max(w.OmittedJobs, 0), OmittedContainers: max(w.OmittedContainers, 0),
	}
	for i, j := range w.Jobs {
		if i == overlay.MaxWorkloadJobs {
			out.OmittedJobs += len(w.Jobs) - i
			break
		}
		out.Jobs = append(out.Jobs, state.WorkloadJob{ID: text(j.ID), User: text(j.User), UID: j.UID, MemoryBytes: max(j.MemoryBytes, 0), Registered: j.Registered})
	}
	for i, c := range w.Containers {
		if i == overlay.MaxWorkloadContainers {
			out.OmittedContainers += len(w.Containers) - i
			break
		}
		out.Containers = append(out.Containers, state.WorkloadContainer{
			ID: text(c.ID), Name: text(c.Name), Image: text(c.Image), Job: text(c.Job), UID: c.UID,
			State: text(c.State), ExitCode: c.ExitCode, Started: c.Started,
		})
	}
	return out
}
