package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// maxDropRatio is the drop rate under which a rate counts as served.
const maxDropRatio = 0.001

// printSummary prints every run, then per server the highest rate served
// with under 0.1 % drops and the CPU at the comparison rate, each as the
// range over the repetitions.
func printSummary(w io.Writer, o options, results []result) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\trate/s\trep\tstarted/s\tcompleted/s\tdrops %\toffer ms\tack ms\tserver CPU %\tloadavg\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.0f\t%.3f\t%.3f\t%.3f\t%.1f\t%s\t\n", r.Server, r.Rate, r.Repeat,
			r.Load.Rate, r.Load.CompletedRate, 100*r.Load.DropRatio,
			r.Load.AvgOffer.Seconds()*1e3, r.Load.AvgAck.Seconds()*1e3, r.CPUPercent, r.LoadAvg)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "server\thighest rate with < 0.1%% drops (per repetition)\tCPU %% at %d/s (range)\t\n", o.cpuRate)
	for _, name := range o.servers {
		var best []int
		for rep := 0; rep < o.repeat; rep++ {
			top := 0
			for _, r := range results {
				if r.Server == name && r.Repeat == rep && r.Load.DropRatio < maxDropRatio && r.Rate > top {
					top = r.Rate
				}
			}
			best = append(best, top)
		}
		var cpu []float64
		for _, r := range results {
			if r.Server == name && r.Rate == o.cpuRate {
				cpu = append(cpu, r.CPUPercent)
			}
		}
		cpuText := "-"
		if len(cpu) > 0 {
			cpuText = fmt.Sprintf("%.1f-%.1f", slices.Min(cpu), slices.Max(cpu))
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t\n", name, best, cpuText)
	}
	tw.Flush()
}
