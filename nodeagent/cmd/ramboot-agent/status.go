package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ramboot/ramboot/nodeagent/daemon"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var output, socket string
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.StringVar(&output, "o", "table", "output `format`: table or json")
	fs.StringVar(&socket, "socket", localapi.DefaultSocket, "the daemon's unix `socket`")
	if done, err := parseFlags(fs, args, stderr); done || err != nil {
		return err
	}
	if output != "table" && output != "json" {
		return fmt.Errorf("status: -o %q: want table or json", output)
	}
	var st daemon.Status
	if err := localapi.NewClient(socket).Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		return err
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return printStatus(stdout, st, time.Now())
}

// printStatus prints the daemon's view for a person.
func printStatus(w io.Writer, st daemon.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, args...)...)
	}
	row("Node", "%s", st.Node)
	row("Image", "%s %s", dash(st.Image.Name), short(st.Image.Digest))
	head := "not registered"
	switch {
	case st.Registered && st.Connected:
		head = fmt.Sprintf("connected, last answer %s ago", now.Sub(st.LastContact).Round(time.Second))
	case st.Registered:
		head = fmt.Sprintf("unreachable since %s (%d failures): %s", ago(now, st.LastContact), st.Failures, st.LastError)
	case st.LastError != "":
		head = fmt.Sprintf("not registered (%d failures): %s", st.Failures, st.LastError)
	}
	row("Head", "%s: %s", st.Head, head)
	row("Heartbeat", "every %s, down after %s; %d accepted", secs(st.IntervalSeconds), secs(st.DownAfterSeconds), st.Heartbeats)
	port := "ephemeral"
	if st.PrivilegedPort {
		port = "privileged"
	}
	row("Source port", "%s", port)
	row("Overlay", "generation %s%s", dash(st.OverlayGeneration), refreshed(now, st.OverlayRefreshed))
	b := st.Boot
	row("Boot", "%s%s", b.State, prefixed(": ", b.Error))
	for _, wn := range b.Warnings {
		row("Warning", "%s", wn)
	}
	row("PID 1", "%s", dash(b.Init))
	if st.SystemState != "" {
		row("System", "%s", st.SystemState)
	}
	ready := "not yet"
	if b.Boot.ReadySeconds > 0 {
		ready = fmt.Sprintf("%.1fs", b.Boot.ReadySeconds)
	}
	row("Timings", "kernel to init %.1fs, init to handover %.1fs, ready at %s (uptime)", b.Boot.InitSeconds, b.Boot.HandoverSeconds-b.Boot.InitSeconds, ready)
	if st.Root.LowerBytes > 0 {
		row("Root", "%s, %s: %s compressed image + %s written of %s", st.Root.Mode, mib(st.Root.TotalBytes()),
			mib(st.Root.LowerBytes), mib(st.Root.UsedBytes), mib(st.Root.SizeBytes))
	} else {
		row("Root", "%s, %s used of %s", st.Root.Mode, mib(st.Root.UsedBytes), mib(st.Root.SizeBytes))
	}
	row("Memory", "%s available of %s", mib(st.MemAvailableBytes), mib(st.MemTotalBytes))
	row("Modules", "%s", dash(strings.Join(b.Modules, " ")))
	row("Uptime", "%s", (time.Duration(st.UptimeSeconds) * time.Second).String())
	row("Agent", "%s", st.AgentVersion)
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func short(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

func secs(s float64) string { return (time.Duration(s * float64(time.Second))).String() }

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "start"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func refreshed(now, t time.Time) string {
	if t.IsZero() {
		return " (as booted)"
	}
	return ", refreshed " + ago(now, t)
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }
