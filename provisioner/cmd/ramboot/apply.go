package main

import (
	"bytes"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/ramboot/ramboot/provisioner/api"
)

func applyCmd(g *globals) *cobra.Command {
	var file string
	var req api.ApplyRequest
	c := &cobra.Command{
		Use:   "apply -f cluster.yaml [--prune] [--dry-run]",
		Short: "Make the inventory what a cluster file says, in one transaction (creates and updates; --prune removes)",
		Long: `apply reads a cluster file (YAML: profiles and nodes, docs/cli.md) and makes
the inventory match it in one transaction: every profile and node it lists
is created or updated; with --prune, nodes and profiles it does not list are
removed. A node entry's name may be a host list (n[001-128]) with MAC and IP
ranges on its interfaces (10.0.0.101+). Anything invalid anywhere (an
address outside the subnets, a duplicate MAC, an unknown profile, a profile
cycle) refuses the whole file, naming each problem, and changes nothing.
--dry-run prints what would change, field by field. "-f -" reads standard
input. ` + "`ramboot export`" + ` writes a file apply takes back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := readInput(file)
			if err != nil {
				return err
			}
			if req.Cluster, err = parseCluster(file, b); err != nil {
				return err
			}
			res, err := g.client().Apply(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.print(res, func() error { return printApply(g.stdout, res) })
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "cluster file (YAML), or - for standard input (required)")
	c.Flags().BoolVar(&req.Prune, "prune", false, "remove nodes and profiles the file does not list")
	c.Flags().BoolVar(&req.DryRun, "dry-run", false, "show what would change, field by field, and change nothing")
	_ = c.MarkFlagRequired("file")
	return c
}

// parseCluster decodes a cluster file strictly: an unknown key is an error
// naming its line.
func parseCluster(name string, b []byte) (api.Cluster, error) {
	var c api.Cluster
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && err != io.EOF {
		return api.Cluster{}, usageError{fmt.Errorf("%s: %w", name, err)}
	}
	return c, nil
}

func printApply(w io.Writer, res api.ApplyResult) error {
	verb := "applied"
	if res.DryRun {
		verb = "dry run, nothing changed"
	}
	add, upd, rm := 0, 0, 0
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, kind := range []struct {
		name string
		cs   []api.ObjectChange
	}{{"profile", res.Profiles}, {"node", res.Nodes}} {
		for _, c := range kind.cs {
			switch c.Action {
			case "add":
				add++
				fmt.Fprintf(tw, "+ %s %s\t\t\t\n", kind.name, c.Name)
			case "remove":
				rm++
				fmt.Fprintf(tw, "- %s %s\t\t\t\n", kind.name, c.Name)
			default:
				upd++
				for _, f := range c.Changes {
					fmt.Fprintf(tw, "~ %s %s\t%s\t%s\t-> %s\n", kind.name, c.Name, f.Field, orDash(f.Before), orDash(f.After))
				}
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%s: %d added, %d updated, %d removed\n", verb, add, upd, rm)
	return err
}

func exportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: "Print the inventory as a cluster file (YAML) that `ramboot apply -f` takes back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client().Export(cmd.Context())
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(c)
			}
			fmt.Fprintln(g.stdout, "# ramboot cluster file: `ramboot apply -f FILE` takes it back")
			enc := yaml.NewEncoder(g.stdout)
			enc.SetIndent(2)
			if err := enc.Encode(c); err != nil {
				return err
			}
			return enc.Close()
		},
	}
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Count nodes by state (booted, booting, stalled, failed, never seen) and list the stragglers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(s, func() error {
				tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "STATE\tNODES\tWHICH")
				for _, st := range []struct{ key, label string }{
					{"booted", "booted"}, {"booting", "booting"}, {"stalled", "stalled"}, {"failed", "failed"}, {"down", "down"}, {"new", "never seen"},
				} {
					n, ok := s.Counts[st.key]
					if !ok {
						continue
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\n", st.label, n, s.Stragglers[st.key])
				}
				fmt.Fprintf(tw, "total\t%d\t\n", s.Nodes)
				return tw.Flush()
			})
		},
	}
}
