package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/config"
)

func stateCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "state", Short: "Back up, restore, check, export and import the state (the inventory and boot history)"}
	c.AddCommand(stateBackupCmd(g), stateRestoreCmd(g), stateCheckCmd(g), stateExportCmd(g), stateImportCmd(g))
	return c
}

func (g *globals) dbPath() string { return filepath.Join(g.stateDir, provisioner.DBFile) }

// daemonUp reports whether a daemon answers on the state directory's
// socket.
func (g *globals) daemonUp() bool {
	c, err := net.DialTimeout("unix", filepath.Join(g.stateDir, provisioner.SocketFile), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// stateResult is what the state commands print with -o json.
type stateResult struct {
	File string `json:"file"`
	// From is the file a restore copied.
	From string `json:"from,omitempty"`
	// Kept is where a restore kept the database it replaced.
	Kept string `json:"kept,omitempty"`
	// Online is true when a backup went through the running daemon.
	Online bool `json:"online"`
	provisioner.StateSummary
}

func (g *globals) printState(verb string, r stateResult) error {
	if g.output == "json" {
		return g.printJSON(r)
	}
	how := ""
	if r.Online {
		how = " (a consistent copy, through the running daemon)"
	}
	_, err := fmt.Fprintf(g.stdout, "%s %s%s: %d nodes, %d earlier boots, %d bytes, transaction %d\n", verb, r.File, how, r.Nodes, r.Boots, r.Bytes, r.TxID)
	if err == nil && r.Kept != "" {
		_, err = fmt.Fprintf(g.stdout, "the database it replaced is kept as %s\n", r.Kept)
	}
	return err
}

func stateBackupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent, verified copy of the state database to FILE",
		Long: `backup copies the state database to FILE. While a daemon serves the state
directory the copy comes through it, from one read transaction, so it is
consistent while the daemon goes on working; otherwise the file is copied
directly. The copy is written beside FILE, synced and verified before it
takes FILE's name: FILE is never left half-written.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dst := args[0]
			if g.daemonUp() {
				sum, err := provisioner.WriteStateFileAtomic(dst, func(w io.Writer) error {
					_, err := g.client().Backup(cmd.Context(), w)
					return err
				})
				if err != nil {
					return err
				}
				return g.printState("wrote", stateResult{File: dst, Online: true, StateSummary: sum})
			}
			sum, err := provisioner.BackupStateFile(g.dbPath(), dst)
			if err != nil {
				return err
			}
			return g.printState("wrote", stateResult{File: dst, StateSummary: sum})
		},
	}
}

func stateRestoreCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the state database with FILE, verified (the daemon must be stopped)",
		Long: `restore checks FILE and copies it over the state directory's database. It
refuses while a daemon serves the state directory. The database it replaces,
damaged or not, is kept beside it as ramboot.db.replaced-TIME.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.daemonUp() {
				return fmt.Errorf("a ramboot daemon serves %s: stop it before restoring its database", g.stateDir)
			}
			if err := os.MkdirAll(g.stateDir, 0o700); err != nil {
				return fmt.Errorf("create state directory: %w", err)
			}
			sum, kept, err := provisioner.RestoreState(args[0], g.dbPath())
			if err != nil {
				return err
			}
			return g.printState("restored", stateResult{File: g.dbPath(), From: args[0], Kept: kept, StateSummary: sum})
		},
	}
}

func stateCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check [FILE]",
		Short: "Check a state database file (default: the state directory's) without changing it",
		Long: `check verifies a database file: its header pages, its size against the
pages it uses, every page of its tree and every record. It exits 1, saying
what is wrong, for an empty, truncated or damaged file. Without FILE it
checks the state directory's database; while a daemon serves it, it checks a
consistent copy taken through the daemon.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				sum, err := provisioner.VerifyState(args[0])
				if err != nil {
					return err
				}
				return g.printState("ok", stateResult{File: args[0], StateSummary: sum})
			}
			if !g.daemonUp() {
				sum, err := provisioner.VerifyState(g.dbPath())
				if err != nil {
					return err
				}
				return g.printState("ok", stateResult{File: g.dbPath(), StateSummary: sum})
			}
			tmp, err := os.MkdirTemp("", "ramboot-check-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			sum, err := provisioner.WriteStateFileAtomic(filepath.Join(tmp, "copy.db"), func(w io.Writer) error {
				_, err := g.client().Backup(cmd.Context(), w)
				return err
			})
			if err != nil {
				return err
			}
			return g.printState("ok", stateResult{File: g.dbPath(), Online: true, StateSummary: sum})
		},
	}
}

// stateConfig loads the configuration the state commands find the state
// backend in: --config over the embedded default, with --state-dir.
func (g *globals) stateConfig(cmd *cobra.Command, cfgPath string) (config.Config, error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return cfg, err
	}
	if cmd.Flags().Changed("state-dir") || cfgPath == "" {
		cfg.StateDir = g.stateDir
	}
	cfg.Interface = "-" // not needed here; Validate checks the rest
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// exportResult is what export and import print with -o json.
type exportResult struct {
	// Backend is the state backend read or written: bolt, etcd, or file
	// (export --from).
	Backend string `json:"backend"`
	provisioner.ExportSummary
}

func (g *globals) printExport(w io.Writer, verb string, r exportResult) error {
	if g.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	_, err := fmt.Fprintf(w, "%s %d keys (%s): %d nodes, %d profiles, %d earlier boots, %d nodes' SSH host keys, %d bytes, source revision %d\n",
		verb, r.Keys, r.Backend, r.Nodes, r.Profiles, r.Boots, r.HostKeys, r.Bytes, r.Rev)
	return err
}

func stateExportCmd(g *globals) *cobra.Command {
	var cfgPath, from, file string
	c := &cobra.Command{
		Use:   "export",
		Short: "Write the whole state to stdout (or --file) as a checked stream, for `ramboot state import`",
		Long: `export writes the inventory, every node's status (tokens included), the
boot histories and the nodes' SSH host keys to stdout as JSON lines ending in
a trailer with the key count and a SHA-256, whatever the backend
(state.backend in --config): read at one revision from etcd, or from a
verified copy of the bbolt database (taken through the running daemon while
one serves the state directory) with the host keys of the state directory's
ssh-host-keys/. --from exports a database file instead, such as a backup.
The summary goes to stderr. Moving a single head to etcd:

  ramboot state export | ramboot state import --config /etc/ramboot/etcd.yaml

The stream holds private keys and tokens: it is a secret. --file writes it
mode 0600 (through a temporary file, renamed once complete); a regular file
stdout is redirected to is set to mode 0600 too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.stateConfig(cmd, cfgPath)
			if err != nil {
				return err
			}
			var fill func(io.Writer) error
			backend := cfg.State.Backend
			switch {
			case from != "":
				backend = "file"
			case backend == "bolt" && g.daemonUp():
				fill = func(w io.Writer) error {
					_, err := g.client().Backup(cmd.Context(), w)
					return err
				}
			}
			var sum provisioner.ExportSummary
			if file != "" {
				err = provisioner.WritePrivateFile(file, func(w io.Writer) error {
					sum, err = provisioner.ExportState(cmd.Context(), cfg, from, fill, w)
					return err
				})
			} else {
				if f, ok := g.stdout.(*os.File); ok {
					if fi, serr := f.Stat(); serr == nil && fi.Mode().IsRegular() {
						if err := f.Chmod(0o600); err != nil {
							return fmt.Errorf("export to %s: make it private (mode 0600): %w", f.Name(), err)
						}
					}
				}
				sum, err = provisioner.ExportState(cmd.Context(), cfg, from, fill, g.stdout)
			}
			if err != nil {
				return err
			}
			return g.printExport(g.stderr, "exported", exportResult{Backend: backend, ExportSummary: sum})
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "write the stream to this file, mode 0600, instead of stdout")
	c.Flags().StringVarP(&cfgPath, "config", "c", "", "the daemon's configuration file (its state.backend and state.etcd keys)")
	c.Flags().StringVar(&from, "from", "", "export this bbolt database file (a backup) instead of the configured state")
	return c
}

func stateImportCmd(g *globals) *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:   "import [FILE]",
		Short: "Load a `ramboot state export` stream (FILE or stdin) into an empty state",
		Long: `import reads a stream written by ` + "`ramboot state export`" + ` from FILE or
stdin and writes it to the state backend of --config (state.backend): the
etcd cluster, or a new database in the state directory. The target must
hold no state. The whole stream is read and checked first (its format,
every record, the trailer's key count and checksum): a truncated or edited
stream changes nothing. On etcd the keys go in as one inventory change,
in chunks under a fence: heads serving the cluster meanwhile see all of it
or none.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.stateConfig(cmd, cfgPath)
			if err != nil {
				return err
			}
			if cfg.State.Backend == "bolt" && g.daemonUp() {
				return fmt.Errorf("a ramboot daemon serves %s: stop it before importing into its database", g.stateDir)
			}
			var r io.Reader = os.Stdin
			if len(args) == 1 && args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			sum, err := provisioner.ImportState(cmd.Context(), cfg, r)
			if err != nil {
				return err
			}
			return g.printExport(g.stdout, "imported", exportResult{Backend: cfg.State.Backend, ExportSummary: sum})
		},
	}
	c.Flags().StringVarP(&cfgPath, "config", "c", "", "the daemon's configuration file (its state.backend and state.etcd keys)")
	return c
}
