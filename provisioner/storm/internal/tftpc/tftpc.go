// Package tftpc is a TFTP read client that behaves like PXE firmware: it
// asks for blksize and tsize options (RFC 2347-2349), acknowledges every
// block in lock-step, retransmits its last packet when the server goes
// quiet, and can probe a file's size and abort the way UEFI firmware does
// before it fetches the file. Each client sends from the address it is
// given, so thousands of simulated nodes can share one machine.
//
//	c := &tftpc.Client{Local: nodeIP}
//	size, _, err := c.Probe(ctx, server, "snponly.efi") // UEFI's tsize probe
//	st, err := c.Get(ctx, server, "snponly.efi", sha256.New())
//
// It exists because the storm needs the firmware's own timing (one
// outstanding block, its retransmission timer, its abort after the size
// probe) from a chosen source address; general TFTP clients either hide
// those or pick their own.
package tftpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Defaults of the Client's zero fields: those of EDK2's PXE base code
// (OVMF), which retries a silent TFTP server 6 times, 4 s apart.
const (
	DefaultBlockSize = 1468
	DefaultTimeout   = 4 * time.Second
	DefaultRetries   = 6
)

// TFTP opcodes.
const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// errUserAborted is the error code a client sends to refuse an OACK.
const errUserAborted = 8

// ErrTimeout means the server stopped answering for Timeout × (Retries+1).
var ErrTimeout = errors.New("tftp: server did not answer")

// ServerError is a TFTP ERROR packet from the server.
type ServerError struct {
	// Code is the TFTP error code.
	Code uint16
	// Message is the server's text.
	Message string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("tftp: server error %d: %s", e.Code, e.Message)
}

// Client fetches files over TFTP. The zero value is usable; set Local to
// send from a chosen address.
type Client struct {
	// Local is the source address; the zero value lets the kernel pick.
	Local netip.Addr
	// BlockSize is the blksize asked for; 0 means DefaultBlockSize.
	BlockSize int
	// Timeout is how long the client waits for the server's next packet
	// before it retransmits its own; 0 means DefaultTimeout.
	Timeout time.Duration
	// Retries is how many retransmissions the client makes in a row
	// before it gives up; 0 means DefaultRetries.
	Retries int
}

// Stats describe one transfer.
type Stats struct {
	// Bytes is the file data received.
	Bytes int64
	// Size is the size the server announced (tsize), or -1.
	Size int64
	// BlockSize is the block size in use.
	BlockSize int
	// Blocks counts the DATA packets accepted.
	Blocks int
	// Retransmits counts the packets the client sent again.
	Retransmits int
	// Duplicates counts the DATA packets received twice (the server
	// retransmitted).
	Duplicates int
}

func (c *Client) blockSize() int {
	if c.BlockSize > 0 {
		return c.BlockSize
	}
	return DefaultBlockSize
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

func (c *Client) retries() int {
	if c.Retries > 0 {
		return c.Retries
	}
	return DefaultRetries
}

// Probe asks for file with tsize and, once the server answered with its
// options, aborts the transfer (ERROR 8), as UEFI firmware does to learn
// a file's size before it fetches it. It returns the size announced.
func (c *Client) Probe(ctx context.Context, server netip.AddrPort, file string) (int64, Stats, error) {
	st, err := c.transfer(ctx, server, file, nil)
	return st.Size, st, err
}

// Get fetches file into w.
func (c *Client) Get(ctx context.Context, server netip.AddrPort, file string, w io.Writer) (Stats, error) {
	return c.transfer(ctx, server, file, w)
}

// transfer runs one read request; a nil w probes.
func (c *Client) transfer(ctx context.Context, server netip.AddrPort, file string, w io.Writer) (Stats, error) {
	st := Stats{Size: -1, BlockSize: 512}
	laddr := &net.UDPAddr{}
	if c.Local.IsValid() {
		laddr.IP = c.Local.AsSlice()
	}
	conn, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return st, fmt.Errorf("tftp: listen on %s: %w", c.Local, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	bs := c.blockSize()
	last := rrq(file, bs)
	dest := server         // the server's port until its first answer
	var tid netip.AddrPort // the server's transfer port
	next := uint16(1)      // the block expected
	buf := make([]byte, 65536)
	misses := 0
	if _, err := conn.WriteToUDPAddrPort(last, dest); err != nil {
		return st, fmt.Errorf("tftp: send request for %s to %s: %w", file, server, err)
	}
	for {
		_ = conn.SetReadDeadline(time.Now().Add(c.timeout()))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return st, fmt.Errorf("tftp: read from %s: %w", server, err)
			}
			if misses++; misses > c.retries() {
				return st, fmt.Errorf("%w: %s from %s, %d retransmissions", ErrTimeout, file, server, misses-1)
			}
			st.Retransmits++
			if _, err := conn.WriteToUDPAddrPort(last, dest); err != nil {
				return st, fmt.Errorf("tftp: resend to %s: %w", dest, err)
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if tid.IsValid() && from != tid {
			continue // another transfer's packet, or a stray
		}
		if from.Addr() != server.Addr() || n < 4 {
			continue
		}
		p := buf[:n]
		op := binary.BigEndian.Uint16(p)
		switch op {
		case opERROR:
			return st, &ServerError{Code: binary.BigEndian.Uint16(p[2:]), Message: string(bytes.TrimRight(p[4:], "\x00"))}
		case opOACK:
			if tid.IsValid() {
				continue // a duplicate OACK: our ACK 0 was lost; resent below on timeout
			}
			tid, dest = from, from
			opts := parseOptions(p[2:])
			if v, ok := opts["blksize"]; ok {
				if b, err := strconv.Atoi(v); err == nil && b >= 8 && b <= bs {
					st.BlockSize = b
				}
			}
			if v, ok := opts["tsize"]; ok {
				if s, err := strconv.ParseInt(v, 10, 64); err == nil {
					st.Size = s
				}
			}
			if w == nil {
				_, _ = conn.WriteToUDPAddrPort(errorPacket(errUserAborted, "User aborted the transfer"), dest)
				return st, nil
			}
			last = ack(0)
		case opDATA:
			if !tid.IsValid() {
				tid, dest = from, from // no options acknowledged: 512-byte blocks
			}
			if w == nil {
				_, _ = conn.WriteToUDPAddrPort(errorPacket(errUserAborted, "User aborted the transfer"), dest)
				return st, errors.New("tftp: server ignored the tsize option")
			}
			block := binary.BigEndian.Uint16(p[2:])
			data := p[4:]
			switch block {
			case next:
				if _, err := w.Write(data); err != nil {
					return st, fmt.Errorf("tftp: write %s: %w", file, err)
				}
				st.Bytes += int64(len(data))
				st.Blocks++
				next++ // wraps at 65535 like the block counter
				last = ack(block)
			case next - 1:
				st.Duplicates++
			default:
				continue
			}
			if _, err := conn.WriteToUDPAddrPort(last, dest); err != nil {
				return st, fmt.Errorf("tftp: ack to %s: %w", dest, err)
			}
			misses = 0
			if block == next-1 && len(data) < st.BlockSize {
				if st.Size >= 0 && st.Size != st.Bytes {
					return st, fmt.Errorf("tftp: %s: got %d bytes, the server announced %d", file, st.Bytes, st.Size)
				}
				return st, nil
			}
			continue
		default:
			continue
		}
		misses = 0
		if _, err := conn.WriteToUDPAddrPort(last, dest); err != nil {
			return st, fmt.Errorf("tftp: send to %s: %w", dest, err)
		}
	}
}

func rrq(file string, blksize int) []byte {
	p := binary.BigEndian.AppendUint16(nil, opRRQ)
	for _, s := range []string{file, "octet", "blksize", strconv.Itoa(blksize), "tsize", "0"} {
		p = append(append(p, s...), 0)
	}
	return p
}

func ack(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

func errorPacket(code uint16, msg string) []byte {
	p := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opERROR), code)
	return append(append(p, msg...), 0)
}

func parseOptions(b []byte) map[string]string {
	opts := map[string]string{}
	parts := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	for i := 0; i+1 < len(parts); i += 2 {
		opts[string(bytes.ToLower(parts[i]))] = string(parts[i+1])
	}
	return opts
}
