package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
)

func TestPrintNodeAgent(t *testing.T) {
	n := api.NodeStatus{NodeSpec: api.NodeSpec{Name: "deb1"}, Status: api.Status{Boot: api.Boot{ID: 1, State: "booted", Report: &api.Report{
		State: "ready", Kernel: "6.1.0", Registration: api.Registration{
			Init: "systemd", CPUs: 4, RootMode: "tmpfs", RootUsedBytes: 596 << 20, RootSizeBytes: 1470 << 20,
			InitSeconds: 13.9, HandoverSeconds: 19.5, ReadySeconds: 37, Warnings: []string{"clock: the head did not answer"},
		}}}}}
	var b bytes.Buffer
	if err := printNode(&b, n); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"PID 1:       systemd\n", "CPUs:        4\n", "Root:        tmpfs, 596 MiB of RAM under a cap of 1470 MiB\n",
		"Boot times:  kernel to /init 13.9s, init to hand-over 5.6s, ready at 37.0s (node uptime)\n",
		"Warning:     clock: the head did not answer\n", "Agent:       no heartbeat since the head started\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("node show lacks %q:\n%s", want, b.String())
		}
	}
	n.Agent = &api.AgentStatus{LastSeen: time.Now().Add(-3 * time.Second), Remote: "10.77.0.29:822", PrivilegedPort: true, Heartbeats: 31,
		SystemState: "running", UptimeSeconds: 62, Load1: 0.41, MemAvailableBytes: 1190 << 20, RootUsedBytes: 596 << 20, RootSizeBytes: 1470 << 20,
		OverlayGeneration: "3f0c52b1e0d4a8c9", AgentRSSBytes: 7 << 20,
		Workload: &api.Workload{Jobs: []api.WorkloadJob{{ID: "42", User: "alice", UID: 1000}},
			Containers: []api.WorkloadContainer{{ID: "9f3a", Name: "sim", Image: "rocky9", Job: "42", State: "running", UID: 1000}}, OmittedContainers: 2}}
	b.Reset()
	printNode(&b, n)
	for _, want := range []string{
		"Agent:       last heard 3s ago from 10.77.0.29:822 (privileged port), 31 heartbeats\n", "System:      running\n",
		"Uptime:      1m2s, load 0.41, 1190 MiB available\n", "Root RAM:    tmpfs, 596 MiB of RAM under a cap of 1470 MiB\n", "Overlay:     generation 3f0c52b1e0d4a8c9\n",
		"Agent RSS:   7.0 MiB\n", "Jobs:        1\n             job 42, user alice (1000)\n",
		"Containers:  3 (and 2 more)\n             9f3a sim, image rocky9, running, job 42, uid 1000\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("node show lacks %q:\n%s", want, b.String())
		}
	}
}

// TestPrintNodeCompressedRoot: node show splits a compressed root's RAM
// into the compressed image (lower) and what the node wrote (upper).
func TestPrintNodeCompressedRoot(t *testing.T) {
	n := api.NodeStatus{NodeSpec: api.NodeSpec{Name: "deb2"}, Status: api.Status{Boot: api.Boot{ID: 1, State: "booted", Report: &api.Report{
		State: "ready", Kernel: "6.1.0", Registration: api.Registration{
			Init: "systemd", RootMode: "compressed", RootUsedBytes: 12 << 20, RootSizeBytes: 1024 << 20, RootLowerBytes: 158 << 20,
		}}}}}
	n.Plan = &api.Plan{Root: api.Root{Mode: "compressed", Size: "1g"}, Sources: map[string]string{"root.mode": "node", "root.size": "config boot.root.size"}}
	n.Agent = &api.AgentStatus{LastSeen: time.Now(), RootUsedBytes: 20 << 20, RootSizeBytes: 1024 << 20, RootLowerBytes: 158 << 20}
	var b bytes.Buffer
	if err := printNode(&b, n); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Root mode:    compressed  (node)\n",
		"Root:         compressed, 170 MiB total: 158 MiB compressed image (lower) + 12 MiB written (upper, cap 1024 MiB)\n",
		"Root RAM:     compressed, 178 MiB total: 158 MiB compressed image (lower) + 20 MiB written (upper, cap 1024 MiB)\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("node show lacks %q:\n%s", want, b.String())
		}
	}
}
