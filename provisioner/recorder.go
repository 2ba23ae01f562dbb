package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
		"net/netip"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// recorder turns the protocol servers' events into node timeline steps and
// answers the DHCP server's inventory questions from the state database.
type recorder struct {
	db  *state.DB
	log *slog.Logger
}

// reservation returns the DHCP inventory: every address is a reservation.
func (r *recorder) reservation(prefixLen int, router netip.Addr, dns []netip.Addr, baseURL string) func(context.Context, dhcp.Client) (dhcp.Reservation, error) {
	return func(_ context.Context, c dhcp.Client) (dhcp.Reservation, error) {
		if len(c.MAC) == 0 {
			return dhcp.Reservation{}, dhcp.ErrUnknown // nodes are known by MAC only, so far
		}
		n, err := r.db.ByMAC(c.MAC)
		if errors.Is(err, state.ErrNotFound) {
			return dhcp.Reservation{}, dhcp.ErrUnknown
		}
		if err != nil {
			return dhcp.Reservation{}, err
		}
		return dhcp.Reservation{
			IP:        n.IP,
			PrefixLen: prefixLen,
			Router:    router,
			DNS:       dns,
			Hostname:  n.Name,
			ScriptURL: baseURL + "/boot/ipxe?mac=" + url.QueryEscape(n.MAC),
		}, nil
	}
}

// dhcp records a DHCP event in the timeline of the node it is about.
func (r *recorder) dhcp(e dhcp.Event) {
	n, err := r.db.ByMAC(e.MAC)
	if err != nil {
		return // not a node: the DHCP server logged why it ignored it
	}
	who := "firmware " + e.Arch.String()
	if e.IPXE {
		who = "iPXE"
	}
	var ev state.Event
	switch {
	case e.Reply == "offer":
		ev = state.Event{Step: state.StepDHCPOffer, Detail: fmt.Sprintf("%s: %s, boot %s", who, e.IP, e.BootFile)}
	case e.Reply == "ack":
		ev = state.Event{Step: state.StepDHCPAck, Detail: fmt.Sprintf("%s: %s", who, e.IP)}
	case e.Reply == "nak":
		ev = state.Event{Step: state.StepIgnored, Detail: fmt.Sprintf("%s: %s refused (NAK)", who, e.Request)}
	case e.Ignored != "":
		ev = state.Event{Step: state.StepIgnored, Detail: fmt.Sprintf("%s: %s: %s", who, e.Request, e.Ignored)}
	default:
		return
	}
	ev.Time = e.Time
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if err := r.db.Record(n.Name, ev, !e.IPXE); err != nil {
		r.log.Warn("record dhcp step", "node", n.Name, "err", err)
	}
}

// tftp records a TFTP transfer in the timeline of the node that made it.
func (r *recorder) tftp(e tftp.Event) {
	n, err := r.db.ByIP(e.Remote.Addr())
	if err != nil {
		return
	}
	detail := fmt.Sprintf("%s %d bytes in %s", e.File, e.Bytes, e.Dur.Round(time.Millisecond))
	if e.Err != nil {
		detail = fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	if err := r.db.Record(n.Name, state.Event{Time: e.Time.Add(e.Dur), Step: state.StepTFTP, Detail: detail}, false); err != nil {
		r.log.Warn("record tftp step", "node", n.Name, "err", err)
	}
}

// nodesCollector exports ramboot_nodes{state}: how many inventory nodes are
// in each boot state, read from the state database at scrape time.
type nodesCollector struct {
	db   *state.DB
	desc *prometheus.Desc
}

func newNodesCollector(db *state.DB) *nodesCollector {
	return &nodesCollector{db: db, desc: prometheus.NewDesc("ramboot_nodes", "Inventory nodes by boot state.", []string{"state"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *nodesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *nodesCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[state.State]int{}
	for _, n := range c.db.List() {
		counts[n.Status.State]++
	}
	for _, s := range state.States() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
