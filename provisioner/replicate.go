package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/state"
)

// replicator brings images this head lacks from its peer heads (several
// heads on one etcd: docs/scale-out.md). It asks each peer, in turn, what
// a reference resolves to there (GET /boot/ref/REF), then fetches the
// manifest and every blob this head lacks by digest (GET
// /boot/blob/HEX), each verified against its digest and size before it
// becomes visible (images.Store.PutVerified); the reference is committed
// last. A node asking for an image the head lacks waits for the fetch at
// most wait, then gets an error and retries while the fetch goes on; one
// fetch per reference runs at a time, whatever the number of nodes
// waiting.
type replicator struct {
	images *images.Store
	// peers returns the peer heads' base URLs, this head's excluded.
	peers  func() []string
	client *http.Client
	wait   time.Duration
	log    *slog.Logger
	m      *prometheus.CounterVec
	// removals, when set, names the references removed on some head:
	// never fetched back from a peer that still has them.
	removals *imageRemovals

	mu       sync.Mutex
	inflight map[string]*fetchCall
}

type fetchCall struct {
	done chan struct{}
	err  error
}

// replicateWait is how long a node's request waits for an image fetched
// from a peer before it gets an error (and retries).
const replicateWait = 30 * time.Second

// peerFetch returns the boot server's Fetch for a head on a shared store
// (its peers are the other registered heads), nil for a single head.
func peerFetch(db *state.DB, st *images.Store, self string, removals *imageRemovals, log *slog.Logger, reg prometheus.Registerer) func(context.Context, string) error {
	if db.Path() != "" {
		return nil
	}
	r := newReplicator(st, func() []string {
		var urls []string
		for _, h := range db.Heads() {
			if h.URL != self {
				urls = append(urls, h.URL)
			}
		}
		return urls
	}, log.With("svc", "replicate"), reg)
	r.removals = removals
	return r.Fetch
}

func newReplicator(st *images.Store, peers func() []string, log *slog.Logger, reg prometheus.Registerer) *replicator {
	r := &replicator{images: st, peers: peers, wait: replicateWait, log: log, inflight: map[string]*fetchCall{},
		client: &http.Client{Transport: &http.Transport{Proxy: nil, ResponseHeaderTimeout: 10 * time.Second, IdleConnTimeout: time.Minute}},
		m: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_image_peer_fetches_total",
			Help: "Images fetched from a peer head (ok), or not found on any peer or refused (error).",
		}, []string{"result"}),
	}
	r.m.WithLabelValues("ok")
	r.m.WithLabelValues("error")
	if reg != nil {
		reg.MustRegister(r.m)
	}
	return r
}

// Fetch brings ref (a reference or a manifest digest) from a peer, waiting
// for it at most r.wait or until ctx ends.
func (r *replicator) Fetch(ctx context.Context, ref string) error {
	r.mu.Lock()
	c := r.inflight[ref]
	if c == nil {
		c = &fetchCall{done: make(chan struct{})}
		r.inflight[ref] = c
		go func() {
			// The fetch outlives the request that started it.
			fctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			c.err = r.fetch(fctx, ref)
			cancel()
			r.mu.Lock()
			delete(r.inflight, ref)
			r.mu.Unlock()
			close(c.done)
		}()
	}
	r.mu.Unlock()
	t := time.NewTimer(r.wait)
	defer t.Stop()
	select {
	case <-c.done:
		return c.err
	case <-t.C:
		return fmt.Errorf("image %s: still being fetched from a peer head; retry", ref)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetch tries every peer in turn.
func (r *replicator) fetch(ctx context.Context, ref string) error {
	if rm, ok := r.removals.Removed(ref); ok {
		r.m.WithLabelValues("error").Inc()
		return fmt.Errorf("image %s: removed (on %s at %s): not fetched from the peer heads", ref, rm.Head, rm.Time.Format(time.RFC3339))
	}
	peers := r.peers()
	if len(peers) == 0 {
		r.m.WithLabelValues("error").Inc()
		return errors.New("no peer head to fetch it from")
	}
	var errs []error
	for _, p := range peers {
		start := time.Now()
		n, err := r.fetchFrom(ctx, strings.TrimRight(p, "/"), ref)
		if err == nil {
			r.m.WithLabelValues("ok").Inc()
			r.log.Info("image fetched from a peer head", "image", ref, "peer", p, "bytes", n, "dur", time.Since(start).Round(time.Millisecond))
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	r.m.WithLabelValues("error").Inc()
	err := errors.Join(errs...)
	r.log.Warn("image not fetched from any peer head", "image", ref, "err", err)
	return err
}

// fetchFrom brings ref from the head at base and returns the bytes it
// transferred.
func (r *replicator) fetchFrom(ctx context.Context, base, ref string) (int64, error) {
	var d images.Digest
	var err error
	if strings.HasPrefix(ref, "sha256:") {
		d, err = images.ParseDigest(ref)
	} else {
		var b []byte
		b, err = r.get(ctx, base+"/boot/ref/"+url.PathEscape(ref), 256)
		if err == nil {
			d, err = images.ParseDigest(strings.TrimSpace(string(b)))
		}
	}
	if err != nil {
		return 0, err
	}
	mb, err := r.get(ctx, base+"/boot/blob/"+d.Hex(), 1<<20)
	if err != nil {
		return 0, fmt.Errorf("manifest %s: %w", d, err)
	}
	if got := images.DigestOf(mb); got != d {
		return 0, fmt.Errorf("manifest %s: the peer sent content of digest %s", d, got)
	}
	m, err := images.ParseManifest(mb)
	if err != nil {
		return 0, fmt.Errorf("manifest %s: %w", d, err)
	}
	arts := []images.Artifact{m.Kernel, m.Rootfs}
	if m.CompressedRoot != nil {
		arts = append(arts, *m.CompressedRoot)
	}
	total := int64(len(mb))
	for _, a := range arts {
		if r.images.HasBlob(a) {
			continue
		}
		if err := r.blob(ctx, base, a); err != nil {
			return total, err
		}
		total += a.Size
	}
	// The manifest last: it names blobs that are all here now.
	if strings.HasPrefix(ref, "sha256:") {
		_, err = r.images.PutVerified(ctx, strings.NewReader(string(mb)), images.Artifact{Digest: d, Size: int64(len(mb))})
		return total, err
	}
	done := r.removals.Fetching(ref)
	if rm, ok := r.removals.Removed(ref); ok { // removed while it was fetched
		done(false)
		return total, fmt.Errorf("image %s: removed (on %s) while it was fetched", ref, rm.Head)
	}
	_, err = r.images.CommitManifest(ref, mb)
	done(err == nil)
	return total, err
}

// blob fetches one blob, verified by the store as it is written.
func (r *replicator) blob(ctx context.Context, base string, a images.Artifact) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/boot/blob/"+a.Digest.Hex(), nil)
	if err != nil {
		return err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("blob %s: HTTP %s", a.Digest, resp.Status)
	}
	if _, err := r.images.PutVerified(ctx, resp.Body, a); err != nil {
		return fmt.Errorf("blob %s: %w", a.Digest, err)
	}
	return nil
}

// get reads a small response whole.
func (r *replicator) get(ctx context.Context, u string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("GET %s: more than %d bytes", u, limit)
	}
	return b, nil
}
