package hostkeys

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is a Store in a directory on the head (created 0700 on first use):
//
//	<Path>/<node>/ssh_host_ed25519_key       0600, OpenSSH private key
//	<Path>/<node>/ssh_host_ed25519_key.pub   0600, "ssh-ed25519 AAAA... root@<node>"
//	<Path>/<node>/ssh_host_ecdsa_key{,.pub}
//
// Names starting with "." are its temporary files. The zero value is not
// usable; set Path.
type Dir struct {
	// Path is the store's directory, e.g. "/var/lib/ramboot/ssh-host-keys".
	Path string
}

// tmpPrefix starts the names of directories being written or removed.
const tmpPrefix = ".tmp-"

// isNotExist reports whether err says a node has no keys.
func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// checkNode refuses names that are not a safe single path element.
func checkNode(node string) error {
	if node == "" || len(node) > 253 || node[0] == '.' {
		return fmt.Errorf("host keys: bad node name %q", node)
	}
	for i := 0; i < len(node); i++ {
		c := node[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("host keys: bad node name %q", node)
		}
	}
	return nil
}

// Load implements Store.
func (d *Dir) Load(ctx context.Context, node string) (Keys, error) {
	if err := checkNode(node); err != nil {
		return nil, err
	}
	dir := filepath.Join(d.Path, node)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load host keys of %s: %w", node, err)
	}
	var ks Keys
	for _, e := range ents {
		name := e.Name()
		t, ok := strings.CutPrefix(name, "ssh_host_")
		if !ok {
			continue
		}
		t, ok = strings.CutSuffix(t, "_key")
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("load host keys of %s: %w", node, err)
		}
		k, err := parseKey(Type(t), b)
		if err != nil {
			return nil, fmt.Errorf("load host keys of %s: %s: %w", node, name, err)
		}
		ks = append(ks, k)
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("load host keys of %s: no keys in %s: %w", node, dir, fs.ErrNotExist)
	}
	slices.SortFunc(ks, func(a, b Key) int { return typeOrder(a.Type) - typeOrder(b.Type) })
	return ks, nil
}

// typeOrder orders loaded keys as DefaultTypes, then RSA.
func typeOrder(t Type) int {
	switch t {
	case ED25519:
		return 0
	case ECDSA:
		return 1
	}
	return 2
}

// Create implements Store. It writes every new node's directory under a
// temporary name, syncs the file system once, renames the directories into
// place (never over an existing one) and syncs the store's directory.
func (d *Dir) Create(ctx context.Context, batch map[string]Keys) (map[string]Keys, error) {
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return nil, fmt.Errorf("host key store: %w", err)
	}
	d.removeStale()
	nodes := make([]string, 0, len(batch))
	for n := range batch {
		if err := checkNode(n); err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	tmps := make(map[string]string, len(nodes))
	defer func() {
		for _, t := range tmps {
			os.RemoveAll(t)
		}
	}()
	// A small batch syncs its own files; a large one syncs the file system
	// once, which also waits for other writers' dirty data (an image
	// upload), so it is worth it only when it replaces many syncs.
	each := len(nodes) <= syncEachMax
	for _, n := range nodes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t, err := d.writeTemp(n, batch[n], each)
		if err != nil {
			return nil, err
		}
		tmps[n] = t
	}
	root, err := os.Open(d.Path)
	if err != nil {
		return nil, fmt.Errorf("host key store: %w", err)
	}
	defer root.Close()
	if !each {
		if err := unix.Syncfs(int(root.Fd())); err != nil {
			return nil, fmt.Errorf("host key store: sync: %w", err)
		}
	}
	out := make(map[string]Keys, len(nodes))
	var lost []string
	for _, n := range nodes {
		err := unix.Renameat2(unix.AT_FDCWD, tmps[n], unix.AT_FDCWD, filepath.Join(d.Path, n), unix.RENAME_NOREPLACE)
		switch {
		case err == nil:
			delete(tmps, n)
			out[n] = batch[n]
		case errors.Is(err, unix.EEXIST):
			lost = append(lost, n) // another writer was first: its keys stand
		default:
			return nil, fmt.Errorf("store host keys of %s: %w", n, err)
		}
	}
	if err := root.Sync(); err != nil {
		return nil, fmt.Errorf("host key store: sync: %w", err)
	}
	for _, n := range lost {
		ks, err := d.Load(ctx, n)
		if err != nil {
			return nil, err
		}
		out[n] = ks
	}
	return out, nil
}

// staleAge is how old a temporary directory must be for Create to remove
// it: it was left by a writer that crashed.
const staleAge = time.Hour

// removeStale removes temporary directories left by crashed writers.
func (d *Dir) removeStale() {
	ents, err := os.ReadDir(d.Path)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tmpPrefix) {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleAge {
			os.RemoveAll(filepath.Join(d.Path, e.Name()))
		}
	}
}

// syncEachMax is the largest batch Create syncs file by file.
const syncEachMax = 16

// writeTemp writes a node's key files into a new temporary directory,
// syncing each file and the directory if sync is set.
func (d *Dir) writeTemp(node string, ks Keys, sync bool) (string, error) {
	if len(ks) == 0 {
		return "", fmt.Errorf("store host keys of %s: no keys", node)
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	tmp := filepath.Join(d.Path, tmpPrefix+node+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", fmt.Errorf("store host keys of %s: %w", node, err)
	}
	for _, k := range ks {
		priv, err := k.PrivateFile()
		if err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("store host keys of %s: %w", node, err)
		}
		for name, data := range map[string][]byte{k.FileName(): priv, k.FileName() + ".pub": k.PublicFile("root@" + node)} {
			if err := writeFile(filepath.Join(tmp, name), data, sync); err != nil {
				os.RemoveAll(tmp)
				return "", fmt.Errorf("store host keys of %s: %w", node, err)
			}
		}
	}
	if sync {
		if err := syncPath(tmp); err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("store host keys of %s: %w", node, err)
		}
	}
	return tmp, nil
}

func writeFile(name string, data []byte, sync bool) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func syncPath(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}

// Delete implements Store: the node's directory is renamed away (so a
// reader sees all of its keys or none) and then removed.
func (d *Dir) Delete(ctx context.Context, node string) error {
	if err := checkNode(node); err != nil {
		return err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	gone := filepath.Join(d.Path, tmpPrefix+"deleted-"+node+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Rename(filepath.Join(d.Path, node), gone); err != nil {
		if isNotExist(err) {
			return nil
		}
		return fmt.Errorf("delete host keys of %s: %w", node, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("delete host keys of %s: %w", node, err)
	}
	return nil
}
