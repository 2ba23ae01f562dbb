package storm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// MisbehaveKind is one way a client can misbehave.
type MisbehaveKind string

// The misbehaviours. Each comes from an address of its own (Misbehave.From
// and the next ones), so that the head's per-client limits meet each
// alone.
const (
	// MisbehaveConnFlood opens HTTP connections that send half a request
	// and then nothing, as fast as Rate allows, and holds them.
	MisbehaveConnFlood MisbehaveKind = "conn-flood"
	// MisbehaveSlowReader starts image downloads on a tiny receive window
	// and stops reading.
	MisbehaveSlowReader MisbehaveKind = "slow-reader"
	// MisbehaveTFTPFlood sends TFTP read requests for the iPXE binary from
	// new ports as fast as Rate allows and never acknowledges a block.
	MisbehaveTFTPFlood MisbehaveKind = "tftp-flood"
)

// MisbehaveKinds lists every misbehaviour.
func MisbehaveKinds() []MisbehaveKind {
	return []MisbehaveKind{MisbehaveConnFlood, MisbehaveSlowReader, MisbehaveTFTPFlood}
}

// DefaultMisbehaveRate is Misbehave.Rate's default.
const DefaultMisbehaveRate = 200

// heldAfter is how long a connection must stay open to count as held
// rather than refused at accept. The client's connection is open from the
// kernel's handshake, before the head's accept: on a loaded head a
// connection closed at accept can live past a second (TestStorm counted 19
// held against a cap of 16 once), while a held one lives until
// http.read_header_timeout (10 s by default).
const heldAfter = 3 * time.Second

// Misbehave is a misbehaving client that runs beside the storm's nodes.
type Misbehave struct {
	// Kinds are the misbehaviours; empty = none.
	Kinds []MisbehaveKind
	// From is the first kind's address; kind i uses From+i. The zero
	// value means the address after the last node's.
	From netip.Addr
	// Rate is the new connections or requests per second of each kind;
	// 0 means DefaultMisbehaveRate.
	Rate int
	// Max caps the connections or transfers each kind keeps open; 0
	// means 4 × Rate.
	Max int
}

func (m Misbehave) validate() error {
	for _, k := range m.Kinds {
		switch k {
		case MisbehaveConnFlood, MisbehaveSlowReader, MisbehaveTFTPFlood:
		default:
			return fmt.Errorf("kind %q: must be conn-flood, slow-reader or tftp-flood", k)
		}
	}
	if m.From.IsValid() && !m.From.Is4() {
		return fmt.Errorf("from: %s is not an IPv4 address", m.From)
	}
	if m.Rate < 0 || m.Max < 0 {
		return errors.New("rate, max: must not be negative")
	}
	return nil
}

// MisbehaveReport is what the misbehaving client managed.
type MisbehaveReport struct {
	Kinds []MisbehaveKindReport `json:"kinds"`
}

// MisbehaveKindReport is one misbehaviour's counts.
type MisbehaveKindReport struct {
	// Kind and From say which misbehaviour, from which address.
	Kind MisbehaveKind `json:"kind"`
	From string        `json:"from"`
	// Attempts counts the connections or requests made.
	Attempts int64 `json:"attempts"`
	// Refused counts those the head closed or refused at once (within
	// three seconds, or a TFTP error).
	Refused int64 `json:"refused"`
	// Cut counts those the head ended later (a timeout).
	Cut int64 `json:"cut"`
	// HeldMax is the most the head held at once for it: connections it
	// kept open past three seconds, TFTP transfers from their first packet to
	// their last retransmission.
	HeldMax int64 `json:"heldMax"`
	// Failed counts attempts that failed on the client's side.
	Failed int64 `json:"failed"`
	// Started is when it started, seconds after the storm's start; it
	// starts once the first nodes have shown where the head serves what.
	Started float64 `json:"startedSeconds"`
}

func (m *MisbehaveReport) write(b *strings.Builder) {
	b.WriteString("misbehaving client:\n")
	for _, k := range m.Kinds {
		fmt.Fprintf(b, "  %-12s from %-15s %d attempts, %d refused at once, %d cut later, at most %d held at once, %d failed\n",
			k.Kind, k.From, k.Attempts, k.Refused, k.Cut, k.HeldMax, k.Failed)
	}
}

// misbehaver runs the misbehaviours.
type misbehaver struct {
	r      *runner
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kinds  []*kindRun
}

type kindRun struct {
	kind                           MisbehaveKind
	from                           netip.Addr
	attempts, refused, cut, failed atomic.Int64
	open                           atomic.Int64 // connections or transfers open on the client's side
	started                        atomic.Int64 // ns since the storm's start

	mu   sync.Mutex
	held [][2]time.Time // when the head held each one it accepted
}

// heldFrom records that the head held one of k's from start to end.
func (k *kindRun) heldFrom(start, end time.Time) {
	k.mu.Lock()
	k.held = append(k.held, [2]time.Time{start, end})
	k.mu.Unlock()
}

// heldMax is the most the head held at once: the largest overlap of the
// held intervals.
func (k *kindRun) heldMax() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	type edge struct {
		t     time.Time
		delta int64
	}
	var es []edge
	for _, h := range k.held {
		es = append(es, edge{h[0], 1}, edge{h[1], -1})
	}
	// Ends before starts at the same instant: touching is not overlap.
	slices.SortFunc(es, func(a, b edge) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		return int(a.delta - b.delta)
	})
	var cur, top int64
	for _, e := range es {
		cur += e.delta
		top = max(top, cur)
	}
	return top
}

// startMisbehave starts the misbehaviours; stop ends them.
func (r *runner) startMisbehave(ctx context.Context) *misbehaver {
	m := &misbehaver{r: r}
	cfg := r.cfg.Misbehave
	if len(cfg.Kinds) == 0 {
		return m
	}
	ctx, m.cancel = context.WithCancel(ctx)
	from := cfg.From
	if !from.IsValid() {
		from = addIP(r.cfg.FirstIP, r.cfg.Nodes)
	}
	start := time.Now()
	for i, kind := range cfg.Kinds {
		k := &kindRun{kind: kind, from: addIP(from, i)}
		m.kinds = append(m.kinds, k)
		m.wg.Go(func() {
			l, ok := r.waitLearned(ctx, kind)
			if !ok {
				return
			}
			k.started.Store(int64(time.Since(start)))
			switch kind {
			case MisbehaveConnFlood:
				m.connFlood(ctx, k, l)
			case MisbehaveSlowReader:
				m.slowReader(ctx, k, l)
			case MisbehaveTFTPFlood:
				m.tftpFlood(ctx, k, l)
			}
		})
	}
	return m
}

// waitLearned waits until the nodes have shown what kind needs.
func (r *runner) waitLearned(ctx context.Context, kind MisbehaveKind) (learned, bool) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		l := r.known()
		switch {
		case kind == MisbehaveConnFlood && l.headURL != "",
			kind == MisbehaveSlowReader && l.imageURL != "",
			kind == MisbehaveTFTPFlood && l.tftpFile != "":
			return l, true
		}
		select {
		case <-ctx.Done():
			return l, false
		case <-t.C:
		}
	}
}

// stop ends the misbehaviours and reports them.
func (m *misbehaver) stop() *MisbehaveReport {
	if m.cancel == nil {
		return nil
	}
	m.cancel()
	m.wg.Wait()
	rep := &MisbehaveReport{}
	for _, k := range m.kinds {
		rep.Kinds = append(rep.Kinds, MisbehaveKindReport{Kind: k.kind, From: k.from.String(),
			Attempts: k.attempts.Load(), Refused: k.refused.Load(), Cut: k.cut.Load(), HeldMax: k.heldMax(),
			Failed: k.failed.Load(), Started: time.Duration(k.started.Load()).Seconds()})
	}
	return rep
}

func (m *misbehaver) rate() time.Duration {
	r := m.r.cfg.Misbehave.Rate
	if r <= 0 {
		r = DefaultMisbehaveRate
	}
	return time.Second / time.Duration(r)
}

func (m *misbehaver) max() int64 {
	if n := m.r.cfg.Misbehave.Max; n > 0 {
		return int64(n)
	}
	return int64(4 * max(m.r.cfg.Misbehave.Rate, DefaultMisbehaveRate))
}

// hostPort returns a URL's host:port.
func hostPort(u string) (string, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", err
	}
	if pu.Port() == "" {
		return net.JoinHostPort(pu.Hostname(), "80"), nil
	}
	return pu.Host, nil
}

// paced calls f every rate until ctx ends, while fewer than max of k's
// are open.
func (m *misbehaver) paced(ctx context.Context, k *kindRun, f func()) {
	t := time.NewTicker(m.rate())
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if k.open.Load() >= m.max() {
			continue
		}
		k.attempts.Add(1)
		wg.Go(f)
	}
}

// watch waits for the head to end conn (or ctx), counting it refused or
// cut by how long it lived.
func watch(ctx context.Context, k *kindRun, conn net.Conn) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	start := time.Now()
	k.open.Add(1)
	defer k.open.Add(-1)
	_, _ = io.Copy(io.Discard, conn)
	k.closed(ctx, start)
}

// closed counts a connection the head ended (unless ctx did): held if it
// lived past heldAfter, then cut; refused at once otherwise.
func (k *kindRun) closed(ctx context.Context, start time.Time) {
	end := time.Now()
	if end.Sub(start) >= heldAfter {
		k.heldFrom(start, end)
	}
	switch {
	case ctx.Err() != nil:
	case end.Sub(start) < heldAfter:
		k.refused.Add(1)
	default:
		k.cut.Add(1)
	}
}

func (m *misbehaver) connFlood(ctx context.Context, k *kindRun, l learned) {
	addr, err := hostPort(l.headURL)
	if err != nil {
		return
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: k.from.AsSlice()}, Timeout: 5 * time.Second}
	m.paced(ctx, k, func() {
		conn, err := d.DialContext(ctx, "tcp4", addr)
		if err != nil {
			k.failed.Add(1)
			return
		}
		// Half a request: the head waits for the rest until its header
		// timeout.
		_, _ = conn.Write([]byte("GET /boot/agent.cpio.zst HTTP/1.1\r\nHost: head\r\n"))
		watch(ctx, k, conn)
	})
}

func (m *misbehaver) slowReader(ctx context.Context, k *kindRun, l learned) {
	pu, err := url.Parse(l.imageURL)
	if err != nil {
		return
	}
	addr, _ := hostPort(l.imageURL)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: k.from.AsSlice()}, Timeout: 5 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
		}}
	m.paced(ctx, k, func() {
		conn, err := d.DialContext(ctx, "tcp4", addr)
		if err != nil {
			k.failed.Add(1)
			return
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", pu.RequestURI(), pu.Host)
		// Read the headers' first bytes, then nothing: the head has a
		// 64 MiB file to send and a full window.
		_, _ = conn.Read(make([]byte, 512))
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		defer conn.Close()
		start := time.Now()
		k.open.Add(1)
		defer k.open.Add(-1)
		// A reader that never drains: a 1-byte read every 10 s only
		// notices when the head cut the connection.
		one := make([]byte, 1)
		for ctx.Err() == nil {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Read(one); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				break
			}
			if err := sleep(ctx, 10*time.Second); err != nil {
				break
			}
		}
		k.closed(ctx, start)
	})
}

func (m *misbehaver) tftpFlood(ctx context.Context, k *kindRun, l learned) {
	rrq := binary.BigEndian.AppendUint16(nil, 1)
	for _, s := range []string{l.tftpFile, "octet", "blksize", "1468"} {
		rrq = append(append(rrq, s...), 0)
	}
	m.paced(ctx, k, func() {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: k.from.AsSlice()})
		if err != nil {
			k.failed.Add(1)
			return
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		if _, err := conn.WriteToUDPAddrPort(rrq, l.tftp); err != nil {
			k.failed.Add(1)
			return
		}
		buf := make([]byte, 2048)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil || n < 2 {
			k.failed.Add(1)
			return
		}
		if binary.BigEndian.Uint16(buf) == 5 { // ERROR: refused
			k.refused.Add(1)
			return
		}
		// A transfer started: never acknowledge. The head holds it while
		// it retransmits, and lets go one retransmission interval after
		// its last packet.
		// It is held from its first packet to its last retransmission:
		// the head lets go a retransmission interval later, when it may
		// already have taken the next request, so the overlap counted
		// stays within what the head really held.
		start := time.Now()
		last := start
		k.open.Add(1)
		defer k.open.Add(-1)
		for ctx.Err() == nil {
			_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
			if _, _, err := conn.ReadFromUDPAddrPort(buf); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
					k.cut.Add(1) // the head stopped retransmitting: it let go
				}
				break
			}
			last = time.Now()
		}
		k.heldFrom(start, last)
	})
}
