package main

import (
	"fmt"
	"io"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
)

// printRegistration prints what the agent daemon's registration added to
// the report: PID 1, CPUs, the root, the boot's timings and warnings.
func printRegistration(w io.Writer, r *api.Report) {
	if r.Init != "" {
		fmt.Fprintf(w, "PID 1:\t%s\n", r.Init)
	}
	if r.CPUs > 0 {
		fmt.Fprintf(w, "CPUs:\t%d\n", r.CPUs)
	}
	if r.RootMode != "" {
		fmt.Fprintf(w, "Root:\t%s\n", rootRAM(r.RootMode, r.RootLowerBytes, r.RootUsedBytes, r.RootSizeBytes))
	}
	if r.InitSeconds > 0 {
		ready := "not yet"
		if r.ReadySeconds > 0 {
			ready = fmt.Sprintf("at %.1fs", r.ReadySeconds)
		}
		fmt.Fprintf(w, "Boot times:\tkernel to /init %.1fs, init to hand-over %.1fs, ready %s (node uptime)\n", r.InitSeconds, r.HandoverSeconds-r.InitSeconds, ready)
	}
	for _, wn := range r.Warnings {
		fmt.Fprintf(w, "Warning:\t%s\n", wn)
	}
}

// rootRAM says what the root takes: in the compressed mode, the image
// (lower), what was written (upper) under its cap, and their total.
func rootRAM(mode string, lower, used, size int64) string {
	if lower > 0 {
		return fmt.Sprintf("%s, %d MiB total: %d MiB compressed image (lower) + %d MiB written (upper, cap %d MiB)",
			orDash(mode), (lower+used)>>20, lower>>20, used>>20, size>>20)
	}
	return fmt.Sprintf("%s, %d MiB of RAM under a cap of %d MiB", orDash(mode), used>>20, size>>20)
}

// printAgent prints the agent daemon's last heartbeat.
func printAgent(w io.Writer, n api.NodeStatus) {
	a := n.Agent
	switch {
	case a == nil && (n.Status.State == "booted" || n.Status.State == "failed" || n.Status.State == "down"):
		fmt.Fprintf(w, "Agent:\tno heartbeat since the head started\n")
		return
	case a == nil:
		return
	}
	port := "ephemeral port"
	if a.PrivilegedPort {
		port = "privileged port"
	}
	fmt.Fprintf(w, "Agent:\tlast heard %s ago from %s (%s), %d heartbeats\n", time.Since(a.LastSeen).Round(time.Second), a.Remote, port, a.Heartbeats)
	if a.SystemState != "" {
		fmt.Fprintf(w, "System:\t%s\n", a.SystemState)
	}
	if a.ReadySeconds > 0 && (n.Status.Report == nil || n.Status.Report.ReadySeconds == 0) {
		fmt.Fprintf(w, "Ready:\tat %.1fs (node uptime)\n", a.ReadySeconds)
	}
	fmt.Fprintf(w, "Uptime:\t%s, load %.2f, %d MiB available\n",
		(time.Duration(a.UptimeSeconds) * time.Second).String(), a.Load1, a.MemAvailableBytes>>20)
	mode := ""
	if n.Status.Report != nil {
		mode = n.Status.Report.RootMode
	}
	fmt.Fprintf(w, "Root RAM:\t%s\n", rootRAM(mode, a.RootLowerBytes, a.RootUsedBytes, a.RootSizeBytes))
	if a.OverlayGeneration != "" {
		fmt.Fprintf(w, "Overlay:\tgeneration %s\n", a.OverlayGeneration)
	}
	if a.AgentRSSBytes > 0 {
		fmt.Fprintf(w, "Agent RSS:\t%.1f MiB\n", float64(a.AgentRSSBytes)/(1<<20))
	}
	printWorkload(w, a.Workload)
}

// printWorkload prints the jobs and containers of the agent's last
// heartbeat, one line each.
func printWorkload(w io.Writer, wl *api.Workload) {
	if wl == nil {
		return
	}
	more := func(n int) string {
		if n > 0 {
			return fmt.Sprintf(" (and %d more)", n)
		}
		return ""
	}
	fmt.Fprintf(w, "Jobs:\t%d%s\n", len(wl.Jobs)+wl.OmittedJobs, more(wl.OmittedJobs))
	for _, j := range wl.Jobs {
		fmt.Fprintf(w, "\tjob %s, user %s (%d)\n", j.ID, j.User, j.UID)
	}
	fmt.Fprintf(w, "Containers:\t%d%s\n", len(wl.Containers)+wl.OmittedContainers, more(wl.OmittedContainers))
	for _, c := range wl.Containers {
		job := ""
		if c.Job != "" {
			job = ", job " + c.Job
		}
		fmt.Fprintf(w, "\t%s %s, image %s, %s%s, uid %d\n", c.ID, c.Name, c.Image, c.State, job, c.UID)
	}
}
