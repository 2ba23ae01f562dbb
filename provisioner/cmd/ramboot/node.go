package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ramboot/ramboot/provisioner/api"
)

func nodeCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "node", Short: "Manage nodes (through the daemon's admin API); NAMES is a host list like n[001-128]"}
	c.AddCommand(nodeAddCmd(g), nodeSetCmd(g), nodeRmCmd(g), nodeListCmd(g), nodeShowCmd(g), nodeTimelineCmd(g),
		nodeDiscoveredCmd(g), nodeAdoptCmd(g))
	return c
}

// settingsFlags are the flags of the settings a node and a profile share.
type settingsFlags struct {
	image, kernelArgs, bootFile, rootMode, rootSize, network string
	modules                                                  []string
	tags, values                                             []string
}

func (s *settingsFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&s.image, "image", "", "image reference to boot (name or name:tag)")
	fs.StringVar(&s.kernelArgs, "kernel-args", "", "kernel arguments, replacing the inherited ones")
	fs.StringSliceVar(&s.modules, "modules", nil, "kernel modules the agent loads before the network, replacing the inherited ones (comma-separated)")
	fs.StringVar(&s.bootFile, "boot-file", "", "iPXE binary firmware gets instead of its architecture's (snponly.efi, ipxe.efi)")
	fs.StringVar(&s.rootMode, "root-mode", "", "RAM root mode: tmpfs (the image unpacked) or compressed (the image kept compressed in RAM)")
	fs.StringVar(&s.rootSize, "root-size", "", "RAM root size cap: bytes with a suffix (16G) or a percentage of RAM (50%)")
	fs.StringVar(&s.network, "network", "", "the image's network stack: networkd, networkmanager, ifupdown, none")
	fs.StringArrayVar(&s.tags, "tag", nil, "tag KEY=VALUE (repeatable)")
	fs.StringArrayVar(&s.values, "value", nil, "template value KEY=VALUE (repeatable)")
}

// settings returns the settings the flags set (changed is the command's
// flag set, to tell an empty value from an absent one).
func (s *settingsFlags) settings(fs *pflag.FlagSet) (api.Settings, error) {
	out := api.Settings{Image: s.image, BootFile: s.bootFile, Network: s.network}
	if fs.Changed("kernel-args") {
		v := s.kernelArgs
		out.KernelArgs = &v
	}
	if fs.Changed("modules") {
		m := slices.Clone(s.modules)
		if m == nil {
			m = []string{}
		}
		out.Modules = &m
	}
	if s.rootMode != "" || s.rootSize != "" {
		out.Root = &api.Root{Mode: s.rootMode, Size: s.rootSize}
	}
	var err error
	if out.Tags, err = keyValues("--tag", s.tags); err != nil {
		return out, err
	}
	out.Values, err = keyValues("--value", s.values)
	return out, err
}

// keyValues parses KEY=VALUE flags.
func keyValues(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)}
		}
		m[k] = v
	}
	return m, nil
}

func nodeAddCmd(g *globals) *cobra.Command {
	var req api.AddNodesRequest
	var sf settingsFlags
	c := &cobra.Command{
		Use:   "add NAMES --ip IP[+] [--mac MAC[+] | --client-id ID] [--profile P]...",
		Short: "Add nodes: one, or one per name of a host list with IP and MAC ranges (--ip 10.0.0.101+)",
		Long: `add adds the nodes NAMES names (a host list: n001, n[001-128],
rack[1-4]n[01-32]) in one transaction: all of them or, on any error, none.
--ip and --mac take one address for one node, or a list or range for many:
"10.0.0.101+" gives consecutive addresses from 10.0.0.101, as many as there
are names; "10.0.0.101-10.0.0.228" must hold exactly as many. Every address
must lie on a configured subnet, and no name, MAC, client id or address may
be another node's.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Names = args[0]
			st, err := sf.settings(cmd.Flags())
			if err != nil {
				return err
			}
			req.Settings = st
			ns, err := g.client().AddNodes(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(ns, func() error { return printNodes(g.stdout, ns) })
		},
	}
	f := c.Flags()
	f.StringVar(&req.IP, "ip", "", "address of the first interface, or a list or range for many nodes (10.0.0.101+)")
	f.StringVar(&req.MAC, "mac", "", "MAC of the first interface, or a list or range for many nodes (52:54:00:00:01:00+)")
	f.StringVar(&req.ClientID, "client-id", "", "DHCP client id of the first interface instead of a MAC (InfiniBand), hex")
	f.StringVar(&req.Interface, "interface", "", "name of the first interface on the node (eth0, ib0)")
	f.StringVar(&req.Hostname, "hostname", "", "host name, when not the node's name (one node)")
	f.StringSliceVar(&req.Profiles, "profile", nil, "profiles, in order (repeatable or comma-separated)")
	sf.add(f)
	_ = c.MarkFlagRequired("ip")
	return c
}

func nodeSetCmd(g *globals) *cobra.Command {
	var sf settingsFlags
	var req api.SetRequest
	var hostname, mac, ip string
	var profiles, untag, unvalue, inherit []string
	c := &cobra.Command{
		Use:   "set NAMES [flags]",
		Short: "Change nodes and show each changed field before and after",
		Long: `set changes the nodes NAMES names (a host list), in one transaction, and
prints every field it changed with its value before and after. Setting
--image, even to the image a node already has, moves it to what the
reference resolves to now (a node otherwise keeps booting the digest it was
given); --repin does only that. --inherit kernel-args or modules resets
those to what the node's profiles and the configuration say.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			st, err := sf.settings(f)
			if err != nil {
				return err
			}
			str := func(name, v string) *string {
				if !f.Changed(name) {
					return nil
				}
				return &v
			}
			req.Image, req.BootFile, req.Network = str("image", st.Image), str("boot-file", st.BootFile), str("network", st.Network)
			req.RootMode, req.RootSize = str("root-mode", sf.rootMode), str("root-size", sf.rootSize)
			req.KernelArgs, req.Modules = st.KernelArgs, st.Modules
			req.Hostname, req.MAC, req.IP = str("hostname", hostname), str("mac", mac), str("ip", ip)
			if f.Changed("profile") {
				p := slices.Clone(profiles)
				if p == nil {
					p = []string{}
				}
				req.Profiles = &p
			}
			req.Tags, req.Values, req.Untag, req.Unvalue = st.Tags, st.Values, untag, unvalue
			for _, i := range inherit {
				req.Inherit = append(req.Inherit, strings.ReplaceAll(i, "kernel-args", "kernelArgs"))
			}
			changes, err := g.client().SetNodes(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return g.print(changes, func() error { return printChanges(g.stdout, changes, req.DryRun) })
		},
	}
	f := c.Flags()
	sf.add(f)
	f.StringSliceVar(&profiles, "profile", nil, "replace the profile list, in order (repeatable or comma-separated; \"\" for none)")
	f.StringVar(&hostname, "hostname", "", "host name (one node)")
	f.StringVar(&mac, "mac", "", "MAC of the first interface (one node)")
	f.StringVar(&ip, "ip", "", "address of the first interface (one node)")
	f.StringArrayVar(&untag, "untag", nil, "remove tag KEY (repeatable)")
	f.StringArrayVar(&unvalue, "unvalue", nil, "remove template value KEY (repeatable)")
	f.StringSliceVar(&inherit, "inherit", nil, "reset kernel-args or modules to the inherited value")
	f.BoolVar(&req.Repin, "repin", false, "move the nodes to what their image reference resolves to now")
	f.BoolVar(&req.DryRun, "dry-run", false, "show the changes without making them")
	return c
}

func nodeRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAMES",
		Aliases: []string{"delete"},
		Short:   "Remove nodes (a host list) from the inventory, in one transaction; their MACs are then ignored by DHCP",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().DeleteNodes(cmd.Context(), args[0])
		},
	}
}

func nodeListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list [NAMES]",
		Aliases: []string{"ls"},
		Short:   "List nodes with their boot state",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			names := ""
			if len(args) == 1 {
				names = args[0]
			}
			if g.output == "table" {
				rows, err := g.client().ListRows(cmd.Context(), names)
				if err != nil {
					return err
				}
				return printRows(g.stdout, rows)
			}
			ns, err := g.client().ListNodes(cmd.Context(), names)
			if err != nil {
				return err
			}
			return g.print(ns, func() error { return printNodes(g.stdout, ns) })
		},
	}
}

func nodeShowCmd(g *globals) *cobra.Command {
	var bootID int
	c := &cobra.Command{
		Use:   "show NAME [--boot K]",
		Short: "Show a node: its effective values and where each came from, its state, and its current boot's timeline (or boot K's)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bootID != 0 {
				b, err := g.client().GetBoot(cmd.Context(), args[0], bootID)
				if err != nil {
					return err
				}
				return g.print(b, func() error { return printBoot(g.stdout, args[0], b) })
			}
			n, err := g.client().GetNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(n, func() error { return printNode(g.stdout, n) })
		},
	}
	c.Flags().IntVar(&bootID, "boot", 0, "show boot `K` (its number, as `node show` lists the boots kept) instead of the current one")
	return c
}

func nodeTimelineCmd(g *globals) *cobra.Command {
	var bootID int
	c := &cobra.Command{
		Use:   "timeline NAME [--boot K]",
		Short: "Show a node's current boot timeline (or boot K's): every DHCP, TFTP and HTTP step and the agent's report",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var b api.Boot
			if bootID != 0 {
				var err error
				if b, err = g.client().GetBoot(cmd.Context(), args[0], bootID); err != nil {
					return err
				}
			} else {
				n, err := g.client().GetNode(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				b = n.Status.Boot
			}
			return g.print(b.Timeline, func() error { return printTimeline(g.stdout, b) })
		},
	}
	c.Flags().IntVar(&bootID, "boot", 0, "boot `K` instead of the current one")
	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printNodes(w io.Writer, ns []api.NodeStatus) error {
	rows := make([]api.NodeRow, len(ns))
	for i, n := range ns {
		r := api.NodeRow{Name: n.Name, Profiles: n.Profiles, Image: n.Image, State: n.Status.State, Boots: n.Status.Boots}
		if len(n.Interfaces) > 0 {
			r.IP, r.MAC, r.ClientID = n.Interfaces[0].IP, n.Interfaces[0].MAC, n.Interfaces[0].ClientID
		}
		if p := n.Status.Pin; p != nil {
			r.Image = p.Ref + "@" + p.Digest
		}
		if t := n.Status.Timeline; len(t) > 0 {
			r.Last = &t[len(t)-1]
		}
		rows[i] = r
	}
	return printRows(w, rows)
}

// printRows prints the node table.
func printRows(w io.Writer, rows []api.NodeRow) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIP\tMAC\tPROFILES\tIMAGE\tSTATE\tBOOTS\tLAST STEP")
	now := time.Now()
	for _, n := range rows {
		last := "-"
		if e := n.Last; e != nil {
			last = fmt.Sprintf("%s (%s ago)", e.Step, now.Sub(e.Time).Round(time.Second))
		}
		mac := orDash(n.MAC)
		if n.MAC == "" && n.ClientID != "" {
			mac = "(client id)"
		}
		img := n.Image
		if ref, d, ok := strings.Cut(img, "@"); ok {
			img = ref + "@" + shortDigest(d)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.Name, orDash(n.IP), mac, orDash(strings.Join(n.Profiles, ",")), orDash(img), n.State, n.Boots, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return bw.Flush()
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// printNode prints one node for a person: its effective plan with the
// source of each value, its state and report, and its current boot's
// timeline in seconds since the boot's first event.
func printNode(w io.Writer, n api.NodeStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", n.Name)
	fmt.Fprintf(tw, "State:\t%s\n", n.Status.State)
	if p := n.Plan; p != nil {
		src := func(k string) string {
			if s := p.Sources[k]; s != "" {
				return "\t(" + s + ")"
			}
			return ""
		}
		fmt.Fprintf(tw, "Hostname:\t%s%s\n", p.Hostname, src("hostname"))
		fmt.Fprintf(tw, "Profiles:\t%s\n", orDash(strings.Join(p.Profiles, " -> ")))
		for i, ifc := range p.Interfaces {
			id := ifc.MAC
			if id == "" {
				id = "client id " + ifc.ClientID
			}
			key := fmt.Sprintf("interfaces[%d]", i)
			fmt.Fprintf(tw, "Interface %d:\t%s %s %s%s\n", i, orDash(ifc.Name), id, orDash(ifc.Address), src(key+".prefix"))
			if ifc.Gateway != "" {
				fmt.Fprintf(tw, "  gateway:\t%s%s\n", ifc.Gateway, src(key+".gateway"))
			}
			if len(ifc.DNS) > 0 {
				fmt.Fprintf(tw, "  dns:\t%s%s\n", strings.Join(ifc.DNS, " "), src(key+".dns"))
			}
			if ifc.MTU != 0 {
				fmt.Fprintf(tw, "  mtu:\t%d%s\n", ifc.MTU, src(key+".mtu"))
			}
		}
		digest := "(resolved at its next boot)"
		if p.Digest != "" {
			digest = p.Digest + " (" + p.Sources["digest"] + ")"
		}
		fmt.Fprintf(tw, "Image:\t%s%s\n", p.Image, src("image"))
		fmt.Fprintf(tw, "Digest:\t%s\n", digest)
		fmt.Fprintf(tw, "Kernel args:\t%s%s\n", orDash(p.KernelArgs), src("kernel_args"))
		fmt.Fprintf(tw, "Modules:\t%s%s\n", orDash(strings.Join(p.Modules, " ")), src("modules"))
		if p.BootFile != "" {
			fmt.Fprintf(tw, "Boot file:\t%s%s\n", p.BootFile, src("boot_file"))
		}
		fmt.Fprintf(tw, "Root mode:\t%s%s\n", p.Root.Mode, src("root.mode"))
		fmt.Fprintf(tw, "Root cap:\t%s%s\n", orDash(p.Root.Size), src("root.size"))
		fmt.Fprintf(tw, "Network:\t%s%s\n", p.Network, src("network"))
		for _, k := range sortedKeys(p.Tags) {
			fmt.Fprintf(tw, "Tag %s:\t%s%s\n", k, p.Tags[k], src("tags."+k))
		}
		for _, k := range sortedKeys(p.Values) {
			fmt.Fprintf(tw, "Value %s:\t%s%s\n", k, p.Values[k], src("values."+k))
		}
	} else if n.PlanError != "" {
		fmt.Fprintf(tw, "Plan:\tnone: %s\n", printable(n.PlanError))
	}
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

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func printReport(tw io.Writer, r *api.Report) {
	if r == nil {
		return
	}
	digest := r.ImageDigest
	if digest == "" {
		digest = "unknown (the node's image content " + orDash(r.ContentDigest) + " matches no image)"
	}
	fmt.Fprintf(tw, "Running:\t%s %s\n", orDash(r.ImageName), digest)
	fmt.Fprintf(tw, "Kernel:\t%s\n", orDash(printable(r.Kernel)))
	fmt.Fprintf(tw, "Memory:\t%d MiB\n", r.MemTotalBytes>>20)
	fmt.Fprintf(tw, "Reported:\t%s (node uptime %.1fs)\n", r.Received.Local().Format(time.DateTime), r.UptimeSeconds)
	if r.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", printable(r.Error))
	}
	printRegistration(tw, r)
}

// printBoot prints one boot of node name.
func printBoot(w io.Writer, name string, b api.Boot) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", name)
	fmt.Fprintf(tw, "State:\t%s\n", b.State)
	printReport(tw, b.Report)
	if err := tw.Flush(); err != nil {
		return err
	}
	return printTimeline(w, b)
}

func printTimeline(w io.Writer, b api.Boot) error {
	if len(b.Timeline) == 0 {
		_, err := fmt.Fprintln(w, "Timeline: no boot seen yet")
		return err
	}
	fmt.Fprintf(w, "Boot %d, started %s (seconds since the first event):\n", b.ID, b.Started.Local().Format(time.DateTime))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	t0 := b.Timeline[0].Time
	for _, e := range b.Timeline {
		fmt.Fprintf(tw, "%8.2f\t%s\t%s\n", e.Time.Sub(t0).Seconds(), e.Step, printable(e.Detail))
	}
	return tw.Flush()
}

// printChanges prints what a set changed, a line per field.
func printChanges(w io.Writer, cs []api.NodeChange, dry bool) error {
	if len(cs) == 0 {
		_, err := fmt.Fprintln(w, "no change")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tFIELD\tBEFORE\tAFTER")
	for _, c := range cs {
		for _, f := range c.Changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, f.Field, orDash(f.Before), orDash(f.After))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if dry {
		_, err := fmt.Fprintln(w, "(dry run: nothing changed)")
		return err
	}
	return nil
}

// printable replaces control characters (terminal escapes) in text a node
// sent, so that it is safe to print.
func printable(s string) string { return api.Printable(s) }
