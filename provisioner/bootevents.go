package provisioner

import (
	"container/list"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/pxe/dhcp"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// Bounds of the boot event log: the last eventsPerClient events of each
// of the last maxEventClients clients seen (about 200 bytes an event, so
// at most ~50 MiB, and a few MiB for a cluster's usual few events per
// node).
const (
	eventsPerClient = 16
	maxEventClients = 16384
)

// bootEvents is the head's in-memory log of what its DHCP and TFTP servers
// did with each client's packets, known to the inventory or not (ramboot
// boot events --mac). Adding is on the DHCP reply path: one lock, no
// allocation for a client already seen but its new event's strings.
type bootEvents struct {
	mu      sync.Mutex
	clients map[string]*clientEvents // by clientKey
	lru     list.List                // of *clientEvents, most recent first
	byIP    map[netip.Addr]*clientEvents
}

// clientEvents is one client's ring of events.
type clientEvents struct {
	key    string
	events []bootEvent // a ring once full, next is the oldest
	next   int
	ip     netip.Addr // the address last given, for its TFTP transfers
	elem   *list.Element
}

// bootEvent is one event, compact: the API's strings are made on reading.
type bootEvent struct {
	time      time.Time
	tftp      bool
	port      uint16
	request   string
	reply     dhcp.ReplyType
	proxy     bool
	discovery bool
	stage     dhcp.Stage
	arch      string
	vendor    string
	relay     netip.Addr
	server    netip.Addr
	ip        netip.Addr
	subnet    netip.Prefix
	bootFile  string
	ignored   string
	reason    string
	detail    string
}

func newBootEvents() *bootEvents {
	return &bootEvents{clients: map[string]*clientEvents{}, byIP: map[netip.Addr]*clientEvents{}}
}

// clientKey is a client's key: 'h' and its MAC's bytes when it has an
// Ethernet MAC, else 'i' and its client identifier's.
func clientKey(buf []byte, mac net.HardwareAddr, clientID []byte) []byte {
	if len(mac) == 6 {
		return append(append(buf, 'h'), mac...)
	}
	return append(append(buf, 'i'), clientID...)
}

// client returns the client of key, made and counted as the most recent.
// The lock must be held.
func (b *bootEvents) client(key []byte) *clientEvents {
	c := b.clients[string(key)]
	if c != nil {
		b.lru.MoveToFront(c.elem)
		return c
	}
	if len(b.clients) >= maxEventClients {
		old := b.lru.Remove(b.lru.Back()).(*clientEvents)
		delete(b.clients, old.key)
		if b.byIP[old.ip] == old {
			delete(b.byIP, old.ip)
		}
	}
	c = &clientEvents{key: string(key)}
	c.elem = b.lru.PushFront(c)
	b.clients[c.key] = c
	return c
}

func (c *clientEvents) add(e bootEvent) {
	if len(c.events) < eventsPerClient {
		c.events = append(c.events, e)
		return
	}
	c.events[c.next] = e
	c.next = (c.next + 1) % eventsPerClient
}

// dhcp records a DHCP event.
func (b *bootEvents) dhcp(e dhcp.Event) {
	if len(e.MAC) != 6 && len(e.ClientID) == 0 {
		return
	}
	ev := bootEvent{
		time: e.Time, port: uint16(e.Port), request: string(e.Request), reply: e.Reply, proxy: e.Proxy,
		discovery: e.Discovery, stage: e.Stage, vendor: e.VendorClass, relay: e.Relay, server: e.Server,
		ip: e.IP, subnet: e.Subnet, bootFile: e.BootFile, ignored: e.Ignored, reason: e.Reason(),
	}
	if e.HasArch {
		ev.arch = e.Arch.String()
	}
	var buf [64]byte
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.client(clientKey(buf[:0], e.MAC, e.ClientID))
	c.add(ev)
	if e.IP.IsValid() && (e.Reply == dhcp.ReplyOffer || e.Reply == dhcp.ReplyAck) && c.ip != e.IP {
		if b.byIP[c.ip] == c {
			delete(b.byIP, c.ip)
		}
		c.ip = e.IP
		b.byIP[e.IP] = c
	}
}

// interfaceKey returns the event key of an inventory interface (its MAC,
// else its client id, as the inventory writes them); nil when neither
// parses.
func interfaceKey(mac, clientID string) []byte {
	if hw, err := net.ParseMAC(mac); err == nil && len(hw) == 6 {
		return clientKey(nil, hw, nil)
	}
	if id, err := parseHex(clientID); err == nil {
		return clientKey(nil, nil, id)
	}
	return nil
}

// tftp records a TFTP transfer for the client last given its address,
// else for the client of key (nil: none), the node interface that has it.
func (b *bootEvents) tftp(e tftp.Event, key []byte) {
	ev := bootEvent{time: e.Time, tftp: true, port: 69, request: e.File, ip: e.Remote.Addr(),
		detail: fmt.Sprintf("%d bytes in %s, blksize %d, %d retransmits", e.Bytes, e.Dur.Round(time.Millisecond), e.BlockSize, e.Retransmits)}
	if e.Err != nil {
		ev.ignored = e.Err.Error()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch c := b.byIP[e.Remote.Addr()]; {
	case c != nil:
		c.add(ev)
	case key != nil:
		b.client(key).add(ev)
	}
}

// get returns the events of the client with MAC or client id id (hex,
// any spelling), oldest first; false when it has none.
func (b *bootEvents) get(id string) ([]api.BootEvent, bool) {
	key, err := eventKey(id)
	if err != nil {
		return nil, false
	}
	b.mu.Lock()
	c := b.clients[key]
	var evs []bootEvent
	if c != nil {
		evs = append(evs, c.events[c.next:]...)
		evs = append(evs, c.events[:c.next]...)
	}
	b.mu.Unlock()
	if c == nil {
		return nil, false
	}
	out := make([]api.BootEvent, len(evs))
	for i, e := range evs {
		out[i] = e.api()
	}
	return out, true
}

// eventKey returns the key of a MAC or a client id.
func eventKey(id string) (string, error) {
	if mac, err := net.ParseMAC(id); err == nil && len(mac) == 6 {
		return string(clientKey(nil, mac, nil)), nil
	}
	b, err := parseHex(id)
	if err != nil {
		return "", err
	}
	return string(clientKey(nil, nil, b)), nil
}

// parseHex parses hex bytes with or without colons or dashes.
func parseHex(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.NewReplacer(":", "", "-", "").Replace(s))
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("%q is not a MAC or a hex client id", s)
	}
	return b, nil
}

func (e bootEvent) api() api.BootEvent {
	str := func(a netip.Addr) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	}
	out := api.BootEvent{
		Time: e.time, Protocol: "dhcp", Request: e.request, Port: int(e.port), Reply: string(e.reply), Proxy: e.proxy,
		Stage: string(e.stage), Arch: e.arch, VendorClass: e.vendor, Relay: str(e.relay), Server: str(e.server),
		IP: str(e.ip), Discovery: e.discovery, BootFile: e.bootFile, Ignored: e.ignored, Reason: e.reason, Detail: e.detail,
	}
	if e.tftp {
		out.Protocol = "tftp"
	}
	if e.subnet.IsValid() {
		out.Subnet = e.subnet.String()
	}
	return out
}
