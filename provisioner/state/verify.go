package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/ramboot/ramboot/provisioner/store"
)

// ErrInUse means another process holds the database open for writing: a
// daemon serving that state directory.
var ErrInUse = errors.New("in use by another process")

// DamageError says what is wrong with a state database file. The daemon
// never starts on such a file and never replaces it: Hint says how to
// recover.
type DamageError struct {
	// Path is the damaged file.
	Path string
	// Problem says what is wrong, e.g. "is empty (0 bytes)".
	Problem string
	// Err is the underlying error, if any.
	Err error
	// Hint says how to recover; set by callers that know the state
	// directory and its backups.
	Hint string
}

// Error names the file, the problem and, when set, how to recover.
func (e *DamageError) Error() string {
	s := "state database " + e.Path + " " + e.Problem
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Hint != "" {
		s += "\n" + e.Hint
	}
	return s
}

// Unwrap returns the underlying error.
func (e *DamageError) Unwrap() error { return e.Err }

// Summary describes a state database file that passed Verify.
type Summary struct {
	// Nodes counts the inventory's nodes.
	Nodes int `json:"nodes"`
	// Boots counts the earlier boots kept in the nodes' histories.
	Boots int `json:"boots"`
	// Bytes is the file's size.
	Bytes int64 `json:"bytes"`
	// TxID is the database's last committed transaction.
	TxID int `json:"txid"`
}

// panicked is a panic (or a memory fault) that bbolt raised on a damaged
// file, turned into an error.
type panicked struct{ v any }

func (p panicked) Error() string {
	return fmt.Sprintf("reading it crashed the database library: %v", p.v)
}

// contained runs fn with memory faults turned into panics and panics turned
// into errors. bbolt reads the file through mmap: it panics on some damaged
// pages, and a page past the end of a short file is a fault that would
// otherwise kill the process. After such a panic the bbolt handle fn had
// open is abandoned (its descriptor leaks); callers stop using the file.
func contained(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		debug.SetPanicOnFault(true)
		defer func() {
			if r := recover(); r != nil {
				done <- panicked{r}
			}
		}()
		done <- fn()
	}()
	return <-done
}

// bbolt's meta page: a 16-byte page header, then magic, version and page
// size, native byte order.
const (
	boltMagic       = 0xED0CDAED
	metaMagicOffset = 16
)

// pageSizeOf returns the page size the file's first meta page states, or
// the system's page size (bbolt's default) when it states none.
func pageSizeOf(f *os.File) int {
	var hdr [metaMagicOffset + 12]byte
	if _, err := f.ReadAt(hdr[:], 0); err == nil && binary.NativeEndian.Uint32(hdr[metaMagicOffset:]) == boltMagic {
		ps := int(binary.NativeEndian.Uint32(hdr[metaMagicOffset+8:]))
		if ps >= 1024 && ps <= 1<<24 && ps&(ps-1) == 0 {
			return ps
		}
	}
	return os.Getpagesize()
}

// Verify checks the database file at path without changing it: its header
// pages, its size against the pages it uses, every page of its tree
// (bbolt's consistency check) and every record in it. It returns an error
// wrapping fs.ErrNotExist when there is no file, one wrapping ErrInUse when
// a daemon holds it, and a *DamageError for an empty, truncated or damaged
// file. It never panics, whatever the file holds.
func Verify(path string) (Summary, error) {
	var sum Summary
	f, err := os.Open(path)
	if err != nil {
		return sum, fmt.Errorf("open state database: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return sum, fmt.Errorf("stat state database: %w", err)
	}
	damage := func(problem string, err error) (Summary, error) {
		return Summary{}, &DamageError{Path: path, Problem: problem, Err: err}
	}
	sum.Bytes = fi.Size()
	switch ps := pageSizeOf(f); {
	case !fi.Mode().IsRegular():
		return damage("is not a regular file", nil)
	case fi.Size() == 0:
		return damage("is empty (0 bytes), as a crash or a full disk can leave it; it holds no inventory", nil)
	case fi.Size() < int64(2*ps):
		return damage(fmt.Sprintf("is truncated: %d bytes, less than its two %d-byte header pages", fi.Size(), ps), nil)
	}
	err = contained(func() error {
		// A first look, without the free-page list: the size check must
		// come before anything reads a page that may lie past the end.
		bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			return err
		}
		defer bdb.Close()
		return bdb.View(func(tx *bolt.Tx) error {
			if need := tx.Size(); need > fi.Size() {
				return &DamageError{Path: path, Problem: fmt.Sprintf("is truncated: %d bytes on disk, but its pages reach %d bytes", fi.Size(), need)}
			}
			return nil
		})
	})
	if err == nil {
		err = contained(func() error {
			bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second, PreLoadFreelist: true})
			if err != nil {
				return err
			}
			defer bdb.Close()
			return bdb.View(func(tx *bolt.Tx) error { return check(tx, &sum) })
		})
	}
	var de *DamageError
	switch {
	case err == nil:
		return sum, nil
	case errors.As(err, &de):
		if de.Path == "" {
			de.Path = path
		}
		return Summary{}, de
	case errors.Is(err, berrors.ErrTimeout):
		return Summary{}, fmt.Errorf("state database %s: %w (is a ramboot daemon serving this state directory?)", path, ErrInUse)
	case errors.Is(err, berrors.ErrInvalid):
		return damage("is not a bbolt database, or both of its header pages are damaged", nil)
	case errors.Is(err, berrors.ErrChecksum):
		return damage("has damaged header pages (checksum mismatch)", nil)
	case errors.Is(err, berrors.ErrVersionMismatch):
		return damage("was written in an unknown bbolt format version", nil)
	case errors.As(err, new(panicked)):
		return damage("is damaged", err)
	}
	return damage("cannot be read", err)
}

// check walks every bucket and record of tx in this goroutine (where a
// fault is contained), decodes the records, then runs bbolt's own
// consistency check, which is safe once every page it reaches was read.
func check(tx *bolt.Tx, sum *Summary) error {
	sum.TxID = int(tx.ID())
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		switch string(name) {
		case string(store.BucketKV):
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					return fmt.Errorf("key %q is a bucket, not a value", k)
				}
				_, val, ok := store.Decode(v)
				if !ok {
					return fmt.Errorf("key %q: value too short for its revision", k)
				}
				return checkValue(string(k), val, sum)
			})
		case "nodes", "boots": // the first layout, before the store
			return b.ForEach(func(k, v []byte) error {
				return checkValue(string(name)+"/"+string(k), v, sum)
			})
		}
		return walk(b) // a bucket of a later version: read it all the same
	})
	if err != nil {
		return &DamageError{Problem: "holds a record that cannot be read", Err: err}
	}
	var errs []error
	for err := range tx.Check() {
		if len(errs) < 3 {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return &DamageError{Problem: "failed its consistency check", Err: errors.Join(errs...)}
	}
	return nil
}

// checkValue decodes the value stored under key k, by its prefix, and
// counts it in sum.
func checkValue(k string, v []byte, sum *Summary) error {
	switch {
	case strings.HasPrefix(k, keyNodes):
		name := strings.TrimPrefix(k, keyNodes)
		var lr legacyRecord
		if err := json.Unmarshal(v, &lr); err != nil {
			return fmt.Errorf("decode node %q: %w", name, err)
		}
		n := lr.Node
		if n == nil {
			n = new(Node)
			if err := json.Unmarshal(v, n); err != nil {
				return fmt.Errorf("decode node %q: %w", name, err)
			}
		}
		if n.Name != name {
			return fmt.Errorf("node %q holds the record of %q", name, n.Name)
		}
		sum.Nodes++
	case strings.HasPrefix(k, keyStatus):
		var s statusRecord
		return decodeStatus(strings.TrimPrefix(k, keyStatus), v, &s)
	case strings.HasPrefix(k, keyBoots):
		var bt Boot
		if json.Unmarshal(v, &bt) != nil {
			return fmt.Errorf("boot %q cannot be decoded", k)
		}
		sum.Boots++
	}
	return nil
}

func walk(b *bolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				return walk(nb)
			}
		}
		return nil
	})
}

// copyVerified copies the database file src to dst with WriteFileAtomic
// after checking it, and checks the copy before it replaces dst.
func copyVerified(src, dst string) (Summary, error) {
	if _, err := Verify(src); err != nil {
		return Summary{}, err
	}
	f, err := os.Open(src)
	if err != nil {
		return Summary{}, fmt.Errorf("open %s: %w", src, err)
	}
	defer f.Close()
	return WriteFileAtomic(dst, func(w io.Writer) error {
		_, err := io.Copy(w, f)
		return err
	})
}

// WriteFileAtomic writes a database file to path: fill writes it to a
// temporary file beside path, which is synced and verified before it is
// renamed over path and the directory synced. A failure at any point
// leaves path as it was.
func WriteFileAtomic(path string, fill func(io.Writer) error) (Summary, error) {
	var sum Summary
	err := WritePrivateFile(path, fill, func(tmp string) error {
		var err error
		if sum, err = Verify(tmp); err != nil {
			return fmt.Errorf("the copy does not verify: %w", err)
		}
		return nil
	})
	return sum, err
}

// WritePrivateFile writes path through fill: into a temporary file beside
// it, mode 0600, synced and, when check is not nil, checked by name,
// then renamed over path and the directory synced; so path is never seen
// half-written nor readable by others, and a failure at any point leaves
// it as it was.
func WritePrivateFile(path string, fill func(io.Writer) error, check func(tmp string) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	err = tmp.Chmod(0o600)
	if err == nil {
		err = fill(tmp)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		err = check(tmp.Name())
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = store.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
