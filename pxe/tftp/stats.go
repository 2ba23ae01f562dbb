package tftp

import (
	"net/netip"
	"strconv"

	pintftp "github.com/pin/tftp/v3"
)

// statKey names one transfer in pin's statistics: the client's address
// and port and the name it asked for, as sent.
type statKey struct {
	remote netip.AddrPort
	file   string
}

// expectStats marks the transfer of file (as requested) to remote as one
// whose statistics its handler will take.
func (st *state) expectStats(remote netip.AddrPort, file string) {
	st.stats.Store(statKey{remote, file}, nil)
}

// putStats keeps pin's statistics of a transfer until its handler takes
// them. pin reports them from inside the transfer (ReadFrom, or its abort),
// on the handler's goroutine, before the handler returns; statistics of
// requests no handler expects (refused ones: pin aborts them after the
// handler returned) are dropped, so nothing piles up.
func (st *state) putStats(s pintftp.TransferStats) {
	ip, ok := netip.AddrFromSlice(s.RemoteAddr)
	if !ok {
		return
	}
	key := statKey{netip.AddrPortFrom(ip.Unmap(), uint16(s.Tid)), s.Filename}
	if _, expected := st.stats.Load(key); expected {
		st.stats.Store(key, s)
	}
}

// takeStats fills ev's block size and packet counts from the statistics
// pin reported for the transfer of file (as requested) to ev.Remote; ok
// says whether the transfer succeeded.
func (st *state) takeStats(ev *Event, file string, ok bool) {
	v, _ := st.stats.LoadAndDelete(statKey{ev.Remote, file})
	s, found := v.(pintftp.TransferStats)
	if !found {
		ev.BlockSize = defaultBlockSize
		return
	}
	ev.BlockSize = defaultBlockSize
	if b, err := strconv.Atoi(s.Opts["blksize"]); err == nil && b > 0 {
		ev.BlockSize = b
	}
	ev.Datagrams = s.DatagramsSent
	// Each packet the client acknowledged was sent once and counted once;
	// the rest of what was sent are retransmissions, except the last one
	// of a failed transfer, which was never answered.
	unanswered := s.DatagramsSent - s.DatagramsAcked
	if !ok {
		unanswered--
	}
	ev.Retransmits = max(unanswered, 0)
}

// defaultBlockSize is TFTP's block size without the blksize option.
const defaultBlockSize = 512
