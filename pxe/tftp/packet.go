package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes (RFC 1350 section 5).
const (
	codeUndefined  = 0 // see the message: server busy, shutting down
	codeNotFound   = 1
	codeAccess     = 2
	codeIllegal    = 4
	codeOptionsNak = 8 // RFC 2347: the client refuses the options
)

// Option limits (RFC 2348, RFC 2349).
const (
	minBlockSize = 8
	maxBlockSize = 65464
	maxTimeout   = 255 // seconds
)

// request is a parsed read or write request.
type request struct {
	op       uint16
	filename string // as sent
	mode     string // lower case: "octet" or "netascii"
	// opts are the options, names lower-cased, in the order sent; a name
	// sent twice keeps its first value.
	opts []option
}

type option struct{ name, value string }

// errNotRequest is parseRequest's error for a datagram that is not a read
// or write request (a stray ACK, DATA or ERROR on the server port).
var errNotRequest = errors.New("not a read or write request")

// parseRequest parses a datagram sent to the server port.
func parseRequest(b []byte) (request, error) {
	if len(b) < 2 {
		return request{}, errors.New("datagram shorter than an opcode")
	}
	r := request{op: binary.BigEndian.Uint16(b)}
	if r.op != opRRQ && r.op != opWRQ {
		return request{}, fmt.Errorf("%w: opcode %d", errNotRequest, r.op)
	}
	fields := bytes.Split(b[2:], []byte{0})
	// A well-formed request ends in NUL: the last field is empty.
	if len(fields) < 3 || len(fields[len(fields)-1]) != 0 {
		return request{}, errors.New("request without a NUL-terminated file name and mode")
	}
	fields = fields[:len(fields)-1]
	r.filename = string(fields[0]) // an empty name is refused by the catalogue
	r.mode = strings.ToLower(string(fields[1]))
	rest := fields[2:]
	if len(rest)%2 != 0 {
		return request{}, errors.New("option without a value")
	}
	seen := map[string]bool{}
	for i := 0; i < len(rest); i += 2 {
		name := strings.ToLower(string(rest[i]))
		if name == "" || seen[name] {
			continue
		}
		seen[name] = true
		r.opts = append(r.opts, option{name, string(rest[i+1])})
	}
	return r, nil
}

// negotiated is what the server grants a read request.
type negotiated struct {
	blockSize int // bytes per DATA packet
	timeout   int // seconds the client asked for, 0 if none
	tsize     bool
	oack      []byte // the option acknowledgement to send, nil for none
}

// negotiate answers the options of r (RFC 2347): blksize capped at limit,
// tsize with size, timeout when 1-255 seconds. Options it does not know, or
// whose value is not valid, are left out of the acknowledgement, as the RFC
// says.
func negotiate(r request, limit int, size int64) negotiated {
	n := negotiated{blockSize: 512}
	var oack []byte
	add := func(name, value string) {
		if oack == nil {
			oack = binary.BigEndian.AppendUint16(nil, opOACK)
		}
		oack = append(oack, name...)
		oack = append(oack, 0)
		oack = append(oack, value...)
		oack = append(oack, 0)
	}
	for _, o := range r.opts {
		switch o.name {
		case "blksize":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < minBlockSize {
				continue
			}
			n.blockSize = min(v, limit, maxBlockSize)
			add(o.name, strconv.Itoa(n.blockSize))
		case "tsize":
			if _, err := strconv.ParseInt(o.value, 10, 64); err != nil {
				continue
			}
			n.tsize = true
			add(o.name, strconv.FormatInt(size, 10))
		case "timeout":
			v, err := strconv.Atoi(o.value)
			if err != nil || v < 1 || v > maxTimeout {
				continue
			}
			n.timeout = v
			add(o.name, strconv.Itoa(v))
		}
	}
	n.oack = oack
	return n
}

// errorPacket returns a TFTP ERROR packet.
func errorPacket(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(nil, opERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	b = append(b, msg...)
	return append(b, 0)
}

// parseError returns the code and message of an ERROR packet.
func parseError(b []byte) (uint16, string) {
	if len(b) < 4 {
		return 0, ""
	}
	msg := b[4:]
	if i := bytes.IndexByte(msg, 0); i >= 0 {
		msg = msg[:i]
	}
	return binary.BigEndian.Uint16(b[2:]), string(msg)
}

// clientError is an ERROR packet a client sent during a transfer.
type clientError struct {
	code uint16
	msg  string
}

func (e clientError) Error() string {
	return fmt.Sprintf("client sent error %d %q", e.code, e.msg)
}
