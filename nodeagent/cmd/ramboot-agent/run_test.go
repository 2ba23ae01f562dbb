package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/daemon"
	"github.com/ramboot/ramboot/nodeagent/kmod/kmodtest"
)

func TestRunCommands(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		stdout  string // substring
		stderr  string // substring
		wantErr string // substring; "" = success
	}{
		{name: "help", args: []string{"--help"}, stdout: "ramboot-agent init [--root DIR]"},
		{name: "help-word", args: []string{"help"}, stdout: "Usage:"},
		{name: "version", args: []string{"version"}, stdout: "ramboot-agent devel go"},
		{name: "none", args: nil, stderr: "Usage:", wantErr: "no command"},
		{name: "unknown", args: []string{"frobnicate"}, stderr: "Usage:", wantErr: `unknown command "frobnicate"`},
		{name: "init-not-pid1", args: []string{"init"}, wantErr: "not PID 1"},
		{name: "init-help", args: []string{"init", "--help"}, stderr: "-dry-run"},
		{name: "init-bad-flag", args: []string{"init", "--bogus"}, wantErr: "bogus"},
		{name: "init-extra-arg", args: []string{"init", "--dry-run", "x"}, wantErr: `unexpected argument "x"`},
		{name: "help-lists-daemon", args: []string{"help"}, stdout: "ramboot-agent daemon [--root DIR] [--socket PATH]"},
		{name: "status-no-daemon", args: []string{"status", "--socket", "/nonexistent/agent.sock"}, wantErr: "is `ramboot-agent daemon` running?"},
		{name: "status-bad-output", args: []string{"status", "-o", "yaml"}, wantErr: `-o "yaml": want table or json`},
		{name: "daemon-bad-flag", args: []string{"daemon", "--bogus"}, wantErr: "bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"ramboot-agent"}, tt.args...), &stdout, &stderr)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("run(%q) error = %v, want %q", tt.args, err, tt.wantErr)
			}
			if !strings.Contains(stdout.String(), tt.stdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tt.stderr)
			}
		})
	}
}

func TestRunInitDryRun(t *testing.T) {
	root := t.TempDir()
	cfg := overlay.Config{
		Node: "n007", HeadURL: "http://10.77.0.1", Token: "t",
		Interface: overlay.Interface{MAC: "52:54:00:00:00:07", Address: "10.77.0.17/24"},
		Modules:   []string{"virtio-net"},
	}
	js, _ := json.Marshal(cfg)
	files := map[string]string{
		overlay.ConfigPath:    string(js),
		"proc/cmdline":        "console=ttyS0\n",
		"proc/meminfo":        "MemTotal: 1048576 kB\n",
		"lib/systemd/systemd": "\x7fELF",
	}
	for p, data := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(data), 0o755)
	}
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755)
	os.Symlink("/lib/systemd/systemd", filepath.Join(root, "sbin", "init"))
	mods := filepath.Join(root, "lib", "modules", "6.1.0-x", "kernel")
	kmodtest.Module(t, mods, "virtio_ring")
	kmodtest.Module(t, mods, "virtio_net", "virtio_ring")

	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"ramboot-agent", "init", "--root", root, "--release", "6.1.0-x", "--dry-run"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\nstderr: %s", err, stderr.String())
	}
	for _, want := range []string{
		"ramboot-agent: node n007, image (none)\n",
		"ramboot-agent: would load modules: virtio_ring virtio_net\n",
		"ramboot-agent: would move the root into a tmpfs of 512 MiB (root.size 50%)\n",
		"ramboot-agent: would set the clock from http://10.77.0.1/api/v1/time\n",
		"ramboot-agent: would hand PID 1 to /sbin/init (systemd)\n",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc", "hostname")); err == nil {
		t.Error("dry run wrote etc/hostname")
	}

	// A broken node is reported as an error.
	os.Remove(filepath.Join(root, overlay.ConfigPath))
	stdout.Reset()
	err = run(context.Background(), []string{"ramboot-agent", "init", "--root", root, "--dry-run"}, &stdout, &stderr)
	if err == nil || !strings.Contains(stdout.String(), "ramboot-agent: config failed: read node config") {
		t.Errorf("dry run without config: %v\n%s", err, stdout.String())
	}
}

func TestPrintStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := daemon.Status{
		Node: "n001", Head: "http://10.77.0.1", Image: overlay.ImageRef{Name: "debian12", Digest: "sha256:0123456789abcdef0123"},
		AgentVersion: "ramboot-agent v1", Registered: true, Connected: true, LastContact: now.Add(-3 * time.Second),
		Heartbeats: 12, IntervalSeconds: 15, DownAfterSeconds: 60, PrivilegedPort: true, OverlayGeneration: "g1",
		SystemState: "running", UptimeSeconds: 95, MemTotalBytes: 2 << 30, MemAvailableBytes: 1 << 30,
		Root: overlay.RootUsage{Mode: "tmpfs", SizeBytes: 1 << 30, UsedBytes: 600 << 20},
	}
	st.Boot.State, st.Boot.Init, st.Boot.Modules = overlay.StateReady, "systemd", []string{"e1000"}
	st.Boot.Boot = overlay.BootTimes{InitSeconds: 6.2, HandoverSeconds: 9.7, ReadySeconds: 31.4}
	var b bytes.Buffer
	if err := printStatus(&b, st, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Node:         n001\n",
		"Image:        debian12 sha256:0123456789ab\n",
		"Head:         http://10.77.0.1: connected, last answer 3s ago\n",
		"Heartbeat:    every 15s, down after 1m0s; 12 accepted\n",
		"Source port:  privileged\n",
		"PID 1:        systemd\n",
		"System:       running\n",
		"Timings:      kernel to init 6.2s, init to handover 3.5s, ready at 31.4s (uptime)\n",
		"Root:         tmpfs, 600 MiB used of 1024 MiB\n",
		"Modules:      e1000\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	st.Connected, st.Failures, st.LastError = false, 4, "connection refused"
	b.Reset()
	printStatus(&b, st, now)
	if !strings.Contains(b.String(), "unreachable since 3s ago (4 failures): connection refused") {
		t.Errorf("status of a node that lost its head:\n%s", b.String())
	}
	st.Root = overlay.RootUsage{Mode: "compressed", SizeBytes: 256 << 20, UsedBytes: 15 << 20, LowerBytes: 158 << 20}
	b.Reset()
	printStatus(&b, st, now)
	if want := "Root:         compressed, 173 MiB: 158 MiB compressed image + 15 MiB written of 256 MiB\n"; !strings.Contains(b.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, b.String())
	}
}
