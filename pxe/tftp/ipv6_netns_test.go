package tftp_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/pxe/internal/netnstest"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// ipv6Lab is a server namespace and a client namespace joined by a veth
// pair with global addresses fd00:233::1 and ::2 and their link-local
// ones, duplicate address detection off so they are usable at once.
type ipv6Lab struct {
	srv, cli         netnstest.NS
	global, linkLoc  netip.Addr // the server's
	serverIf, client string
}

func newIPv6Lab(t *testing.T) ipv6Lab {
	t.Helper()
	l := ipv6Lab{srv: netnstest.New(t, "rb-tftp6-s"), cli: netnstest.New(t, "rb-tftp6-c"), serverIf: "s0", client: "c0"}
	for _, ns := range []netnstest.NS{l.srv, l.cli} {
		for _, k := range []string{"all", "default"} {
			if out, err := exec.Command("ip", "netns", "exec", ns.Name, "sysctl", "-qw", "net.ipv6.conf."+k+".accept_dad=0").CombinedOutput(); err != nil {
				t.Fatalf("sysctl in %s: %v: %s", ns.Name, err, out)
			}
		}
	}
	netnstest.IP(t, "-n", l.srv.Name, "link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns", l.cli.Name)
	netnstest.IP(t, "-n", l.srv.Name, "addr", "add", "fd00:233::1/64", "dev", "s0", "nodad")
	netnstest.IP(t, "-n", l.cli.Name, "addr", "add", "fd00:233::2/64", "dev", "c0", "nodad")
	netnstest.IP(t, "-n", l.srv.Name, "link", "set", "s0", "up")
	netnstest.IP(t, "-n", l.cli.Name, "link", "set", "c0", "up")
	l.global = netip.MustParseAddr("fd00:233::1")
	// The link-local address appears once the link is up.
	deadline := time.Now().Add(10 * time.Second)
	for !l.linkLoc.IsValid() {
		out, _ := exec.Command("ip", "-n", l.srv.Name, "-6", "-o", "addr", "show", "dev", "s0", "scope", "link").Output()
		if f := strings.Fields(string(out)); len(f) >= 4 {
			if p, err := netip.ParsePrefix(f[3]); err == nil {
				l.linkLoc = p.Addr()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no link-local address on s0: %s", out)
		}
		if !l.linkLoc.IsValid() {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return l
}

// TestIPv6LinkLocalAndGlobal serves a catalogue on every IPv6 address of
// an interface (ListenIPv6) and fetches it inside a client namespace from
// the link-local address (with the client's zone) and the global one, with
// pin's client, atftp, curl and tftp-hpa; every file arrives whole, and
// each transfer's event has the IPv6 block size cap and no retransmission.
func TestIPv6LinkLocalAndGlobal(t *testing.T) {
	l := newIPv6Lab(t)
	files := map[string][]byte{"snponly.efi": randomBytes(1448*150+3, 61), "undionly.kpxe": randomBytes(70_001, 62)}
	dir := t.TempDir()
	var names []string
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	var mu sync.Mutex
	var events []tftp.Event
	reg := prometheus.NewRegistry()
	srv := &tftp.Server{Root: os.DirFS(dir), Files: names, Metrics: tftp.NewMetrics(reg), Logger: slog.New(slog.DiscardHandler),
		Observer: func(ev tftp.Event) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, ev)
		}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	if err := l.srv.Do(func() error {
		c, err := tftp.ListenIPv6(ctx, "s0", 69)
		if err != nil {
			return err
		}
		go func() { done <- srv.Serve(ctx, c) }()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Serve did not stop")
		}
	})

	hosts := map[string]string{"link-local": l.linkLoc.String() + "%" + l.client, "global": l.global.String()}
	// Each client's command line: the binary, then its arguments.
	fetchers := map[string]func(host, file, out string) []string{
		"atftp": func(host, file, out string) []string {
			return []string{"atftp", "--option", "blksize 1448", "-g", "-r", file, "-l", out, host, "69"}
		},
		"curl": func(host, file, out string) []string {
			h := strings.ReplaceAll(host, "%", "%25")
			return []string{"curl", "-sS", "-g", "--tftp-blksize", "1448", "-o", out, "tftp://[" + h + "]:69/" + file}
		},
		"tftp-hpa": func(host, file, out string) []string {
			return []string{"tftp", "-6", "-m", "binary", host, "69", "-c", "get", file, out}
		},
	}
	for where, host := range hosts {
		t.Run(where+"/pin", func(t *testing.T) {
			for name, want := range files {
				var got bytes.Buffer
				err := l.cli.Do(func() error {
					c, err := pintftp.NewClient(netip.AddrPortFrom(mustAddr(host), 69).String())
					if err != nil {
						return err
					}
					c.SetBlockSize(1448)
					c.SetTimeout(2 * time.Second)
					wt, err := c.Receive(name, "octet")
					if err != nil {
						return err
					}
					_, err = wt.WriteTo(&got)
					return err
				})
				if err != nil || !bytes.Equal(got.Bytes(), want) {
					t.Fatalf("%s from %s: %d bytes, %v", name, host, got.Len(), err)
				}
			}
		})
		for client, cmd := range fetchers {
			t.Run(where+"/"+client, func(t *testing.T) {
				if _, err := exec.LookPath(cmd("", "", "")[0]); err != nil {
					t.Skipf("%s not installed", client)
				}
				for name, want := range files {
					out := filepath.Join(t.TempDir(), name)
					ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
					b, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.cli.Name}, cmd(host, name, out)...)...).CombinedOutput()
					cancel()
					got, rerr := os.ReadFile(out)
					if err != nil || rerr != nil || !bytes.Equal(got, want) {
						t.Fatalf("%s %s from %s: %v %v (%d bytes): %s", client, name, host, err, rerr, len(got), b)
					}
				}
			})
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var linkLocal, blocks int
	for _, ev := range events {
		if ev.Err != nil {
			t.Errorf("transfer failed: %+v", ev)
		}
		if ev.Remote.Addr().Is6() && ev.Remote.Addr().IsLinkLocalUnicast() {
			linkLocal++
		}
		if ev.BlockSize == tftp.DefaultMaxBlockSizeIPv6 {
			blocks++
		}
		if ev.Retransmits != 0 {
			t.Errorf("retransmissions on a quiet link: %+v", ev)
		}
	}
	if linkLocal == 0 || blocks == 0 {
		t.Errorf("%d transfers: %d to link-local clients, %d with %d-byte blocks", len(events), linkLocal, blocks, tftp.DefaultMaxBlockSizeIPv6)
	}
	if n := testutil.ToFloat64(gathered{reg, "ramboot_tftp_transfers_total", "ok"}); n != float64(len(events)) {
		t.Errorf("transfers_total{ok} = %v, want %d", n, len(events))
	}
	t.Logf("%d transfers over IPv6, %d to link-local clients", len(events), linkLocal)
}

func mustAddr(host string) netip.Addr {
	a, err := netip.ParseAddr(host)
	if err != nil {
		panic(err)
	}
	return a
}
