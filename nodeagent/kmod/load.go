package kmod

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Loader loads kernel modules, each after its dependencies, from one module
// tree. The zero value is not usable: set Dir.
type Loader struct {
	// Dir is the module tree, e.g. "/lib/modules/6.1.0-56-amd64". A
	// missing Dir is an empty tree: then only built-in modules resolve.
	Dir string
	// SysModule is the directory where the running kernel lists its
	// loaded modules and those built-in modules that have parameters; a
	// module found there counts as present. Empty means "/sys/module".
	SysModule string
	// Insert inserts one module file into the running kernel and treats
	// "already loaded" as success. Nil means the package's Insert
	// (finit_module).
	Insert func(path string) error
	// Logger receives one Debug record per module. Nil discards.
	Logger *slog.Logger
}

// Plan indexes Dir and returns the load order for names (see
// Index.Resolve) without loading anything.
func (l *Loader) Plan(names []string) ([]Module, error) {
	if len(names) == 0 {
		return nil, nil
	}
	ix, err := Open(l.Dir)
	if err != nil {
		return nil, err
	}
	return ix.Resolve(names, l.present)
}

func (l *Loader) present(name string) bool {
	dir := l.SysModule
	if dir == "" {
		dir = "/sys/module"
	}
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

// Load loads each of names with its dependencies, in load order, and
// returns the modules it went through (built-in ones included). A name
// that cannot be resolved or loaded does not stop the others: the network
// driver should still load when another module is missing, so that the
// node can report the problem. The modules that depend on a failed module
// are skipped. Load returns every error, joined.
func (l *Loader) Load(ctx context.Context, names []string) ([]Module, error) {
	if len(names) == 0 {
		return nil, nil
	}
	ix, err := Open(l.Dir)
	if err != nil {
		return nil, err
	}
	return l.load(ctx, ix, names, map[string]bool{}, false)
}

// load loads names from ix; see Load. state records the modules gone
// through (true: loaded, false: failed), across calls that share it. With
// forDevices, a module that finds no device to drive (ENODEV, ENXIO) is
// skipped without an error, as udev and modprobe treat an alias match.
func (l *Loader) load(ctx context.Context, ix *Index, names []string, state map[string]bool, forDevices bool) ([]Module, error) {
	insert := l.Insert
	if insert == nil {
		insert = Insert
	}
	log := l.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		done []Module
		errs []error
	)
	for _, name := range names {
		plan, err := ix.Resolve([]string{name}, l.present)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, m := range plan {
			if ok, seen := state[m.Name]; seen {
				if !ok {
					break // already reported
				}
				continue
			}
			if err := ctx.Err(); err != nil {
				return done, errors.Join(append(errs, fmt.Errorf("load module %s: %w", m.Name, err))...)
			}
			if !m.Builtin {
				start := time.Now()
				if err := insert(m.Path); err != nil {
					state[m.Name] = false
					if forDevices && NoDevice(err) {
						log.Debug("module found no device", "module", m.Name, "err", err)
						break
					}
					errs = append(errs, err)
					break
				}
				log.Debug("module loaded", "module", m.Name, "path", m.Path, "dur", time.Since(start))
			}
			state[m.Name] = true
			done = append(done, m)
		}
	}
	return done, errors.Join(errs...)
}

// NoDevice reports whether a module's init refused to load because there
// is no device for it to drive (ENODEV, ENXIO): CPU-feature and platform
// drivers matched by a broad alias do that on hardware they do not fit.
func NoDevice(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO)
}

// Insert loads the module file at path into the running kernel with
// finit_module(2); a module that is already loaded is success. A compressed
// file (.ko.xz, .ko.zst, .ko.gz) is handed to the kernel with
// MODULE_INIT_COMPRESSED_FILE, which needs CONFIG_MODULE_DECOMPRESS and the
// matching compression (Linux 5.17+); when the kernel refuses the flag
// (EINVAL, EOPNOTSUPP) Insert decompresses the file itself and uses
// init_module(2).
func Insert(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("insert module: %w", err)
	}
	defer f.Close()
	flags := 0
	if compressed(path) {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err != nil && !errors.Is(err, unix.EEXIST) &&
		(errors.Is(err, unix.ENOSYS) || flags != 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP))) {
		err = initModule(path, f)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("insert module %s: %w", path, err)
	}
	return nil
}

// initModule loads the module in f with init_module(2), decompressing it
// first if path says so.
func initModule(path string, f *os.File) error {
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	var (
		b   []byte
		err error
	)
	if compressed(path) {
		b, err = decompress(path, f)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return err
	}
	return unix.InitModule(b, "")
}
