package provisioner

import (
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// recorder turns the protocol servers' events into node timeline steps,
// and keeps every client's recent events (bootEvents), known or not.
type recorder struct {
	db     *state.DB
	log    *slog.Logger
	events *bootEvents
}

func newRecorder(db *state.DB, log *slog.Logger) *recorder {
	return &recorder{db: db, log: log, events: newBootEvents()}
}

// node returns the name of the inventory node a DHCP client is: by MAC,
// else by client id (whole, or its GUID). It copies no node: it runs for
// every DHCP event.
func (r *recorder) node(e dhcp.Event) (string, bool) {
	if len(e.MAC) == 6 {
		if n, ok := r.db.NameByMAC(e.MAC); ok {
			return n, true
		}
	}
	if len(e.ClientID) == 0 {
		return "", false
	}
	if n, ok := r.db.NameByClientID(hexColons(e.ClientID)); ok {
		return n, true
	}
	if guid, ok := (dhcp.Client{ClientID: e.ClientID}).GUID(); ok {
		if n, ok := r.db.NameByClientID(hexColons(guid)); ok {
			return n, true
		}
	}
	return "", false
}

// dhcp records a DHCP event in the client's events and, for a node, its
// timeline.
func (r *recorder) dhcp(e dhcp.Event) {
	if r.events != nil {
		r.events.dhcp(e)
	}
	name, ok := r.node(e)
	if !ok {
		return // not a node: the DHCP server logged why it ignored it
	}
	// The offer's and the ack's details are built in one buffer (they are
	// two per exchange, on the reply path); the rest use fmt.
	var buf [160]byte
	head := appendWho(buf[:0], e)
	head = append(head, ": "...)
	if e.Proxy {
		head = append(head, "proxy (port "...)
		head = strconv.AppendInt(head, int64(e.Port), 10)
		head = append(head, ')')
	} else {
		head = e.IP.AppendTo(head)
	}
	var ev state.Event
	switch {
	case !e.NetBoot && (e.Reply == dhcp.ReplyOffer || e.Reply == dhcp.ReplyAck):
		// The node's own OS (no PXE options): its address, no boot.
		ev = state.Event{Step: state.StepLease, Detail: fmt.Sprintf("os: %s %s", e.Reply, e.IP)}
	case e.Reply == dhcp.ReplyOffer:
		ev = state.Event{Step: state.StepDHCPOffer, Detail: string(append(append(head, ", boot "...), e.BootFile...)), XID: e.XID}
	case e.Reply == dhcp.ReplyAck:
		if e.Proxy {
			head = append(append(head, ", boot "...), e.BootFile...)
		}
		ev = state.Event{Step: state.StepDHCPAck, Detail: string(head)}
	case e.Reply == dhcp.ReplyNak:
		ev = state.Event{Step: state.StepIgnored, Detail: fmt.Sprintf("%s: %s refused (NAK)", appendWho(nil, e), e.Request)}
	case e.Ignored != "":
		ev = state.Event{Step: state.StepIgnored, Detail: fmt.Sprintf("%s: %s: %s", appendWho(nil, e), e.Request, e.Ignored)}
	default:
		return
	}
	ev.Time = e.Time
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	// A reply never waits for the disk. A firmware's offer (a proxy offer
	// too) starts a new boot record; so does iPXE's after the script;
	// an offer in a transaction the boot already answered does not
	// (state.DB.Record).
	r.db.Post(name, ev, e.NetBoot && !e.IPXE)
}

// appendWho appends who sent e's request: "firmware ARCH", "iPXE" or
// "HTTP boot ARCH".
func appendWho(b []byte, e dhcp.Event) []byte {
	switch {
	case e.IPXE:
		return append(b, "iPXE"...)
	case e.Stage == dhcp.StageHTTPBoot:
		b = append(b, "HTTP boot "...)
	default:
		b = append(b, "firmware "...)
	}
	return append(b, e.Arch.String()...)
}

// tftp records a TFTP transfer in the client's events and the timeline of
// the node that made it.
func (r *recorder) tftp(e tftp.Event) {
	n, err := r.db.ByIP(e.Remote.Addr())
	if r.events != nil {
		// The client last given the address, else (proxy mode: the site's
		// DHCP server gave it) the node's interface that has it.
		var key []byte
		if err == nil {
			for _, ifc := range n.Interfaces {
				if ifc.IP == e.Remote.Addr().Unmap() {
					key = interfaceKey(ifc.MAC, ifc.ClientID)
					break
				}
			}
		}
		r.events.tftp(e, key)
	}
	if err != nil {
		return
	}
	detail := fmt.Sprintf("%s %d bytes in %s", e.File, e.Bytes, e.Dur.Round(time.Millisecond))
	if e.Err != nil {
		detail = fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	r.db.Post(n.Name, state.Event{Time: e.Time.Add(e.Dur), Step: state.StepTFTP, Detail: detail}, false)
}

// nodesCollector exports, at scrape time from memory, ramboot_nodes{state}
// (how many inventory nodes are in each boot state) and one series per
// node an admin can alert on: ramboot_node_info{node,state,image} 1 and
// ramboot_node_last_event_timestamp_seconds{node}.
type nodesCollector struct {
	db               *state.DB
	desc, info, last *prometheus.Desc
}

func newNodesCollector(db *state.DB) *nodesCollector {
	return &nodesCollector{db: db,
		desc: prometheus.NewDesc("ramboot_nodes", "Inventory nodes by boot state.", []string{"state"}, nil),
		info: prometheus.NewDesc("ramboot_node_info", "One series per node, always 1: its boot state and the image it is pinned to (e.g. alert on state=\"stalled\").", []string{"node", "state", "image"}, nil),
		last: prometheus.NewDesc("ramboot_node_last_event_timestamp_seconds", "When the head last saw a step of the node's current boot.", []string{"node"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *nodesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.info
	ch <- c.last
}

// Collect implements prometheus.Collector.
func (c *nodesCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[state.State]int{}
	for _, n := range c.db.List() {
		counts[n.Status.State]++
		img := n.Image
		if p := n.Status.Pin; p != nil {
			img = p.Ref + "@" + p.Digest
		}
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, n.Name, string(n.Status.State), img)
		if tl := n.Status.Timeline; len(tl) > 0 {
			ch <- prometheus.MustNewConstMetric(c.last, prometheus.GaugeValue, float64(tl[len(tl)-1].Time.UnixNano())/1e9, n.Name)
		}
	}
	for _, s := range state.States() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
