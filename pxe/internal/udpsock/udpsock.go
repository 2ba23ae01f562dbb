// Package udpsock gives pxe's UDP servers the kernel's view of their
// sockets: it enlarges a socket's receive buffer, counts the datagrams the
// kernel dropped at a socket because its receive queue was full, and names
// the process that holds a port when a bind fails.
//
//	got, err := udpsock.SetReceiveBuffer(conn, 4<<20) // SO_RCVBUFFORCE, else SO_RCVBUF
//	var drops udpsock.DropCounter
//	untrack := drops.Track(conn) // before conn.Close
//	defer untrack()
//	prometheus.NewCounterFunc(opts, func() float64 { return float64(drops.Total()) })
//
// Why SO_MEMINFO: the kernel counts, per socket, the datagrams it could not
// queue (sk_drops; the same counter SO_RXQ_OVFL attaches to received
// datagrams and /proc/net/udp shows in its drops column). getsockopt
// SO_MEMINFO reads it on demand from the socket itself, so it works on a
// socket whose read loop belongs to a library (pin/tftp), needs no change to
// the read path and no parsing of /proc, and sees only this socket, unlike
// UdpRcvbufErrors in /proc/net/snmp, which sums every UDP socket of the
// network namespace. Linux 4.12 or later.
package udpsock

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// control runs fn on the socket's file descriptor and returns fn's error.
func control(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// SetReceiveBuffer asks the kernel for a receive buffer of n bytes on the
// socket: SO_RCVBUFFORCE first (needs CAP_NET_ADMIN, not capped by
// net.core.rmem_max), then SO_RCVBUF (capped by net.core.rmem_max). It
// returns the size the kernel granted, as SO_RCVBUF reads it back: about
// twice the request, since the kernel counts its bookkeeping too.
func SetReceiveBuffer(c syscall.Conn, n int) (int, error) {
	var got int
	err := control(c, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, n); err != nil {
				return fmt.Errorf("set SO_RCVBUF %d: %w", n, err)
			}
		}
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		if err != nil {
			return fmt.Errorf("get SO_RCVBUF: %w", err)
		}
		got = v
		return nil
	})
	return got, err
}

// Drops returns the socket's count of datagrams the kernel dropped instead
// of queueing them, almost always because the receive queue was full (a
// datagram with a bad checksum counts too). The count wraps at 2^32.
func Drops(c syscall.Conn) (uint32, error) {
	var drops uint32
	err := control(c, func(fd int) error {
		var mem [unix.SK_MEMINFO_VARS]uint32
		size := uint32(unsafe.Sizeof(mem))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			return fmt.Errorf("get SO_MEMINFO: %w", errno)
		}
		if size < (unix.SK_MEMINFO_DROPS+1)*4 {
			return fmt.Errorf("get SO_MEMINFO: kernel returned %d bytes, no drop counter", size)
		}
		drops = mem[unix.SK_MEMINFO_DROPS]
		return nil
	})
	return drops, err
}

// DropCounter sums the drops of the sockets it tracks, and keeps what a
// socket dropped after the socket is gone, so a Prometheus counter built on
// Total never goes down. The zero value is ready; it is safe for concurrent
// use.
type DropCounter struct {
	mu    sync.Mutex
	base  uint64 // drops of sockets no longer tracked
	socks map[*tracked]struct{}
}

type tracked struct {
	conn syscall.Conn
	last uint32 // the socket's counter at the last read
	sum  uint64 // drops seen on this socket so far (wraps of last undone)
}

// read folds the socket's current counter into sum; a socket that can no
// longer be read (closed) keeps its last reading.
func (t *tracked) read() {
	n, err := Drops(t.conn)
	if err != nil {
		return
	}
	t.sum += uint64(n - t.last) // uint32 arithmetic undoes a wrap
	t.last = n
}

// Track starts counting conn's drops from now (drops before Track are not
// counted) and returns the function that stops it; call that before
// closing conn to keep its last drops.
func (d *DropCounter) Track(conn syscall.Conn) (untrack func()) {
	t := &tracked{conn: conn}
	t.last, _ = Drops(conn)
	d.mu.Lock()
	if d.socks == nil {
		d.socks = map[*tracked]struct{}{}
	}
	d.socks[t] = struct{}{}
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			t.read()
			d.base += t.sum
			delete(d.socks, t)
		})
	}
}

// Total returns the drops of every socket tracked now or before.
func (d *DropCounter) Total() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	total := d.base
	for t := range d.socks {
		t.read()
		total += t.sum
	}
	return total
}

// ProcDrops reads the socket's drops column in /proc/net/udp (or udp6):
// the counter Drops reads, as ss(8) and netstat show it. It is for tests
// and diagnostics, from the socket's network namespace (see Holders).
func ProcDrops(c syscall.Conn) (uint64, error) {
	var st unix.Stat_t
	if err := control(c, func(fd int) error { return unix.Fstat(fd, &st) }); err != nil {
		return 0, fmt.Errorf("stat socket: %w", err)
	}
	ino := strconv.FormatUint(st.Ino, 10)
	for _, name := range []string{"udp", "udp6"} {
		b, err := os.ReadFile(netFile(name))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			// ... uid timeout inode ref pointer drops
			f := strings.Fields(line)
			if len(f) >= 13 && f[9] == ino {
				return strconv.ParseUint(f[len(f)-1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("socket inode %s not in %s", ino, netFile("udp"))
}

// Holders names the processes that hold a UDP socket bound to local port
// port in the calling thread's network namespace, for example
// "pid 812 (dnsmasq)" or "pid 812 (dnsmasq), pid 4242 (ramboot)". It returns
// "" when it cannot tell (no such socket, or not allowed to look into other
// processes). It reads /proc, so it is for error messages, not hot paths.
// Call it from the goroutine that tried the bind, which must stay on one
// OS thread if it runs in a network namespace of its own.
func Holders(port int) string {
	inodes := map[string]bool{}
	for _, f := range []string{"udp", "udp6"} {
		for _, ino := range socketInodes(netFile(f), port) {
			inodes["socket:["+ino+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return ""
	}
	var found []string
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range pids {
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || !inodes[target] {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			found = append(found, fmt.Sprintf("pid %s (%s)", filepath.Base(dir), strings.TrimSpace(string(comm))))
			break
		}
	}
	return strings.Join(found, ", ")
}

// netFile is /proc/thread-self/net/NAME: the network namespace of the
// calling thread, which is not the process's when a test locked the thread
// into a namespace of its own.
func netFile(name string) string {
	if _, err := os.Stat("/proc/thread-self/net"); err == nil {
		return "/proc/thread-self/net/" + name
	}
	return "/proc/self/net/" + name
}

// socketInodes returns the inodes of the sockets in a /proc/net/udp-style
// file whose local port is port.
func socketInodes(path string, port int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", port)
	var out []string
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || !strings.HasSuffix(fields[1], want) {
			continue
		}
		if _, err := strconv.ParseUint(fields[9], 10, 64); err == nil && fields[9] != "0" {
			out = append(out, fields[9])
		}
	}
	return out
}
