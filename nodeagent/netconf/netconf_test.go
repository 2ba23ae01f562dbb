package netconf_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ramboot/ramboot/nodeagent/netconf"
)

var nsCount atomic.Int32

// newNetns creates a named network namespace, deleted when the test ends,
// and returns its name and a handle to it.
func newNetns(t *testing.T) (string, netns.NsHandle) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	name := fmt.Sprintf("ramboot-netconf-%d-%d", os.Getpid(), nsCount.Add(1))
	done := make(chan error, 1)
	var ns netns.NsHandle
	// NewNamed switches the calling thread into the new namespace; do it
	// on a thread that is thrown away afterwards.
	go func() {
		runtime.LockOSThread()
		var err error
		ns, err = netns.NewNamed(name)
		done <- err
		// The thread is left locked: it exits with the goroutine, so the
		// namespace switch dies with it.
	}()
	if err := <-done; err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return name, ns
}

// inNetns runs fn on a thread inside ns and returns its error.
func inNetns(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread ends with the goroutine, so no
		// other goroutine ever runs in ns.
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// addVeth creates a veth pair in ns: name with mac, and its peer, both up.
func addVeth(t *testing.T, h *netlink.Handle, name string, mac net.HardwareAddr) {
	t.Helper()
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.HardwareAddr = mac
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name + "p"}); err != nil {
		t.Errorf("add veth %s: %v", name, err)
		return
	}
	peer, err := h.LinkByName(name + "p")
	if err != nil {
		t.Errorf("find veth peer: %v", err)
		return
	}
	h.LinkSetUp(peer)
}

func TestConfigure(t *testing.T) {
	_, ns := newNetns(t)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	other, _ := net.ParseMAC("52:54:00:aa:bb:cc")
	addVeth(t, h, "decoy0", other)

	// The interface appears only after Configure has started waiting, as
	// when the driver is still probing.
	added := make(chan struct{})
	go func() {
		defer close(added)
		time.Sleep(300 * time.Millisecond)
		addVeth(t, h, "rb0", mac)
	}()
	cfg := netconf.Config{
		MAC:     mac,
		Address: netip.MustParsePrefix("10.77.0.10/24"),
		Gateway: netip.MustParseAddr("10.77.0.1"),
		Wait:    10 * time.Second,
	}
	var iface string
	start := time.Now()
	err = inNetns(ns, func() error {
		var err error
		iface, err = netconf.Configure(context.Background(), cfg)
		if err != nil {
			return err
		}
		// A second run (a restarted agent) changes nothing and succeeds.
		_, err = netconf.Configure(context.Background(), cfg)
		return err
	})
	<-added
	if err != nil {
		t.Fatal(err)
	}
	if iface != "rb0" {
		t.Errorf("Configure chose %q, want rb0", iface)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("Configure returned after %v, before the link existed", d)
	}

	// Check from inside the namespace, with netlink.
	link, err := h.LinkByName("rb0")
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Error("rb0 is not up")
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo is not up")
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.10/24" {
		t.Errorf("rb0 addresses = %v, want [10.77.0.10/24]", addrs)
	}
	decoy, _ := h.LinkByName("decoy0")
	if a, _ := h.AddrList(decoy, netlink.FAMILY_V4); len(a) != 0 {
		t.Errorf("decoy0 got addresses %v", a)
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var defaults []string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			defaults = append(defaults, fmt.Sprintf("via %s dev %d", r.Gw, r.LinkIndex))
		}
	}
	if want := fmt.Sprintf("via 10.77.0.1 dev %d", link.Attrs().Index); len(defaults) != 1 || defaults[0] != want {
		t.Errorf("default routes = %v, want [%s]", defaults, want)
	}
}

func TestConfigureNoGateway(t *testing.T) {
	_, ns := newNetns(t)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	addVeth(t, h, "eth0", mac)
	err = inNetns(ns, func() error {
		_, err := netconf.Configure(context.Background(), netconf.Config{MAC: mac, Address: netip.MustParsePrefix("192.168.5.2/16")})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Gw != nil {
			t.Errorf("route with a gateway added: %v", r)
		}
	}
	link, _ := h.LinkByName("eth0")
	addrs, _ := h.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.5.2/16" {
		t.Errorf("addresses = %v", addrs)
	}
}

func TestConfigureTimeout(t *testing.T) {
	_, ns := newNetns(t)
	mac, _ := net.ParseMAC("52:54:00:de:ad:00")
	start := time.Now()
	err := inNetns(ns, func() error {
		_, err := netconf.Configure(context.Background(), netconf.Config{MAC: mac, Address: netip.MustParsePrefix("10.0.0.1/8"), Wait: 200 * time.Millisecond})
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "52:54:00:de:ad:00") {
		t.Errorf("Configure without the interface: %v, want a deadline error naming the MAC", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("gave up after %v, want about 200ms", d)
	}
}

func TestConfigureInvalid(t *testing.T) {
	if _, err := netconf.Configure(context.Background(), netconf.Config{}); err == nil {
		t.Error("empty Config accepted")
	}
}
