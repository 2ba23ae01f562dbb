// Command stormbench is `make storm`: the boot-storm benchmarks of
// docs/benchmarks.md from one command. It builds ramboot, creates the
// storm's two network namespaces (head and load generator, nothing
// connected to the host), builds an image with an incompressible payload,
// starts `ramboot serve` and an nginx serving the same blobs in the head's
// namespace, and runs, from the generator's namespace:
//
//   - http: `ramboot bench download`, N clients downloading the image from
//     ramboot and from nginx, alternating, several rounds;
//   - storm: `ramboot bench storm` of -nodes nodes through every phase,
//     then the same bytes downloaded plainly from ramboot and nginx;
//   - scale: `ramboot bench storm` of -scale-nodes nodes through DHCP,
//     TFTP and the script.
//
// Each step's JSON report, the plots (SVG) and a summary with the load
// average go to -out. It exits non-zero if a step failed or lost a node.
//
//	sudo go run ./provisioner/internal/lab/stormbench -out /tmp/storm-results
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/storm"
)

type options struct {
	what                 string
	nodes, scaleNodes    int
	imageMiB, kernelMiB  int
	clients, rounds      int
	out, linkRate        string
	spread, scaleSpread  time.Duration
	nginxWorkers, config string
	hold                 bool
}

func main() {
	var o options
	flag.StringVar(&o.what, "what", "http,storm,scale", "steps to run: http, storm, scale")
	flag.IntVar(&o.nodes, "nodes", 1000, "nodes of the full storm")
	flag.IntVar(&o.scaleNodes, "scale-nodes", 10000, "nodes of the DHCP, TFTP and script storm")
	flag.IntVar(&o.imageMiB, "image-mib", 64, "the image's incompressible payload, MiB")
	flag.IntVar(&o.kernelMiB, "kernel-mib", 8, "the kernel's size, MiB")
	flag.IntVar(&o.clients, "clients", 200, "concurrent clients of the http step")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of each comparison, alternating which side goes first")
	flag.DurationVar(&o.spread, "spread", 0, "power-on spread of the full storm")
	flag.DurationVar(&o.scaleSpread, "scale-spread", 0, "power-on spread of the scale storm")
	flag.StringVar(&o.linkRate, "link-rate", "25G", "link rate the storm's throughput is compared with")
	flag.StringVar(&o.out, "out", "/tmp/ramboot-storm-results", "directory for the reports, plots and summary")
	flag.StringVar(&o.nginxWorkers, "nginx-workers", "auto", "nginx worker_processes")
	flag.StringVar(&o.config, "config", "", "YAML appended to the head's configuration")
	flag.BoolVar(&o.hold, "hold", false, "after the steps, keep the namespaces, head and nginx up until interrupted (to run commands by hand)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "stormbench: FAIL:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "stormbench: "+format+"\n", args...)
}

func run(ctx context.Context, o options) (err error) {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ramboot-stormbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	logf("building ramboot into %s", work)
	ramboot, _, err := lab.BuildBinaries(ctx, filepath.Join(work, "bin"))
	if err != nil {
		return err
	}
	n, err := lab.NewStormNet(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, n.Close()) }()
	logf("head namespace %s (%s), generator %s (%s, nodes %s); building a %d MiB image", n.Head, n.HeadIP, n.Gen, n.GenIP, n.Nodes, o.imageMiB)
	h, err := lab.StartStormHead(ctx, n, lab.StormHeadOptions{Ramboot: ramboot, Dir: work, ImageMiB: o.imageMiB, KernelMiB: o.kernelMiB, Config: o.config, LogLevel: "warn"})
	if err != nil {
		return err
	}
	defer h.Stop()
	head := n.HeadIP.Addr().String()
	nginxAddr := head + ":8080"
	ng, err := lab.StartNginx(ctx, n, filepath.Join(work, "nginx"), h.Blobs, nginxAddr, o.nginxWorkers)
	if err != nil {
		return err
	}
	defer ng.Stop()
	logf("ramboot serve pid %d, nginx pid %d on %s", h.PID(), ng.PID(), nginxAddr)

	var summary bytes.Buffer
	host, _ := os.Hostname()
	fmt.Fprintf(&summary, "# stormbench %s on %s (%d CPUs), %s\n\n", time.Now().UTC().Format(time.RFC3339), host, runtime.NumCPU(), strings.Join(os.Args[1:], " "))
	fmt.Fprintf(&summary, "image: rootfs %d bytes (%s), kernel %d bytes\n\n", h.Image.Rootfs.Size, h.Image.Rootfs.Digest, h.Image.Kernel.Size)
	steps := strings.Split(o.what, ",")
	var failed []string
	step := func(name string, f func() error) {
		if !slices.Contains(steps, name) || ctx.Err() != nil {
			return
		}
		before := lab.LoadAverage()
		t := time.Now()
		err := f()
		fmt.Fprintf(&summary, "\n(step %s: %.0f s, load average %.1f before, %.1f after)\n\n", name, time.Since(t).Seconds(), before, lab.LoadAverage())
		if err != nil {
			logf("%s: %v", name, err)
			failed = append(failed, name+": "+err.Error())
		}
	}
	gen := func(name string, args ...string) ([]byte, error) {
		args = append(args, "--state-dir", h.State, "-o", "json")
		logf("ramboot %s", strings.Join(args, " "))
		fmt.Fprintf(&summary, "    ramboot %s\n\n", strings.Join(args, " "))
		cmd := n.Command(ctx, n.Gen, ramboot, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		err := cmd.Run()
		if werr := os.WriteFile(filepath.Join(o.out, name+".json"), out.Bytes(), 0o644); werr != nil {
			err = errors.Join(err, werr)
		}
		return out.Bytes(), err
	}
	first := n.FirstNode().String()
	step("http", func() error {
		out, err := gen("http", "bench", "download", "--clients", strconv.Itoa(o.clients), "--first-ip", first, "--rounds", strconv.Itoa(o.rounds),
			"--target", "ramboot=http://"+head+"/boot/image/"+h.ImageDigest.Hex()+"/rootfs.cpio.zst",
			"--target", "nginx=http://"+nginxAddr+"/sha256/"+h.Image.Rootfs.Digest.Hex(),
			"--digest", string(h.Image.Rootfs.Digest))
		var rs []storm.DownloadResult
		if jerr := json.Unmarshal(out, &rs); jerr == nil {
			summarizeDownloads(&summary, rs)
		}
		return err
	})
	stormStep := func(name string, nodes int, spread time.Duration, extra ...string) func() error {
		return func() error {
			plot := filepath.Join(o.out, name+".svg")
			args := append([]string{"bench", "storm", "--nodes", strconv.Itoa(nodes), "--head", head, "--head-pid", strconv.Itoa(h.PID()),
				"--relay", n.GenIP.String(), "--first-ip", first, "--spread", spread.String(), "--link-rate", o.linkRate, "--plot", plot, "-q"}, extra...)
			out, err := gen(name, args...)
			var rep storm.Report
			if jerr := json.Unmarshal(out, &rep); jerr == nil {
				_ = rep.WriteTable(&summary)
			}
			return err
		}
	}
	step("storm", stormStep(fmt.Sprintf("storm-%d", o.nodes), o.nodes, o.spread,
		"--compare", "nginx=http://"+nginxAddr, "--compare-rounds", strconv.Itoa(o.rounds)))
	step("scale", stormStep(fmt.Sprintf("storm-%d-script", o.scaleNodes), o.scaleNodes, o.scaleSpread, "--until", "script", "--deadline", "30m"))
	if err := os.WriteFile(filepath.Join(o.out, "summary.md"), summary.Bytes(), 0o644); err != nil {
		return err
	}
	_, _ = io.Copy(os.Stdout, &summary)
	logf("reports, plots and summary in %s", o.out)
	if o.hold {
		logf("holding: head namespace %s (ramboot serve pid %d, state %s), generator namespace %s; interrupt to end", n.Head, h.PID(), h.State, n.Gen)
		<-ctx.Done()
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// summarizeDownloads prints each side's range of rates and p99s over the
// rounds, and the medians' ratios.
func summarizeDownloads(w io.Writer, rs []storm.DownloadResult) {
	by := map[string][]storm.DownloadResult{}
	var names []string
	for _, r := range rs {
		if _, ok := by[r.Name]; !ok {
			names = append(names, r.Name)
		}
		by[r.Name] = append(by[r.Name], r)
	}
	med := map[string][2]float64{}
	for _, name := range names {
		var rates, p99s []float64
		failed := 0
		for _, r := range by[name] {
			rates, p99s = append(rates, r.BitsPerSecond/8e9), append(p99s, r.P99)
			failed += r.Failed
		}
		slices.Sort(rates)
		slices.Sort(p99s)
		med[name] = [2]float64{rates[len(rates)/2], p99s[len(p99s)/2]}
		fmt.Fprintf(w, "- %s: %.2f-%.2f GB/s (median %.2f), p99 %.2f-%.2f s (median %.2f), %d failed, %d rounds\n",
			name, rates[0], rates[len(rates)-1], med[name][0], p99s[0], p99s[len(p99s)-1], med[name][1], failed, len(rates))
	}
	if a, b := med["ramboot"], med["nginx"]; a[0] > 0 && b[0] > 0 {
		fmt.Fprintf(w, "- ramboot/nginx: throughput %.2f, p99 %.2f\n", a[0]/b[0], a[1]/b[1])
	}
}
