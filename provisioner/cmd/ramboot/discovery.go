package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner/api"
)

func nodeDiscoveredCmd(g *globals) *cobra.Command {
	var forget string
	c := &cobra.Command{
		Use:   "discovered [--forget MAC]",
		Short: "List machines that asked DHCP but are not in the inventory (dhcp.discovery), to adopt",
		Long: `discovered lists the machines the DHCP server saw that no node is: their MAC
or client id, architecture, what they were (firmware, HTTP boot, iPXE, an
OS), vendor class, where they asked from (subnet, relay, the relay's circuit
and remote id: switch port and switch) and the discovery address they hold.
ramboot node adopt makes one a node; --forget drops one from the list.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if forget != "" {
				return g.client().ForgetDiscovered(cmd.Context(), forget)
			}
			ms, err := g.client().ListDiscovered(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ms, func() error { return printDiscovered(g.stdout, ms) })
		},
	}
	c.Flags().StringVar(&forget, "forget", "", "drop the machine with this `MAC`, client id or key from the list")
	return c
}

func printDiscovered(w io.Writer, ms []api.Discovered) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC/CLIENT ID\tARCH\tSTAGE\tVENDOR CLASS\tSUBNET\tRELAY\tCIRCUIT\tIP\tLAST SEEN")
	now := time.Now()
	for _, m := range ms {
		id := m.MAC
		if id == "" {
			id = m.ClientID
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", id, orDash(m.Arch), m.Stage, orDash(m.VendorClass),
			orDash(m.Subnet), orDash(m.Relay), orDash(m.CircuitID), orDash(m.IP), now.Sub(m.LastSeen).Round(time.Second))
	}
	return tw.Flush()
}

func nodeAdoptCmd(g *globals) *cobra.Command {
	var req api.AdoptRequest
	var sf settingsFlags
	c := &cobra.Command{
		Use:   "adopt MAC NAME --ip IP [--profile P]...",
		Short: "Make a discovered machine (ramboot node discovered) a node: its next DHCP gets the node's address and boot",
		Long: `adopt adds the discovered machine with MAC (or client id, or key) as node
NAME with the reserved address --ip, its first interface the MAC or client
id it was seen with, and drops it from the discovered list. The machine
boots as the node at its next DHCP request (a machine waiting in the
discovery script asks every 30 seconds).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.ID, req.Name = args[0], args[1]
			st, err := sf.settings(cmd.Flags())
			if err != nil {
				return err
			}
			req.Settings = st
			n, err := g.client().Adopt(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(n, func() error { return printNodes(g.stdout, []api.NodeStatus{n}) })
		},
	}
	f := c.Flags()
	f.StringVar(&req.IP, "ip", "", "the node's reserved address")
	f.StringVar(&req.Interface, "interface", "", "name of the interface on the node (eth0, ib0)")
	f.StringVar(&req.Hostname, "hostname", "", "host name, when not the node's name")
	f.StringSliceVar(&req.Profiles, "profile", nil, "profiles, in order (repeatable or comma-separated)")
	sf.add(f)
	_ = c.MarkFlagRequired("ip")
	return c
}

func bootCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "boot", Short: "What the head's boot services did with a machine's packets"}
	c.AddCommand(bootEventsCmd(g))
	return c
}

func bootEventsCmd(g *globals) *cobra.Command {
	var mac, clientID string
	c := &cobra.Command{
		Use:   "events --mac MAC | --client-id ID",
		Short: "Show a machine's recent DHCP and TFTP events, with why a packet got no answer (for machines not in the inventory too)",
		Long: `events shows what the head's DHCP server did with each recent packet of the
machine with --mac (or, for InfiniBand, --client-id): the request, the port,
what the machine showed itself to be, the reply and boot file, or why it
got none; and the TFTP transfers from the address it was given (in proxy
mode, from its inventory address). The head
keeps the last 16 events of each of the last 16384 machines, in memory.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id := mac
			if (mac == "") == (clientID == "") {
				return usageError{fmt.Errorf("give one of --mac and --client-id")}
			}
			if id == "" {
				id = clientID
			}
			evs, err := g.client().BootEvents(cmd.Context(), id)
			if err != nil {
				return err
			}
			return g.print(evs, func() error { return printBootEvents(g.stdout, evs) })
		},
	}
	c.Flags().StringVar(&mac, "mac", "", "the machine's `MAC`")
	c.Flags().StringVar(&clientID, "client-id", "", "the machine's DHCP client id (InfiniBand), hex")
	return c
}

func printBootEvents(w io.Writer, evs api.BootEvents) error {
	node := evs.Node
	if node == "" {
		node = "not in the inventory"
	}
	fmt.Fprintf(w, "%s (%s)\n", evs.Client, node)
	if len(evs.Events) == 0 {
		_, err := fmt.Fprintln(w, "no events (none since the head started, or evicted)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tPROTO\tPORT\tREQUEST\tSTAGE\tARCH\tREPLY\tIP\tDETAIL")
	for _, e := range evs.Events {
		reply := orDash(e.Reply)
		if e.Proxy && e.Reply != "" {
			reply += " (proxy)"
		}
		var detail []string
		switch {
		case e.Ignored != "" && e.Protocol == "dhcp":
			detail = append(detail, "ignored: "+e.Ignored)
		case e.Ignored != "":
			detail = append(detail, "failed: "+e.Ignored)
		case e.BootFile != "":
			detail = append(detail, "boot "+e.BootFile)
		}
		if e.Detail != "" {
			detail = append(detail, e.Detail)
		}
		if e.Discovery {
			detail = append(detail, "discovery address")
		}
		if e.Relay != "" {
			detail = append(detail, "via relay "+e.Relay)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("15:04:05.000"), e.Protocol, e.Port,
			e.Request, orDash(e.Stage), orDash(e.Arch), reply, orDash(e.IP), orDash(strings.Join(detail, "; ")))
	}
	return tw.Flush()
}
