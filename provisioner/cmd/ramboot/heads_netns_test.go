package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// netnsLink is a link made of network namespaces the test creates: a
// switch (a bridge, with an address for services on it) and hosts, each
// with eth0 plugged into the bridge. Everything is deleted when the test
// ends.
type netnsLink struct {
	t      *testing.T
	prefix string
}

func newNetnsLink(t *testing.T, bridgeAddr string) *netnsLink {
	t.Helper()
	l := &netnsLink{t: t, prefix: fmt.Sprintf("rbh%d", os.Getpid()%100000)}
	sw := l.ns("sw")
	l.ip("netns", "add", sw)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", sw).Run() })
	l.ip("-n", sw, "link", "set", "lo", "up")
	l.ip("-n", sw, "link", "add", "br0", "type", "bridge")
	l.ip("-n", sw, "addr", "add", bridgeAddr, "dev", "br0")
	l.ip("-n", sw, "link", "set", "br0", "up")
	return l
}

func (l *netnsLink) ns(name string) string { return l.prefix + "-" + name }

func (l *netnsLink) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// host adds namespace name with eth0 on the bridge, with mac and, when
// not empty, addr (CIDR).
func (l *netnsLink) host(name, mac, addr string) string {
	l.t.Helper()
	ns, sw := l.ns(name), l.ns("sw")
	l.ip("netns", "add", ns)
	l.t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	l.ip("-n", sw, "link", "add", "v"+name, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.ip("-n", sw, "link", "set", "v"+name, "master", "br0", "up")
	l.ip("-n", ns, "link", "set", "lo", "up")
	l.ip("-n", ns, "link", "set", "eth0", "address", mac, "up")
	if addr != "" {
		l.ip("-n", ns, "addr", "add", addr, "dev", "eth0")
	}
	return ns
}

// headInNetns runs `ramboot serve` in namespace ns on state directory dir
// with conf, waits until its admin socket answers, and returns its pid;
// it is killed by pid when the test ends.
func headInNetns(t *testing.T, ns, dir, conf string) int {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "ramboot.yaml")
	if err := os.WriteFile(cfg, []byte(conf+"agent: {binary: "+filepath.Join(filepath.Dir(binary), "ramboot-agent")+"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "serve.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, binary, "serve", "--config", cfg, "--state-dir", dir, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	for deadline := time.Now().Add(30 * time.Second); rb(t, dir, "status").code != 0; {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("ramboot serve in %s exited:\n%s", ns, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("ramboot serve in %s not answering after 30s:\n%s", ns, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd.Process.Pid
}

// dhcpLease runs busybox udhcpc as a PXE client in ns and returns the
// address it was given and the server that gave it.
func dhcpLease(t *testing.T, ns string) (ip, server string) {
	t.Helper()
	ip, server, err := leaseIn(ns, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ip, server
}

// leaseIn is dhcpLease without the test, for goroutines; dir is scratch.
func leaseIn(ns, dir string) (ip, server string, err error) {
	script := filepath.Join(dir, "lease.sh")
	out := filepath.Join(dir, "lease")
	os.Remove(out)
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $serverid\" > "+out+"\nexit 0\n"), 0o755); err != nil {
		return "", "", err
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-B", "-t", "5", "-T", "1",
		"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", "-s", script)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("udhcpc in %s: %v\n%s", ns, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", "", err
	}
	ip, server, _ = strings.Cut(strings.TrimSpace(string(b)), " ")
	return ip, server, nil
}

// TestTwoHeadsOneLink: two `ramboot serve` heads in namespaces on one
// bridge share one etcd member (on the bridge too). A PXE client (busybox
// udhcpc) gets its reserved address from whichever head answers first;
// both offered, neither counts the other as a rival DHCP server. The head
// that answered is killed: the next DHCP exchange is served by the other,
// which also serves the node's script, with an image built on it.
func TestTwoHeadsOneLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, p := range []string{"ip", "busybox", "curl"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	if etcdtest.Binary() == "" {
		t.Skip("no etcd (Debian's etcd-server; `make deps` installs it)")
	}
	l := newNetnsLink(t, "10.9.0.254/24")
	c := etcdtest.Start(t, etcdtest.Options{Members: 1, Netns: []string{l.ns("sw")}, IPs: []string{"10.9.0.254"}})
	nsHead := []string{l.host("h1", "52:54:00:99:01:01", "10.9.0.1/24"), l.host("h2", "52:54:00:99:01:02", "10.9.0.2/24")}
	nsNode := l.host("n1", "52:54:00:99:00:01", "")

	conf := `interface: eth0
tftp: {enabled: false}
ra: {enabled: false}
http: {port: 8080}
sftp: {enabled: false}
boot: {default_image: default}
state: {backend: etcd, etcd: {endpoints: [` + c.Endpoints()[0] + `], prefix: /link/}}
`
	dirs := []string{t.TempDir(), t.TempDir()}
	pids := []int{headInNetns(t, nsHead[0], dirs[0], conf), headInNetns(t, nsHead[1], dirs[1], conf)}
	rb(t, dirs[0], "node", "add", "n1", "--mac", "52:54:00:99:00:01", "--ip", "10.9.0.50").ok(t)
	// Both heads registered in etcd before the first DISCOVER (etcd's
	// JSON gateway, asked from the switch's namespace).
	query := `{"key":"` + base64.StdEncoding.EncodeToString([]byte("/link/heads/")) + `","range_end":"` +
		base64.StdEncoding.EncodeToString([]byte("/link/heads0")) + `","count_only":true}`
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ := exec.Command("ip", "netns", "exec", l.ns("sw"), "curl", "-fsS", "-m", "2", "-d", query, c.Endpoints()[0]+"/v3/kv/range").Output()
		if strings.Contains(string(out), `"count":"2"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("two heads not registered in etcd after 10s: %s", out)
		}
	}

	ip, server := dhcpLease(t, nsNode)
	if ip != "10.9.0.50" || (server != "10.9.0.1" && server != "10.9.0.2") {
		t.Fatalf("lease %s from %s, want 10.9.0.50 from a head", ip, server)
	}
	first := 0
	if server == "10.9.0.2" {
		first = 1
	}
	other := 1 - first
	t.Logf("first lease from head %d (%s)", first+1, server)
	// Both offered; the one not chosen saw the REQUEST name the other and
	// stayed quiet; neither took the other for a rival.
	metrics := func(i int) string {
		out, err := exec.Command("ip", "netns", "exec", nsNode, "curl", "-fsS", "-m", "5", fmt.Sprintf("http://10.9.0.%d:8080/metrics", i+1)).Output()
		if err != nil {
			t.Fatalf("metrics of head %d: %v", i+1, err)
		}
		return string(out)
	}
	l.ip("-n", nsNode, "addr", "add", "10.9.0.50/24", "dev", "eth0")
	for i := range 2 {
		m := metrics(i)
		if !strings.Contains(m, "\nramboot_heads 2\n") {
			t.Errorf("head %d: not two heads registered:\n%s", i+1, grep(m, "ramboot_heads"))
		}
		if !regexp.MustCompile(`ramboot_dhcp_replies_total\{[^}]*type="offer"[^}]*\} 1\n`).MatchString(m) {
			t.Errorf("head %d made no offer:\n%s", i+1, grep(m, "ramboot_dhcp_replies_total"))
		}
		if strings.Contains(m, "ramboot_dhcp_rival_offers_total{") {
			t.Errorf("head %d counted its peer as a rival:\n%s", i+1, grep(m, "rival"))
		}
	}
	if m := metrics(other); !regexp.MustCompile(`ramboot_dhcp_ignored_total\{[^}]*reason="other_server"[^}]*\} 1\n`).MatchString(m) {
		t.Errorf("head %d did not ignore the REQUEST for its peer:\n%s", other+1, grep(m, "ramboot_dhcp_ignored_total"))
	}

	// The head that answered dies; the node's next exchange and its
	// script come from the other.
	if err := syscall.Kill(pids[first], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l.ip("-n", nsNode, "addr", "flush", "dev", "eth0")
	ip, server = dhcpLease(t, nsNode)
	if ip != "10.9.0.50" || server != fmt.Sprintf("10.9.0.%d", other+1) {
		t.Fatalf("after head %d died: lease %s from %s", first+1, ip, server)
	}
	if _, _, err := cliErr(t, dirs[other], "image", "build", rootTree(t), "--name", "default"); err != nil {
		t.Fatal(err)
	}
	l.ip("-n", nsNode, "addr", "add", "10.9.0.50/24", "dev", "eth0")
	out, err := exec.Command("ip", "netns", "exec", nsNode, "curl", "-fsS", "-m", "10",
		fmt.Sprintf("http://10.9.0.%d:8080/boot/ipxe?mac=52:54:00:99:00:01", other+1)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/boot/image/") {
		t.Fatalf("script from the surviving head: %v\n%s", err, out)
	}
}

// grep returns the lines of s that contain sub.
func grep(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// nodeBoot is what a simulated node does through the PXE steps the heads
// serve: DHCP (busybox udhcpc), the iPXE script from the head that
// answered, the kernel and the overlay (which spends the script's nonce).
// A step that fails starts again from DHCP, as a node does when its iPXE
// retries run out and it reboots. It returns the head that served it.
// mid, if set, is called once, between the script and the kernel.
func nodeBoot(ns, mac, ip, dir string, attempts int, mid func()) (string, error) {
	var last error
	for a := range attempts {
		if a > 0 {
			restarts.Add(1)
			restartsMu.Lock()
			restartWhy = append(restartWhy, last.Error())
			restartsMu.Unlock()
		}
		_ = exec.Command("ip", "-n", ns, "addr", "flush", "dev", "eth0").Run()
		got, server, err := leaseIn(ns, dir)
		if err != nil {
			last = err
			continue
		}
		if got != ip {
			return "", fmt.Errorf("leased %s, want %s", got, ip)
		}
		if out, err := exec.Command("ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0").CombinedOutput(); err != nil {
			return "", fmt.Errorf("ip addr add: %v: %s", err, out)
		}
		curl := func(url string) (string, error) {
			out, err := exec.Command("ip", "netns", "exec", ns, "curl", "-fsS", "-m", "20", url).Output()
			if err != nil {
				return "", fmt.Errorf("GET %s: %v", url, err)
			}
			return string(out), nil
		}
		base := "http://" + server + ":8080"
		script, err := curl(base + "/boot/ipxe?mac=" + mac)
		if err != nil {
			last = err
			continue
		}
		kernel := regexp.MustCompile(`http://\S+/vmlinuz`).FindString(script)
		overlay := regexp.MustCompile(`http://\S+/overlay\.cpio\.zst`).FindString(script)
		if kernel == "" || overlay == "" {
			return "", fmt.Errorf("script without kernel or overlay:\n%s", script)
		}
		if mid != nil {
			mid()
			mid = nil
		}
		if _, err := curl(kernel); err != nil {
			last = err
			continue
		}
		if _, err := curl(overlay); err != nil {
			last = err
			continue
		}
		return server, nil
	}
	return "", fmt.Errorf("not booted after %d attempts: %w", attempts, last)
}

// restarts counts the boots nodeBoot started again from DHCP.
var (
	restarts   atomic.Int64
	restartsMu sync.Mutex
	restartWhy []string
)

// TestThreeHeadsKillsMidBoot is the scale-out test at a CI size: three
// heads and a three-member etcd cluster in namespaces on one bridge; nine
// simulated nodes boot through the PXE steps (DHCP, script, kernel,
// overlay), four before and five during the kills: one head and one etcd
// member are killed (SIGKILL) once the second wave has its scripts and
// before it fetches kernels and overlays. Every node
// boots (a node whose head died starts again from DHCP, as it would), and
// the inventory is intact on the surviving heads: every node, each with
// the script and overlay steps of its last boot. The image was built on
// one head only: the others fetched it from it on demand.
func TestThreeHeadsKillsMidBoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, p := range []string{"ip", "busybox", "curl"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("needs %s", p)
		}
	}
	if etcdtest.Binary() == "" {
		t.Skip("no etcd (Debian's etcd-server; `make deps` installs it)")
	}
	start := time.Now()
	l := newNetnsLink(t, "10.9.0.254/24")
	var ens, eips []string
	for i := range 3 {
		ens = append(ens, l.host(fmt.Sprintf("e%d", i+1), fmt.Sprintf("52:54:00:99:02:%02x", i+1), fmt.Sprintf("10.9.0.%d/24", 241+i)))
		eips = append(eips, fmt.Sprintf("10.9.0.%d", 241+i))
	}
	c := etcdtest.Start(t, etcdtest.Options{Members: 3, Netns: ens, IPs: eips})
	conf := `interface: eth0
tftp: {enabled: false}
ra: {enabled: false}
http: {port: 8080}
sftp: {enabled: false}
boot: {default_image: default}
state: {backend: etcd, etcd: {endpoints: [` + strings.Join(c.Endpoints(), ", ") + `], prefix: /storm/}}
`
	var dirs []string
	var pids []int
	for i := range 3 {
		ns := l.host(fmt.Sprintf("h%d", i+1), fmt.Sprintf("52:54:00:99:01:%02x", i+1), fmt.Sprintf("10.9.0.%d/24", i+1))
		dirs = append(dirs, t.TempDir())
		pids = append(pids, headInNetns(t, ns, dirs[i], conf))
	}
	if _, _, err := cliErr(t, dirs[0], "image", "build", rootTree(t), "--name", "default"); err != nil {
		t.Fatal(err)
	}
	const nodes = 9
	rb(t, dirs[1], "node", "add", "n[1-9]", "--mac", "52:54:00:99:00:01+", "--ip", "10.9.0.51+").ok(t)
	type node struct{ ns, mac, ip string }
	var ns []node
	for i := range nodes {
		mac, ip := fmt.Sprintf("52:54:00:99:00:%02x", i+1), fmt.Sprintf("10.9.0.%d", 51+i)
		ns = append(ns, node{l.host(fmt.Sprintf("n%d", i+1), mac, ""), mac, ip})
	}
	served := make([]string, nodes)
	errs := make([]error, nodes)
	boot := func(from, to int, mid func()) *sync.WaitGroup {
		var wg sync.WaitGroup
		for i := from; i < to; i++ {
			dir := t.TempDir()
			wg.Go(func() { served[i], errs[i] = nodeBoot(ns[i].ns, ns[i].mac, ns[i].ip, dir, 6, mid) })
		}
		return &wg
	}
	boot(0, 4, nil).Wait()
	// The second wave: every node has its script, then the kills, then
	// the rest of the boots.
	var scripted sync.WaitGroup
	scripted.Add(nodes - 4)
	killed := make(chan struct{})
	wave := boot(4, nodes, func() { scripted.Done(); <-killed })
	scripted.Wait()
	if err := syscall.Kill(pids[2], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	t.Logf("killed head 3 and etcd member m0 at %s, the second wave mid-boot", time.Since(start).Round(time.Millisecond))
	close(killed)
	wave.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node n%d lost: %v", i+1, err)
		}
	}
	t.Logf("heads that served the nodes: %v; boots started again from DHCP: %d %q", served, restarts.Load(), restartWhy)
	// A boot starts again only because its head died: a live head refused
	// nothing (a late offer of a peer once revoked the script's nonce).
	for _, why := range restartWhy {
		if !strings.Contains(why, "10.9.0.3:") {
			t.Errorf("a boot failed on a live head: %s", why)
		}
	}

	// The inventory, as the surviving heads serve it: every node, with the
	// steps of its last boot. Boot events are written after the replies
	// (a reply never waits for the store), so they may land a moment
	// after the node's last download, later still while etcd elects a
	// new leader.
	missing := func(dir string) (string, error) {
		out := rb(t, dir, "node", "list", "-o", "json").ok(t)
		var list []struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return "", fmt.Errorf("node list: %v\n%s", err, out)
		}
		if len(list) != nodes {
			return "", fmt.Errorf("%d nodes in the inventory, want %d", len(list), nodes)
		}
		for _, n := range list {
			var show struct {
				Status struct {
					Timeline []struct {
						Step string `json:"step"`
					} `json:"timeline"`
				} `json:"status"`
			}
			out := rb(t, dir, "node", "show", n.Name, "-o", "json").ok(t)
			if err := json.Unmarshal([]byte(out), &show); err != nil {
				return "", fmt.Errorf("node show %s: %v", n.Name, err)
			}
			steps := map[string]bool{}
			for _, e := range show.Status.Timeline {
				steps[e.Step] = true
			}
			if !steps["script"] || !steps["kernel"] || !steps["overlay"] {
				return fmt.Sprintf("node %s: last boot's steps %v, want script, kernel and overlay", n.Name, show.Status.Timeline), nil
			}
		}
		return "", nil
	}
	for h, dir := range dirs[:2] {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			what, err := missing(dir)
			if err != nil {
				t.Fatalf("head %d: %v", h+1, err)
			}
			if what == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("head %d after 20s: %s", h+1, what)
				break
			}
		}
	}
	if t.Failed() {
		for i, dir := range dirs {
			b, _ := os.ReadFile(filepath.Join(dir, "serve.log"))
			t.Logf("head %d's refusals, warnings and errors:\n%s", i+1, grep(string(b), "refused")+"\n"+grep(string(b), "level=WARN")+"\n"+grep(string(b), "level=ERROR")+"\n"+grep(string(b), "etcd")+"\n"+grep(string(b), "not a node")+"\n"+grep(string(b), "route=kernel"))
			if i < 2 {
				out, _ := exec.Command("ip", "netns", "exec", ns[0].ns, "curl", "-fsS", "-m", "5", fmt.Sprintf("http://10.9.0.%d:8080/metrics", i+1)).Output()
				t.Logf("head %d's state metrics:\n%s", i+1, grep(string(out), "ramboot_state_"))
			}
		}
	}
	t.Logf("whole test: %s", time.Since(start).Round(time.Millisecond))
}
