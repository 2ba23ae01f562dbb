package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/apiclient"
)

// DefaultStateDir is where state lives unless --state-dir says otherwise.
const DefaultStateDir = "/var/lib/ramboot"

// Exit statuses scripts can branch on (docs/cli.md).
const (
	exitOK          = 0
	exitFailure     = 1 // the command failed (the head could not do it, a file could not be read)
	exitUsage       = 2 // unknown command or flag, wrong arguments
	exitInvalid     = 3 // the head refused the input as invalid; nothing changed
	exitNotFound    = 4 // no such node, profile, boot or image
	exitConflict    = 5 // a name, MAC or address already taken
	exitUnreachable = 6 // no daemon answers (not running, or not root)
	exitDenied      = 7 // the TCP API refused the token (missing, wrong, or read-only)
)

// usageError marks a command-line mistake.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// exitCode maps an error to the exit status.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, new(usageError)):
		return exitUsage
	case errors.Is(err, apiclient.ErrUnreachable):
		return exitUnreachable
	case errors.Is(err, apiclient.ErrInvalid):
		return exitInvalid
	case errors.Is(err, apiclient.ErrNotFound):
		return exitNotFound
	case errors.Is(err, apiclient.ErrConflict):
		return exitConflict
	case errors.Is(err, apiclient.ErrUnauthorized):
		return exitDenied
	}
	return exitFailure
}

// globals are the flags every command shares.
type globals struct {
	stateDir string
	output   string
	apiURL   string
	token    string
	caFile   string
	stdout   io.Writer
	stderr   io.Writer
}

func (g *globals) client() *apiclient.Client {
	if g.apiURL != "" {
		c, err := apiclient.NewTCP(g.apiURL, g.token, g.caFile)
		if err != nil {
			return apiclient.Broken(err)
		}
		return c
	}
	return apiclient.New(filepath.Join(g.stateDir, provisioner.SocketFile))
}

// printJSON writes v as indented JSON to stdout.
func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printYAML writes v as YAML with the keys its JSON form has, in the same
// order.
func (g *globals) printYAML(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return err
	}
	blockStyle(&n)
	enc := yaml.NewEncoder(g.stdout)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	return enc.Close()
}

// blockStyle turns JSON's flow style into YAML's block style.
func blockStyle(n *yaml.Node) {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = 0
	}
	if n.Kind == yaml.ScalarNode && n.Style == yaml.DoubleQuotedStyle {
		n.Style = 0 // quoted again by the encoder only where needed
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// print writes v as JSON or YAML for -o json|yaml, or calls table.
func (g *globals) print(v any, table func() error) error {
	switch g.output {
	case "json":
		return g.printJSON(v)
	case "yaml":
		return g.printYAML(v)
	}
	return table()
}

func (g *globals) checkOutput() error {
	switch g.output {
	case "table", "json", "yaml":
		return nil
	}
	return usageError{fmt.Errorf("--output %q: must be table, json or yaml", g.output)}
}

// run is the whole CLI: it parses args and runs one command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "ramboot",
		Short:         "Stateless, diskless cluster provisioner",
		Long:          "ramboot boots diskless nodes over the network into a RAM root: `ramboot serve` runs the head's DHCP, TFTP and HTTP services; the other commands manage nodes, profiles and images.",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			// The state directory is made on first use by any command, so
			// that `image build` before any `serve` works on a fresh head.
			if err := os.MkdirAll(g.stateDir, 0o700); err != nil && needsStateDir(cmd) {
				return fmt.Errorf("create state directory: %w", err)
			}
			return nil
		},
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.stateDir, "state-dir", DefaultStateDir, "state directory (database, images, admin socket)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	pf.StringVar(&g.apiURL, "api", os.Getenv("RAMBOOT_API"), "admin API over TCP (https://head:8443) instead of the state directory's socket; $RAMBOOT_API")
	pf.StringVar(&g.token, "token-file", os.Getenv("RAMBOOT_TOKEN_FILE"), "file holding the bearer token for --api; $RAMBOOT_TOKEN_FILE")
	pf.StringVar(&g.caFile, "ca-file", os.Getenv("RAMBOOT_CA_FILE"), "CA certificate to verify --api's server with; $RAMBOOT_CA_FILE (default: the system's)")
	root.AddCommand(commands(g)...)
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil && cmd != nil && isArgsError(err) {
		return usageError{err}
	}
	return err
}

// commands returns the CLI's commands.
func commands(g *globals) []*cobra.Command {
	return []*cobra.Command{serveCmd(g), nodeCmd(g), profileCmd(g), applyCmd(g), exportCmd(g), statusCmd(g), overlayCmd(g),
		bootCmd(g), imageCmd(g), stateCmd(g), versionCmd(g)}
}

// isArgsError tells cobra's argument-count errors, which it returns as
// plain errors.
func isArgsError(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "accepts ") || strings.HasPrefix(msg, "requires ") || strings.HasPrefix(msg, "unknown command") ||
		strings.HasPrefix(msg, "required flag")
}

// needsStateDir reports whether cmd works on the state directory itself
// (not only through the daemon's API).
func needsStateDir(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		switch c.Name() {
		case "serve", "image", "state":
			return true
		}
	}
	return false
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
			return g.print(map[string]string{"version": v}, func() error {
				_, err := fmt.Fprintln(g.stdout, "ramboot", v)
				return err
			})
		},
	}
}

// newLogger returns the daemon's logger at level.
func newLogger(w io.Writer, level *slog.LevelVar) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// levelVar returns a LevelVar set to level (validated by the
// configuration).
func levelVar(level string) *slog.LevelVar {
	v := new(slog.LevelVar)
	var l slog.Level
	_ = l.UnmarshalText([]byte(strings.ToUpper(level)))
	v.Set(l)
	return v
}

// readInput reads a file, or standard input for "-".
func readInput(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")), nil
}
