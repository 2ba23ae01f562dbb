package state

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// WriteSnapshot writes a consistent copy of the whole database to w from
// one read transaction, while writers go on. size, if not nil, is called
// with the copy's size before its first byte is written.
func (d *DB) WriteSnapshot(w io.Writer, size func(int64)) (int64, error) {
	if d.bolt == nil {
		return 0, ErrShared
	}
	return d.bolt.WriteSnapshot(w, size)
}

// ErrShared means a file operation (a backup of the database file) was
// asked of a database kept in a shared store (etcd).
var ErrShared = errors.New("the state is in a shared store (etcd): back it up with `ramboot state export` or etcd's own snapshots (etcdctl snapshot save)")

// TxID returns the ID of the last committed transaction; it changes with
// every write. For a shared store it is the store's revision.
func (d *DB) TxID() int {
	if d.bolt == nil {
		return int(d.st.Rev())
	}
	return d.bolt.TxID()
}

// Backup writes a verified copy of the open database to path, atomically
// (see WriteFileAtomic).
func (d *DB) Backup(path string) (Summary, error) {
	return WriteFileAtomic(path, func(w io.Writer) error {
		_, err := d.WriteSnapshot(w, nil)
		return err
	})
}

// BackupFile writes a verified copy of the database file src to dst
// without a daemon: it verifies src and copies it from one read
// transaction (a shared lock, so a daemon cannot start writing meanwhile).
func BackupFile(src, dst string) (Summary, error) {
	if _, err := Verify(src); err != nil {
		return Summary{}, err
	}
	var sum Summary
	err := contained(func() error {
		bdb, err := bolt.Open(src, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if errors.Is(err, berrors.ErrTimeout) {
			return fmt.Errorf("state database %s: %w", src, ErrInUse)
		}
		if err != nil {
			return fmt.Errorf("open state database %s: %w", src, err)
		}
		defer bdb.Close()
		sum, err = WriteFileAtomic(dst, func(w io.Writer) error {
			return bdb.View(func(tx *bolt.Tx) error {
				_, err := tx.WriteTo(w)
				return err
			})
		})
		return err
	})
	return sum, err
}

// Restore replaces the database at path with a verified copy of the file
// from. It refuses with ErrInUse while another process holds path (a
// daemon serving it), and holds path's lock while it works so that no
// daemon starts on it meanwhile. The file it replaces is kept beside it,
// named path.replaced-<UTC time>, which it returns ("" when path did not
// exist). Nothing changes when from does not verify.
func Restore(from, path string) (sum Summary, kept string, err error) {
	if _, err := Verify(from); err != nil {
		return Summary{}, "", fmt.Errorf("restore from %s: %w", from, err)
	}
	f, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return Summary{}, "", fmt.Errorf("restore %s: %w", path, err)
	default:
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return Summary{}, "", fmt.Errorf("restore %s: %w (stop the ramboot daemon serving this state directory first)", path, ErrInUse)
			}
			return Summary{}, "", fmt.Errorf("restore %s: lock: %w", path, err)
		}
		kept = path + ".replaced-" + time.Now().UTC().Format("20060102T150405.000Z")
		if err := os.Link(path, kept); err != nil {
			return Summary{}, "", fmt.Errorf("restore %s: keep the current file: %w", path, err)
		}
	}
	sum, err = copyVerified(from, path)
	if err != nil {
		if kept != "" {
			_ = os.Remove(kept) // path is unchanged: the extra name is not needed
		}
		return Summary{}, "", fmt.Errorf("restore %s: %w", path, err)
	}
	return sum, kept, nil
}
