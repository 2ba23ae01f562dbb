// Package tftp serves a fixed catalogue of boot files read-only over TFTP.
//
// It is the TFTP step of the boot chain: firmware PXE clients fetch the iPXE
// binary (undionly.kpxe, snponly.efi, ipxe.efi) from it, and nothing else.
// The protocol itself (RFC 1350, options RFC 2347-2349: blksize, tsize) is
// github.com/pin/tftp/v3; this package adds the catalogue, the refusals, the
// per-transfer events for the boot timeline, logs and metrics.
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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pintftp "github.com/pin/tftp/v3"

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
	// gets a TFTP ERROR ("server busy") at once and is counted in
	// ramboot_tftp_over_limit_total{limit="total"}. Default 1000
	// (DefaultMaxTransfers).
	MaxTransfers int
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
// and returns nil. It returns an error if the configuration is invalid or the
// server fails on its own; it closes conn in every case.
//
// conn should be a *net.UDPConn, best from Listen: only then can the server
// see which local address and interface a request came in on, which it needs
// to answer from that address and to grant block sizes above 512 bytes.
// Other PacketConns must report *net.UDPAddr addresses; their transfers use
// 512-byte blocks.
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

	ts := pintftp.NewServer(st.handleRead, st.handleWrite)
	ts.SetTimeout(st.timeout)
	ts.SetRetries(st.retries)
	blockSize := st.maxBlockSize
	if laddr.IP.To4() == nil {
		// pin binds each transfer's socket to the address the request
		// came to, without its zone, which fails for a link-local address:
		// on IPv6, transfers share the server's socket instead (pin's
		// single-port mode), which answers from that address with the
		// client's zone. Blocks are capped for the larger IPv6 header.
		ts.EnableSinglePort()
		if s.MaxBlockSize == 0 {
			blockSize = DefaultMaxBlockSizeIPv6
		}
	}
	ts.SetBlockSize(blockSize)
	// Retransmit as soon as the timeout expires: Timeout alone sets the pace,
	// instead of pin's extra random sleep of up to one second per retry.
	ts.SetBackoff(func(int) time.Duration { return 0 })
	ts.SetHook(hook{st})

	st.log.Info("tftp server listening", "ip", laddr.String())
	served := make(chan error, 1)
	go func() { served <- ts.Serve(conn) }()
	select {
	case err := <-served:
		// pin returns before Shutdown only when it cannot use conn.
		st.untrackDrops()
		ts.Shutdown()
		return fmt.Errorf("serve tftp on %s: %w", laddr, err)
	case <-ctx.Done():
	}
	st.stopping.Store(true)
	st.untrackDrops() // read the socket's drops before it closes
	// Shutdown closes conn, tells pin's loop to stop and waits for the
	// transfers in flight. Closing conn again here covers a Shutdown that
	// raced with Serve storing it.
	ts.Shutdown()
	conn.Close()
	<-served
	st.log.Info("tftp server stopped", "ip", laddr.String())
	return nil
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
	stats         sync.Map // statKey -> pintftp.TransferStats, from the hook to the handler
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
		admit:         admission{maxTotal: s.MaxTransfers, maxPerClient: s.MaxTransfersPerClient},
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
	if st.log == nil {
		st.log = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("configure tftp server: %w", err)
	}
	return st, nil
}

// handleRead serves one read request. pin calls it on the transfer's own
// goroutine; when it returns an error that pin has not already reported, pin
// sends it to the client in an ERROR packet.
func (st *state) handleRead(filename string, rf io.ReaderFrom) error {
	ev := Event{Time: time.Now(), File: normalise(filename)}
	if ot, ok := rf.(pintftp.OutgoingTransfer); ok {
		ev.Remote = addrPort(ot.RemoteAddr())
	}
	if err := st.check(ev.File); err != nil {
		ev.Err = err
		st.finish(ev, resultRefused)
		return err
	}
	// pin has bound this transfer's socket already (it does so before it
	// calls the handler); refusing here sends the ERROR from it and closes
	// it at once, so a refused request holds nothing afterwards.
	release, err := st.admit.acquire(ev.Remote.Addr())
	if err != nil {
		err = fmt.Errorf("read %q: %w", ev.File, err)
		st.overLimit(ev, err)
		return err
	}
	defer release()
	st.metrics.started()
	defer st.metrics.ended()

	f, err := st.root.Open(ev.File)
	if err != nil {
		ev.Err = fmt.Errorf("open %s: %w", ev.File, err)
		st.finish(ev, resultError)
		return ev.Err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		ev.Err = fmt.Errorf("stat %s: %w", ev.File, err)
		st.finish(ev, resultError)
		return ev.Err
	}
	// fs.File need not be an io.Seeker, so pin cannot find the size itself.
	// SetSize only answers a tsize option the client sent.
	if ot, ok := rf.(pintftp.OutgoingTransfer); ok {
		ot.SetSize(fi.Size())
	}

	rd := &reader{r: bufio.NewReaderSize(f, 64<<10), stopping: &st.stopping}
	st.expectStats(ev.Remote, filename)
	n, err := rf.ReadFrom(rd)
	ev.Bytes, ev.Dur = n, time.Since(ev.Time)
	st.takeStats(&ev, filename, err == nil)
	if err == nil {
		st.finish(ev, resultOK)
		return nil
	}
	ev.Err = st.transferError(ev.File, rd, err)
	st.finish(ev, resultError)
	return ev.Err
}

// handleWrite refuses a write request: the server is read-only.
func (st *state) handleWrite(filename string, wt io.WriterTo) error {
	ev := Event{Time: time.Now(), File: normalise(filename)}
	if it, ok := wt.(pintftp.IncomingTransfer); ok {
		ev.Remote = addrPort(it.RemoteAddr())
	}
	ev.Err = fmt.Errorf("write %q: %w: server is read-only", ev.File, ErrAccessViolation)
	st.finish(ev, resultRefused)
	return ev.Err
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

// transferError wraps the error pin's ReadFrom returned. pin reports a TFTP
// ERROR packet from the client as a plain error, a lost client as a
// net.Error and passes errors of our reader through, so what is neither of
// the latter two is the client's abort.
func (st *state) transferError(name string, rd *reader, err error) error {
	var ne net.Error
	switch {
	case rd.err != nil && errors.Is(err, rd.err):
		return fmt.Errorf("send %s: %w", name, err)
	case errors.As(err, &ne):
		return fmt.Errorf("send %s: %w", name, err)
	default:
		return fmt.Errorf("send %s: %w: %w", name, ErrAborted, err)
	}
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
// address, and refuses those beyond the limits.
type admission struct {
	maxTotal, maxPerClient int

	mu        sync.Mutex
	total     int
	perClient map[netip.Addr]int
}

// acquire takes a slot for a transfer from ip, or returns an error
// wrapping ErrBusy. release gives the slot back.
func (a *admission) acquire(ip netip.Addr) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.total >= a.maxTotal {
		return nil, fmt.Errorf("%w: %d transfers in flight", ErrBusy, a.total)
	}
	if a.perClient[ip] >= a.maxPerClient {
		return nil, errClientBusy
	}
	if a.perClient == nil {
		a.perClient = map[netip.Addr]int{}
	}
	a.total++
	a.perClient[ip]++
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.total--
		if a.perClient[ip]--; a.perClient[ip] == 0 {
			delete(a.perClient, ip)
		}
	}, nil
}

// inFlight returns the transfers in flight in total and from ip.
func (a *admission) inFlight(ip netip.Addr) (total, client int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total, a.perClient[ip]
}

// hook receives pin's transfer statistics. Transfers are reported by the
// handlers; the hook only sees datagrams on the server port that are not
// requests (no remote address in the statistics).
type hook struct{ st *state }

// OnSuccess implements pintftp.Hook: it keeps the transfer's statistics
// for its handler.
func (h hook) OnSuccess(stats pintftp.TransferStats) { h.st.putStats(stats) }

// OnFailure implements pintftp.Hook: it keeps a transfer's statistics for
// its handler, and counts malformed datagrams.
func (h hook) OnFailure(stats pintftp.TransferStats, err error) {
	if stats.RemoteAddr != nil {
		h.st.putStats(stats)
		return
	}
	if h.st.stopping.Load() {
		return
	}
	// pin reports here, with no address, both a datagram it could not
	// parse and a request for which it could not open a transfer socket
	// (for example when the process is out of file descriptors).
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "listen" {
		h.st.warn("tftp cannot open a transfer socket", "err", err)
		return
	}
	h.st.metrics.malformed()
	h.st.log.Debug("tftp datagram dropped", "err", err)
}

// reader feeds a file to pin and ends the transfer when Serve is stopping.
type reader struct {
	r        io.Reader
	stopping *atomic.Bool
	err      error // the last error other than io.EOF
}

func (r *reader) Read(p []byte) (int, error) {
	if r.stopping.Load() {
		r.err = errStopping
		return 0, r.err
	}
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

func addrPort(a net.UDPAddr) netip.AddrPort {
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
