package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/state"
)

func nodeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "node", Short: "Manage nodes (through the daemon's admin API)"}
	c.AddCommand(nodeAddCmd(g), nodeListCmd(g), nodeShowCmd(g), nodeDeleteCmd(g))
	return c
}

func nodeAddCmd(g *globals) *cobra.Command {
	var req api.AddNodeRequest
	c := &cobra.Command{
		Use:   "add NAME --mac MAC --ip IP [--image NAME] [--root-mode MODE]",
		Short: "Add a node: its MAC gets IP by DHCP reservation and boots the image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			n, err := g.client().AddNode(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(n)
			}
			return printNodes(g.stdout, []state.NodeStatus{n})
		},
	}
	c.Flags().StringVar(&req.MAC, "mac", "", "MAC address of the node's provisioning interface (required)")
	c.Flags().StringVar(&req.IP, "ip", "", "reserved IPv4 address, inside the provisioning subnet (required)")
	c.Flags().StringVar(&req.Image, "image", "", "image to boot (default: the configured boot.default_image)")
	c.Flags().StringVar(&req.RootMode, "root-mode", "", "root mode: tmpfs (the image unpacked) or compressed (kept compressed in RAM) (default: the configured boot.root.mode)")
	_ = c.MarkFlagRequired("mac")
	_ = c.MarkFlagRequired("ip")
	return c
}

func nodeListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List nodes with their boot state",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := g.client().ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(ns)
			}
			return printNodes(g.stdout, ns)
		},
	}
}

func nodeShowCmd(g *globals) *cobra.Command {
	var bootID int
	c := &cobra.Command{
		Use:   "show NAME [--boot K]",
		Short: "Show a node: its state, the image it runs and its current boot's timeline (or boot K's)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bootID != 0 {
				b, err := g.client().GetBoot(cmd.Context(), args[0], bootID)
				if err != nil {
					return err
				}
				if g.output == "json" {
					return g.printJSON(b)
				}
				return printBoot(g.stdout, args[0], b)
			}
			n, err := g.client().GetNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(n)
			}
			return printNode(g.stdout, n)
		},
	}
	c.Flags().IntVar(&bootID, "boot", 0, "show boot `K` (its number, as `node show` lists the boots kept) instead of the current one")
	return c
}

func nodeDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Remove a node from the inventory",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().DeleteNode(cmd.Context(), args[0])
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printNodes(w io.Writer, ns []state.NodeStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMAC\tIP\tIMAGE\tSTATE\tBOOTS\tLAST STEP")
	for _, n := range ns {
		last := "-"
		if t := n.Status.Timeline; len(t) > 0 {
			e := t[len(t)-1]
			last = fmt.Sprintf("%s (%s ago)", e.Step, time.Since(e.Time).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, n.MAC, n.IP, orDash(n.Image), n.Status.State, n.Status.Boots, last)
	}
	return tw.Flush()
}

// printNode prints one node for a person, with its current boot's
// timeline in seconds since the boot's first event.
func printNode(w io.Writer, n state.NodeStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", n.Name)
	fmt.Fprintf(tw, "MAC:\t%s\n", n.MAC)
	fmt.Fprintf(tw, "IP:\t%s\n", n.IP)
	img := n.Image
	if img == "" {
		img = "(the default image, boot.default_image)"
	}
	fmt.Fprintf(tw, "Image:\t%s\n", img)
	if n.RootMode != "" {
		fmt.Fprintf(tw, "Root mode:\t%s\n", n.RootMode)
	}
	fmt.Fprintf(tw, "State:\t%s\n", n.Status.State)
	printReport(tw, n.Status.Report)
	if len(n.Status.History) > 0 {
		ids := make([]string, len(n.Status.History))
		for i, id := range n.Status.History {
			ids[i] = fmt.Sprint(id)
		}
		fmt.Fprintf(tw, "Earlier boots:\t%s (ramboot node show %s --boot K)\n", strings.Join(ids, ", "), n.Name)
	}
	printAgent(tw, n)
	if err := tw.Flush(); err != nil {
		return err
	}
	return printTimeline(w, n.Status.Boot)
}

func printReport(tw io.Writer, r *state.Report) {
	if r == nil {
		return
	}
	digest := r.ImageDigest
	if digest == "" {
		digest = "unknown (the node's image content " + orDash(r.ContentDigest) + " matches no image)"
	}
	fmt.Fprintf(tw, "Running:\t%s %s\n", orDash(r.ImageName), digest)
	fmt.Fprintf(tw, "Kernel:\t%s\n", orDash(state.Printable(r.Kernel)))
	fmt.Fprintf(tw, "Memory:\t%d MiB\n", r.MemTotalBytes>>20)
	fmt.Fprintf(tw, "Reported:\t%s (node uptime %.1fs)\n", r.Received.Local().Format(time.DateTime), r.UptimeSeconds)
	if r.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", state.Printable(r.Error))
	}
	printRegistration(tw, r)
}

// printBoot prints one boot of node name.
func printBoot(w io.Writer, name string, b state.Boot) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", name)
	fmt.Fprintf(tw, "State:\t%s\n", b.State)
	printReport(tw, b.Report)
	if err := tw.Flush(); err != nil {
		return err
	}
	return printTimeline(w, b)
}

func printTimeline(w io.Writer, b state.Boot) error {
	if len(b.Timeline) == 0 {
		_, err := fmt.Fprintln(w, "Timeline: no boot seen yet")
		return err
	}
	fmt.Fprintf(w, "Boot %d, started %s (seconds since the first event):\n", b.ID, b.Started.Local().Format(time.DateTime))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	t0 := b.Timeline[0].Time
	for _, e := range b.Timeline {
		fmt.Fprintf(tw, "%8.2f\t%s\t%s\n", e.Time.Sub(t0).Seconds(), e.Step, state.Printable(e.Detail))
	}
	return tw.Flush()
}
