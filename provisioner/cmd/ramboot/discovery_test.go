package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
)

// TestBootEventsAndDiscoveryCommands runs `ramboot boot events`, `node
// discovered` and `node adopt` against a daemon whose DHCP server is off
// (the DHCP side, with a real client, is provisioner's TestDiscoveryAdopt):
// a node's events name it, an unknown client's say it is not in the
// inventory, bad arguments are usage errors or refused, and the discovery
// commands say discovery is off.
func TestBootEventsAndDiscoveryCommands(t *testing.T) {
	dir := t.TempDir()
	daemon(t, dir, "")
	rb(t, dir, "node", "add", "n1", "--mac", "52:54:00:77:00:01", "--ip", "127.0.0.11").ok(t)

	out := rb(t, dir, "boot", "events", "--mac", "52-54-00-77-00-01").ok(t)
	if !strings.Contains(out, "52:54:00:77:00:01 (n1)") || !strings.Contains(out, "no events") {
		t.Errorf("boot events of a node: %q", out)
	}
	out = rb(t, dir, "boot", "events", "--mac", "52:54:00:99:00:01", "-o", "json").ok(t)
	var evs api.BootEvents
	if err := json.Unmarshal([]byte(out), &evs); err != nil || evs.Client != "52:54:00:99:00:01" || evs.Node != "" || evs.Events == nil {
		t.Errorf("boot events of an unknown MAC: %v %q", err, out)
	}
	out = rb(t, dir, "boot", "events", "--client-id", "FF:00:00:00:01:00:02:00:00:02:C9:00:00:02:C9:03:00:1A:2B:3C").ok(t)
	if !strings.Contains(out, "ff:00:00:00:01:00:02:00:00:02:c9:00:00:02:c9:03:00:1a:2b:3c (not in the inventory)") {
		t.Errorf("boot events of a client id: %q", out)
	}
	rb(t, dir, "boot", "events").fails(t, exitUsage, "give one of --mac and --client-id")
	rb(t, dir, "boot", "events", "--mac", "52:54:00:77:00:01", "--client-id", "ff:01").fails(t, exitUsage, "give one of --mac and --client-id")
	rb(t, dir, "boot", "events", "--mac", "not-a-mac").fails(t, exitInvalid, `"not-a-mac"`)

	rb(t, dir, "node", "discovered").fails(t, exitNotFound, "discovery is off (dhcp.discovery.enabled")
	rb(t, dir, "node", "discovered", "--forget", "52:54:00:99:00:01").fails(t, exitNotFound, "discovery is off")
	rb(t, dir, "node", "adopt", "52:54:00:99:00:01", "n2", "--ip", "127.0.0.12").fails(t, exitNotFound, "discovery is off")
	rb(t, dir, "node", "adopt", "52:54:00:99:00:01", "n2").fails(t, exitUsage, "ip")
	rb(t, dir, "node", "adopt", "52:54:00:99:00:01").fails(t, exitUsage)
}

// TestPrintBootEvents: the table says what each packet got or why not,
// with proxy replies, discovery addresses and relays marked, and TFTP
// failures apart from DHCP's ignored packets.
func TestPrintBootEvents(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.Local)
	var b bytes.Buffer
	err := printBootEvents(&b, api.BootEvents{Client: "52:54:00:99:00:01", Events: []api.BootEvent{
		{Time: t0, Protocol: "dhcp", Port: 67, Request: "discover", Stage: "firmware", Arch: "efi-x64",
			Ignored: "unknown MAC", Reason: "unknown_mac", Relay: "10.2.0.1"},
		{Time: t0, Protocol: "dhcp", Port: 4011, Request: "request", Stage: "firmware", Arch: "efi-x64",
			Reply: "ack", Proxy: true, BootFile: "snponly.efi"},
		{Time: t0, Protocol: "dhcp", Port: 67, Request: "discover", Stage: "os", Reply: "offer", IP: "10.0.0.200", Discovery: true},
		{Time: t0, Protocol: "tftp", Port: 69, Request: "snponly.efi", IP: "10.0.0.200", Ignored: "aborted by client",
			Detail: "0 bytes in 1ms, blksize 1468, 0 retransmits"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{
		"52:54:00:99:00:01 (not in the inventory)",
		"TIME  PROTO  PORT  REQUEST  STAGE  ARCH  REPLY  IP  DETAIL",
		"03:04:05.006  dhcp  67  discover  firmware  efi-x64  -  -  ignored: unknown MAC; via relay 10.2.0.1",
		"03:04:05.006  dhcp  4011  request  firmware  efi-x64  ack (proxy)  -  boot snponly.efi",
		"03:04:05.006  dhcp  67  discover  os  -  offer  10.0.0.200  discovery address",
		"03:04:05.006  tftp  69  snponly.efi  -  -  -  10.0.0.200  failed: aborted by client; 0 bytes in 1ms, blksize 1468, 0 retransmits",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	for i, l := range lines {
		if got := strings.Join(strings.Fields(l), "  "); got != strings.Join(strings.Fields(want[i]), "  ") {
			t.Errorf("line %d: %q\nwant     %q", i, got, want[i])
		}
	}
}
