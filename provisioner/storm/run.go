package storm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ramboot/ramboot/provisioner/storm/internal/dhcpc"
)

// ErrLost is wrapped by Run's error when a node did not finish.
var ErrLost = errors.New("nodes lost")

// runner is one storm in progress.
type runner struct {
	cfg       Config
	log       *slog.Logger
	dhcp      *dhcpc.Conn
	downloads chan struct{} // nil: no cap
	bufs      sync.Pool

	doneCount [numPhases]atomic.Int64
	failed    atomic.Int64
	powered   atomic.Int64

	learnMu  sync.Mutex
	learned  learned
	imageURL chan struct{} // closed once learned.imageURL is set
}

// learned is what the first nodes found out: where the head serves what,
// for the misbehaving client.
type learned struct {
	headURL  string
	imageURL string
	tftp     netip.AddrPort
	tftpFile string
}

// learn updates what the storm learned.
func (r *runner) learn(f func(*learned)) {
	r.learnMu.Lock()
	defer r.learnMu.Unlock()
	had := r.learned.imageURL != ""
	f(&r.learned)
	if !had && r.learned.imageURL != "" {
		close(r.imageURL)
	}
}

func (r *runner) known() learned {
	r.learnMu.Lock()
	defer r.learnMu.Unlock()
	return r.learned
}

// Run runs the storm: it creates the nodes in the inventory, powers them
// on over the spread, waits until every one finished its last phase or
// the deadline passed, runs the comparisons, removes the nodes and
// returns the report. The error wraps ErrLost (with the report) when a
// node was lost.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("storm: %w", err)
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	specs := cfg.NodeSpecs()
	if err := checkBindable(specs[0].IP, specs[len(specs)-1].IP); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, log: log, imageURL: make(chan struct{})}
	if cfg.MaxDownloads > 0 {
		r.downloads = make(chan struct{}, cfg.MaxDownloads)
	}
	rep := newReport(cfg)

	if !(cfg.Firmware == FirmwareIPXE && cfg.Until < PhaseIPXEDHCP) {
		var err error
		if cfg.Relay.IsValid() {
			var servers []netip.AddrPort
			for _, h := range cfg.Heads {
				servers = append(servers, h.DHCP)
			}
			r.dhcp, err = dhcpc.ListenRelay(cfg.Relay, servers)
		} else {
			r.dhcp, err = dhcpc.ListenDirect(ctx, cfg.Interface)
		}
		if err != nil {
			return nil, fmt.Errorf("storm: %w", err)
		}
		defer r.dhcp.Close()
	}

	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Name
	}
	if cfg.Inventory != nil {
		t := time.Now()
		r.progressf("storm: adding %d nodes to the inventory", len(specs))
		if err := cfg.Inventory.Add(ctx, specs); err != nil {
			return nil, fmt.Errorf("storm: add the nodes: %w", err)
		}
		rep.Setup.AddSeconds = time.Since(t).Seconds()
		if !cfg.KeepNodes {
			defer func() {
				// The storm's context may be over (Ctrl-C): removing the
				// nodes still has to happen.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
				defer cancel()
				t := time.Now()
				if err := cfg.Inventory.Remove(rctx, names); err != nil {
					r.progressf("storm: remove the nodes: %v", err)
					rep.Setup.RemoveError = err.Error()
				}
				rep.Setup.RemoveSeconds = time.Since(t).Seconds()
			}()
		}
	}

	start := time.Now()
	samplers := make([]*sampler, len(cfg.Heads))
	firsts := make([]Sample, len(cfg.Heads))
	sctx, stopSampling := context.WithCancel(ctx)
	var swg sync.WaitGroup
	for i, h := range cfg.Heads {
		samplers[i] = newSampler(h, start)
		firsts[i] = samplers[i].sample(ctx)
		swg.Go(func() { samplers[i].run(sctx, cfg.SampleInterval) })
	}
	defer func() { stopSampling(); swg.Wait() }()

	stormCtx, cancel := context.WithTimeout(ctx, cfg.Deadline)
	defer cancel()
	mis := r.startMisbehave(stormCtx)

	nodes := make([]*nodeRun, len(specs))
	var active chan struct{}
	if cfg.MaxActive > 0 {
		active = make(chan struct{}, cfg.MaxActive)
	}
	var wg sync.WaitGroup
	for i, spec := range specs {
		n := &nodeRun{spec: spec, index: i + 1, uuid: nodeUUID(spec.MAC), start: start}
		nodes[i] = n
		at := time.Duration(0)
		if len(specs) > 1 {
			at = cfg.Spread * time.Duration(i) / time.Duration(len(specs)-1)
		}
		wg.Go(func() {
			if err := sleep(stormCtx, at-time.Since(start)); err != nil {
				n.failure = &PhaseError{Phase: n.current(), Reason: "deadline", Err: errors.New("not powered on before the deadline")}
				r.failed.Add(1)
				return
			}
			if active != nil {
				select {
				case active <- struct{}{}:
					defer func() { <-active }()
				case <-stormCtx.Done():
					n.failure = &PhaseError{Phase: n.current(), Reason: "deadline", Err: errors.New("never powered on (max active)")}
					r.failed.Add(1)
					return
				}
			}
			n.powerOn = time.Since(start)
			r.powered.Add(1)
			r.run(stormCtx, n)
		})
	}
	progressDone := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Go(func() { r.progress(start, progressDone) })
	wg.Wait()
	close(progressDone)
	pwg.Wait()
	stormSeconds := time.Since(start).Seconds()
	cancel()
	misReport := mis.stop()

	// The nodes closed their connections; give the head a moment to
	// reap what they held before the "after" reading.
	_ = sleep(ctx, 2*time.Second)
	for i, s := range samplers {
		end := s.sample(ctx)
		hr := s.report(firsts[i], end, stormSeconds)
		rep.Heads = append(rep.Heads, hr)
	}
	stopSampling()
	swg.Wait()

	rep.collect(r, nodes)
	if r.dhcp != nil {
		rep.DHCP = r.dhcp.Counters()
	}
	rep.Misbehave = misReport
	if cfg.Inventory != nil && ctx.Err() == nil {
		states, err := cfg.Inventory.States(ctx, names)
		if err != nil {
			rep.Setup.StatesError = err.Error()
		} else {
			rep.HeadStates = map[string]int{}
			for _, st := range states {
				rep.HeadStates[st]++
			}
		}
	}
	if len(cfg.Compare) > 0 && ctx.Err() == nil {
		r.progressf("storm: comparing plain downloads of the same bytes")
		rep.Compare = r.compare(ctx, nodes)
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("storm: %w", err)
	}
	if rep.Lost > 0 {
		return rep, fmt.Errorf("storm: %d of %d %w", rep.Lost, rep.Nodes, ErrLost)
	}
	return rep, nil
}

// checkBindable checks that the first and last node addresses are
// addresses of this machine.
func checkBindable(addrs ...netip.Addr) error {
	for _, a := range addrs {
		l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: a.AsSlice()})
		if err != nil {
			return fmt.Errorf("storm: node address %s is not an address of this machine (%w): route the node range here, e.g. ip route add local 10.77.128.0/17 dev lo", a, err)
		}
		l.Close()
	}
	return nil
}

func (r *runner) progressf(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, format+"\n", args...)
	}
}

// progress prints a line a second until done closes.
func (r *runner) progress(start time.Time, done <-chan struct{}) {
	if r.cfg.Progress == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	line := func() {
		s := fmt.Sprintf("storm %6.1fs  on %d/%d", time.Since(start).Seconds(), r.powered.Load(), r.cfg.Nodes)
		for p := PhaseDHCP; p < numPhases; p++ {
			if p > r.cfg.Until || (r.cfg.Firmware == FirmwareIPXE && p < PhaseIPXEDHCP) {
				continue
			}
			s += fmt.Sprintf("  %s %d", p, r.doneCount[p].Load())
		}
		s += fmt.Sprintf("  lost %d", r.failed.Load())
		fmt.Fprintln(r.cfg.Progress, s)
	}
	for {
		select {
		case <-done:
			line()
			return
		case <-t.C:
			line()
		}
	}
}
