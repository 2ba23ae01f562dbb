// Command dhcpbench measures DHCP servers under load, side by side in the
// same run on the same machine: `ramboot serve` with N reserved nodes,
// Kea (kea-dhcp4-server) with the same N reservations, and pxe/dhcp alone.
// Each server runs in a network namespace of its own; the load comes from
// a second namespace joined by a veth pair, through the relay (giaddr)
// path: perfdhcp (Debian's kea-admin), or the built-in generator, which
// costs much less CPU than perfdhcp and so reaches rates perfdhcp cannot
// on two shared cores. Nothing touches the host's network.
//
// For every rate, every repetition runs each server once, in alternating
// order, and records the exchanges per second, the drops (messages
// unanswered within 1 s, both halves of DORA) and the server's CPU time
// (utime+stime from /proc). It prints a table and, per server, the highest
// rate with under 0.1 % drops and the CPU at -cpu-rate, as ranges over the
// repetitions; -json writes every run.
//
//	go run ./provisioner/internal/lab/dhcpbench -servers ramboot,kea -rates 4000,8000,12000,16000 -repeat 3
//
// It needs root, kea-dhcp4 and perfdhcp for those servers and that load,
// and builds ramboot itself.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve-pxe" {
		// Internal: pxe/dhcp alone, run by the benchmark inside the
		// server namespace.
		fs := flag.NewFlagSet("serve-pxe", flag.ExitOnError)
		iface := fs.String("iface", "s0", "interface")
		macs := fs.String("macs", "", "MAC list")
		workers := fs.Int("workers", 0, "workers")
		fs.Parse(os.Args[2:])
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if p := os.Getenv("DHCPBENCH_CPUPROFILE"); p != "" {
			if f, err := os.Create(p); err == nil {
				pprof.StartCPUProfile(f)
				defer pprof.StopCPUProfile()
			}
		}
		if err := servePXE(ctx, *iface, *macs, *workers); err != nil {
			fmt.Fprintln(os.Stderr, "dhcpbench serve-pxe:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.nodes, "nodes", 10000, "reserved nodes")
	servers := flag.String("servers", "ramboot,kea", "servers to measure: ramboot, kea, pxe (pxe/dhcp alone)")
	rates := flag.String("rates", "2000,4000,8000,12000,16000", "exchange rates to run, per second")
	flag.DurationVar(&o.dur, "seconds", 10*time.Second, "length of each run")
	flag.IntVar(&o.repeat, "repeat", 3, "repetitions of every rate and server")
	flag.StringVar(&o.loadKind, "load", "builtin", "load generator: builtin or perfdhcp")
	flag.IntVar(&o.cpuRate, "cpu-rate", 4000, "rate at which CPU is compared")
	flag.StringVar(&o.jsonOut, "json", "", "write every run as JSON to this file")
	flag.StringVar(&o.keaThreads, "kea-threads", "2", "Kea's packet-processing threads (0: multi-threading off)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.StringVar(&o.perf, "perf", "", "record each measured run of each server with perf record -g into this directory (SERVER-RATE-PID.data)")
	flag.Parse()
	o.servers = strings.Split(*servers, ",")
	for _, r := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(r)
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "dhcpbench: bad rate %q\n", r)
			os.Exit(2)
		}
		o.rates = append(o.rates, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dhcpbench:", err)
		os.Exit(1)
	}
}

// options are the command line.
type options struct {
	nodes      int
	servers    []string
	rates      []int
	dur        time.Duration
	repeat     int
	loadKind   string
	cpuRate    int
	jsonOut    string
	keaThreads string
	keep       bool
	perf       string
}

// result is one run: one server at one rate.
type result struct {
	Server     string     `json:"server"`
	Rate       int        `json:"rate"`
	Repeat     int        `json:"repeat"`
	Load       loadResult `json:"load"`
	CPUSeconds float64    `json:"cpu_seconds"` // server process, utime+stime
	CPUPercent float64    `json:"cpu_percent"` // of one core, over the run
	LoadAvg    string     `json:"loadavg"`     // /proc/loadavg after the run
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	b, err := newBench(ctx, o)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.close()) }()

	var results []result
	for _, rate := range o.rates {
		for rep := 0; rep < o.repeat; rep++ {
			order := slices.Clone(o.servers)
			if rep%2 == 1 {
				slices.Reverse(order) // alternate who runs first
			}
			for _, name := range order {
				r, err := b.measure(ctx, name, rate)
				if err != nil {
					return fmt.Errorf("%s at %d/s: %w", name, rate, err)
				}
				r.Repeat = rep
				results = append(results, r)
				fmt.Fprintf(os.Stderr, "%-8s %6d/s rep %d: %8.0f started/s, %8.0f completed/s, drops %.3f%%, offer %v ack %v, cpu %.1f%% (load %s)\n",
					name, rate, rep, r.Load.Rate, r.Load.CompletedRate, 100*r.Load.DropRatio,
					r.Load.AvgOffer.Round(time.Microsecond), r.Load.AvgAck.Round(time.Microsecond), r.CPUPercent, r.LoadAvg)
			}
		}
	}
	printSummary(os.Stdout, o, results)
	if o.jsonOut != "" {
		j, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(j, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}
