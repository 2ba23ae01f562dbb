package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/state"
)

// ExportSummary counts what `ramboot state export` or `import` carried.
type ExportSummary = state.ExportSummary

// ErrStateNotEmpty means an import found state in its target.
var ErrStateNotEmpty = state.ErrNotEmpty

// ExportState writes the state cfg names (state.backend) to w as an export
// stream (see state.Export), the nodes' SSH host keys included (in etcd,
// or the state directory's ssh-host-keys/ for bbolt). For bbolt the stream is read from a verified
// copy of the database: the one fill writes (through the running daemon,
// `ramboot state backup`'s path) when fill is not nil, else a copy of the
// state directory's file. from, when set, is a database file to export
// instead (a backup).
func ExportState(ctx context.Context, cfg config.Config, from string, fill func(io.Writer) error, w io.Writer) (ExportSummary, error) {
	if from == "" && cfg.State.Backend == "etcd" {
		st, err := OpenEtcdStore(ctx, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return ExportSummary{}, err
		}
		defer st.Close()
		return state.Export(ctx, st, w, state.ExportOptions{}) // host keys are in etcd
	}
	tmp, err := os.MkdirTemp("", "ramboot-export-")
	if err != nil {
		return ExportSummary{}, err
	}
	defer os.RemoveAll(tmp)
	cp := filepath.Join(tmp, DBFile)
	switch {
	case from != "":
		_, err = state.BackupFile(from, cp)
	case fill != nil:
		_, err = state.WriteFileAtomic(cp, fill)
	default:
		src := filepath.Join(cfg.StateDir, DBFile)
		if _, serr := os.Stat(src); errors.Is(serr, fs.ErrNotExist) {
			return ExportSummary{}, fmt.Errorf("no state database in %s (state.backend bolt): nothing to export", cfg.StateDir)
		}
		_, err = state.BackupFile(src, cp)
	}
	if err != nil {
		return ExportSummary{}, err
	}
	db, err := state.Open(cp)
	if err != nil {
		return ExportSummary{}, err
	}
	defer db.Close()
	// A single head keeps the nodes' host keys in its state directory.
	return db.Export(ctx, w, state.ExportOptions{HostKeys: &hostkeys.Dir{Path: filepath.Join(cfg.StateDir, HostKeysDir)}})
}

// ImportState reads an export stream from r into the state cfg names,
// which must hold none (ErrStateNotEmpty): the etcd cluster, or a new
// database in the state directory (no daemon may serve it).
func ImportState(ctx context.Context, cfg config.Config, r io.Reader) (ExportSummary, error) {
	if cfg.State.Backend == "etcd" {
		st, err := OpenEtcdStore(ctx, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return ExportSummary{}, err
		}
		defer st.Close()
		return state.Import(ctx, st, r, state.ImportOptions{})
	}
	db, err := OpenState(cfg.StateDir, state.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		return ExportSummary{}, err
	}
	defer db.Close()
	return state.Import(ctx, db.Store(), r, state.ImportOptions{HostKeys: &hostkeys.Dir{Path: filepath.Join(cfg.StateDir, HostKeysDir)}})
}
