package state

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ramboot/ramboot/provisioner/hostkeys"
	"github.com/ramboot/ramboot/provisioner/store"
)

// The export stream (`ramboot state export`) is the state as JSON lines,
// independent of the store it came from: a header, one line per key, and
// a trailer that counts the keys and carries the SHA-256 of their lines,
// so that a truncated or edited stream is refused whole by Import:
//
//	{"format":"ramboot-state","version":1,"rev":812,"time":"..."}
//	{"k":"nodes/n001","v":{...}}
//	{"end":true,"keys":30001,"sha256":"..."}
//
// It holds the inventory, every node's status (tokens and nonces
// included: a node booted before the move keeps working), the boot
// histories and the nodes' SSH host keys (hostkeys/NAME: private keys, so
// the stream is a secret), so that known_hosts entries survive the move.
// It leaves out what belongs to one store: meta/inventory (the
// inventory's compare-and-swap key, written again by the import), the
// journals of chunked changes, and the keys heads hold under a lease.
const (
	exportFormat  = "ramboot-state"
	exportVersion = 1
)

type exportHeader struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	Rev     int64     `json:"rev"`
	Time    time.Time `json:"time"`
}

// exportKV is one key: its value as JSON when it is JSON (every value the
// state writes), else as base64.
type exportKV struct {
	Key   string          `json:"k"`
	Value json.RawMessage `json:"v,omitempty"`
	Raw   []byte          `json:"b,omitempty"`
}

type exportEnd struct {
	End    bool   `json:"end"`
	Keys   int    `json:"keys"`
	SHA256 string `json:"sha256"`
}

// ExportSummary counts what an export or import carried.
type ExportSummary struct {
	// Keys is the number of keys.
	Keys int `json:"keys"`
	// Nodes, Profiles and Boots count the inventory's nodes and profiles
	// and the earlier boots kept.
	Nodes    int `json:"nodes"`
	Profiles int `json:"profiles"`
	Boots    int `json:"boots"`
	// HostKeys counts the nodes whose SSH host keys it carried.
	HostKeys int `json:"hostKeys"`
	// Bytes is the stream's size.
	Bytes int64 `json:"bytes"`
	// Rev is the source store's revision the export was read at.
	Rev int64 `json:"rev"`
}

func (s *ExportSummary) count(key string) {
	s.Keys++
	switch {
	case strings.HasPrefix(key, keyNodes):
		s.Nodes++
	case strings.HasPrefix(key, keyProfiles):
		s.Profiles++
	case strings.HasPrefix(key, keyBoots):
		s.Boots++
	case strings.HasPrefix(key, keyHostKeys):
		s.HostKeys++
	}
}

// exported reports whether key belongs in an export.
func exported(key string) bool {
	for _, p := range []string{keyNodes, keyProfiles, keyStatus, keyBoots, keyHostKeys} {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// ExportOptions are the parts of a state kept outside its store.
type ExportOptions struct {
	// HostKeys, when set, is where the nodes' SSH host keys are kept
	// instead of the store (a single head: the state directory's
	// ssh-host-keys/): the keys of every node of the inventory found there
	// go into the stream as hostkeys/NAME, as a shared store holds them.
	HostKeys hostkeys.Store
}

// Export writes the state, read at one revision, to w as an export stream.
// An inventory change another head left half applied is finished first.
func (d *DB) Export(ctx context.Context, w io.Writer, o ExportOptions) (ExportSummary, error) {
	return Export(ctx, d.st, w, o)
}

// Export writes the state kept in st to w; see DB.Export.
func Export(ctx context.Context, st store.Store, w io.Writer, o ExportOptions) (ExportSummary, error) {
	var sum ExportSummary
	var kvs []store.KV
	for try := 0; ; try++ {
		if err := finishOpenChange(ctx, st); err != nil {
			return sum, fmt.Errorf("export: %w", err)
		}
		var err error
		kvs, sum.Rev, err = st.List(ctx, "")
		if err != nil {
			return sum, fmt.Errorf("export: %w", err)
		}
		if !openIn(kvs) {
			break
		}
		if try == 10 {
			return sum, errors.New("export: inventory changes keep being applied; try again")
		}
	}
	if o.HostKeys != nil {
		var err error
		if kvs, err = withHostKeys(ctx, kvs, o.HostKeys); err != nil {
			return sum, fmt.Errorf("export: %w", err)
		}
	}
	cw := &countWriter{w: bufio.NewWriterSize(w, 1<<16)}
	enc := json.NewEncoder(cw)
	if err := enc.Encode(exportHeader{Format: exportFormat, Version: exportVersion, Rev: sum.Rev, Time: time.Now().UTC()}); err != nil {
		return sum, fmt.Errorf("export: %w", err)
	}
	h := sha256.New()
	var line bytes.Buffer
	for _, kv := range kvs {
		if !exported(kv.Key) {
			continue
		}
		rec := exportKV{Key: kv.Key}
		if json.Valid(kv.Value) {
			rec.Value = kv.Value
		} else {
			rec.Raw = kv.Value
		}
		line.Reset()
		if err := json.NewEncoder(&line).Encode(rec); err != nil {
			return sum, fmt.Errorf("export %s: %w", kv.Key, err)
		}
		h.Write(line.Bytes())
		if _, err := cw.Write(line.Bytes()); err != nil {
			return sum, fmt.Errorf("export: %w", err)
		}
		sum.count(kv.Key)
	}
	if err := enc.Encode(exportEnd{End: true, Keys: sum.Keys, SHA256: hex.EncodeToString(h.Sum(nil))}); err != nil {
		return sum, fmt.Errorf("export: %w", err)
	}
	if err := cw.w.(*bufio.Writer).Flush(); err != nil {
		return sum, fmt.Errorf("export: %w", err)
	}
	sum.Bytes = cw.n
	return sum, nil
}

// withHostKeys adds to kvs the host keys ks holds for the nodes of kvs,
// in key order.
func withHostKeys(ctx context.Context, kvs []store.KV, ks hostkeys.Store) ([]store.KV, error) {
	var extra []store.KV
	for _, kv := range kvs {
		if !strings.HasPrefix(kv.Key, keyNodes) {
			continue
		}
		name := strings.TrimPrefix(kv.Key, keyNodes)
		keys, err := ks.Load(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // no overlay rendered yet: made at its first
		}
		if err != nil {
			return nil, err
		}
		b, err := encodeKeys(keys)
		if err != nil {
			return nil, fmt.Errorf("host keys of %s: %w", name, err)
		}
		extra = append(extra, store.KV{Key: keyHostKeys + name, Value: b})
	}
	if len(extra) == 0 {
		return kvs, nil
	}
	out := append(slices.Clip(kvs), extra...)
	slices.SortStableFunc(out, func(a, b store.KV) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// openIn reports whether a listing holds an open chunked change.
func openIn(kvs []store.KV) bool {
	for _, kv := range kvs {
		if kv.Key == keyInventory {
			return parseOpen(kv.Value) != nil
		}
	}
	return false
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ErrNotEmpty means an import found state already in the target store.
var ErrNotEmpty = errors.New("the target already holds state")

// ImportOptions are the parts of a state kept outside its store.
type ImportOptions struct {
	// HostKeys, when set, receives the nodes' SSH host keys of the stream
	// instead of the store (a single head keeps them in its state
	// directory). Keys it already holds for a node must be the stream's.
	HostKeys hostkeys.Store
}

// Import reads an export stream from r and writes it to st, which must
// hold no state (ErrNotEmpty otherwise). The whole stream is read and
// checked (format, every record, the key count and checksum of the
// trailer) before anything is written: a truncated or damaged stream
// changes nothing. The keys are written as one inventory change, in
// chunks when the store bounds its transactions (chunked.go): a head
// serving the store meanwhile sees all of it or none, and if the import
// dies after its commit point, the first head that opens the store
// finishes it.
func Import(ctx context.Context, st store.Store, r io.Reader, o ImportOptions) (ExportSummary, error) {
	ops, sum, err := readExport(r)
	if err != nil {
		return sum, fmt.Errorf("import: %w", err)
	}
	kvs, _, err := st.List(ctx, "")
	if err != nil {
		return sum, fmt.Errorf("import: %w", err)
	}
	for _, kv := range kvs {
		if exported(kv.Key) || kv.Key == keyInventory {
			return sum, fmt.Errorf("import: %w (key %s): import only into an empty state", ErrNotEmpty, kv.Key)
		}
	}
	if o.HostKeys != nil {
		// Before the state: a node is never served without its keys.
		if ops, err = importHostKeys(ctx, ops, o.HostKeys); err != nil {
			return sum, fmt.Errorf("import: %w", err)
		}
	}
	if fits(st.Limits(), 1, append(ops, store.Put(keyInventory, []byte("1")))) {
		_, err = st.Txn(ctx, []store.Cmp{{Key: keyInventory}}, append(ops, store.Put(keyInventory, []byte("1"))))
	} else if err = markChunked(ctx, st, 0, ops); err == nil {
		err = finishOpenChange(ctx, st)
	}
	if errors.Is(err, store.ErrConflict) {
		err = fmt.Errorf("%w: another import or inventory change came first", ErrNotEmpty)
	}
	if err != nil {
		return sum, fmt.Errorf("import: %w", err)
	}
	return sum, nil
}

// importHostKeys stores the host keys of ops in ks and returns the other
// ops. Keys ks already holds for a node must be the same: a node's keys
// are never replaced.
func importHostKeys(ctx context.Context, ops []store.Op, ks hostkeys.Store) ([]store.Op, error) {
	batch := map[string]hostkeys.Keys{}
	want := map[string][]byte{}
	rest := ops[:0:0]
	for _, op := range ops {
		if !strings.HasPrefix(op.Key, keyHostKeys) {
			rest = append(rest, op)
			continue
		}
		name := strings.TrimPrefix(op.Key, keyHostKeys)
		keys, err := decodeKeys(name, op.Value)
		if err != nil {
			return nil, err
		}
		batch[name], want[name] = keys, op.Value
	}
	if len(batch) == 0 {
		return rest, nil
	}
	same := func(got map[string]hostkeys.Keys) error {
		for _, name := range slices.Sorted(maps.Keys(got)) {
			b, err := encodeKeys(got[name])
			if err != nil {
				return err
			}
			if !bytes.Equal(b, want[name]) {
				return fmt.Errorf("host keys of %s: the target already holds other keys for this node (remove them to take the stream's)", name)
			}
		}
		return nil
	}
	// Checked whole before anything is written.
	have := map[string]hostkeys.Keys{}
	for name := range batch {
		keys, err := ks.Load(ctx, name)
		if err == nil {
			have[name] = keys
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	if err := same(have); err != nil {
		return nil, err
	}
	got, err := ks.Create(ctx, batch)
	if err != nil {
		return nil, err
	}
	return rest, same(got)
}

// readExport reads and checks a whole export stream.
func readExport(r io.Reader) ([]store.Op, ExportSummary, error) {
	var sum ExportSummary
	cr := &countReader{r: r}
	br := bufio.NewReaderSize(cr, 1<<16)
	readLine := func() ([]byte, error) {
		b, err := br.ReadBytes('\n')
		if err == io.EOF && len(b) > 0 {
			return nil, errors.New("the stream ends in the middle of a line (truncated)")
		}
		return b, err
	}
	first, err := readLine()
	if err == io.EOF {
		return nil, sum, errors.New("the stream is empty")
	}
	if err != nil {
		return nil, sum, err
	}
	var hdr exportHeader
	if json.Unmarshal(first, &hdr) != nil || hdr.Format != exportFormat {
		return nil, sum, errors.New("line 1: not a ramboot state export (made by `ramboot state export`)")
	}
	if hdr.Version != exportVersion {
		return nil, sum, fmt.Errorf("line 1: export version %d; this ramboot reads version %d", hdr.Version, exportVersion)
	}
	sum.Rev = hdr.Rev
	h := sha256.New()
	var ops []store.Op
	seen := map[string]bool{}
	for n := 2; ; n++ {
		b, err := readLine()
		if err == io.EOF {
			return nil, sum, fmt.Errorf("the stream ends after %d keys without its trailer (truncated)", sum.Keys)
		}
		if err != nil {
			return nil, sum, err
		}
		var end exportEnd
		if bytes.HasPrefix(b, []byte(`{"end"`)) && json.Unmarshal(b, &end) == nil && end.End {
			if end.Keys != sum.Keys {
				return nil, sum, fmt.Errorf("line %d: the trailer counts %d keys, the stream holds %d", n, end.Keys, sum.Keys)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != end.SHA256 {
				return nil, sum, fmt.Errorf("line %d: checksum mismatch: the keys were changed after the export", n)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				return nil, sum, fmt.Errorf("line %d: data after the trailer", n+1)
			}
			sum.Bytes = cr.n
			return ops, sum, nil
		}
		h.Write(b)
		var kv exportKV
		if err := json.Unmarshal(b, &kv); err != nil {
			return nil, sum, fmt.Errorf("line %d: %v", n, err)
		}
		if !exported(kv.Key) {
			return nil, sum, fmt.Errorf("line %d: key %q is not state this ramboot knows", n, kv.Key)
		}
		if seen[kv.Key] {
			return nil, sum, fmt.Errorf("line %d: key %q twice", n, kv.Key)
		}
		seen[kv.Key] = true
		v := []byte(kv.Value)
		if kv.Raw != nil {
			v = kv.Raw
		}
		if err := checkImported(kv.Key, v); err != nil {
			return nil, sum, fmt.Errorf("line %d: %w", n, err)
		}
		ops = append(ops, store.Put(kv.Key, bytes.Clone(v)))
		sum.count(kv.Key)
	}
}

// checkImported decodes a value as the state would load it.
func checkImported(key string, v []byte) error {
	if strings.HasPrefix(key, keyProfiles) {
		var p Profile
		if err := json.Unmarshal(v, &p); err != nil || p.Name != strings.TrimPrefix(key, keyProfiles) {
			return fmt.Errorf("profile %s: not a profile record (%v)", key, err)
		}
		return nil
	}
	if strings.HasPrefix(key, keyHostKeys) {
		_, err := decodeKeys(strings.TrimPrefix(key, keyHostKeys), v)
		return err
	}
	return checkValue(key, v, &Summary{})
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
