package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrInUse means another process holds the bbolt file open for writing.
var ErrInUse = errors.New("in use by another process")

// Buckets of a Bolt file.
var (
	// BucketKV holds every key: the value is the 8-byte big-endian
	// revision that wrote it, then the value.
	BucketKV = []byte("kv")
	// BucketMeta holds "rev", the revision of the last transaction.
	BucketMeta = []byte("meta")
)

var metaRev = []byte("rev")

// keepChanges is how many recent changes (at least; up to a quarter
// more) a Bolt keeps for watchers that start from an earlier revision.
const keepChanges = 4096

// BoltOptions configure OpenBolt.
type BoltOptions struct {
	// Timeout is how long Open waits for another process's lock; 0 means
	// one second.
	Timeout time.Duration
	// InitialMmapSize is bbolt's initial memory map size (tests).
	InitialMmapSize int
	// NoSync skips the fsync of every commit (benchmarks only).
	NoSync bool
}

// Bolt is the embedded Store: one bbolt file held by one process. Other
// top-level buckets (written by an earlier layout) are moved into the kv
// bucket at open, each key as "BUCKET/KEY", in one transaction.
type Bolt struct {
	db *bolt.DB

	wmu sync.Mutex // serializes commits, so watchers see them in order

	mu      sync.Mutex
	rev     int64
	recent  []Change // the last keepChanges changes, oldest first
	subs    map[*sub]struct{}
	closed  bool
	closeCh chan struct{}
}

// CreateBolt makes a new, empty Bolt file at path atomically: it is built
// beside path and linked into place, so a crash never leaves an empty file
// at path. It fails if a file appeared at path meanwhile.
func CreateBolt(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create state database: %w", err)
	}
	tmp := path + ".new"
	_ = os.Remove(tmp) // left by a crash during an earlier create
	bdb, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("create state database %s: %w", tmp, err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{BucketKV, BucketMeta} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, path) // fails if a file appeared at path
	}
	_ = os.Remove(tmp)
	if err != nil {
		return fmt.Errorf("create state database %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// OpenBolt opens the existing bbolt file at path for this process alone
// (another process holding it makes it fail with ErrInUse after
// o.Timeout), and moves keys of an earlier layout into the kv bucket.
func OpenBolt(path string, o BoltOptions) (*Bolt, error) {
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.Timeout, InitialMmapSize: o.InitialMmapSize, NoSync: o.NoSync})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("state database %s: %w", path, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("open state database %s: %w", path, err)
	}
	b := &Bolt{db: bdb, subs: map[*sub]struct{}{}, closeCh: make(chan struct{})}
	if err := b.migrate(); err != nil {
		bdb.Close()
		return nil, fmt.Errorf("open state database %s: %w", path, err)
	}
	_ = bdb.View(func(tx *bolt.Tx) error {
		b.rev = readRev(tx)
		return nil
	})
	return b, nil
}

// migrate moves every key of other top-level buckets into the kv bucket
// as "BUCKET/KEY" at the next revision, in one transaction.
func (b *Bolt) migrate() error {
	var legacy bool
	err := b.db.View(func(tx *bolt.Tx) error {
		legacy = tx.Bucket(BucketKV) == nil || tx.Bucket(BucketMeta) == nil
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if string(name) != string(BucketKV) && string(name) != string(BucketMeta) {
				legacy = true
			}
			return nil
		})
	})
	if err != nil || !legacy {
		return err
	}
	return b.db.Update(func(tx *bolt.Tx) error {
		kv, err := tx.CreateBucketIfNotExists(BucketKV)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(BucketMeta); err != nil {
			return err
		}
		rev := readRev(tx) + 1
		var names [][]byte
		err = tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			if string(name) == string(BucketKV) || string(name) == string(BucketMeta) {
				return nil
			}
			names = append(names, append([]byte(nil), name...))
			return bk.ForEach(func(k, v []byte) error {
				if v == nil {
					return nil // a nested bucket: no layout ever wrote one
				}
				return kv.Put([]byte(string(name)+"/"+string(k)), encode(rev, v))
			})
		})
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := tx.DeleteBucket(n); err != nil {
				return err
			}
		}
		return writeRev(tx, rev)
	})
}

func encode(rev int64, v []byte) []byte {
	out := make([]byte, 8+len(v))
	binary.BigEndian.PutUint64(out, uint64(rev))
	copy(out[8:], v)
	return out
}

// Decode splits a stored kv value into its revision and value; ok is
// false when it is too short to hold a revision.
func Decode(stored []byte) (rev int64, value []byte, ok bool) {
	if len(stored) < 8 {
		return 0, nil, false
	}
	return int64(binary.BigEndian.Uint64(stored)), stored[8:], true
}

func readRev(tx *bolt.Tx) int64 {
	m := tx.Bucket(BucketMeta)
	if m == nil {
		return 0
	}
	v := m.Get(metaRev)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func writeRev(tx *bolt.Tx, rev int64) error {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(rev))
	return tx.Bucket(BucketMeta).Put(metaRev, v[:])
}

// DB returns the bbolt handle, for backups and tests.
func (b *Bolt) DB() *bolt.DB { return b.db }

// List implements Store.
func (b *Bolt) List(_ context.Context, prefix string) ([]KV, int64, error) {
	var out []KV
	var rev int64
	err := b.db.View(func(tx *bolt.Tx) error {
		rev = readRev(tx)
		c := tx.Bucket(BucketKV).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			r, val, ok := Decode(v)
			if !ok {
				return fmt.Errorf("key %q: value too short for its revision", k)
			}
			out = append(out, KV{Key: string(k), Value: append([]byte(nil), val...), Rev: r})
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	return out, rev, nil
}

// Get implements Store.
func (b *Bolt) Get(_ context.Context, key string) (KV, bool, error) {
	var kv KV
	var ok bool
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(BucketKV).Get([]byte(key))
		if v == nil {
			return nil
		}
		r, val, good := Decode(v)
		if !good {
			return fmt.Errorf("key %q: value too short for its revision", key)
		}
		kv, ok = KV{Key: key, Value: append([]byte(nil), val...), Rev: r}, true
		return nil
	})
	if err != nil {
		return KV{}, false, fmt.Errorf("get %q: %w", key, err)
	}
	return kv, ok, nil
}

// Txn implements Store. It keeps the Value slices of ops.
func (b *Bolt) Txn(_ context.Context, cmps []Cmp, ops []Op) (int64, error) {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	ch := Change{}
	err := b.db.Update(func(tx *bolt.Tx) error {
		kv := tx.Bucket(BucketKV)
		for _, c := range cmps {
			var have int64
			if v := kv.Get([]byte(c.Key)); v != nil {
				have, _, _ = Decode(v)
			}
			if have != c.Rev {
				return fmt.Errorf("key %s at revision %d, not %d: %w", c.Key, have, c.Rev, ErrConflict)
			}
		}
		if len(ops) == 0 {
			ch.Rev = readRev(tx)
			return nil
		}
		rev := readRev(tx) + 1
		ch.Rev = rev
		for _, op := range ops {
			switch {
			case op.Delete && op.Prefix:
				c := kv.Cursor()
				p := []byte(op.Key)
				for k, _ := c.Seek(p); k != nil && strings.HasPrefix(string(k), op.Key); k, _ = c.Seek(p) {
					key := string(k)
					if err := c.Delete(); err != nil {
						return err
					}
					ch.Events = append(ch.Events, Event{KV: KV{Key: key, Rev: rev}, Deleted: true})
				}
			case op.Delete:
				if kv.Get([]byte(op.Key)) == nil {
					continue
				}
				if err := kv.Delete([]byte(op.Key)); err != nil {
					return err
				}
				ch.Events = append(ch.Events, Event{KV: KV{Key: op.Key, Rev: rev}, Deleted: true})
			default:
				if op.Key == "" {
					return errors.New("put: empty key")
				}
				if err := kv.Put([]byte(op.Key), encode(rev, op.Value)); err != nil {
					return err
				}
				ch.Events = append(ch.Events, Event{KV: KV{Key: op.Key, Value: op.Value, Rev: rev}})
			}
		}
		return writeRev(tx, rev)
	})
	if err != nil {
		return 0, err
	}
	if len(ops) > 0 {
		b.publish(ch)
	}
	return ch.Rev, nil
}

// Rev implements Store.
func (b *Bolt) Rev() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rev
}

// Current implements Store: one process holds the file, so its last
// revision is everyone's.
func (b *Bolt) Current(context.Context) (int64, error) { return b.Rev(), nil }

// Limits implements Store: a bbolt transaction has no bound.
func (b *Bolt) Limits() Limits { return Limits{} }

// TxID returns bbolt's ID of the last committed transaction.
func (b *Bolt) TxID() int {
	var id int
	_ = b.db.View(func(tx *bolt.Tx) error { id = int(tx.ID()); return nil })
	return id
}

// WriteSnapshot writes a consistent copy of the whole file to w from one
// read transaction, while writers go on. size, if not nil, is called with
// the copy's size before its first byte is written.
func (b *Bolt) WriteSnapshot(w io.Writer, size func(int64)) (int64, error) {
	var n int64
	err := b.db.View(func(tx *bolt.Tx) error {
		if size != nil {
			size(tx.Size())
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("snapshot state database: %w", err)
	}
	return n, nil
}

// Close implements Store.
func (b *Bolt) Close() error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.closeCh)
	}
	b.mu.Unlock()
	return b.db.Close()
}

// sub is one watcher: changes queue here until its goroutine passes them
// on, so a commit never waits for a slow watcher.
type sub struct {
	prefix string
	mu     sync.Mutex
	queue  []Change
	wake   chan struct{}
}

func (s *sub) push(c Change) {
	c = filter(c, s.prefix)
	if len(c.Events) == 0 && c.Err == nil {
		return
	}
	s.mu.Lock()
	s.queue = append(s.queue, c)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (b *Bolt) publish(c Change) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rev = c.Rev
	b.recent = append(b.recent, c)
	// Trimmed back to keepChanges once it holds a quarter more: trimming
	// at every commit copied (and allocated) 4,096 changes per commit:
	// 7 % of ramboot serve's CPU under 4,000 DHCP exchanges a second
	// (perf), and garbage for the collector.
	if len(b.recent) > keepChanges+keepChanges/4 {
		b.recent = append(b.recent[:0:0], b.recent[len(b.recent)-keepChanges:]...)
	}
	for s := range b.subs {
		s.push(c)
	}
}

// Watch implements Store.
func (b *Bolt) Watch(ctx context.Context, prefix string, rev int64) <-chan Change {
	out := make(chan Change, 64)
	s := &sub{prefix: prefix, wake: make(chan struct{}, 1)}
	b.mu.Lock()
	switch {
	case b.closed:
		s.queue = append(s.queue, Change{Err: ErrClosed})
	case rev < b.rev && (len(b.recent) == 0 || b.recent[0].Rev > rev+1):
		s.queue = append(s.queue, Change{Err: fmt.Errorf("watch from revision %d: %w", rev, ErrCompacted)})
	default:
		for _, c := range b.recent {
			if c.Rev > rev {
				s.push(c)
			}
		}
		b.subs[s] = struct{}{}
	}
	closeCh := b.closeCh
	b.mu.Unlock()
	go func() {
		defer close(out)
		defer func() {
			b.mu.Lock()
			delete(b.subs, s)
			b.mu.Unlock()
		}()
		for {
			s.mu.Lock()
			q := s.queue
			s.queue = nil
			s.mu.Unlock()
			for _, c := range q {
				select {
				case out <- c:
				case <-ctx.Done():
					return
				}
				if c.Err != nil {
					return
				}
			}
			select {
			case <-s.wake:
			case <-ctx.Done():
				return
			case <-closeCh:
				s.mu.Lock()
				empty := len(s.queue) == 0
				s.mu.Unlock()
				if empty {
					select {
					case out <- Change{Err: ErrClosed}:
					case <-ctx.Done():
					}
					return
				}
			}
		}
	}()
	return out
}

// SyncDir fsyncs a directory, so that a rename or link in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}
