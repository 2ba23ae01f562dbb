package storm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images/overlay"
)

// maxOverlay bounds an overlay archive unpacked, and each file in it.
const maxOverlay = 64 << 20

// decoders are zstd decoders reused across the nodes: a new one per
// overlay allocates (and clears) its windows every time.
var decoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxOverlay))
	if err != nil {
		panic(fmt.Sprintf("zstd decoder: %v", err)) // only for invalid options
	}
	return d
}}

// overlayFile returns the content of the regular file name in an overlay
// (a zstd-compressed newc cpio), reading past the others without keeping
// them: an overlay carries the whole cluster's hosts and known_hosts.
func overlayFile(b []byte, name string) ([]byte, error) {
	zr := decoders.Get().(*zstd.Decoder)
	defer decoders.Put(zr)
	if err := zr.Reset(bytes.NewReader(b)); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	cr := cpio.NewReader(io.LimitReader(zr, maxOverlay))
	for {
		h, err := cr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("the overlay has no %s", name)
		}
		if err != nil {
			return nil, fmt.Errorf("overlay: read archive: %w", err)
		}
		if h.Name != name || !h.Mode.IsRegular() {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(cr, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("overlay: read %s: %w", h.Name, err)
		}
		return data, nil
	}
}

// agentClient is the HTTP client of a node's agent: from the node's
// address and, like ramboot-agent run as root, from a privileged port.
func (r *runner) agentClient(local netip.Addr) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         privilegedDialer(local, r.cfg.HTTPStall),
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		Proxy:               nil,
	}, Timeout: r.cfg.HTTPStall}
}

// privilegedDialer dials from local and the highest free port below 1024,
// or, where the process may not bind one, from any port.
func privilegedDialer(local netip.Addr, timeout time.Duration) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var last error
		for port := 1023; port >= 512; port-- {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice(), Port: port}, Timeout: timeout}
			c, err := d.DialContext(ctx, network, addr)
			switch {
			case err == nil:
				return c, nil
			case errors.Is(err, syscall.EACCES):
				d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
				return d.DialContext(ctx, network, addr)
			case errors.Is(err, syscall.EADDRINUSE), errors.Is(err, syscall.EADDRNOTAVAIL):
				last = err
				continue
			}
			return nil, err
		}
		return nil, last
	}
}

// register does what the agent does once the node is up: it reads the
// head's clock, then posts its report with the token of its overlay,
// retrying (exponential waits with full jitter, as the agent does) while
// the head answers 5xx or not at all. A head that does not answer (no
// connection, or a stall) is passed over for the next of the overlay's
// peer heads at once, as the agent's client does; the waits come after
// every head was tried. An answer, a refusal included, moves nothing.
func (r *runner) register(ctx context.Context, n *nodeRun, cfg overlay.Config) error {
	hc := r.agentClient(n.spec.IP)
	defer hc.CloseIdleConnections()
	up := time.Since(n.start) - n.powerOn
	rep := overlay.Report{
		State:             overlay.StateReady,
		ContentDigest:     cfg.Image.ContentDigest,
		Kernel:            "6.1.0-storm",
		MemTotalBytes:     64 << 30,
		UptimeSeconds:     up.Seconds(),
		CPUs:              64,
		Init:              "ramboot-agent",
		AgentVersion:      "storm",
		OverlayGeneration: cfg.OverlayGeneration,
		Boot:              &overlay.BootTimes{InitSeconds: r.cfg.BootTime.Seconds() / 2, HandoverSeconds: r.cfg.BootTime.Seconds(), ReadySeconds: r.cfg.BootTime.Seconds()},
	}
	body, err := json.Marshal(rep)
	if err != nil {
		return phaseErr(PhaseRegister, "encode", err)
	}
	cfg = cfg.OnHead(cfg.HeadURL)
	heads := cfg.Heads()
	wait, silent := time.Second, 0
	for {
		err := r.agentCall(ctx, hc, http.MethodGet, cfg.URL(overlay.TimePath), "", nil)
		if err == nil {
			err = r.agentCall(ctx, hc, http.MethodPost, cfg.URL(overlay.RegisterPath), cfg.Token, body)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The agent retries every failure, a refusal too (the head may
		// not have committed the token of an overlay it just sent): so
		// does the simulated one, until the storm's deadline.
		var pe *PhaseError
		if !errors.As(err, &pe) {
			return err
		}
		n.lastErr = pe
		if noAnswer(pe) && len(heads) > 1 {
			silent++
			next := heads[(slices.Index(heads, cfg.HeadURL)+1)%len(heads)]
			cfg = cfg.OnHead(next)
			n.retry(PhaseRegister, "fail-over", 1)
			if silent < len(heads) {
				continue // the next head at once
			}
		}
		silent = 0
		n.retry(PhaseRegister, pe.Reason, 1)
		if err := sleep(ctx, rand.N(wait)+time.Millisecond); err != nil {
			return n.lastErr
		}
		wait = min(wait*2, 30*time.Second)
	}
}

// noAnswer reports whether a call failed without an answer from the head
// (connection refused or reset, a stall): the agent then tries a peer.
func noAnswer(pe *PhaseError) bool { return pe.Reason == "connection" || pe.Reason == "stall" }

// agentCall makes one call of the node API and drains the answer.
func (r *runner) agentCall(ctx context.Context, hc *http.Client, method, url, token string, body []byte) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return phaseErr(PhaseRegister, "url", err)
	}
	req.Header.Set("User-Agent", "ramboot-agent (storm)")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		err := httpErr(ctx, err)
		var pe *PhaseError
		if errors.As(err, &pe) {
			pe.Phase = PhaseRegister
		}
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return phaseErr(PhaseRegister, fmt.Sprintf("http-%d", resp.StatusCode), fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, bytes.TrimSpace(msg)))
	}
	return nil
}
