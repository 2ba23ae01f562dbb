package provisioner

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// TestBootEventsBounded: each client keeps its last eventsPerClient
// events in order, the least recently seen client goes first beyond
// maxEventClients, TFTP transfers go to the client last given their
// address, and InfiniBand clients are found by client id.
func TestBootEventsBounded(t *testing.T) {
	b := newBootEvents()
	mac := func(i int) net.HardwareAddr {
		return net.HardwareAddr{0x52, 0x54, 0, byte(i >> 16), byte(i >> 8), byte(i)}
	}
	t0 := time.Unix(1e9, 0)
	for i := range eventsPerClient + 5 {
		b.dhcp(dhcp.Event{MAC: mac(0), Request: "discover", Ignored: fmt.Sprint(i), Time: t0.Add(time.Duration(i))})
	}
	evs, ok := b.get("52:54:00:00:00:00")
	if !ok || len(evs) != eventsPerClient || evs[0].Ignored != "5" || evs[len(evs)-1].Ignored != fmt.Sprint(eventsPerClient+4) {
		t.Fatalf("ring: %d events, first %+v", len(evs), evs[0])
	}
	b.dhcp(dhcp.Event{MAC: mac(1), Request: "request", Reply: dhcp.ReplyAck, IP: netip.MustParseAddr("10.0.0.5"), Port: 67})
	b.tftp(tftp.Event{Remote: netip.MustParseAddrPort("10.0.0.5:2000"), File: "undionly.kpxe", Bytes: 70000, BlockSize: 1468}, nil)
	b.tftp(tftp.Event{Remote: netip.MustParseAddrPort("10.0.0.6:2000"), File: "x", Err: errors.New("no")}, nil)
	evs, _ = b.get("52-54-00-00-00-01")
	if len(evs) != 2 || evs[1].Protocol != "tftp" || evs[1].Request != "undionly.kpxe" || evs[1].IP != "10.0.0.5" {
		t.Fatalf("tftp after ack: %+v", evs)
	}
	// Proxy mode: no address was given by this head; the transfer goes to
	// the node interface that has the address (the key the recorder
	// passes), the address given to another client wins.
	b.tftp(tftp.Event{Remote: netip.MustParseAddrPort("10.0.0.7:2000"), File: "snponly.efi"}, interfaceKey("52:54:00:00:00:07", ""))
	if evs, ok := b.get("52:54:00:00:00:07"); !ok || len(evs) != 1 || evs[0].Protocol != "tftp" || evs[0].Request != "snponly.efi" {
		t.Fatalf("tftp of a proxy client: %v %+v", ok, evs)
	}
	b.tftp(tftp.Event{Remote: netip.MustParseAddrPort("10.0.0.5:2001"), File: "ipxe.efi"}, interfaceKey("52:54:00:00:00:07", ""))
	if evs, _ := b.get("52:54:00:00:00:01"); len(evs) != 3 || evs[2].Request != "ipxe.efi" {
		t.Fatalf("tftp to an address this head gave: %+v", evs)
	}
	id := []byte{0xff, 0, 0, 0, 1, 0, 2, 0, 0, 2, 0xc9, 0, 0, 0x11, 0x75, 0, 0, 0, 0, 1}
	b.dhcp(dhcp.Event{ClientID: id, Request: "discover", Ignored: "unknown"})
	if evs, ok := b.get(hexColons(id)); !ok || len(evs) != 1 {
		t.Fatalf("by client id: %v %+v", ok, evs)
	}
	// Fill to the cap: client 0 (seen least recently) goes, 1 stays.
	b.dhcp(dhcp.Event{MAC: mac(1), Request: "inform"})
	for i := 2; len(b.clients) < maxEventClients; i++ {
		b.dhcp(dhcp.Event{MAC: mac(i), Request: "discover"})
	}
	b.dhcp(dhcp.Event{MAC: mac(maxEventClients + 10), Request: "discover"})
	if _, ok := b.get("52:54:00:00:00:00"); ok {
		t.Error("the least recently seen client was kept beyond the cap")
	}
	if _, ok := b.get("52:54:00:00:00:01"); !ok {
		t.Error("a recently seen client was evicted")
	}
	if len(b.clients) != maxEventClients || b.lru.Len() != maxEventClients {
		t.Errorf("%d clients, %d in the LRU list, want %d", len(b.clients), b.lru.Len(), maxEventClients)
	}
	if _, ok := b.get("not-hex"); ok {
		t.Error("a bad id found events")
	}
}

// TestLookupInfiniBand: an IPoIB client (no chaddr) is found by its whole
// client id or by the port GUID its last 8 bytes are, whichever the
// inventory has, and gets its interface's address (not the first one's).
func TestLookupInfiniBand(t *testing.T) {
	db, err := state.Open(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	full := []byte{0xff, 0, 0, 0, 1, 0, 2, 0, 0, 2, 0xc9, 0, 0x00, 0x02, 0xc9, 0x03, 0, 0x1a, 0x2b, 0x3c}
	guid := full[len(full)-8:]
	if err := db.AddNode(state.Node{Name: "n1", Interfaces: []inventory.Interface{
		{MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("10.77.0.11")},
		{ClientID: hexColons(full), IP: netip.MustParseAddr("10.78.0.11")},
	}}); err != nil {
		t.Fatal(err)
	}
	other := append([]byte{0xff, 0, 0, 0, 2, 0, 2, 0, 0, 2, 0xc9, 0}, 0, 0x02, 0xc9, 0x03, 0, 0x99, 0x99, 0x99)
	if err := db.AddNode(state.Node{Name: "n2", Interfaces: []inventory.Interface{
		{ClientID: hexColons(other[len(other)-8:]), IP: netip.MustParseAddr("10.78.0.12")},
	}}); err != nil {
		t.Fatal(err)
	}
	heads := NewNodes(db, &plan.Defaults{Image: "default", Subnets: []plan.Subnet{
		{Prefix: netip.MustParsePrefix("10.77.0.1/24")}, {Prefix: netip.MustParsePrefix("10.78.0.0/24"), MTU: 2044},
	}}, "http://10.77.0.1")
	for _, tc := range []struct {
		id   []byte
		want string
		mtu  int
	}{{full, "10.78.0.11", 2044}, {other, "10.78.0.12", 2044}} {
		r, err := heads.Lookup(t.Context(), dhcp.Client{HWType: dhcp.HWTypeInfiniBand, ClientID: tc.id})
		if err != nil || r.IP.String() != tc.want || r.PrefixLen != 24 || r.MTU != tc.mtu {
			t.Errorf("client id %x: %+v, %v; want %s/24 mtu %d", tc.id, r, err, tc.want, tc.mtu)
		}
	}
	_ = guid
	if _, err := heads.Lookup(t.Context(), dhcp.Client{HWType: dhcp.HWTypeInfiniBand, ClientID: []byte{0xff, 1, 2, 3}}); !errors.Is(err, dhcp.ErrUnknown) {
		t.Errorf("unknown client id: %v", err)
	}
	r, err := heads.Lookup(t.Context(), dhcp.Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}})
	if err != nil || r.IP.String() != "10.77.0.11" || r.ScriptURL != "http://10.77.0.1/boot/ipxe?mac=52%3A54%3A00%3A00%3A00%3A01" {
		t.Errorf("by MAC: %+v, %v", r, err)
	}
}
