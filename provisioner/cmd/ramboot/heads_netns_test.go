package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	dir := t.TempDir()
	script := filepath.Join(dir, "lease.sh")
	out := filepath.Join(dir, "lease")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $serverid\" > "+out+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-B", "-t", "5", "-T", "1",
		"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", "-s", script)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("udhcpc in %s: %v\n%s", ns, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	ip, server, _ = strings.Cut(strings.TrimSpace(string(b)), " ")
	return ip, server
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
		if !strings.Contains(m, `ramboot_dhcp_replies_total{type="offer"} 1`) {
			t.Errorf("head %d made no offer:\n%s", i+1, grep(m, "ramboot_dhcp_replies_total"))
		}
		if strings.Contains(m, "ramboot_dhcp_rival_offers_total{") {
			t.Errorf("head %d counted its peer as a rival:\n%s", i+1, grep(m, "rival"))
		}
	}
	if m := metrics(other); !strings.Contains(m, `reason="other_server"} 1`) {
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
