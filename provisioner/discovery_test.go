package provisioner_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
	"github.com/ramboot/ramboot/provisioner/config"
)

// TestDiscoveryAdopt runs `ramboot serve` with the discovery pool on a
// veth link and a real DHCP client (busybox udhcpc) in a second namespace
// as a machine the inventory does not know: its PXE firmware DHCP gets a
// discovery address and the iPXE binary; it is listed (ramboot node
// discovered) with its architecture, and its events (ramboot boot events)
// say what it got; a node may not be added inside the range; once adopted
// it gets its reserved address and leaves the list; and the pool is on
// disk after the daemon stops.
func TestDiscoveryAdopt(t *testing.T) {
	if runInNetns(t) {
		return
	}
	udhcpc := udhcpcPath(t)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	client := strings.Replace(os.Getenv("RAMBOOT_TEST_NETNS"), "rb-link", "rb-cl", 1)
	ip("netns", "add", client)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", client).Run() })
	ip("link", "set", "lo", "up")
	ip("link", "add", "eth1", "type", "veth", "peer", "name", "node1")
	ip("link", "set", "node1", "netns", client)
	ip("-n", client, "link", "set", "node1", "address", "52:54:00:d1:5c:01")
	ip("-n", client, "link", "set", "node1", "up")
	ip("addr", "add", "10.219.0.1/24", "dev", "eth1")
	ip("link", "set", "eth1", "up")

	dir := t.TempDir()
	tftpRoot := filepath.Join(dir, "ipxe")
	if err := os.MkdirAll(tftpRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"undionly.kpxe", "snponly.efi"} {
		if err := os.WriteFile(filepath.Join(tftpRoot, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	agent := filepath.Join(dir, "ramboot-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	cfg, err := config.Parse("discovery.yaml", []byte(strings.Join([]string{
		"interface: eth1",
		"state_dir: " + stateDir,
		"dhcp: {detect_rivals: false, discovery: {enabled: true, range: 10.219.0.200-10.219.0.209}}",
		"ra: {enabled: false}",
		"tftp: {root: " + tftpRoot + "}",
		"http: {port: 8080}",
		"agent: {binary: " + agent + "}",
		"sftp: {enabled: false}",
	}, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	head, d, stop := startDaemon(t, cfg)
	c := apiclient.New(head.Socket)
	const mac = "52:54:00:d1:5c:01"

	// The machine's PXE firmware (BIOS): unknown, lent a discovery address.
	lease := runUDHCPC(t, udhcpc, client, dir, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000")
	if !strings.HasPrefix(lease["ip"], "10.219.0.20") || lease["boot_file"] != "undionly.kpxe" || lease["siaddr"] != "10.219.0.1" {
		t.Fatalf("unknown PXE client's lease: %v, want 10.219.0.20x with undionly.kpxe from 10.219.0.1", lease)
	}
	lent := lease["ip"]
	ms, err := c.ListDiscovered(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].MAC != mac || ms[0].Arch != "bios" || ms[0].Stage != "firmware" || ms[0].IP != lent ||
		!strings.HasPrefix(ms[0].VendorClass, "PXEClient:Arch:00000") || ms[0].Subnet != "10.219.0.0/24" {
		t.Fatalf("discovered: %+v", ms)
	}
	evs, err := c.BootEvents(ctx, strings.ToUpper(mac))
	if err != nil {
		t.Fatal(err)
	}
	var replies []string
	for _, e := range evs.Events {
		if e.Protocol == "dhcp" && e.Discovery {
			replies = append(replies, e.Request+"/"+e.Reply)
		}
	}
	if evs.Client != mac || evs.Node != "" || strings.Join(replies, " ") != "discover/offer request/ack" {
		t.Errorf("boot events of %s: node %q, discovery replies %v: %+v", mac, evs.Node, replies, evs.Events)
	}

	// The discovery script a lent address's iPXE gets.
	resp, err := http.Get(head.BaseURL + "/boot/discovery")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(script), "#!ipxe\n") || !strings.Contains(string(script), "chain --replace --autofree ${filename}") {
		t.Errorf("discovery script: %d %q", resp.StatusCode, script)
	}

	// A node's address may not lie in the range.
	_, err = c.AddNodes(ctx, api.AddNodesRequest{Names: "other", MAC: "52:54:00:d1:5c:99", IP: "10.219.0.205"})
	if !errors.Is(err, apiclient.ErrInvalid) || !strings.Contains(err.Error(), "discovery range 10.219.0.200-10.219.0.209") {
		t.Errorf("node inside the discovery range: %v", err)
	}

	// Adopted: the next DHCP gets the reserved address; the list is empty.
	n, err := c.Adopt(ctx, api.AdoptRequest{ID: mac, Name: "n1", IP: "10.219.0.11"})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Interfaces) != 1 || n.Interfaces[0].MAC != mac || n.Interfaces[0].IP != "10.219.0.11" {
		t.Fatalf("adopted node: %+v", n)
	}
	if _, err := c.Adopt(ctx, api.AdoptRequest{ID: mac, Name: "n2", IP: "10.219.0.12"}); !errors.Is(err, apiclient.ErrNotFound) {
		t.Errorf("adopting it again: %v, want not found", err)
	}
	lease = runUDHCPC(t, udhcpc, client, dir, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000")
	if lease["ip"] != "10.219.0.11" || lease["boot_file"] != "undionly.kpxe" {
		t.Fatalf("adopted machine's lease: %v, want 10.219.0.11 with undionly.kpxe", lease)
	}
	if ms, err := c.ListDiscovered(ctx); err != nil || len(ms) != 0 {
		t.Errorf("discovered after adoption: %+v, %v", ms, err)
	}
	if evs, err := c.BootEvents(ctx, mac); err != nil || evs.Node != "n1" {
		t.Errorf("boot events after adoption: node %q, %v", evs.Node, err)
	}

	// An unknown operating system (no PXE options) is lent an address
	// without a boot file; the pool is written to the state directory.
	ip("-n", client, "link", "set", "node1", "address", "52:54:00:d1:5c:02")
	lease = runUDHCPC(t, udhcpc, client, dir)
	if !strings.HasPrefix(lease["ip"], "10.219.0.20") || lease["boot_file"] != "" {
		t.Errorf("unknown OS's lease: %v", lease)
	}

	// Reloaded (SIGHUP's path): a new range and lease time apply to the
	// next unknown machine without a restart, and the node check follows
	// the range; switching the pool on or off needs a restart.
	moved := cfg
	moved.DHCP.Discovery.Range = "10.219.0.220-10.219.0.229"
	moved.DHCP.Discovery.LeaseTime = config.Duration(2 * time.Minute)
	moved.DHCP.Discovery.MaxMachines = 100
	restart, err := d.Reload(moved)
	if err != nil || len(restart) != 0 {
		t.Fatalf("reload of dhcp.discovery: restart %v, %v; want applied", restart, err)
	}
	ip("-n", client, "link", "set", "node1", "address", "52:54:00:d1:5c:03")
	lease = runUDHCPC(t, udhcpc, client, dir, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000")
	if !strings.HasPrefix(lease["ip"], "10.219.0.22") || lease["lease"] != "120" {
		t.Errorf("unknown machine's lease after the reload: %v, want 10.219.0.22x for 120 s", lease)
	}
	if _, err := c.AddNodes(ctx, api.AddNodesRequest{Names: "other", MAC: "52:54:00:d1:5c:99", IP: "10.219.0.225"}); !errors.Is(err, apiclient.ErrInvalid) {
		t.Errorf("node inside the reloaded discovery range: %v", err)
	}
	if _, err := c.AddNodes(ctx, api.AddNodesRequest{Names: "other", MAC: "52:54:00:d1:5c:99", IP: "10.219.0.205"}); err != nil {
		t.Errorf("node inside the old discovery range after the reload: %v", err)
	}
	off := moved
	off.DHCP.Discovery.Enabled = false
	if restart, err := d.Reload(off); err != nil || strings.Join(restart, " ") != "dhcp.discovery.enabled" {
		t.Errorf("reload turning the pool off: restart %v, %v; want dhcp.discovery.enabled", restart, err)
	}
	stop()
	b, err := os.ReadFile(filepath.Join(stateDir, provisioner.DiscoveryFile))
	if err != nil || !strings.Contains(string(b), "52:54:00:d1:5c:02") || strings.Contains(string(b), mac) {
		t.Errorf("%s after stop (%v): want the unknown OS, not the adopted node:\n%s", provisioner.DiscoveryFile, err, b)
	}
}

// udhcpcPath returns busybox's udhcpc as a command line, skipping without
// busybox.
func udhcpcPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"busybox", "/bin/busybox"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Skip("needs busybox (udhcpc)")
	return ""
}

// runUDHCPC gets one lease on node1 in namespace ns with busybox udhcpc
// and its extra arguments, and returns what its script was given (ip,
// boot_file, siaddr, ...).
func runUDHCPC(t *testing.T, busybox, ns, dir string, args ...string) map[string]string {
	t.Helper()
	out := filepath.Join(dir, "lease.env")
	os.Remove(out)
	script := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > "+out+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, busybox, "udhcpc", "-i", "node1", "-f", "-q", "-n",
		"-t", "5", "-T", "1", "-s", script}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc %v: %v: %s", args, err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatalf("udhcpc got no lease: %v", err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	t.Logf("udhcpc %v: ip %s boot_file %q siaddr %s", args, env["ip"], env["boot_file"], env["siaddr"])
	return env
}
