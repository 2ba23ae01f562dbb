package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"25G": 25e9, "10Gbit": 10e9, "10Gbit/s": 10e9, "1e9": 1e9, "100M": 100e6, "400k": 400e3, "1T": 1e12} {
		got, err := parseRate(in)
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1G", "0"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q): no error", in)
		}
	}
}

// TestBenchStormFlags: bad flags are all reported at once, before any
// node is created.
func TestBenchStormFlags(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"bench", "storm", "--state-dir", t.TempDir(), "--head", "nowhere", "--first-ip", "10.0.0.300",
		"--until", "boot", "--link-rate", "fast", "--compare", "nginx", "--relay", "10.0.0.2"}, &out, &errb)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`--head "nowhere"`, "--first-ip", "--until", "--link-rate", `--compare "nginx"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	err = run(context.Background(), []string{"bench", "storm", "--state-dir", t.TempDir(), "--head", "10.0.0.1", "--first-ip", "10.0.1.1",
		"--nodes", "0", "--firmware", "coreboot", "--misbehave", "ddos"}, &out, &errb)
	for _, want := range []string{"nodes: 0", "relay or interface", "firmware", "misbehave"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestBenchDownloadFlags(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"bench", "download", "--target", "nourl", "--first-ip", "10.0.0.1"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "NAME=URL") {
		t.Errorf("error %v", err)
	}
}
