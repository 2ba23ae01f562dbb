package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func overlayCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "overlay", Short: "Per-node overlays: the files a node gets over its image"}
	c.AddCommand(&cobra.Command{
		Use:   "render NODE [PATH]",
		Short: "Show a node's overlay as its next boot would get it (every file, or PATH's content), without booting it",
		Long: `render renders NODE's overlay through the running daemon, with the
templates, profiles and accounts it uses, and a placeholder instead of the
boot token. Without PATH it lists every file with its mode, owner, size and
where it came from; with PATH (etc/hosts) it prints that file. A template
that fails is an error naming the profile, the file and the line.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := ""
			if len(args) == 2 {
				path = args[1]
			}
			res, err := g.client().RenderOverlay(cmd.Context(), args[0], path)
			if err != nil {
				return err
			}
			return g.print(res, func() error {
				if res.Content != nil {
					_, err := fmt.Fprint(g.stdout, *res.Content)
					return err
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "MODE\tOWNER\tSIZE\tPATH\tSOURCE")
				for _, f := range res.Files {
					p := f.Path
					if f.Link != "" {
						p += " -> " + f.Link
					}
					fmt.Fprintf(tw, "%s\t%d:%d\t%d\t%s\t%s\n", f.Mode, f.UID, f.GID, f.Size, p, f.Source)
				}
				return tw.Flush()
			})
		},
	})
	return c
}
