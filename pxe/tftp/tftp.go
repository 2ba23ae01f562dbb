// Package tftp serves a fixed catalogue of boot files read-only over TFTP.
//
// It is the TFTP step of the boot chain: firmware PXE clients fetch the iPXE
// binary (undionly.kpxe, snponly.efi, ipxe.efi) from it, and nothing else.
// It speaks RFC 1350 with options (RFC 2347-2349: blksize, tsize,
// timeout), read requests only, and adds the catalogue, the refusals, the
// per-transfer events for the boot timeline, logs and metrics. Each
// transfer runs on a blocking socket of its own (see transfer.go for why
// not github.com/pin/tftp, whose client the tests still use as a peer).
//
// Usage:
//
//	srv := &tftp.Server{
//		Root:     os.DirFS("/usr/lib/ipxe"),
//		Files:    []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"},
//		Logger:   logger,
//		Metrics:  tftp.NewMetrics(prometheus.DefaultRegisterer),
//		Observer: func(ev tftp.Event) { timeline.Add(ev) },
//	}
//	if err := srv.ListenAndServe(ctx, "10.77.0.1:69"); err != nil {
//		return err
//	}
//
// ListenAndServe (or Serve on a socket from Listen) runs until ctx ends,
// then stops accepting requests, ends the transfers in flight and returns
// nil. Every request ends in one Event for the Observer: served, refused
// (a name outside the catalogue, path traversal, a write request) or failed.
//
// Resources are bounded: at most MaxTransfers transfers are in flight, at
// most MaxTransfersPerClient from one client address. A read request beyond
// either limit gets a TFTP ERROR at once, is counted
// (ramboot_tftp_over_limit_total) and logged at most once per ten seconds;
// it holds nothing after its ERROR is sent and is not reported to the
// Observer, so a flood does not become a flood of timeline writes.
package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/pxe/internal/ratelog"
	"github.com/ramboot/ramboot/pxe/internal/udpsock"
)

// Defaults for the zero values of the Server fields.
const (
	// DefaultTimeout is the per-packet retransmit timeout used when
	// Server.Timeout is zero.
	DefaultTimeout = time.Second
	// DefaultRetries is the number of retransmissions used when
	// Server.Retries is zero.
	DefaultRetries = 5
	// DefaultMaxBlockSize is the largest blksize granted when
	// Server.MaxBlockSize is zero: a 1500-byte Ethernet MTU minus the IPv4
	// (20), UDP (8) and TFTP (4) headers, so DATA packets never fragment.
	DefaultMaxBlockSize = 1468
	// DefaultMaxBlockSizeIPv6 is the same for IPv6 (a 40-byte header),
	// used on IPv6 sockets when Server.MaxBlockSize is zero.
	DefaultMaxBlockSizeIPv6 = 1448
	// DefaultMaxTransfers is the cap on transfers in flight when
	// Server.MaxTransfers is zero. A transfer holds two file descriptors
	// (its socket and the file) and a goroutine; 1000 of them are about
	// 2,000 descriptors and 70 MB, and a rack of UEFI nodes powered on at
	// once fetches its 200 KB iPXE binaries in well under a second each.
	DefaultMaxTransfers = 1000
	// DefaultMaxTransfersPerClient is the cap on transfers in flight from
	// one client address when Server.MaxTransfersPerClient is zero. A
	// booting node needs one at a time (UEFI's tsize probe ends before its
	// fetch starts).
	DefaultMaxTransfersPerClient = 8
	// DefaultQueueWait is how long a request over MaxTransfers waits for
	// a slot when Server.QueueWait is zero.
	DefaultQueueWait = 2 * time.Second
	// DefaultReceiveBuffer is the receive buffer asked for the server
	// socket when Server.ReceiveBuffer is zero: room for thousands of
	// queued requests during a boot storm.
	DefaultReceiveBuffer = 4 << 20
)

// logInterval is the shortest time between two Warn lines of one kind
// (refused, failed, over the limit); the lines held back go to Debug and
// the next Warn line counts them.
const logInterval = 10 * time.Second

// Errors that an Event's Err wraps, for callers that branch with errors.Is.
var (
	// ErrNotFound means the requested name is not in the catalogue. The
	// client gets a TFTP ERROR packet.
	ErrNotFound = errors.New("file not found")
	// ErrAccessViolation means the request was a write request or named a
	// path that is not a clean relative path (for example "../etc/passwd").
	// The client gets a TFTP ERROR packet.
	ErrAccessViolation = errors.New("access violation")
	// ErrAborted means the client ended the transfer with a TFTP ERROR
	// packet. UEFI firmware does this on purpose after it has read the tsize
	// option ("error 8 User aborted"), then fetches the file again.
	ErrAborted = errors.New("aborted by client")
	// ErrBusy means the request was refused because MaxTransfers
	// transfers, or MaxTransfersPerClient from the client's address, were
	// in flight. The client gets a TFTP ERROR packet. Such requests are
	// counted and logged but not reported to the Observer.
	ErrBusy = errors.New("server busy")
)

// errStopping ends the transfers in flight when Serve's context ends.
var errStopping = errors.New("server shutting down")

// Event is one finished (or failed) transfer, for the caller's per-node
// boot timeline.
type Event struct {
	// Remote is the client's address and port (IPv4 addresses unmapped).
	Remote netip.AddrPort
	// File is the requested name with leading slashes removed.
	File string
	// Bytes is the number of file bytes sent.
	Bytes int64
	// Dur is the time from the request to the end of the transfer.
	Dur time.Duration
	// Err is nil on success. Otherwise it wraps ErrNotFound or
	// ErrAccessViolation for a refused request, ErrAborted when the client
	// ended the transfer (the tsize probe of UEFI firmware: logged at Debug,
	// not Warn), a net.Error with Timeout() for a client that stopped
	// acknowledging, or the error that opening or reading the file gave.
	Err error
	// Time is when the request arrived.
	Time time.Time
	// BlockSize is the block size the transfer used: the negotiated
	// blksize option, else 512.
	BlockSize int
	// Datagrams is the number of packets sent (option acknowledgement and
	// DATA, retransmissions included); Retransmits is how many of them were
	// sent again because the client's acknowledgement did not come in
	// time.
	Datagrams, Retransmits int
}

// Server is a read-only TFTP server for a fixed catalogue of files. Set the
// fields before calling Serve or ListenAndServe and do not change them
// afterwards.
type Server struct {
	// Root is where files are read from, for example
	// os.DirFS("/usr/lib/ipxe"). Required.
	Root fs.FS
	// Files is the catalogue: the only names served, as slash-separated
	// paths relative to Root (fs.ValidPath), for example "snponly.efi".
	// A request may prefix the name with "/" (as PXE firmware does). Any
	// other name, path traversal or write request is refused with a TFTP
	// ERROR packet and counted. Required.
	Files []string
	// Timeout is the per-packet retransmit timeout. Default 1s
	// (DefaultTimeout). A transfer whose client stops answering ends after
	// about Timeout*(Retries+1).
	Timeout time.Duration
	// Retries is how many times an unacknowledged packet is sent again.
	// Default 5 (DefaultRetries).
	Retries int
	// MaxBlockSize caps the blksize option granted to clients, between 513
	// and 65464. Default 1468 (DefaultMaxBlockSize). The block size is also
	// capped by the MTU of the interface a request came in on.
	MaxBlockSize int
	// MaxTransfers caps the transfers in flight. A read request beyond it
	// waits up to QueueWait for a transfer to end (oldest first), then
	// gets a TFTP ERROR ("server busy") and is counted in
	// ramboot_tftp_over_limit_total{limit="total"}; at most MaxTransfers
	// requests wait, more are refused at once. Default 1000
	// (DefaultMaxTransfers).
	MaxTransfers int
	// QueueWait is how long a read request over MaxTransfers waits for a
	// slot. Default 2s (DefaultQueueWait): half the 4 s after which EDK2
	// repeats its request. Negative refuses at once.
	QueueWait time.Duration
	// MaxTransfersPerClient caps the transfers in flight from one client
	// IP address, so that one host cannot take every slot; beyond it, as
	// for MaxTransfers, with limit="client". Default 8
	// (DefaultMaxTransfersPerClient). It must not exceed MaxTransfers.
	MaxTransfersPerClient int
	// ReceiveBuffer is the receive buffer, in bytes, asked for the server
	// socket (SO_RCVBUFFORCE, else SO_RCVBUF, which net.core.rmem_max
	// caps). Requests that arrive while it is full are dropped by the
	// kernel and counted in ramboot_tftp_socket_drops_total. Default 4 MiB
	// (DefaultReceiveBuffer); negative leaves the socket as it is.
	ReceiveBuffer int
	// Observer, if not nil, is called once per request when its transfer
	// ends (also for refused requests, except those refused by
	// MaxTransfers or MaxTransfersPerClient), from the transfer's
	// goroutine. It must be safe for concurrent use and should return
	// quickly.
	Observer func(Event)
	// Logger receives transfer logs. Nil discards them.
	Logger *slog.Logger
	// Metrics, if not nil, counts transfers, bytes and malformed packets.
	Metrics *Metrics
}

// ListenAndServe listens on the UDP address addr (for example
// "10.77.0.1:69") with Listen and calls Serve. It returns nil once ctx has
// ended and the server has stopped.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	conn, err := Listen(ctx, addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, conn)
}

// Serve answers TFTP requests that arrive on conn until ctx ends. Then it
// stops reading requests, ends the transfers in flight (each at its next
// block, or after its retransmit timeout if the client is gone), closes conn
// and returns nil. It returns an error if the configuration is invalid or
// conn fails for another reason; it closes conn in every case.
//
// conn should be a *net.UDPConn, best from Listen or ListenIPv6: only then
// can the server see which local address and interface a request came in
// on, which it needs to answer from that address and to grant block sizes
// above 512 bytes. Other PacketConns must report *net.UDPAddr addresses;
// their transfers use 512-byte blocks.
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	defer conn.Close()
	st, err := s.newState()
	if err != nil {
		return err
	}
	laddr, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		return fmt.Errorf("serve tftp on %s: not a UDP socket", conn.LocalAddr())
	}
	if uc, ok := conn.(syscall.Conn); ok {
		if st.receiveBuffer > 0 {
			got, err := udpsock.SetReceiveBuffer(uc, st.receiveBuffer)
			if err != nil {
				return fmt.Errorf("serve tftp on %s: %w", laddr, err)
			}
			st.log.Debug("tftp socket receive buffer", "ip", laddr.String(), "bytes", got)
		}
		untrack := st.metrics.trackDrops(uc)
		defer untrack()
		st.untrackDrops = untrack
	}
	if laddr.IP.To4() == nil && st.maxBlockSize == DefaultMaxBlockSize && s.MaxBlockSize == 0 {
		st.maxBlockSize = DefaultMaxBlockSizeIPv6 // for the larger IPv6 header
	}
	rq, err := newRequestConn(conn)
	if err != nil {
		return fmt.Errorf("serve tftp on %s: %w", laddr, err)
	}
	st.ns = rq.namespace()
	if st.ns >= 0 {
		defer unix.Close(st.ns)
	}

	st.log.Info("tftp server listening", "ip", laddr.String())
	stop := context.AfterFunc(ctx, func() {
		st.stopping.Store(true)
		close(st.done)    // requests waiting for a slot give up
		st.untrackDrops() // read the socket's drops before it closes
		conn.Close()
	})
	defer stop()
	var transfers sync.WaitGroup
	defer transfers.Wait()
	buf := make([]byte, 65536)
	var backoff time.Duration
	for {
		n, in, err := rq.read(buf)
		if ctx.Err() != nil {
			transfers.Wait()
			st.log.Info("tftp server stopped", "ip", laddr.String())
			return nil
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				st.untrackDrops()
				return fmt.Errorf("serve tftp on %s: %w", laddr, err)
			}
			// Transient (an ICMP error reported on the socket): back off a
			// little and carry on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			st.warn("tftp read error", "err", err, "dur", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		st.request(rq, buf[:n], in, &transfers)
	}
}

// state is what one Serve call shares with its handlers.
type state struct {
	catalogue     map[string]bool
	root          fs.FS
	timeout       time.Duration
	retries       int
	maxBlockSize  int
	receiveBuffer int
	admit         admission
	observer      func(Event)
	log           *slog.Logger
	logLimit      ratelog.Limiter
	metrics       *Metrics
	stopping      atomic.Bool
	untrackDrops  func()
	// ns is the server socket's network namespace, where transfer sockets
	// are opened; -1 when unknown (the calling thread's is used).
	ns int
	// done is closed when Serve stops.
	done chan struct{}
}

// newState checks the configuration and applies the defaults; it reports
// every problem at once.
func (s *Server) newState() (*state, error) {
	st := &state{
		catalogue:     make(map[string]bool, len(s.Files)),
		root:          s.Root,
		timeout:       s.Timeout,
		retries:       s.Retries,
		maxBlockSize:  s.MaxBlockSize,
		receiveBuffer: s.ReceiveBuffer,
		admit:         admission{maxTotal: s.MaxTransfers, maxPerClient: s.MaxTransfersPerClient, wait: s.QueueWait},
		done:          make(chan struct{}),
		observer:      s.Observer,
		log:           s.Logger,
		logLimit:      ratelog.Limiter{Interval: logInterval},
		metrics:       s.Metrics,
		untrackDrops:  func() {},
	}
	var errs []error
	if s.Root == nil {
		errs = append(errs, errors.New("no file system to read from (Root is nil)"))
	}
	if len(s.Files) == 0 {
		errs = append(errs, errors.New("empty catalogue (Files)"))
	}
	for _, name := range s.Files {
		if !fs.ValidPath(name) || name == "." {
			errs = append(errs, fmt.Errorf("file %q is not a valid fs.FS path", name))
			continue
		}
		st.catalogue[name] = true
	}
	switch {
	case s.Timeout < 0:
		errs = append(errs, fmt.Errorf("timeout %v is negative (Timeout)", s.Timeout))
	case s.Timeout == 0:
		st.timeout = DefaultTimeout
	}
	switch {
	case s.Retries < 0:
		errs = append(errs, fmt.Errorf("retries %d is negative (Retries)", s.Retries))
	case s.Retries == 0:
		st.retries = DefaultRetries
	}
	switch {
	case s.MaxBlockSize == 0:
		st.maxBlockSize = DefaultMaxBlockSize
	case s.MaxBlockSize < 513 || s.MaxBlockSize > 65464:
		errs = append(errs, fmt.Errorf("max block size %d is outside 513..65464 (MaxBlockSize)", s.MaxBlockSize))
	}
	switch {
	case s.MaxTransfers < 0:
		errs = append(errs, fmt.Errorf("max transfers %d is negative (MaxTransfers)", s.MaxTransfers))
	case s.MaxTransfers == 0:
		st.admit.maxTotal = DefaultMaxTransfers
	}
	switch {
	case s.MaxTransfersPerClient < 0:
		errs = append(errs, fmt.Errorf("max transfers per client %d is negative (MaxTransfersPerClient)", s.MaxTransfersPerClient))
	case s.MaxTransfersPerClient == 0:
		st.admit.maxPerClient = min(DefaultMaxTransfersPerClient, st.admit.maxTotal)
	case s.MaxTransfers >= 0 && s.MaxTransfersPerClient > st.admit.maxTotal:
		errs = append(errs, fmt.Errorf("max transfers per client %d is above max transfers %d (MaxTransfersPerClient)", s.MaxTransfersPerClient, st.admit.maxTotal))
	}
	if s.ReceiveBuffer == 0 {
		st.receiveBuffer = DefaultReceiveBuffer
	}
	if s.QueueWait == 0 {
		st.admit.wait = DefaultQueueWait
	}
	if st.log == nil {
		st.log = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("configure tftp server: %w", err)
	}
	return st, nil
}

// request handles one datagram that came to the server port: a read
// request starts a transfer on a goroutine of its own; anything else is
// refused or dropped from here, with the ERROR sent from the server port,
// so that a refused request holds nothing.
func (st *state) request(rq *requestConn, b []byte, in datagram, transfers *sync.WaitGroup) {
	r, err := parseRequest(b)
	if err != nil {
		st.metrics.malformed()
		st.log.Debug("tftp datagram dropped", "ip", in.peer.Addr().String(), "bytes", len(b), "err", err)
		return
	}
	ev := Event{Time: time.Now(), File: normalise(r.filename), Remote: in.peer}
	refuse := func(code uint16, err error, res result) {
		rq.reply(errorPacket(code, err.Error()), in)
		ev.Err = err
		st.finish(ev, res)
	}
	if r.op == opWRQ {
		refuse(codeAccess, fmt.Errorf("write %q: %w: server is read-only", ev.File, ErrAccessViolation), resultRefused)
		return
	}
	if r.mode != "octet" && r.mode != "netascii" {
		refuse(codeIllegal, fmt.Errorf("read %q: %w: transfer mode %q", ev.File, ErrAccessViolation, r.mode), resultRefused)
		return
	}
	if err := st.check(ev.File); err != nil {
		code := uint16(codeNotFound)
		if errors.Is(err, ErrAccessViolation) {
			code = codeAccess
		}
		refuse(code, err, resultRefused)
		return
	}
	busy := func(err error) {
		err = fmt.Errorf("read %q: %w", ev.File, err)
		st.overLimit(ev, err) // counted before the client can see the ERROR
		rq.reply(errorPacket(codeUndefined, err.Error()), in)
	}
	release, w, err := st.admit.acquire(ev.Remote.Addr())
	if err != nil {
		busy(err)
		return
	}
	limit := rq.limit(in, st.maxBlockSize)
	if w != nil {
		// Over MaxTransfers: wait for a slot on a goroutine of its own,
		// so that the server port keeps being read.
		transfers.Go(func() {
			start := time.Now()
			release, err := st.admit.await(w, st.done)
			st.metrics.queuedFor(time.Since(start))
			if err != nil {
				busy(err)
				return
			}
			st.open(ev, r, in, limit, release, refuse)
		})
		return
	}
	transfers.Go(func() { st.open(ev, r, in, limit, release, refuse) })
}

// open opens the file of an admitted request and sends it; release gives
// its slot back.
func (st *state) open(ev Event, r request, in datagram, limit int, release func(), refuse func(uint16, error, result)) {
	defer release()
	f, err := st.root.Open(ev.File)
	if err != nil {
		refuse(codeNotFound, fmt.Errorf("open %s: %w", ev.File, err), resultError)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		refuse(codeNotFound, fmt.Errorf("stat %s: %w", ev.File, err), resultError)
		return
	}
	st.transfer(ev, r, f, fi.Size(), in, limit)
}

// transfer sends one file to the client of ev over a socket of its own.
func (st *state) transfer(ev Event, r request, f io.Reader, size int64, in datagram, limit int) {
	st.metrics.started()
	defer st.metrics.ended()
	n := negotiate(r, limit, size)
	ev.BlockSize = n.blockSize
	timeout := st.timeout
	if n.timeout > 0 {
		timeout = time.Duration(n.timeout) * time.Second
	}
	local := in.dst
	if local.IsValid() && (local.IsMulticast() || local == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		local = netip.Addr{} // a broadcast request: the kernel picks the source
	}
	c, err := dialTransfer(st.ns, local, in.ifindex, ev.Remote, timeout)
	if err != nil {
		ev.Err = err
		st.finish(ev, resultError)
		return
	}
	defer c.close()
	var src io.Reader = bufio.NewReaderSize(f, 64<<10)
	if r.mode == "netascii" {
		src = &netascii{r: src.(*bufio.Reader)}
	}
	sd := &sender{c: c, blockSize: n.blockSize, retries: st.retries, stopping: &st.stopping}
	ev.Bytes, err = sd.run(n.oack, src)
	ev.Dur = time.Since(ev.Time)
	ev.Datagrams, ev.Retransmits = sd.datagrams, sd.retransmits
	if err == nil {
		st.finish(ev, resultOK)
		return
	}
	var ce clientError
	switch {
	case errors.As(err, &ce):
		ev.Err = fmt.Errorf("send %s: %w: %w", ev.File, ErrAborted, err)
	default:
		ev.Err = fmt.Errorf("send %s: %w", ev.File, err)
	}
	st.finish(ev, resultError)
}

// check refuses names that are not clean relative paths or not in the
// catalogue.
func (st *state) check(name string) error {
	if !fs.ValidPath(name) {
		return fmt.Errorf("read %q: %w", name, ErrAccessViolation)
	}
	if !st.catalogue[name] {
		return fmt.Errorf("read %q: %w", name, ErrNotFound)
	}
	return nil
}

// normalise strips the leading slashes that PXE firmware puts in front of a
// boot file name.
func normalise(name string) string {
	for len(name) > 0 && name[0] == '/' {
		name = name[1:]
	}
	return name
}

// result is the value of the result label of ramboot_tftp_transfers_total.
type result string

const (
	resultOK      result = "ok"
	resultError   result = "error"
	resultRefused result = "refused"
)

// finish logs, counts and reports one ended request.
func (st *state) finish(ev Event, res result) {
	if ev.Dur == 0 {
		ev.Dur = time.Since(ev.Time)
	}
	probe := res == resultError && ev.Bytes == 0 && errors.Is(ev.Err, ErrAborted)
	file := otherFile
	if st.catalogue[ev.File] {
		file = ev.File
	}
	st.metrics.finished(res, ev, file, probe)

	attrs := []any{"ip", ev.Remote.Addr().String(), "path", ev.File, "bytes", ev.Bytes, "dur", ev.Dur,
		"blksize", ev.BlockSize, "retransmits", ev.Retransmits}
	switch {
	case res == resultOK:
		st.log.Info("tftp transfer done", attrs...)
	case probe:
		// UEFI firmware reads tsize and aborts on purpose before fetching.
		st.log.Debug("tftp transfer aborted by client after option negotiation", append(attrs, "err", ev.Err)...)
	case res == resultRefused:
		st.warn("tftp request refused", append(attrs, "err", ev.Err)...)
	default:
		st.warn("tftp transfer failed", append(attrs, "err", ev.Err)...)
	}
	if st.observer != nil {
		st.observer(ev)
	}
}

// overLimit counts and logs a request refused by MaxTransfers or
// MaxTransfersPerClient. It does not call the Observer.
func (st *state) overLimit(ev Event, err error) {
	limit := limitTotal
	if errors.Is(err, errClientBusy) {
		limit = limitClient
	}
	st.metrics.refusedOverLimit(limit)
	total, client := st.admit.inFlight(ev.Remote.Addr())
	st.warn("tftp request refused: transfer limit reached", "ip", ev.Remote.Addr().String(), "path", ev.File,
		"limit", string(limit), "in_flight", total, "client_in_flight", client, "err", err)
}

// warn logs msg at Warn at most once per logInterval per message; the
// lines in between go to Debug, and the next Warn line counts them
// ("suppressed"). A flood of failing requests thus costs a few log lines.
func (st *state) warn(msg string, attrs ...any) {
	ok, held := st.logLimit.Allow(msg)
	if !ok {
		st.log.Debug(msg, attrs...)
		return
	}
	if held > 0 {
		attrs = append(attrs, "suppressed", held)
	}
	st.log.Warn(msg, attrs...)
}

// limit is the value of the limit label of ramboot_tftp_over_limit_total.
type limit string

const (
	limitTotal  limit = "total"
	limitClient limit = "client"
)

// errClientBusy wraps ErrBusy for a refusal by MaxTransfersPerClient.
var errClientBusy = fmt.Errorf("%w: too many transfers from this address", ErrBusy)

// admission counts the transfers in flight, in total and per client
// address, queues requests over the total for up to wait (oldest first),
// and refuses those beyond the limits.
type admission struct {
	maxTotal, maxPerClient int
	wait                   time.Duration // negative: no queue

	mu        sync.Mutex
	total     int
	perClient map[netip.Addr]int // in flight and waiting
	queue     []*waiter
}

// waiter is a request waiting for a slot; ready is closed when it is
// granted one.
type waiter struct {
	ip      netip.Addr
	ready   chan struct{}
	granted bool
}

// acquire takes a slot for a transfer from ip (release gives it back),
// or queues the request (w, for await) when MaxTransfers are in flight,
// or returns an error wrapping ErrBusy: the client's limit reached, or
// the queue full or off. A waiting request counts against its client's
// limit.
func (a *admission) acquire(ip netip.Addr) (release func(), w *waiter, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.perClient[ip] >= a.maxPerClient {
		return nil, nil, errClientBusy
	}
	if a.perClient == nil {
		a.perClient = map[netip.Addr]int{}
	}
	if a.total < a.maxTotal && len(a.queue) == 0 {
		a.total++
		a.perClient[ip]++
		return a.releaser(ip), nil, nil
	}
	if a.wait < 0 {
		return nil, nil, fmt.Errorf("%w: %d transfers in flight", ErrBusy, a.total)
	}
	if len(a.queue) >= a.maxTotal {
		return nil, nil, fmt.Errorf("%w: %d transfers in flight, %d waiting", ErrBusy, a.total, len(a.queue))
	}
	w = &waiter{ip: ip, ready: make(chan struct{})}
	a.queue = append(a.queue, w)
	a.perClient[ip]++
	return nil, w, nil
}

// releaser returns the function that gives ip's slot back: to the oldest
// waiting request, if any.
func (a *admission) releaser(ip netip.Addr) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.dropClient(ip)
			if len(a.queue) > 0 {
				w := a.queue[0]
				a.queue[0] = nil
				a.queue = a.queue[1:]
				w.granted = true
				close(w.ready) // the slot passes on: total unchanged
				return
			}
			a.total--
		})
	}
}

// dropClient counts one request of ip less. The lock must be held.
func (a *admission) dropClient(ip netip.Addr) {
	if a.perClient[ip]--; a.perClient[ip] <= 0 {
		delete(a.perClient, ip)
	}
}

// await waits until w is granted a slot (release gives it back), a.wait
// passes or done closes; then it returns an error wrapping ErrBusy.
func (a *admission) await(w *waiter, done <-chan struct{}) (release func(), err error) {
	t := time.NewTimer(a.wait)
	defer t.Stop()
	select {
	case <-w.ready:
		return a.releaser(w.ip), nil
	case <-t.C:
	case <-done:
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if w.granted { // granted as the wait ended
		return a.releaser(w.ip), nil
	}
	if i := slices.Index(a.queue, w); i >= 0 {
		a.queue = slices.Delete(a.queue, i, i+1)
	}
	a.dropClient(w.ip)
	return nil, fmt.Errorf("%w: %d transfers in flight, none ended within %s", ErrBusy, a.total, a.wait)
}

// inFlight returns the transfers in flight in total and from ip.
func (a *admission) inFlight(ip netip.Addr) (total, client int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total, a.perClient[ip]
}
