package sdnotify

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestSend: the lines arrive as one datagram on $NOTIFY_SOCKET, a reload
// carries its monotonic time, and nothing is sent without the variable.
func TestSend(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Send(Ready); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v %v", sent, err)
	}
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	for _, lines := range [][]string{{Ready, "STATUS=serving lo"}, {Reloading}} {
		if sent, err := Send(lines...); !sent || err != nil {
			t.Fatalf("Send: %v %v", sent, err)
		}
		buf := make([]byte, 512)
		n, _, err := ln.ReadFromUnix(buf)
		if err != nil {
			t.Fatal(err)
		}
		got := string(buf[:n])
		if !strings.HasPrefix(got, strings.Join(lines, "\n")) {
			t.Errorf("got %q", got)
		}
		if lines[0] == Reloading && !strings.Contains(got, "MONOTONIC_USEC=") {
			t.Errorf("reload without MONOTONIC_USEC: %q", got)
		}
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "none"))
	if _, err := Send(Ready); err == nil {
		t.Error("no error for a socket that is not there")
	}
}
