package storm

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ramboot/ramboot/provisioner/storm/internal/dhcpc"
)

// maxLostListed bounds the lost nodes the report names.
const maxLostListed = 50

// Report is what a storm measured. Durations are in seconds.
type Report struct {
	// Started is when the first node was powered on.
	Started time.Time `json:"started"`
	// Nodes is how many nodes were powered on.
	Nodes int `json:"nodes"`
	// Firmware and Until are what the nodes booted with and how far.
	Firmware Firmware `json:"firmware"`
	Until    string   `json:"until"`
	// Path is the DHCP path: "relay GIADDR" or "direct IFACE".
	Path string `json:"dhcpPath"`
	// SpreadSeconds is the power-on spread.
	SpreadSeconds float64 `json:"spreadSeconds"`
	// Setup is the inventory's part.
	Setup Setup `json:"setup"`
	// Completed counts the nodes that finished their last phase; Lost
	// those that did not.
	Completed int `json:"completed"`
	Lost      int `json:"lost"`
	// LostNodes names the first lost nodes with their phase and reason.
	LostNodes []LostNode `json:"lostNodes,omitempty"`
	// Seconds is from the first power-on until the last node finished
	// or was lost.
	Seconds float64 `json:"seconds"`
	// Phases are the per-phase durations, from a phase's first attempt
	// to its success, over the nodes that finished it.
	Phases []PhaseReport `json:"phases"`
	// Retries counts retransmissions and retried fetches by phase and
	// reason; Failures the reasons of lost nodes.
	Retries  map[string]int `json:"retries"`
	Failures map[string]int `json:"failures"`
	// Bytes counts the bytes the nodes received, by phase.
	Bytes map[string]int64 `json:"bytes"`
	// Throughput is the HTTP delivery rate.
	Throughput Throughput `json:"throughput"`
	// Fairness compares the nodes' image downloads.
	Fairness Fairness `json:"fairness"`
	// DHCP are the relay or client socket's counters.
	DHCP dhcpc.Counters `json:"dhcp"`
	// Heads is how each head held up.
	Heads []HeadReport `json:"heads"`
	// HeadStates counts the nodes by the state the head recorded after
	// the storm.
	HeadStates map[string]int `json:"headStates,omitempty"`
	// Misbehave is the misbehaving client's part, if one ran.
	Misbehave *MisbehaveReport `json:"misbehave,omitempty"`
	// Compare are the plain downloads of the same bytes, per target.
	Compare []CompareReport `json:"compare,omitempty"`
	// Timeline lists, per phase, the seconds at which nodes finished it,
	// in order: the plot's data.
	Timeline map[string][]float64 `json:"timeline"`

	linkRate float64
}

// Setup is the inventory's part of a storm.
type Setup struct {
	// AddSeconds and RemoveSeconds are how long creating and removing
	// the nodes took.
	AddSeconds    float64 `json:"addSeconds"`
	RemoveSeconds float64 `json:"removeSeconds"`
	// RemoveError and StatesError say why removing the nodes or reading
	// their states failed.
	RemoveError string `json:"removeError,omitempty"`
	StatesError string `json:"statesError,omitempty"`
}

// LostNode is a node that did not finish.
type LostNode struct {
	Name   string `json:"name"`
	IP     string `json:"ip"`
	Phase  string `json:"phase"`
	Reason string `json:"reason"`
	Error  string `json:"error"`
}

// PhaseReport is one phase's durations.
type PhaseReport struct {
	Name string  `json:"name"`
	Done int     `json:"done"`
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Throughput is the rate at which the heads delivered the HTTP files.
type Throughput struct {
	// Bytes is what the nodes received over HTTP.
	Bytes int64 `json:"bytes"`
	// Seconds is from the first kernel download's start to the last
	// image download's end.
	Seconds float64 `json:"seconds"`
	// BitsPerSecond is Bytes×8 / Seconds.
	BitsPerSecond float64 `json:"bitsPerSecond"`
	// LinkRate is the link rate given, in bits per second, and OfLink the
	// fraction of it delivered.
	LinkRate float64 `json:"linkRate,omitempty"`
	OfLink   float64 `json:"ofLink,omitempty"`
}

// Fairness compares the nodes' image downloads: a node that starves
// shows as a slowest far below the median.
type Fairness struct {
	// MedianBitsPerSecond and SlowestBitsPerSecond are the nodes' image
	// download rates.
	MedianBitsPerSecond  float64 `json:"medianBitsPerSecond"`
	SlowestBitsPerSecond float64 `json:"slowestBitsPerSecond"`
	// Slowest names the slowest node.
	Slowest string `json:"slowest,omitempty"`
	// MaxOverMedian is the longest image download over the median one.
	MaxOverMedian float64 `json:"maxOverMedian"`
}

func newReport(cfg Config) *Report {
	path := "direct " + cfg.Interface
	if cfg.Relay.IsValid() {
		path = "relay " + cfg.Relay.String()
	}
	return &Report{Nodes: cfg.Nodes, Firmware: cfg.Firmware, Until: cfg.Until.String(), Path: path,
		SpreadSeconds: cfg.Spread.Seconds(), linkRate: cfg.LinkRate}
}

// percentile returns the p-th percentile (nearest rank) of sorted xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(xs)))) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// collect sums the nodes' runs.
func (rep *Report) collect(r *runner, nodes []*nodeRun) {
	rep.Started = nodes[0].start
	rep.Retries, rep.Failures, rep.Bytes, rep.Timeline = map[string]int{}, map[string]int{}, map[string]int64{}, map[string][]float64{}
	perHead := map[string]int{}
	var durs [numPhases][]float64
	var lastEnd time.Duration
	var httpStart, httpEnd time.Duration = -1, 0
	type rate struct {
		name string
		bps  float64
		dur  float64
	}
	var rates []rate
	for _, n := range nodes {
		for k, v := range n.retries {
			rep.Retries[k] += v
		}
		for p := PhaseDHCP; p < numPhases; p++ {
			rep.Bytes[p.String()] += n.bytes[p]
			s := n.phases[p]
			if !s.ok {
				continue
			}
			durs[p] = append(durs[p], (s.end - s.start).Seconds())
			rep.Timeline[p.String()] = append(rep.Timeline[p.String()], s.end.Seconds())
			if p >= PhaseKernel && p <= PhaseOverlay {
				if httpStart < 0 || s.start < httpStart {
					httpStart = s.start
				}
				httpEnd = max(httpEnd, s.end)
				rep.Throughput.Bytes += n.bytes[p]
			}
			if p == PhaseImage && s.end > s.start {
				d := (s.end - s.start).Seconds()
				rates = append(rates, rate{n.spec.Name, float64(n.bytes[p]) * 8 / d, d})
			}
		}
		if n.head != "" {
			perHead[n.head]++
		}
		lastEnd = max(lastEnd, n.ended)
		if n.done {
			rep.Completed++
			continue
		}
		rep.Lost++
		f := n.failure
		if f == nil {
			f = &PhaseError{Phase: n.current(), Reason: "unknown", Err: fmt.Errorf("not finished")}
		}
		rep.Failures[f.Phase.String()+" "+f.Reason]++
		if len(rep.LostNodes) < maxLostListed {
			rep.LostNodes = append(rep.LostNodes, LostNode{Name: n.spec.Name, IP: n.spec.IP.String(), Phase: f.Phase.String(), Reason: f.Reason, Error: f.Err.Error()})
		}
	}
	rep.Seconds = lastEnd.Seconds()
	for p := PhaseDHCP; p < numPhases; p++ {
		if p > r.cfg.Until || (r.cfg.Firmware == FirmwareIPXE && p < PhaseIPXEDHCP) {
			continue
		}
		d := durs[p]
		slices.Sort(d)
		pr := PhaseReport{Name: p.String(), Done: len(d)}
		if len(d) > 0 {
			var sum float64
			for _, x := range d {
				sum += x
			}
			pr.P50, pr.P99, pr.Max, pr.Mean = percentile(d, 50), percentile(d, 99), d[len(d)-1], sum/float64(len(d))
		}
		rep.Phases = append(rep.Phases, pr)
		slices.Sort(rep.Timeline[p.String()])
	}
	if httpStart >= 0 && httpEnd > httpStart {
		rep.Throughput.Seconds = (httpEnd - httpStart).Seconds()
		rep.Throughput.BitsPerSecond = float64(rep.Throughput.Bytes) * 8 / rep.Throughput.Seconds
	}
	if rep.linkRate > 0 {
		rep.Throughput.LinkRate = rep.linkRate
		rep.Throughput.OfLink = rep.Throughput.BitsPerSecond / rep.linkRate
	}
	if len(rates) > 0 {
		slices.SortFunc(rates, func(a, b rate) int { return cmp.Compare(a.bps, b.bps) })
		med := rates[len(rates)/2]
		rep.Fairness = Fairness{MedianBitsPerSecond: med.bps, SlowestBitsPerSecond: rates[0].bps, Slowest: rates[0].name}
		ds := make([]float64, len(rates))
		for i, x := range rates {
			ds[i] = x.dur
		}
		slices.Sort(ds)
		if m := percentile(ds, 50); m > 0 {
			rep.Fairness.MaxOverMedian = ds[len(ds)-1] / m
		}
	}
	for i := range rep.Heads {
		rep.Heads[i].Nodes = perHead[rep.Heads[i].Name]
	}
}

// humanBytes prints n in binary units.
func humanBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}

// humanRate prints bits per second in SI units, and bytes per second.
func humanRate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s (%.0f MB/s)", bps/1e9, bps/8e6)
	case bps >= 1e6:
		return fmt.Sprintf("%.1f Mbit/s (%.1f MB/s)", bps/1e6, bps/8e6)
	}
	return fmt.Sprintf("%.0f kbit/s", bps/1e3)
}

func ms(s float64) string {
	if s < 10 {
		return fmt.Sprintf("%.1f ms", s*1000)
	}
	return fmt.Sprintf("%.2f s", s)
}

// WriteTable prints the report for people.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "boot storm: %d nodes, firmware %s, until %s, DHCP %s, spread %.0fs\n", rep.Nodes, rep.Firmware, rep.Until, rep.Path, rep.SpreadSeconds)
	verdict := "all finished"
	if rep.Lost > 0 {
		verdict = fmt.Sprintf("%d LOST", rep.Lost)
	}
	fmt.Fprintf(&b, "finished %d of %d in %.1f s: %s\n", rep.Completed, rep.Nodes, rep.Seconds, verdict)
	if rep.Setup.AddSeconds > 0 {
		fmt.Fprintf(&b, "inventory: added in %.2f s", rep.Setup.AddSeconds)
		if rep.Setup.RemoveSeconds > 0 {
			fmt.Fprintf(&b, ", removed in %.2f s", rep.Setup.RemoveSeconds)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\tdone\tp50\tp99\tmax\tbytes\t")
	for _, p := range rep.Phases {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", p.Name, p.Done, ms(p.P50), ms(p.P99), ms(p.Max), humanBytes(float64(rep.Bytes[p.Name])))
	}
	tw.Flush()
	b.WriteString("\n")
	counts := func(title string, m map[string]int) {
		if len(m) == 0 {
			fmt.Fprintf(&b, "%s: none\n", title)
			return
		}
		fmt.Fprintf(&b, "%s:\n", title)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			fmt.Fprintf(&b, "  %-32s %d\n", k, m[k])
		}
	}
	counts("failures by phase and reason", rep.Failures)
	counts("retries by phase and reason", rep.Retries)
	for _, l := range rep.LostNodes {
		fmt.Fprintf(&b, "  lost %s (%s): %s %s: %s\n", l.Name, l.IP, l.Phase, l.Reason, l.Error)
	}
	if t := rep.Throughput; t.Bytes > 0 {
		fmt.Fprintf(&b, "\nHTTP delivered %s in %.1f s: %s", humanBytes(float64(t.Bytes)), t.Seconds, humanRate(t.BitsPerSecond))
		if t.LinkRate > 0 {
			fmt.Fprintf(&b, ", %.0f%% of the %s link", t.OfLink*100, humanRate(t.LinkRate))
		}
		b.WriteString("\n")
		if f := rep.Fairness; f.MedianBitsPerSecond > 0 {
			fmt.Fprintf(&b, "image per node: median %s, slowest %s (%s), longest download %.1fx the median\n",
				humanRate(f.MedianBitsPerSecond), humanRate(f.SlowestBitsPerSecond), f.Slowest, f.MaxOverMedian)
		}
	}
	fmt.Fprintf(&b, "DHCP socket: %d sent, %d received, %d stray, %d malformed, %d dropped here\n", rep.DHCP.Sent, rep.DHCP.Received, rep.DHCP.Stray, rep.DHCP.Malformed, rep.DHCP.Dropped)
	for _, h := range rep.Heads {
		fmt.Fprintf(&b, "\nhead %s: answered %d nodes; CPU %.1f s (%.2f cores mean, %.2f peak); RSS %s -> peak %s -> %s",
			h.Name, h.Nodes, h.CPUSeconds, h.CoresMean, h.CoresPeak, humanBytes(float64(h.RSSStart)), humanBytes(float64(h.RSSPeak)), humanBytes(float64(h.RSSEnd)))
		if h.HWM > 0 {
			fmt.Fprintf(&b, " (process peak %s)", humanBytes(float64(h.HWM)))
		}
		fmt.Fprintf(&b, "; goroutines %d -> peak %d -> %d", h.GoroutinesStart, h.GoroutinesPeak, h.GoroutinesEnd)
		if h.ThreadsPeak > 0 {
			fmt.Fprintf(&b, "; threads peak %d, fds peak %d", h.ThreadsPeak, h.FDsPeak)
		}
		b.WriteString("\n")
		for _, k := range slices.Sorted(maps.Keys(h.Counters)) {
			if v := h.Counters[k]; v != 0 {
				fmt.Fprintf(&b, "  %-34s %.0f\n", k, v)
			}
		}
		if h.Error != "" {
			fmt.Fprintf(&b, "  sampling: %s\n", h.Error)
		}
	}
	if len(rep.HeadStates) > 0 {
		fmt.Fprintf(&b, "\nstates recorded by the head:")
		for _, k := range slices.Sorted(maps.Keys(rep.HeadStates)) {
			fmt.Fprintf(&b, " %s %d", k, rep.HeadStates[k])
		}
		b.WriteString("\n")
	}
	if m := rep.Misbehave; m != nil {
		b.WriteString("\n")
		m.write(&b)
	}
	if len(rep.Compare) > 0 {
		b.WriteString("\nplain downloads of the same bytes, same clients:\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "target\tround\tclients\tbytes\tseconds\trate\tp50\tp99\tmax\tfailed\t")
		for _, c := range rep.Compare {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.2f\t%s\t%s\t%s\t%s\t%d\t\n", c.Name, c.Round, c.Clients, humanBytes(float64(c.Bytes)), c.Seconds,
				humanRate(c.BitsPerSecond), ms(c.P50), ms(c.P99), ms(c.Max), c.Failed)
		}
		tw.Flush()
		for _, c := range rep.Compare {
			if c.Name != rampName && c.BitsPerSecond > 0 && rep.Throughput.BitsPerSecond > 0 && c.Round == 1 {
				fmt.Fprintf(&b, "storm delivery vs plain download from %s: %.2f\n", c.Name, rep.Throughput.BitsPerSecond/c.BitsPerSecond)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
