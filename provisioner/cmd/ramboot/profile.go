package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner/api"
)

func profileCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "profile", Short: "Manage profiles: named settings that nodes and other profiles inherit, in order"}
	c.AddCommand(profileAddCmd(g), profileSetCmd(g), profileRmCmd(g), profileListCmd(g), profileShowCmd(g))
	return c
}

func profileAddCmd(g *globals) *cobra.Command {
	var sf settingsFlags
	var inherits []string
	c := &cobra.Command{
		Use:   "add NAME [--inherit P]... [settings]",
		Short: "Add a profile",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := sf.settings(cmd.Flags())
			if err != nil {
				return err
			}
			p, err := g.client().AddProfile(cmd.Context(), api.Profile{Name: args[0], Inherits: inherits, Settings: st})
			if err != nil {
				return err
			}
			return g.print(p, func() error { return printProfiles(g.stdout, []api.Profile{p}) })
		},
	}
	sf.add(c.Flags())
	c.Flags().StringSliceVar(&inherits, "inherit", nil, "profiles it inherits, in order (repeatable or comma-separated)")
	return c
}

func profileSetCmd(g *globals) *cobra.Command {
	var sf settingsFlags
	var inherits, untag, unvalue, reset []string
	var dry bool
	c := &cobra.Command{
		Use:   "set NAME [flags]",
		Short: "Change a profile and show each changed field before and after; every node that inherits it follows",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := g.client()
			p, err := cl.GetProfile(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			f := cmd.Flags()
			st, err := sf.settings(f)
			if err != nil {
				return err
			}
			if f.Changed("image") {
				p.Image = st.Image
			}
			if st.KernelArgs != nil {
				p.KernelArgs = st.KernelArgs
			}
			if st.Modules != nil {
				p.Modules = st.Modules
			}
			if f.Changed("boot-file") {
				p.BootFile = st.BootFile
			}
			if f.Changed("network") {
				p.Network = st.Network
			}
			if f.Changed("root-mode") || f.Changed("root-size") {
				if p.Root == nil {
					p.Root = &api.Root{}
				}
				if f.Changed("root-mode") {
					p.Root.Mode = sf.rootMode
				}
				if f.Changed("root-size") {
					p.Root.Size = sf.rootSize
				}
			}
			if f.Changed("inherit") {
				p.Inherits = slices.Clone(inherits)
			}
			p.Tags = merge(p.Tags, st.Tags, untag)
			p.Values = merge(p.Values, st.Values, unvalue)
			for _, r := range reset {
				switch r {
				case "kernel-args":
					p.KernelArgs = nil
				case "modules":
					p.Modules = nil
				default:
					return usageError{fmt.Errorf("--reset %q: only kernel-args and modules", r)}
				}
			}
			ch, err := cl.PutProfile(cmd.Context(), p, dry)
			if err != nil {
				return err
			}
			return g.print(ch, func() error { return printChanges(g.stdout, []api.NodeChange{ch}, dry) })
		},
	}
	f := c.Flags()
	sf.add(f)
	f.StringSliceVar(&inherits, "inherit", nil, "replace the profiles it inherits, in order")
	f.StringArrayVar(&untag, "untag", nil, "remove tag KEY (repeatable)")
	f.StringArrayVar(&unvalue, "unvalue", nil, "remove template value KEY (repeatable)")
	f.StringSliceVar(&reset, "reset", nil, "reset kernel-args or modules to inherited")
	f.BoolVar(&dry, "dry-run", false, "show the changes without making them")
	return c
}

// merge sets and removes keys of a map.
func merge(m, set map[string]string, unset []string) map[string]string {
	if len(set) > 0 && m == nil {
		m = map[string]string{}
	}
	for k, v := range set {
		m[k] = v
	}
	for _, k := range unset {
		delete(m, k)
	}
	return m
}

func profileRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Remove a profile that no node or profile uses",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().DeleteProfile(cmd.Context(), args[0])
		},
	}
}

func profileListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List profiles",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := g.client().ListProfiles(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(ps, func() error { return printProfiles(g.stdout, ps) })
		},
	}
}

func profileShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a profile's settings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.client().GetProfile(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(p, func() error { return g.printYAML(p) })
		},
	}
}

func printProfiles(w io.Writer, ps []api.Profile) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tINHERITS\tIMAGE\tKERNEL ARGS\tMODULES\tNETWORK\tTAGS")
	for _, p := range ps {
		ka, mods := "-", "-"
		if p.KernelArgs != nil {
			ka = *p.KernelArgs
		}
		if p.Modules != nil {
			mods = strings.Join(*p.Modules, ",")
		}
		var tags []string
		for _, k := range sortedKeys(p.Tags) {
			tags = append(tags, k+"="+p.Tags[k])
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, orDash(strings.Join(p.Inherits, ",")), orDash(p.Image), orDash(ka), orDash(mods), orDash(p.Network), orDash(strings.Join(tags, ",")))
	}
	return tw.Flush()
}
