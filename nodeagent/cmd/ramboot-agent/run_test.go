package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/images/overlay"
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
		overlay.ConfigPath: string(js),
		"proc/cmdline":     "console=ttyS0 ramboot.exec=/sbin/init\n",
	}
	for p, data := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(data), 0o644)
	}
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
		"ramboot-agent: would report to http://10.77.0.1/api/v1/nodes/n007/report: ",
		"ramboot-agent: would exec /sbin/init\n",
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
