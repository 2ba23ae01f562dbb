package dhcp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ramboot/ramboot/pxe/internal/netnstest"
)

// TestNetnsDORA runs ListenAndServe in one network namespace and the real
// nclient4 client in another, joined by a veth pair, and checks a full
// broadcast DISCOVER-OFFER-REQUEST-ACK for a firmware and an iPXE client.
// Nothing is connected to the host's namespace. It needs root and ip(8).
func TestNetnsDORA(t *testing.T) {
	srvNS, cliNS := netnstest.New(t, "rb-dhcp-srv"), netnstest.New(t, "rb-dhcp-cli")
	nsSrv, nsCli := srvNS.Name, cliNS.Name
	pid := os.Getpid()
	vSrv, vCli := fmt.Sprintf("rbs%d", pid), fmt.Sprintf("rbc%d", pid)
	clientMAC := mustMAC("02:72:62:00:00:0b")
	// The veth pair is born in the server namespace, its peer moved straight
	// into the client namespace: neither end ever exists on the host.
	netnstest.IP(t, "-n", nsSrv, "link", "add", vSrv, "type", "veth", "peer", "name", vCli, "netns", nsCli)
	netnstest.IP(t, "-n", nsSrv, "addr", "add", "10.213.0.1/24", "dev", vSrv)
	netnstest.IP(t, "-n", nsSrv, "link", "set", vSrv, "up")
	netnstest.IP(t, "-n", nsCli, "link", "set", vCli, "address", clientMAC.String())
	netnstest.IP(t, "-n", nsCli, "link", "set", vCli, "up")

	res := Reservation{
		IP:        netip.MustParseAddr("10.213.0.11"),
		PrefixLen: 24,
		Router:    netip.MustParseAddr("10.213.0.254"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.213.0.1")},
		Hostname:  "n-netns",
		ScriptURL: "http://10.213.0.1/boot/ipxe?mac=" + clientMAC.String(),
	}
	var mu sync.Mutex
	var events []Event
	srv := &Server{
		ServerIP: netip.MustParseAddr("10.213.0.1"),
		Inventory: InventoryFunc(func(_ context.Context, c Client) (Reservation, error) {
			if !bytes.Equal(c.MAC, clientMAC) {
				return Reservation{}, ErrUnknown
			}
			return res, nil
		}),
		Observer: func(ev Event) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, ev)
		},
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() {
		served <- srvNS.Do(func() error { return srv.ListenAndServe(ctx, vSrv) })
	}()
	// Runs before the namespaces are deleted (cleanups run last-in first-out).
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("ListenAndServe = %v, want nil after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("ListenAndServe did not return after cancel")
		}
	})

	dora := func(t *testing.T, mods ...dhcpv4.Modifier) *nclient4.Lease {
		t.Helper()
		var lease *nclient4.Lease
		err := cliNS.Do(func() error {
			// Short timeout, several tries: the server may still be binding.
			c, err := nclient4.New(vCli, nclient4.WithTimeout(time.Second), nclient4.WithRetry(5))
			if err != nil {
				return fmt.Errorf("start client on %s: %w", vCli, err)
			}
			defer c.Close()
			rctx, rcancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer rcancel()
			lease, err = c.Request(rctx, mods...)
			return err
		})
		select {
		case serr := <-served:
			served <- serr
			t.Fatalf("server stopped early: %v", serr)
		default:
		}
		if err != nil {
			t.Fatalf("DORA: %v", err)
		}
		return lease
	}
	checkLease := func(t *testing.T, l *nclient4.Lease) {
		t.Helper()
		for _, m := range []*dhcpv4.DHCPv4{l.Offer, l.ACK} {
			if !m.YourIPAddr.Equal(net.ParseIP("10.213.0.11")) {
				t.Errorf("%s yiaddr = %s, want 10.213.0.11", m.MessageType(), m.YourIPAddr)
			}
		}
		ack := l.ACK
		if got := net.IP(ack.SubnetMask()).String(); got != "255.255.255.0" {
			t.Errorf("mask = %s, want 255.255.255.0", got)
		}
		if r := ack.Router(); len(r) != 1 || !r[0].Equal(net.ParseIP("10.213.0.254")) {
			t.Errorf("router = %v, want 10.213.0.254", r)
		}
		if h := ack.HostName(); h != "n-netns" {
			t.Errorf("hostname = %q, want n-netns", h)
		}
		if sid := ack.ServerIdentifier(); !sid.Equal(net.ParseIP("10.213.0.1")) {
			t.Errorf("server id = %v, want 10.213.0.1", sid)
		}
		if lt := ack.IPAddressLeaseTime(0); lt != DefaultLeaseTime {
			t.Errorf("lease time = %v, want %v", lt, DefaultLeaseTime)
		}
	}

	t.Run("firmware", func(t *testing.T) {
		l := dora(t,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		checkLease(t, l)
		ack := l.ACK
		if ack.BootFileName != "snponly.efi" || ack.BootFileNameOption() != "snponly.efi" {
			t.Errorf("file %q, option 67 %q, want snponly.efi", ack.BootFileName, ack.BootFileNameOption())
		}
		if !ack.ServerIPAddr.Equal(net.ParseIP("10.213.0.1")) || ack.TFTPServerName() != "10.213.0.1" {
			t.Errorf("siaddr %s, option 66 %q, want 10.213.0.1", ack.ServerIPAddr, ack.TFTPServerName())
		}
		if ack.Options.Has(dhcpv4.OptionEtherboot) || ack.Options.Has(dhcpv4.OptionClassIdentifier) {
			t.Errorf("firmware reply carries option 175 or 60:\n%s", ack.Summary())
		}
	})
	t.Run("iPXE", func(t *testing.T) {
		l := dora(t,
			dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		checkLease(t, l)
		ack := l.ACK
		if ack.BootFileName != res.ScriptURL || ack.BootFileNameOption() != res.ScriptURL {
			t.Errorf("file %q, option 67 %q, want %s", ack.BootFileName, ack.BootFileNameOption(), res.ScriptURL)
		}
		if got := ack.Options.Get(dhcpv4.OptionEtherboot); !bytes.Equal(got, []byte{176, 1, 1}) {
			t.Errorf("option 175 = % x, want b0 01 01 (176 no-pxedhcp = 1)", got)
		}
	})

	mu.Lock()
	defer mu.Unlock()
	var seq []string
	for _, ev := range events {
		seq = append(seq, string(ev.Request)+">"+string(ev.Reply))
	}
	// Retransmissions while the server was binding may add answered repeats.
	if got := strings.Join(seq, " "); !strings.Contains(got, "discover>offer request>ack") {
		t.Errorf("events = %s, want discover>offer request>ack", got)
	}
}
