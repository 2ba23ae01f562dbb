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
		Use:   "add NAME --mac MAC --ip IP [--image NAME]",
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
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a node: its state, the image it runs and its last boot's timeline",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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

// printNode prints one node for a person, with its boot timeline in
// seconds since the boot's first event.
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
	fmt.Fprintf(tw, "State:\t%s\n", n.Status.State)
	if r := n.Status.Report; r != nil {
		digest := r.ImageDigest
		if digest == "" {
			digest = "unknown (the node's image content " + orDash(r.ContentDigest) + " matches no image)"
		}
		fmt.Fprintf(tw, "Running:\t%s %s\n", orDash(r.ImageName), digest)
		fmt.Fprintf(tw, "Kernel:\t%s\n", orDash(r.Kernel))
		fmt.Fprintf(tw, "Memory:\t%d MiB\n", r.MemTotalBytes>>20)
		fmt.Fprintf(tw, "Reported:\t%s (node uptime %.1fs)\n", r.Received.Local().Format(time.DateTime), r.UptimeSeconds)
		if r.Error != "" {
			fmt.Fprintf(tw, "Error:\t%s\n", r.Error)
		}
		printRegistration(tw, r)
	}
	printAgent(tw, n)
	if err := tw.Flush(); err != nil {
		return err
	}
	return printTimeline(w, n.Status)
}

func printTimeline(w io.Writer, s state.Status) error {
	if len(s.Timeline) == 0 {
		_, err := fmt.Fprintln(w, "Timeline: no boot seen yet")
		return err
	}
	fmt.Fprintf(w, "Boot %d, started %s (seconds since the first event):\n", s.Boots, s.Started.Local().Format(time.DateTime))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	t0 := s.Timeline[0].Time
	for _, e := range s.Timeline {
		fmt.Fprintf(tw, "%8.2f\t%s\t%s\n", e.Time.Sub(t0).Seconds(), e.Step, strings.ReplaceAll(e.Detail, "\t", " "))
	}
	return tw.Flush()
}
