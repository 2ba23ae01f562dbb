package storm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// rampName names ramboot's own side in comparisons.
const rampName = "ramboot"

// Target is another server holding the same files, by digest: a file of
// digest sha256:HEX is at BaseURL/sha256/HEX (an nginx whose root is the
// image store's blobs directory).
type Target struct {
	// Name names it in the report ("nginx").
	Name string
	// BaseURL is where its files are, e.g. "http://10.77.0.1:8080".
	BaseURL string
}

// URL returns where t serves the file of digest d ("sha256:HEX").
func (t Target) URL(d string) string {
	return strings.TrimRight(t.BaseURL, "/") + "/" + strings.Replace(d, ":", "/", 1)
}

// DownloadConfig is a plain concurrent download: every client, from its
// own address, fetches every URL in order, all clients at once.
type DownloadConfig struct {
	// Name names the run in its result.
	Name string
	// Clients is how many clients download.
	Clients int
	// FirstIP is client 1's address; client i has FirstIP+i-1.
	FirstIP netip.Addr
	// URLs are the files each client fetches, in order.
	URLs []string
	// Digests are the URLs' expected "sha256:HEX" digests; "" (or a
	// missing entry) checks the size against Content-Length only.
	Digests []string
	// DigestEvery checks the digests of every Nth client (1: all); 0 means
	// DefaultDigestEvery, negative never.
	DigestEvery int
	// MaxConcurrent caps the downloads in flight; 0 = no cap.
	MaxConcurrent int
	// HTTPStall fails a download that received nothing for this long; 0
	// means DefaultHTTPStall.
	HTTPStall time.Duration
}

// DownloadResult is what a plain download measured. Times are seconds.
type DownloadResult struct {
	// Name names the server side.
	Name string `json:"name"`
	// Round numbers the run among alternating repetitions.
	Round int `json:"round"`
	// Clients is how many clients downloaded.
	Clients int `json:"clients"`
	// Bytes is what they received.
	Bytes int64 `json:"bytes"`
	// Seconds is from the first request to the last byte.
	Seconds float64 `json:"seconds"`
	// BitsPerSecond is the aggregate rate: Bytes×8 / Seconds.
	BitsPerSecond float64 `json:"bitsPerSecond"`
	// P50, P99 and Max are the clients' times for all their URLs.
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	// Failed counts clients that failed; Errors their reasons.
	Failed int            `json:"failed"`
	Errors map[string]int `json:"errors,omitempty"`
}

// CompareReport is one plain download of a storm's comparison.
type CompareReport = DownloadResult

// Download runs a plain concurrent download and measures it.
func Download(ctx context.Context, cfg DownloadConfig) (DownloadResult, error) {
	res := DownloadResult{Name: cfg.Name, Clients: cfg.Clients}
	if cfg.Clients < 1 || len(cfg.URLs) == 0 {
		return res, errors.New("download: at least one client and one URL")
	}
	if !cfg.FirstIP.Is4() || !addIP(cfg.FirstIP, cfg.Clients-1).IsValid() {
		return res, fmt.Errorf("download: first ip %q: not an IPv4 address with room for %d clients", cfg.FirstIP, cfg.Clients)
	}
	if err := checkBindable(cfg.FirstIP, addIP(cfg.FirstIP, cfg.Clients-1)); err != nil {
		return res, err
	}
	if cfg.HTTPStall <= 0 {
		cfg.HTTPStall = DefaultHTTPStall
	}
	if cfg.DigestEvery == 0 {
		cfg.DigestEvery = DefaultDigestEvery
	}
	r := &runner{cfg: Config{HTTPStall: cfg.HTTPStall}}
	var sem chan struct{}
	if cfg.MaxConcurrent > 0 {
		sem = make(chan struct{}, cfg.MaxConcurrent)
	}
	times := make([]float64, cfg.Clients)
	errs := make([]error, cfg.Clients)
	sizes := make([]int64, cfg.Clients)
	var wg sync.WaitGroup
	start := time.Now()
	var lastEnd time.Duration
	var mu sync.Mutex
	for i := range cfg.Clients {
		wg.Go(func() {
			hc := newNodeHTTP(addIP(cfg.FirstIP, i), cfg.HTTPStall)
			defer hc.Close()
			t := time.Now()
			verify := cfg.DigestEvery > 0 && (i+1)%cfg.DigestEvery == 0
			for j, u := range cfg.URLs {
				if sem != nil {
					select {
					case sem <- struct{}{}:
					case <-ctx.Done():
						errs[i] = ctx.Err()
						return
					}
				}
				o := getOpts{}
				if verify && j < len(cfg.Digests) && cfg.Digests[j] != "" {
					o = getOpts{verify: true, want: cfg.Digests[j]}
				}
				got, err := hc.get(ctx, &r.bufs, u, o)
				if sem != nil {
					<-sem
				}
				sizes[i] += got.size
				if err != nil {
					errs[i] = err
					return
				}
			}
			times[i] = time.Since(t).Seconds()
			mu.Lock()
			lastEnd = max(lastEnd, time.Since(start))
			mu.Unlock()
		})
	}
	wg.Wait()
	var ok []float64
	for i := range cfg.Clients {
		res.Bytes += sizes[i]
		if errs[i] != nil {
			res.Failed++
			if res.Errors == nil {
				res.Errors = map[string]int{}
			}
			reason := "error"
			var pe *PhaseError
			if errors.As(errs[i], &pe) {
				reason = pe.Reason
			}
			res.Errors[reason]++
			continue
		}
		ok = append(ok, times[i])
	}
	res.Seconds = lastEnd.Seconds()
	if res.Failed > 0 {
		res.Seconds = time.Since(start).Seconds()
	}
	if res.Seconds > 0 {
		res.BitsPerSecond = float64(res.Bytes) * 8 / res.Seconds
	}
	slices.Sort(ok)
	if len(ok) > 0 {
		res.P50, res.P99, res.Max = percentile(ok, 50), percentile(ok, 99), ok[len(ok)-1]
	}
	return res, ctx.Err()
}

// compare downloads the kernel and image the nodes fetched, from ramboot
// (the same URLs) and from each target (by digest), with the same
// clients, alternating the order round by round.
func (r *runner) compare(ctx context.Context, nodes []*nodeRun) []CompareReport {
	var urls, digests []string
	seen := map[string]bool{}
	for _, n := range nodes {
		for _, f := range n.files {
			if !seen[f.url] {
				seen[f.url] = true
				urls, digests = append(urls, f.url), append(digests, f.digest)
			}
		}
		if len(urls) >= 2 {
			break
		}
	}
	if len(urls) == 0 {
		return nil
	}
	sides := append([]Target{{Name: rampName}}, r.cfg.Compare...)
	rounds := max(r.cfg.CompareRounds, 1)
	var out []CompareReport
	for round := 1; round <= rounds; round++ {
		order := slices.Clone(sides)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, t := range order {
			dc := DownloadConfig{Name: t.Name, Clients: len(nodes), FirstIP: r.cfg.FirstIP, Digests: digests,
				DigestEvery: r.cfg.DigestEvery, MaxConcurrent: r.cfg.MaxDownloads, HTTPStall: r.cfg.HTTPStall}
			for i, u := range urls {
				if t.Name == rampName {
					dc.URLs = append(dc.URLs, u)
				} else {
					dc.URLs = append(dc.URLs, t.URL(digests[i]))
				}
			}
			res, err := Download(ctx, dc)
			res.Round = round
			if err != nil && res.Errors == nil {
				res.Errors = map[string]int{err.Error(): 1}
			}
			r.progressf("storm: round %d %s: %s in %.2f s, %s, %d failed", round, t.Name, humanBytes(float64(res.Bytes)), res.Seconds, humanRate(res.BitsPerSecond), res.Failed)
			out = append(out, res)
		}
	}
	return out
}
