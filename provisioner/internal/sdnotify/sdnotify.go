// Package sdnotify tells systemd about the daemon's state through
// $NOTIFY_SOCKET (sd_notify(3)'s protocol, without cgo): READY=1 once
// every listener is open, RELOADING=1 and READY=1 around a configuration
// reload, STOPPING=1 at shutdown. Without $NOTIFY_SOCKET (not started by
// systemd with Type=notify) every call does nothing.
//
//	sdnotify.Send(sdnotify.Ready, "STATUS=serving eth1")
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// States the daemon sends.
const (
	Ready     = "READY=1"
	Reloading = "RELOADING=1"
	Stopping  = "STOPPING=1"
)

// Send sends the lines (such as Ready, "STATUS=...") to the socket
// $NOTIFY_SOCKET names; it reports whether it sent anything. A socket
// that cannot be reached is an error.
func Send(lines ...string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	msg := strings.Join(lines, "\n")
	if strings.Contains(msg, Reloading) {
		// systemd 253+ wants the monotonic time of the reload request.
		msg += fmt.Sprintf("\nMONOTONIC_USEC=%d", monotonicUsec())
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return false, fmt.Errorf("sd_notify: %w", err)
	}
	return true, nil
}

// monotonicUsec returns CLOCK_MONOTONIC in microseconds.
func monotonicUsec() int64 {
	return monotonicNow().Microseconds()
}

var monotonicNow = func() time.Duration { return clockMonotonic() }
