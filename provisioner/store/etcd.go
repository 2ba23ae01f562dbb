package store

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of EtcdOptions.
const (
	DefaultEtcdPrefix         = "/ramboot/"
	DefaultEtcdDialTimeout    = 5 * time.Second
	DefaultEtcdRequestTimeout = 10 * time.Second
	// DefaultEtcdMaxTxnOps is etcd's own default of --max-txn-ops.
	DefaultEtcdMaxTxnOps = 128
	// DefaultEtcdMaxTxnBytes stays under etcd's default --max-request-bytes
	// (1.5 MiB) with room for the request's framing.
	DefaultEtcdMaxTxnBytes = 1 << 20
)

// EtcdOptions configure OpenEtcd.
type EtcdOptions struct {
	// Endpoints are the etcd members' client URLs. Required.
	Endpoints []string
	// CAFile, CertFile and KeyFile are PEM files: the CA that signed the
	// members' certificates, and this head's client certificate and key.
	// With none of them set the connection is plain (http:// endpoints).
	CAFile, CertFile, KeyFile string
	// Username and Password authenticate to etcd when set.
	Username, Password string
	// Prefix is put before every key, so that several clusters (or other
	// programs) share one etcd; default DefaultEtcdPrefix.
	Prefix string
	// DialTimeout bounds connecting; default DefaultEtcdDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds one request (a read, a transaction); default
	// DefaultEtcdRequestTimeout.
	RequestTimeout time.Duration
	// MaxTxnOps is the most operations etcd takes in one transaction (its
	// --max-txn-ops); default DefaultEtcdMaxTxnOps. Callers read it from
	// Limits and split their writes.
	MaxTxnOps int
	// MaxTxnBytes bounds one transaction's keys and values; default
	// DefaultEtcdMaxTxnBytes.
	MaxTxnBytes int
	// Logger receives reconnects of the watch; nil discards.
	Logger *slog.Logger
}

// Etcd is the Store on an etcd cluster, shared by every head: revisions
// are etcd's (a key's Rev is its mod revision), a Txn is an etcd
// transaction comparing mod revisions, and Watch resumes by itself after
// a member is lost (the client moves to another endpoint and asks again
// from the last revision it delivered); a revision etcd compacted away
// ends the watch with ErrCompacted.
type Etcd struct {
	c       *clientv3.Client
	prefix  string
	timeout time.Duration
	limits  Limits
	log     *slog.Logger
	rev     atomic.Int64
	closed  atomic.Bool
	retries atomic.Int64

	mu    sync.Mutex
	holds map[string]clientv3.LeaseID
}

// Limits bound what one transaction may hold; zero means no bound.
type Limits struct {
	// MaxOps bounds the compares, and apart the writes, of one Txn.
	MaxOps int
	// MaxBytes bounds the keys and values one Txn writes.
	MaxBytes int
}

// OpenEtcd connects to the etcd cluster and checks that it answers (a
// linearizable read, so a majority of members is up).
func OpenEtcd(ctx context.Context, o EtcdOptions) (*Etcd, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("open etcd: no endpoints")
	}
	if o.Prefix == "" {
		o.Prefix = DefaultEtcdPrefix
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultEtcdDialTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultEtcdRequestTimeout
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = DefaultEtcdMaxTxnOps
	}
	if o.MaxTxnBytes <= 0 {
		o.MaxTxnBytes = DefaultEtcdMaxTxnBytes
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Logger:               zap.NewNop(),
		AutoSyncInterval:     time.Minute,
	}
	if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" {
		tc, err := etcdTLS(o)
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("open etcd %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Etcd{c: c, prefix: o.Prefix, timeout: o.RequestTimeout, log: log,
		limits: Limits{MaxOps: o.MaxTxnOps, MaxBytes: o.MaxTxnBytes}, holds: map[string]clientv3.LeaseID{}}
	if _, err := e.Current(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("open etcd %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	return e, nil
}

func etcdTLS(o EtcdOptions) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd ca %s: no PEM certificate in it", o.CAFile)
		}
		tc.RootCAs = pool
	}
	if o.CertFile != "" || o.KeyFile != "" {
		if o.CertFile == "" || o.KeyFile == "" {
			return nil, errors.New("etcd: a client certificate needs both its cert and key files")
		}
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Client returns the etcd client, for tests.
func (e *Etcd) Client() *clientv3.Client { return e.c }

// Prefix returns the key prefix.
func (e *Etcd) Prefix() string { return e.prefix }

// Limits returns the bounds of one transaction.
func (e *Etcd) Limits() Limits { return e.limits }

func (e *Etcd) seen(rev int64) {
	for {
		cur := e.rev.Load()
		if rev <= cur || e.rev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// wrap turns the client's errors into the store's.
func (e *Etcd) wrap(err error) error {
	switch {
	case err == nil:
		return nil
	case e.closed.Load():
		return ErrClosed
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%w: %v", ErrCompacted, err)
	}
	return err
}

// List implements Store. It reads in pages of 1,000 keys, all at the
// revision of the first page, so the list is one consistent snapshot.
func (e *Etcd) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	const page = 1000
	start := e.prefix + prefix
	end := clientv3.GetPrefixRangeEnd(start)
	var out []KV
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		rctx, cancel := context.WithTimeout(ctx, e.timeout)
		resp, err := e.c.Get(rctx, start, opts...)
		cancel()
		if err != nil {
			return nil, 0, fmt.Errorf("list %q: %w", prefix, e.wrap(err))
		}
		if rev == 0 {
			rev = resp.Header.Revision
			e.seen(rev)
		}
		for _, kv := range resp.Kvs {
			out = append(out, KV{Key: strings.TrimPrefix(string(kv.Key), e.prefix), Value: kv.Value, Rev: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Get implements Store.
func (e *Etcd) Get(ctx context.Context, key string) (KV, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := e.c.Get(rctx, e.prefix+key)
	if err != nil {
		return KV{}, false, fmt.Errorf("get %q: %w", key, e.wrap(err))
	}
	e.seen(resp.Header.Revision)
	if len(resp.Kvs) == 0 {
		return KV{}, false, nil
	}
	kv := resp.Kvs[0]
	return KV{Key: key, Value: kv.Value, Rev: kv.ModRevision}, true, nil
}

// Txn implements Store. A transaction over Limits is refused (etcd would
// refuse it too): callers split their writes.
func (e *Etcd) Txn(ctx context.Context, cmps []Cmp, ops []Op) (int64, error) {
	if n := max(len(cmps), len(ops)); n > e.limits.MaxOps {
		return 0, fmt.Errorf("transaction of %d operations: more than etcd's %d (--max-txn-ops)", n, e.limits.MaxOps)
	}
	size := 0
	ifs := make([]clientv3.Cmp, 0, len(cmps))
	for _, c := range cmps {
		ifs = append(ifs, clientv3.Compare(clientv3.ModRevision(e.prefix+c.Key), "=", c.Rev))
	}
	thens := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		size += len(e.prefix) + len(op.Key) + len(op.Value)
		switch {
		case op.Delete && op.Prefix:
			thens = append(thens, clientv3.OpDelete(e.prefix+op.Key, clientv3.WithPrefix()))
		case op.Delete:
			thens = append(thens, clientv3.OpDelete(e.prefix+op.Key))
		default:
			if op.Key == "" {
				return 0, errors.New("put: empty key")
			}
			thens = append(thens, clientv3.OpPut(e.prefix+op.Key, string(op.Value)))
		}
	}
	if size > e.limits.MaxBytes {
		return 0, fmt.Errorf("transaction of %d bytes: more than %d", size, e.limits.MaxBytes)
	}
	// A member lost or a leader changing while the transaction was on
	// its way fails it with no answer (or none within the request
	// timeout: etcd itself gives up on a dead leader's proposals after
	// about 7 s); it is sent again, the client moving to another member,
	// for up to twice the request timeout in all. Sending it again is
	// safe: its compares make it commit at most once, and if the first
	// one did commit, the second fails them and the caller sees a
	// conflict, reads again, and finds its own write.
	deadline := time.Now().Add(2 * e.timeout)
	var resp *clientv3.TxnResponse
	var err error
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		actx, cancel := context.WithTimeout(ctx, min(e.timeout, time.Until(deadline)))
		resp, err = e.c.Txn(actx).If(ifs...).Then(thens...).Commit()
		cancel()
		if err == nil || ctx.Err() != nil || e.closed.Load() || !transient(err) || time.Until(deadline) < backoff {
			break
		}
		e.retries.Add(1)
		e.log.Debug("etcd transaction got no answer; sending it again", "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if err != nil {
		return 0, e.wrap(err)
	}
	e.seen(resp.Header.Revision)
	if !resp.Succeeded {
		var keys []string
		for _, c := range cmps {
			keys = append(keys, c.Key)
		}
		return 0, fmt.Errorf("keys %s changed meanwhile: %w", strings.Join(keys, " "), ErrConflict)
	}
	return resp.Header.Revision, nil
}

// transient reports whether err is a transaction that got no answer
// (in time) because a member was lost or the leader changed.
func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return true // this attempt's timeout; the caller's context is checked apart
	}
	for _, t := range []error{rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged, rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrTimeout, rpctypes.ErrStopped} {
		if errors.Is(err, t) {
			return true
		}
	}
	return status.Code(err) == codes.Unavailable
}

// Retries returns how many transactions were sent again after a member
// was lost or a leader changed.
func (e *Etcd) Retries() int64 { return e.retries.Load() }

// Rev implements Store: the highest revision this client has seen.
func (e *Etcd) Rev() int64 { return e.rev.Load() }

// Current returns etcd's current revision, read linearizably: every
// transaction any head committed before the call is at or below it.
func (e *Etcd) Current(ctx context.Context) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := e.c.Get(rctx, e.prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, e.wrap(err)
	}
	e.seen(resp.Header.Revision)
	return resp.Header.Revision, nil
}

// Watch implements Store. The stream survives the loss of the member it
// is connected to: with etcd's require-leader option, a member cut off
// from the others ends the stream, which is then asked again (from
// another member, from the last revision delivered). Only a compaction
// of the revisions it still needs, or the store closing, ends it.
func (e *Etcd) Watch(ctx context.Context, prefix string, rev int64) <-chan Change {
	out := make(chan Change, 64)
	go func() {
		defer close(out)
		send := func(c Change) bool {
			select {
			case out <- c:
				return true
			case <-ctx.Done():
				return false
			}
		}
		next := rev + 1
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			if e.closed.Load() {
				send(Change{Err: ErrClosed})
				return
			}
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			wch := e.c.Watch(wctx, e.prefix+prefix, clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithProgressNotify())
			got := false
			var werr error
			for resp := range wch {
				if resp.CompactRevision != 0 {
					cancel()
					send(Change{Err: fmt.Errorf("watch from revision %d: compacted up to %d: %w", next-1, resp.CompactRevision, ErrCompacted)})
					return
				}
				if err := resp.Err(); err != nil {
					werr = err
					break
				}
				got = true
				if resp.IsProgressNotify() && resp.Header.Revision >= next {
					// Nothing under prefix up to that revision: say so,
					// so a reader waiting for it knows it is current.
					e.seen(resp.Header.Revision)
					if !send(Change{Rev: resp.Header.Revision}) {
						cancel()
						return
					}
					next = resp.Header.Revision + 1
					continue
				}
				for _, c := range e.changes(resp.Events) {
					if !send(c) {
						cancel()
						return
					}
					next = c.Rev + 1
				}
			}
			cancel()
			if ctx.Err() != nil {
				return
			}
			if errors.Is(werr, rpctypes.ErrCompacted) {
				send(Change{Err: fmt.Errorf("watch from revision %d: %w", next-1, ErrCompacted)})
				return
			}
			if got {
				backoff = 100 * time.Millisecond
			}
			e.log.Warn("etcd watch ended; resuming", "rev", next, "err", werr)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}()
	return out
}

// changes groups etcd's events by revision: one Change per transaction.
func (e *Etcd) changes(evs []*clientv3.Event) []Change {
	var out []Change
	for _, ev := range evs {
		rev := ev.Kv.ModRevision
		if len(out) == 0 || out[len(out)-1].Rev != rev {
			out = append(out, Change{Rev: rev})
			e.seen(rev)
		}
		c := &out[len(out)-1]
		key := strings.TrimPrefix(string(ev.Kv.Key), e.prefix)
		if ev.Type == mvccpb.DELETE {
			c.Events = append(c.Events, Event{KV: KV{Key: key, Rev: rev}, Deleted: true})
			continue
		}
		c.Events = append(c.Events, Event{KV: KV{Key: key, Value: bytes.Clone(ev.Kv.Value), Rev: rev}})
	}
	return out
}

// Hold keeps key at value for as long as ctx lasts, under a lease of ttl
// that this head renews: when the head dies (or loses etcd for ttl) the
// key goes away by itself. A lease lost meanwhile (etcd was unreachable
// for longer than ttl) is taken again. Hold returns when ctx ends, after
// deleting the key.
func (e *Etcd) Hold(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	secs := max(int64(ttl/time.Second), 1)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := e.holdOnce(ctx, key, value, secs)
		if ctx.Err() != nil {
			break
		}
		e.log.Warn("etcd lease lost; taking it again", "key", key, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	e.mu.Lock()
	id, ok := e.holds[key]
	delete(e.holds, key)
	e.mu.Unlock()
	if ok && !e.closed.Load() {
		rctx, cancel := context.WithTimeout(context.Background(), e.timeout)
		_, _ = e.c.Revoke(rctx, id) // the key goes with its lease
		cancel()
	}
	return nil
}

func (e *Etcd) holdOnce(ctx context.Context, key string, value []byte, secs int64) error {
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	lease, err := e.c.Grant(rctx, secs)
	cancel()
	if err != nil {
		return e.wrap(err)
	}
	rctx, cancel = context.WithTimeout(ctx, e.timeout)
	_, err = e.c.Put(rctx, e.prefix+key, string(value), clientv3.WithLease(lease.ID))
	cancel()
	if err != nil {
		return e.wrap(err)
	}
	e.mu.Lock()
	e.holds[key] = lease.ID
	e.mu.Unlock()
	ka, err := e.c.KeepAlive(ctx, lease.ID)
	if err != nil {
		return e.wrap(err)
	}
	for range ka {
	}
	return errors.New("keep-alive ended")
}

// RequestProgress asks etcd to tell every watch of this client how far
// it has come, as a Change without events: a reader whose view waits for
// a revision made outside its prefix learns it is current.
func (e *Etcd) RequestProgress(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	return e.wrap(e.c.RequestProgress(rctx))
}

// Close implements Store.
func (e *Etcd) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	return e.c.Close()
}
