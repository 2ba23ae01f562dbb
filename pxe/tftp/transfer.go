package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Why this exists: TFTP is lock-step, one DATA packet per round trip, so a
// transfer's speed is the time from an ACK arriving to the next DATA
// leaving. On a Go socket (pin/tftp's) every ACK is a read that finds
// nothing, parks the goroutine in the network poller and is woken by
// another thread: measured with atftp over a veth on these machines, 64 MiB
// went at 0.57-0.88x tftpd-hpa's speed. A transfer here owns a blocking
// socket: the thread waits in the kernel and the ACK wakes it directly, as
// tftpd-hpa's process does, which measured on par with it. The cost is an
// OS thread per transfer in flight (MaxTransfers bounds them).

// tconn is a transfer's own UDP socket: bound to the address the request
// came to, connected to the client, blocking, with a receive timeout.
type tconn struct {
	fd      int
	timeout time.Duration
	cut     bool // a signal made recv shorten the socket's timeout
}

// dialTransfer opens the transfer socket in the network namespace ns (the
// server socket's; -1 means the calling thread's): from local (on
// interface ifindex, which a link-local address needs as its zone) to
// peer.
func dialTransfer(ns int, local netip.Addr, ifindex int, peer netip.AddrPort, timeout time.Duration) (*tconn, error) {
	var fd int
	err := inNamespace(ns, func() error {
		family := unix.AF_INET
		if peer.Addr().Is6() {
			family = unix.AF_INET6
		}
		var err error
		fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		if err != nil {
			return fmt.Errorf("open transfer socket: %w", err)
		}
		if err := unix.Bind(fd, sockaddr(local, 0, ifindex, family)); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind transfer socket to %s: %w", local, err)
		}
		if err := unix.Connect(fd, sockaddr(peer.Addr(), peer.Port(), ifindex, family)); err != nil {
			unix.Close(fd)
			return fmt.Errorf("connect transfer socket to %s: %w", peer, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c := &tconn{fd: fd}
	if err := c.setTimeout(timeout); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// sockaddr builds the socket address of a (zero: any) and port.
func sockaddr(a netip.Addr, port uint16, ifindex, family int) unix.Sockaddr {
	if family == unix.AF_INET {
		sa := &unix.SockaddrInet4{Port: int(port)}
		if a.IsValid() {
			sa.Addr = a.Unmap().As4()
		}
		return sa
	}
	sa := &unix.SockaddrInet6{Port: int(port)}
	if a.IsValid() {
		sa.Addr = a.As16()
		if a.IsLinkLocalUnicast() {
			sa.ZoneId = uint32(ifindex)
		}
	}
	return sa
}

func (c *tconn) setTimeout(d time.Duration) error {
	c.timeout = d
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set transfer timeout: %w", err)
	}
	return nil
}

func (c *tconn) close() { unix.Close(c.fd) }

func (c *tconn) send(b []byte) error {
	for {
		_, err := unix.Write(c.fd, b)
		if err == unix.EINTR {
			continue
		}
		if err == unix.ECONNREFUSED {
			return errClientGone
		}
		return err
	}
}

// recv reads the client's next datagram, waiting until deadline.
func (c *tconn) recv(b []byte, deadline time.Time) (int, error) {
	for {
		n, err := unix.Read(c.fd, b)
		switch err {
		case nil:
			return n, nil
		case unix.EAGAIN:
			return 0, errTimeout
		case unix.EINTR:
			// A signal cut the wait short (socket reads with a timeout
			// are never restarted): wait for what is left of it.
			left := time.Until(deadline)
			if left <= 0 {
				return 0, errTimeout
			}
			full := c.timeout
			if err := c.setTimeout(left); err != nil {
				return 0, err
			}
			c.timeout, c.cut = full, true
		case unix.ECONNREFUSED:
			return 0, errClientGone
		default:
			return 0, err
		}
	}
}

// timeoutError is the error of a client that stopped answering: a
// net.Error whose Timeout() is true.
type timeoutError string

func (e timeoutError) Error() string   { return string(e) }
func (e timeoutError) Timeout() bool   { return true }
func (e timeoutError) Temporary() bool { return true }

var (
	errTimeout    = timeoutError("client did not acknowledge in time")
	errClientGone = timeoutError("client's port is closed (ICMP port unreachable)")
)

// sender runs the lock-step exchange of one read request (RFC 1350 with
// options), counting what it sends.
type sender struct {
	c         *tconn
	blockSize int
	retries   int
	stopping  *atomic.Bool

	datagrams, retransmits int
	recvBuf                [516]byte
}

// exchange sends pkt and waits for the acknowledgement of block, resending
// pkt each time the timeout expires, up to retries times. A duplicate
// acknowledgement of an earlier block is ignored, never answered (the
// Sorcerer's Apprentice bug); so are datagrams that are neither an ACK nor
// an ERROR. A client's ERROR ends it with a clientError.
func (s *sender) exchange(pkt []byte, block uint16) error {
	for try := 0; ; try++ {
		if err := s.c.send(pkt); err != nil {
			return err
		}
		s.datagrams++
		if try > 0 {
			s.retransmits++
		}
		deadline := time.Now().Add(s.c.timeout)
		for {
			n, err := s.c.recv(s.recvBuf[:], deadline)
			if errors.Is(err, errTimeout) {
				break
			}
			if err != nil {
				return err
			}
			b := s.recvBuf[:n]
			if n < 4 {
				continue
			}
			switch binary.BigEndian.Uint16(b) {
			case opACK:
				if binary.BigEndian.Uint16(b[2:]) == block {
					// The timeout may have been cut for a signal.
					return s.c.setTimeoutIfCut()
				}
			case opERROR:
				code, msg := parseError(b)
				return clientError{code, msg}
			}
		}
		if try >= s.retries {
			return errTimeout
		}
		if err := s.c.setTimeoutIfCut(); err != nil {
			return err
		}
	}
}

// run sends the option acknowledgement, if any, then r block by block. It
// returns the file bytes sent.
func (s *sender) run(oack []byte, r io.Reader) (int64, error) {
	if oack != nil {
		if err := s.exchange(oack, 0); err != nil {
			return 0, err
		}
	}
	pkt := make([]byte, 4+s.blockSize)
	binary.BigEndian.PutUint16(pkt, opDATA)
	var sent int64
	for block := uint16(1); ; block++ { // the block number wraps to 0 after 65535
		if s.stopping.Load() {
			s.c.send(errorPacket(codeUndefined, errStopping.Error()))
			return sent, errStopping
		}
		n, err := io.ReadFull(r, pkt[4:])
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			s.c.send(errorPacket(codeUndefined, "read error"))
			return sent, fmt.Errorf("%w: %w", errRead, err)
		}
		binary.BigEndian.PutUint16(pkt[2:], block)
		if err := s.exchange(pkt[:4+n], block); err != nil {
			return sent, err
		}
		sent += int64(n)
		if n < s.blockSize {
			return sent, nil
		}
	}
}

// errRead marks an error reading the file being sent.
var errRead = errors.New("read file")

// setTimeoutIfCut restores the socket's receive timeout after recv shortened
// it for a signal.
func (c *tconn) setTimeoutIfCut() error {
	if !c.cut {
		return nil
	}
	c.cut = false
	return c.setTimeout(c.timeout)
}

// inNamespace runs fn in the network namespace ns (an open namespace file
// descriptor; -1 means as the calling thread is). When the thread is in
// another namespace (only tests that run a server in a namespace of their
// own from a thread outside it do that), fn runs on the thread switched
// there and back.
func inNamespace(ns int, fn func() error) error {
	if ns < 0 || sameNamespace(ns) {
		return fn()
	}
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open the thread's network namespace: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter the server socket's network namespace: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
		runtime.UnlockOSThread()
	}
	// Otherwise the thread stays locked to this goroutine (a transfer's),
	// which uses only its socket, and ends with it.
	return ferr
}

// sameNamespace reports whether the calling thread is in namespace ns.
func sameNamespace(ns int) bool {
	var a, b unix.Stat_t
	if unix.Fstat(ns, &a) != nil || unix.Stat("/proc/thread-self/ns/net", &b) != nil {
		return true
	}
	return a.Ino == b.Ino && a.Dev == b.Dev
}

// socketNamespace returns a file descriptor of the network namespace a
// socket lives in (SIOCGSKNS, Linux 4.9), or -1.
func socketNamespace(fd int) int {
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return -1
	}
	return ns
}
