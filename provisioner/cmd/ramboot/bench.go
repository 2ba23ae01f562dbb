package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
	"github.com/ramboot/ramboot/provisioner/hostlist"
	"github.com/ramboot/ramboot/provisioner/storm"
)

func benchCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "bench", Short: "Load generators that size a head: a boot storm, plain downloads"}
	c.AddCommand(benchStormCmd(g), benchDownloadCmd(g))
	return c
}

// stormFlags are `bench storm`'s flags that need parsing.
type stormFlags struct {
	heads, metrics, misbehave, compare []string
	pids                               []int
	relay, firstIP, firstMAC, firmware string
	until, linkRate, plot, iface       string
	noInventory, quiet                 bool
}

func benchStormCmd(g *globals) *cobra.Command {
	var cfg storm.Config
	var f stormFlags
	c := &cobra.Command{
		Use:   "storm --nodes N --head IP --relay GIADDR --first-ip IP",
		Short: "Power on N simulated nodes against running heads and report how they held up",
		Long: `Power on N simulated nodes within a spread of time. Each runs the real client
side of the boot chain against the heads: DHCP as PXE firmware (through a relay
agent, or on the link), TFTP of the iPXE binary, DHCP as iPXE, the iPXE script
(run like iPXE runs it), the kernel, image, agent and overlay over HTTP (sizes
and digests checked), and the agent's registration with the token of its
overlay. The nodes are added to the inventory through the admin API before the
storm and removed after it. The node addresses must be addresses of this
machine (ip route add local RANGE dev lo) that the heads route here; see
docs/storm.md. Exits non-zero when a node is lost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.apply(&cfg); err != nil {
				return err
			}
			if !f.noInventory {
				cfg.Inventory = &apiInventory{c: g.client()}
			}
			if !f.quiet {
				cfg.Progress = g.stderr
			}
			rep, err := storm.Run(cmd.Context(), cfg)
			if rep == nil {
				return err
			}
			if f.plot != "" {
				if perr := writePlot(f.plot, rep, "ramboot "+strings.Join(os.Args[1:], " ")); perr != nil {
					err = errors.Join(err, perr)
				}
			}
			var out error
			if g.output == "json" {
				out = g.printJSON(rep)
			} else {
				out = rep.WriteTable(g.stdout)
			}
			return errors.Join(err, out)
		},
	}
	fl := c.Flags()
	fl.IntVar(&cfg.Nodes, "nodes", 100, "how many nodes power on")
	fl.StringArrayVar(&f.heads, "head", nil, "a head's address, where the relay sends DHCP (IP or IP:PORT; repeat for several heads) (required)")
	fl.StringArrayVar(&f.metrics, "metrics", nil, "a head's metrics URL, in --head order (default http://HEAD/metrics)")
	fl.IntSliceVar(&f.pids, "head-pid", nil, "a local head's process id, in --head order: CPU and peak memory from /proc")
	fl.StringVar(&f.relay, "relay", "", "relay agent address (giaddr), an address of this machine the heads reach")
	fl.StringVar(&f.iface, "interface", "", "without --relay: the link to broadcast DHCP on, as the nodes themselves")
	fl.StringVar(&f.firstIP, "first-ip", "", "node 1's address; node i has FIRST+i-1, each one bindable here (required)")
	fl.StringVar(&f.firstMAC, "first-mac", storm.DefaultFirstMAC.String(), "node 1's MAC; node i has FIRST+i-1")
	fl.StringVar(&cfg.NamePrefix, "name-prefix", storm.DefaultNamePrefix, "node names: PREFIX00001, PREFIX00002, ...")
	fl.StringVar(&cfg.Image, "image", "", "image the nodes boot (default: the head's boot.default_image)")
	fl.StringVar(&f.firmware, "firmware", string(storm.FirmwareUEFI), "uefi (arch 7, TFTP size probe), bios (arch 0) or ipxe (an iPXE ROM: no firmware DHCP or TFTP)")
	fl.StringVar(&f.until, "until", storm.PhaseRegister.String(), "last phase: dhcp, tftp, ipxe-dhcp, script, kernel, image, agent, overlay or register")
	fl.DurationVar(&cfg.Spread, "spread", 0, "power the nodes on evenly over this long (0: all at once)")
	fl.IntVar(&cfg.MaxActive, "max-active", 0, "nodes booting at once, the others wait (0: no cap)")
	fl.IntVar(&cfg.MaxDownloads, "max-downloads", 0, "kernel and image downloads in flight (0: no cap)")
	fl.DurationVar(&cfg.BootTime, "boot-time", 0, "simulated kernel and init time before the agent registers")
	fl.DurationVar(&cfg.Deadline, "deadline", storm.DefaultDeadline, "a node not finished this long after the first power-on is lost")
	fl.IntVar(&cfg.DigestEvery, "digest-every", storm.DefaultDigestEvery, "check the sha256 of the kernel, image and agent archive of every Nth node (1: all, -1: none)")
	fl.DurationVar(&cfg.HTTPStall, "http-stall", storm.DefaultHTTPStall, "a download that receives nothing for this long fails, as iPXE's does")
	fl.IntVar(&cfg.MaxReboots, "max-reboots", storm.DefaultMaxReboots, "times a node starts over from its firmware (a failed boot attempt, a script that rebooted) before it is lost")
	fl.DurationVar(&cfg.RebootTime, "reboot-time", storm.DefaultRebootTime, "from a failed boot attempt to the firmware's next DHCP")
	fl.StringVar(&f.linkRate, "link-rate", "", "the head link's rate to compare against, e.g. 25G, 10Gbit, 1e9 (bits per second)")
	fl.StringSliceVar(&f.misbehave, "misbehave", nil, "add a misbehaving client: conn-flood, slow-reader, tftp-flood, all")
	fl.IntVar(&cfg.Misbehave.Rate, "misbehave-rate", storm.DefaultMisbehaveRate, "the misbehaving client's new connections or requests per second, per kind")
	fl.StringArrayVar(&f.compare, "compare", nil, "after the storm, download the same kernel and image from NAME=URL too (files at URL/sha256/HEX); repeatable")
	fl.IntVar(&cfg.CompareRounds, "compare-rounds", 1, "repeat the comparison, alternating which side goes first")
	fl.BoolVar(&cfg.KeepNodes, "keep-nodes", false, "leave the nodes in the inventory after the storm")
	fl.BoolVar(&f.noInventory, "no-inventory", false, "the nodes exist already: neither add nor remove them")
	fl.StringVar(&f.plot, "plot", "", "write an SVG plot of the nodes that finished each phase over time to FILE")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress lines on stderr")
	_ = c.MarkFlagRequired("head")
	_ = c.MarkFlagRequired("first-ip")
	return c
}

// apply turns the parsed flags into cfg.
func (f *stormFlags) apply(cfg *storm.Config) error {
	var errs []error
	for i, h := range f.heads {
		ap, err := parseAddrPort(h)
		if err != nil {
			errs = append(errs, fmt.Errorf("--head %q: %w", h, err))
			continue
		}
		head := storm.Head{DHCP: ap, Metrics: "http://" + ap.Addr().String() + "/metrics"}
		if i < len(f.metrics) {
			head.Metrics = f.metrics[i]
		}
		if i < len(f.pids) {
			head.PID = f.pids[i]
		}
		cfg.Heads = append(cfg.Heads, head)
	}
	if len(f.metrics) > len(f.heads) || len(f.pids) > len(f.heads) {
		errs = append(errs, errors.New("--metrics, --head-pid: one per --head at most"))
	}
	if f.relay != "" {
		a, err := netip.ParseAddr(f.relay)
		if err != nil {
			errs = append(errs, fmt.Errorf("--relay: %w", err))
		}
		cfg.Relay = a
	}
	cfg.Interface = f.iface
	if a, err := netip.ParseAddr(f.firstIP); err != nil {
		errs = append(errs, fmt.Errorf("--first-ip: %w", err))
	} else {
		cfg.FirstIP = a
	}
	if m, err := net.ParseMAC(f.firstMAC); err != nil {
		errs = append(errs, fmt.Errorf("--first-mac: %w", err))
	} else {
		cfg.FirstMAC = m
	}
	cfg.Firmware = storm.Firmware(f.firmware)
	if p, err := storm.ParsePhase(f.until); err != nil {
		errs = append(errs, fmt.Errorf("--until: %w", err))
	} else {
		cfg.Until = p
	}
	if f.linkRate != "" {
		r, err := parseRate(f.linkRate)
		if err != nil {
			errs = append(errs, fmt.Errorf("--link-rate: %w", err))
		}
		cfg.LinkRate = r
	}
	for _, k := range f.misbehave {
		if k == "all" {
			cfg.Misbehave.Kinds = append(cfg.Misbehave.Kinds, storm.MisbehaveKinds()...)
			continue
		}
		cfg.Misbehave.Kinds = append(cfg.Misbehave.Kinds, storm.MisbehaveKind(k))
	}
	for _, c := range f.compare {
		name, u, ok := strings.Cut(c, "=")
		if !ok || name == "" || u == "" {
			errs = append(errs, fmt.Errorf("--compare %q: want NAME=URL", c))
			continue
		}
		cfg.Compare = append(cfg.Compare, storm.Target{Name: name, BaseURL: u})
	}
	return errors.Join(errs...)
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, 0), nil
}

// parseRate reads a rate in bits per second: a number with an optional
// k, M, G or T (powers of 1000) and an optional "bit" or "bit/s".
func parseRate(s string) (float64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "/s"), "bit")
	t = strings.TrimSuffix(t, "b")
	mult := 1.0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult = 1e3
		case 'M':
			mult = 1e6
		case 'G', 'g':
			mult = 1e9
		case 'T':
			mult = 1e12
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a rate like 25G, 10Gbit or 1e9", s)
	}
	return v * mult, nil
}

func writePlot(path string, rep *storm.Report, note string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	if err := rep.WriteSVG(f, note); err != nil {
		f.Close()
		return fmt.Errorf("write plot %s: %w", path, err)
	}
	return f.Close()
}

// apiInventory creates the storm's nodes through the admin API: one
// request with a host list and address ranges, one transaction.
type apiInventory struct {
	c *apiclient.Client
}

// Add adds the nodes in one request, their MACs and addresses as ranges,
// and checks that the head gave each the MAC and address the storm
// expects; on a mismatch it removes them again.
func (a *apiInventory) Add(ctx context.Context, nodes []storm.NodeSpec) error {
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	list, err := hostlist.Compress(names)
	if err != nil {
		return err
	}
	req := api.AddNodesRequest{Names: list, MAC: nodes[0].MAC.String() + "+", IP: nodes[0].IP.String() + "+"}
	req.Image = nodes[0].Image
	added, err := a.c.AddNodes(ctx, req)
	if err != nil {
		return fmt.Errorf("add nodes %s: %w", list, err)
	}
	want := map[string]storm.NodeSpec{}
	for _, n := range nodes {
		want[n.Name] = n
	}
	for _, n := range added {
		w, ok := want[n.Name]
		if ok && len(n.Interfaces) > 0 && n.Interfaces[0].IP == w.IP.String() && strings.EqualFold(n.Interfaces[0].MAC, w.MAC.String()) {
			delete(want, n.Name)
		}
	}
	if len(want) > 0 {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = a.Remove(rctx, names)
		return fmt.Errorf("add nodes %s: the head gave %d of them another MAC or address than the storm's", list, len(want))
	}
	return nil
}

// Remove deletes those of the nodes that exist, in one request.
func (a *apiInventory) Remove(ctx context.Context, names []string) error {
	states, err := a.States(ctx, names)
	if err != nil {
		return err
	}
	var present []string
	for _, n := range names {
		if states[n] != "missing" {
			present = append(present, n)
		}
	}
	if len(present) == 0 {
		return nil
	}
	list, err := hostlist.Compress(present)
	if err != nil {
		return err
	}
	if err := a.c.DeleteNodes(ctx, list); err != nil {
		return fmt.Errorf("remove nodes %s: %w", list, err)
	}
	return nil
}

// States returns the nodes' boot states ("missing" for a node the head
// does not have).
func (a *apiInventory) States(ctx context.Context, names []string) (map[string]string, error) {
	rows, err := a.c.ListRows(ctx, "")
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := make(map[string]string, len(names))
	for _, r := range rows {
		if want[r.Name] {
			out[r.Name] = r.State
		}
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			out[n] = "missing"
		}
	}
	return out, nil
}

func benchDownloadCmd(g *globals) *cobra.Command {
	var (
		cfg              storm.DownloadConfig
		targets, digests []string
		firstIP          string
		rounds           int
	)
	c := &cobra.Command{
		Use:   "download --target NAME=URL... --clients N --first-ip IP",
		Short: "Download the same file from several servers with N concurrent clients, alternating, and compare",
		Long: `Every client, from its own address (FIRST-IP+i), downloads the target's URL
at once; the servers take turns, round after round, alternating which goes
first. Reports each round's aggregate rate and the clients' p50/p99/max, and
the ratios to the first target. Exits non-zero when a download failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type target struct{ name, url string }
			var ts []target
			for _, t := range targets {
				name, u, ok := strings.Cut(t, "=")
				if !ok || name == "" || u == "" {
					return fmt.Errorf("--target %q: want NAME=URL", t)
				}
				ts = append(ts, target{name, u})
			}
			a, err := netip.ParseAddr(firstIP)
			if err != nil {
				return fmt.Errorf("--first-ip: %w", err)
			}
			cfg.FirstIP, cfg.Digests = a, digests
			var results []storm.DownloadResult
			var failed int
			for round := 1; round <= max(rounds, 1); round++ {
				order := slices.Clone(ts)
				if round%2 == 0 {
					slices.Reverse(order)
				}
				for _, t := range order {
					dc := cfg
					dc.Name, dc.URLs = t.name, []string{t.url}
					res, err := storm.Download(cmd.Context(), dc)
					res.Round = round
					if err != nil {
						return err
					}
					failed += res.Failed
					fmt.Fprintf(g.stderr, "round %d %s: %.2f s, %.2f Gbit/s, p99 %.2f s, %d failed\n", round, t.name, res.Seconds, res.BitsPerSecond/1e9, res.P99, res.Failed)
					results = append(results, res)
				}
			}
			if g.output == "json" {
				err = g.printJSON(results)
			} else {
				err = printDownloads(g.stdout, results)
			}
			if failed > 0 {
				err = errors.Join(err, fmt.Errorf("%d downloads failed", failed))
			}
			return err
		},
	}
	fl := c.Flags()
	fl.StringArrayVar(&targets, "target", nil, "a server's URL of the file, NAME=URL; repeat for each server (required)")
	fl.StringArrayVar(&digests, "digest", nil, "the file's sha256:HEX, checked by every --digest-every-th client")
	fl.IntVar(&cfg.Clients, "clients", 200, "concurrent clients, each from its own address")
	fl.StringVar(&firstIP, "first-ip", "", "client 1's address; client i has FIRST+i-1, each one bindable here (required)")
	fl.IntVar(&cfg.DigestEvery, "digest-every", storm.DefaultDigestEvery, "check the digest of every Nth client's download (1: all, -1: none)")
	fl.IntVar(&rounds, "rounds", 3, "rounds; each server once per round, the order alternating")
	fl.DurationVar(&cfg.HTTPStall, "http-stall", storm.DefaultHTTPStall, "a download that receives nothing for this long fails")
	_ = c.MarkFlagRequired("target")
	_ = c.MarkFlagRequired("first-ip")
	return c
}

// printDownloads prints each round and, per server, the range of its
// rates and p99s and their medians' ratios to the first server's.
func printDownloads(w io.Writer, rs []storm.DownloadResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\ttarget\tclients\tbytes\tseconds\tGbit/s\tp50 s\tp99 s\tmax s\tfailed\t")
	var names []string
	byName := map[string][]storm.DownloadResult{}
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%d\t\n", r.Round, r.Name, r.Clients, r.Bytes, r.Seconds, r.BitsPerSecond/1e9, r.P50, r.P99, r.Max, r.Failed)
		if _, ok := byName[r.Name]; !ok {
			names = append(names, r.Name)
		}
		byName[r.Name] = append(byName[r.Name], r)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	median := func(xs []float64) float64 {
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	var base struct{ rate, p99 float64 }
	for i, n := range names {
		var rates, p99s []float64
		for _, r := range byName[n] {
			rates, p99s = append(rates, r.BitsPerSecond/1e9), append(p99s, r.P99)
		}
		mr, mp := median(slices.Clone(rates)), median(slices.Clone(p99s))
		fmt.Fprintf(w, "%s: %.2f-%.2f Gbit/s (median %.2f), p99 %.2f-%.2f s (median %.2f)", n, slices.Min(rates), slices.Max(rates), mr, slices.Min(p99s), slices.Max(p99s), mp)
		if i == 0 {
			base.rate, base.p99 = mr, mp
			fmt.Fprintln(w)
			continue
		}
		fmt.Fprintf(w, "; %s/%s rate %.2f, p99 %.2f\n", names[0], n, base.rate/mr, base.p99/mp)
	}
	return nil
}
