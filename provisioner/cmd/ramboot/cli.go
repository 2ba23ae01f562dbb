package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/apiclient"
)

// DefaultStateDir is where state lives unless --state-dir says otherwise.
const DefaultStateDir = "/var/lib/ramboot"

// globals are the flags every command shares.
type globals struct {
	stateDir string
	output   string
	stdout   io.Writer
	stderr   io.Writer
}

func (g *globals) client() *apiclient.Client {
	return apiclient.New(filepath.Join(g.stateDir, provisioner.SocketFile))
}

// printJSON writes v as indented JSON to stdout.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (g *globals) checkOutput() error {
	switch g.output {
	case "table", "json":
		return nil
	}
	return fmt.Errorf("--output %q: must be table or json", g.output)
}

// run is the whole CLI: it parses args and runs one command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "ramboot",
		Short:         "Stateless, diskless cluster provisioner",
		Long:          "ramboot boots diskless nodes over the network into a RAM root: `ramboot serve` runs the head's DHCP, TFTP and HTTP services; the other commands manage nodes and images.",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return g.checkOutput()
		},
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", DefaultStateDir, "state directory (database, images, admin socket)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(serveCmd(g), nodeCmd(g), imageCmd(g), stateCmd(g), benchCmd(g), versionCmd(g))
	return root.ExecuteContext(ctx)
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			v := "devel"
			if bi, ok := debug.ReadBuildInfo(); ok {
				v = bi.Main.Version
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						v += " " + s.Value
					}
				}
			}
			if g.output == "json" {
				return g.printJSON(map[string]string{"version": v})
			}
			_, err := fmt.Fprintln(g.stdout, "ramboot", v)
			return err
		},
	}
}

// newLogger returns the daemon's logger at level.
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(strings.ToUpper(level))) // validated by config
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}
