// Package daemon is the agent daemon: the long-running part of
// ramboot-agent on a booted node. It registers the node with the head
// (the boot record init left in /run, the node's RAM, CPUs and root),
// heartbeats at the interval the head sets, comes back after a head
// restart with exponential backoff and full jitter, applies the node's
// overlay again when the head says it changed, tells the head when the
// node shuts down, and serves the node's local API on a unix socket.
//
// On a systemd image it runs as ramboot-agent.service (Type=notify); on a
// minimal image the agent's PID 1 runs it as a child and restarts it.
//
//	head := headapi.NewClient(nodeCfg, "ramboot-agent/"+version, netip.Addr{})
//	d := &daemon.Daemon{Logger: log, Version: version, Head: head}
//	w, err := workload.New(ctx, workload.Config{Head: head, Connected: d.Connected})
//	d.Routes, d.Summary = []daemon.Registrar{daemon.RegistrarFunc(w.Routes)}, w.Summary
//	err = d.Run(ctx) // until ctx ends (SIGTERM), then reports the shutdown
//
// Other parts of the agent add routes to the local API with a Registrar;
// every route sees its caller's credentials (localapi.CallerFrom). They
// reach the head through the daemon's own client (Head), and send what
// the head should see of them with each heartbeat (Summary).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/internal/bootrec"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// Defaults of the Daemon fields.
const (
	// DefaultInterval is the heartbeat interval until the head sets one.
	DefaultInterval = 15 * time.Second
	// DefaultBackoffMin is the ceiling of the first wait after a failed
	// request to the head.
	DefaultBackoffMin = time.Second
	// DefaultBackoffMax caps the waits when the head has not said how
	// soon it marks a node down; otherwise the cap is half that time, so
	// a node comes back before the head gives up on it.
	DefaultBackoffMax = time.Minute
	// ShutdownTimeout bounds the shutdown report.
	ShutdownTimeout = 5 * time.Second
)

// ShutdownMarker is written by the agent's PID 1 (with the action) when
// it shuts the node down, before it signals the daemon.
const ShutdownMarker = "run/ramboot/shutdown"

// Registrar adds routes to the daemon's local API.
type Registrar interface {
	RegisterRoutes(mux *http.ServeMux)
}

// RegistrarFunc adapts a function to Registrar.
type RegistrarFunc func(mux *http.ServeMux)

// RegisterRoutes calls f.
func (f RegistrarFunc) RegisterRoutes(mux *http.ServeMux) { f(mux) }

// Daemon is the agent daemon. Set its fields, then call Run once.
type Daemon struct {
	// Root is the node's root; empty means "/". The node configuration,
	// the boot record and /proc are read under it.
	Root string
	// Socket is the local API's socket; empty means
	// localapi.DefaultSocket.
	Socket string
	// Routes add routes to the local API, after the daemon's own
	// (GET /v1/status).
	Routes []Registrar
	// Logger receives the daemon's logs; nil discards.
	Logger *slog.Logger
	// Console receives the few lines an operator at the node's console
	// needs ("ramboot-agent: n001 ready"); nil discards.
	Console io.Writer
	// Version is the agent's version, reported to the head.
	Version string
	// Head is the client of the head's node API that the daemon and the
	// services it serves share. Nil means one made from the node
	// configuration: headapi.NewClient, or HTTPClient when that is set.
	Head *headapi.Client
	// HTTPClient reaches the head when Head is nil; nil means a client
	// that dials from a privileged port (headapi.Dialer).
	HTTPClient *http.Client
	// SourceAddr, when valid, is the address requests to the head leave
	// from (when Head is nil); the zero value lets the kernel pick.
	SourceAddr netip.Addr
	// Summary, when set, gives the node's jobs and containers for each
	// heartbeat.
	Summary func() *overlay.Workload
	// BackoffMin is the ceiling of the first wait after a failure. Zero
	// means DefaultBackoffMin.
	BackoffMin time.Duration
	// BackoffMax caps the waits. Zero means half the head's down timeout,
	// or DefaultBackoffMax before the head has told it.
	BackoffMax time.Duration
	// System reads the init system's state; nil means systemd's
	// (systemctl) when systemd runs the node, else none.
	System System
	// Notify sends a readiness state to the service manager; nil means
	// sd_notify(3) to $NOTIFY_SOCKET.
	Notify func(state string) error
	// SetHostname sets the kernel's host name when a refreshed overlay
	// changes it; nil means sethostname(2).
	SetHostname func(name string) error

	mu       sync.Mutex
	status   Status
	rootFull bool
	beat     chan struct{} // asks for a heartbeat now
}

// System is what the daemon asks the node's init system.
type System interface {
	// State returns the system's state ("starting", "running",
	// "degraded", "stopping", ...), or "" when unknown.
	State(ctx context.Context) string
	// WaitReady blocks until start-up has finished (or ctx ends).
	WaitReady(ctx context.Context) error
	// ShutdownAction says what the node is doing when the daemon is told
	// to stop: powering off, rebooting, halting, or nothing (ActionStop).
	ShutdownAction(ctx context.Context) overlay.ShutdownAction
}

func (d *Daemon) log() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

func (d *Daemon) root() string {
	if d.Root == "" {
		return "/"
	}
	return d.Root
}

// Connected returns nil when the daemon is registered with the head and
// its last request was answered, else why not: the scheduler's prolog
// checks it before a job starts.
func (d *Daemon) Connected() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.status
	switch {
	case st.Registered && st.Connected:
		return nil
	case st.LastError != "":
		return fmt.Errorf("agent not connected to the head %s (%d failures): %s", st.Head, st.Failures, st.LastError)
	case st.Registered:
		return fmt.Errorf("agent not connected to the head %s", st.Head)
	default:
		return fmt.Errorf("agent not registered with the head %s yet", st.Head)
	}
}

// Status returns the daemon's view of the node now.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	s := d.status
	d.mu.Unlock()
	s.fill(d.root())
	return s
}

func (d *Daemon) update(f func(s *Status)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(&d.status)
}

// Run runs the daemon until ctx ends, then tells the head why it stops
// and returns nil. It returns an error when it cannot start: no node
// configuration, the socket taken.
func (d *Daemon) Run(ctx context.Context) error {
	log := d.log()
	root := d.root()
	cfg, err := overlay.ReadConfig(os.DirFS(root))
	if err != nil {
		return err
	}
	rec, err := bootrec.Read(root)
	if err != nil {
		log.Warn("no boot record from init: reporting without it", "err", err)
		rec = bootrec.Record{State: overlay.StateReady, Init: "unknown"}
	}
	sys := d.System
	if sys == nil && systemdBooted(root) {
		sys = systemd{}
	}
	if rec.Boot.ReadySeconds == 0 && sys == nil {
		// No init system to wait for: the node is ready as the daemon
		// starts.
		rec.Boot.ReadySeconds = uptime(root)
	}
	d.beat = make(chan struct{}, 1)
	d.update(func(s *Status) { // Status and Connected may be called already
		*s = Status{
			Node: cfg.Node, Head: cfg.HeadURL, Image: cfg.Image, AgentVersion: d.Version,
			Boot: rec, OverlayGeneration: cfg.OverlayGeneration, IntervalSeconds: DefaultInterval.Seconds(),
		}
	})
	client := d.Head
	switch {
	case client != nil:
	case d.HTTPClient != nil:
		client = &headapi.Client{Config: cfg, HTTPClient: d.HTTPClient, UserAgent: "ramboot-agent/" + d.Version}
	default:
		client = headapi.NewClient(cfg, "ramboot-agent/"+d.Version, d.SourceAddr)
	}
	if client.OnFailOver == nil {
		// Its head died: the peers the overlay names (several heads on
		// one store) take the node's calls, its token being good on all.
		client.OnFailOver = func(from, to string, why error) {
			log.Warn("head does not answer; moved to a peer head", "from", from, "to", to, "err", why)
			d.update(func(s *Status) { s.Head = to })
		}
	}

	socket := d.Socket
	if socket == "" {
		socket = localapi.DefaultSocket
	}
	ln, err := localapi.Listen(socket, 0)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/status", localapi.RequireRoot(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		localapi.WriteJSON(w, http.StatusOK, d.Status())
	})))
	for _, r := range d.Routes {
		r.RegisterRoutes(mux)
	}
	var wg sync.WaitGroup
	serveCtx, stopServing := context.WithCancel(context.Background())
	wg.Go(func() {
		if err := (&localapi.Server{Handler: mux, Logger: log}).Serve(serveCtx, ln); err != nil {
			log.Error("local API stopped", "err", err)
		}
	})
	defer func() { stopServing(); wg.Wait() }()
	log.Info("agent daemon started", "node", cfg.Node, "head", cfg.HeadURL, "socket", socket, "init", rec.Init)
	d.notify("READY=1\nSTATUS=registering with " + cfg.HeadURL)

	if sys != nil {
		wg.Go(func() { d.watchReady(ctx, sys) })
		wg.Go(func() { d.watchSystem(ctx, sys) })
	}
	d.loop(ctx, client)

	action := overlay.ActionStop
	if b, err := os.ReadFile(filepath.Join(root, ShutdownMarker)); err == nil && len(b) > 0 {
		action = overlay.ShutdownAction(string(trimSpace(b)))
	} else if sys != nil {
		// systemctl can take seconds on a loaded node; systemd gives a
		// stopping service 90 s by default.
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		action = sys.ShutdownAction(sctx)
		cancel()
	}
	d.notify("STOPPING=1")
	d.reportShutdown(client, action)
	return nil
}

// loop registers, then heartbeats until ctx ends, reconnecting with
// backoff whenever the head does not answer.
func (d *Daemon) loop(ctx context.Context, client *headapi.Client) {
	log := d.log()
	root := d.root()
	registered := false
	bo := headapi.Backoff{Min: orDefault(d.BackoffMin, DefaultBackoffMin)}
	sched := overlay.Schedule{IntervalSeconds: DefaultInterval.Seconds()}
	for ctx.Err() == nil {
		var (
			s   overlay.Schedule
			err error
		)
		if !registered {
			s, err = client.Register(ctx, d.report(root))
		} else {
			s, err = client.Heartbeat(ctx, d.heartbeat(root))
		}
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		if err != nil {
			var se *headapi.StatusError
			switch {
			case errors.As(err, &se) && se.Code == http.StatusConflict:
				// The head lost track of this boot (a restored database,
				// say): register again at once.
				log.Warn("head asks the node to register again", "err", se.Message)
				registered = false
				wait = bo.Next() / 4
			default:
				wait = d.backoff(&bo, sched)
				if bo.Failures() == 1 || bo.Failures()%10 == 0 {
					log.Warn("head unreachable, retrying", "err", err, "failures", bo.Failures(), "retry_in", wait.Round(time.Millisecond))
				}
				if bo.Failures() == 1 {
					d.say("head unreachable (%v); retrying with backoff", err)
				}
			}
			d.update(func(st *Status) {
				st.Connected, st.LastError, st.Failures = false, err.Error(), bo.Failures()
				st.Registered = registered
			})
		} else {
			if !registered {
				log.Info("registered with the head", "head", client.NodeConfig().HeadURL, "interval", s.Interval(), "down_after", s.DownAfter())
				registered = true
				if d.Status().Boot.State == overlay.StateFailed {
					d.say("%s registered with the head, boot failed: %s", client.NodeConfig().Node, d.Status().Boot.Error)
				} else {
					d.say("%s ready", client.NodeConfig().Node)
				}
			} else if bo.Failures() > 0 {
				log.Info("head reachable again", "failures", bo.Failures())
				d.say("head reachable again after %d failed attempts", bo.Failures())
			}
			bo.Reset()
			if s.IntervalSeconds > 0 {
				sched = s
			}
			d.update(func(st *Status) {
				st.Registered, st.Connected, st.LastError, st.Failures = true, true, "", 0
				st.LastContact = time.Now()
				st.Heartbeats++
				st.IntervalSeconds, st.DownAfterSeconds = sched.IntervalSeconds, sched.DownAfterSeconds
				st.HeadSkewSeconds = time.Since(s.HeadTime).Seconds()
				st.PrivilegedPort = client.Privileged()
			})
			if s.OverlayGeneration != "" && s.OverlayGeneration != d.Status().OverlayGeneration {
				if err := d.refresh(ctx, client); err != nil {
					log.Warn("overlay refresh failed", "err", err)
					d.update(func(st *Status) { st.LastError = "overlay refresh: " + err.Error() })
				}
			}
			wait = jitter(sched.Interval())
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-d.beat:
			t.Stop()
		case <-t.C:
		}
	}
}

// backoff returns the next wait after a failure: full jitter, capped at
// BackoffMax or half the head's down timeout.
func (d *Daemon) backoff(bo *headapi.Backoff, s overlay.Schedule) time.Duration {
	bo.Max = d.BackoffMax
	if bo.Max <= 0 {
		bo.Max = DefaultBackoffMax
		if s.DownAfter() > 0 {
			bo.Max = min(bo.Max, max(s.DownAfter()/2, s.Interval()))
		}
	}
	return bo.Next()
}

// jitter spreads a heartbeat interval by ±10%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		d = DefaultInterval
	}
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// watchReady waits for the init system to finish starting, records the
// uptime and asks for a heartbeat at once, so the head learns it.
func (d *Daemon) watchReady(ctx context.Context, sys System) {
	if err := sys.WaitReady(ctx); err != nil {
		if ctx.Err() == nil {
			d.log().Warn("waiting for the system to finish starting", "err", err)
		}
		return
	}
	up := uptime(d.root())
	state := sys.State(ctx)
	d.update(func(st *Status) {
		st.Boot.Boot.ReadySeconds = up
		if state != "" {
			st.SystemState = state
		}
	})
	d.log().Info("system started", "uptime", up, "state", state)
	select {
	case d.beat <- struct{}{}:
	default:
	}
}

// watchSystem reads the init system's state every heartbeat interval,
// each read bounded, until ctx ends.
func (d *Daemon) watchSystem(ctx context.Context, sys System) {
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		state := sys.State(rctx)
		cancel()
		var interval float64
		d.update(func(s *Status) {
			if state != "" {
				s.SystemState = state
			}
			interval = s.IntervalSeconds
		})
		t := time.NewTimer(jitter(time.Duration(interval * float64(time.Second))))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// reportShutdown tells the head the node (or the daemon) goes down.
func (d *Daemon) reportShutdown(client *headapi.Client, action overlay.ShutdownAction) {
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := client.Shutdown(ctx, overlay.Shutdown{Action: action, UptimeSeconds: uptime(d.root())})
	if err != nil {
		d.log().Warn("could not tell the head about the shutdown", "action", action, "err", err)
		return
	}
	d.log().Info("told the head about the shutdown", "action", action)
}

// say prints a line on the console.
func (d *Daemon) say(format string, args ...any) {
	if d.Console != nil {
		fmt.Fprintf(d.Console, "ramboot-agent: "+format+"\n", args...)
	}
}

func (d *Daemon) notify(state string) {
	n := d.Notify
	if n == nil {
		n = sdNotify
	}
	if err := n(state); err != nil {
		d.log().Debug("sd_notify", "err", err)
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
