package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Capture records the DHCP traffic on the lab bridge (UDP ports 67, 68
// and 4011) into the pcap file path with tcpdump, run inside the
// namespace, until the returned stop is called (or the lab closes). stop
// waits until tcpdump has written its last packet.
func (l *Lab) Capture(ctx context.Context, path string) (stop func() error, err error) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		return nil, fmt.Errorf("find tcpdump (apt-get install tcpdump): %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	p, err := l.start(filepath.Join(l.work, "tcpdump.log"), "tcpdump", "-i", l.bridge, "-n", "-U", "-s", "0",
		"-w", abs, "udp port 67 or udp port 68 or udp port 4011")
	if err != nil {
		return nil, err
	}
	// tcpdump has its filter in place once it says it is listening.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, _ := os.ReadFile(filepath.Join(l.work, "tcpdump.log")); bytes.Contains(b, []byte("listening on")) {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("tcpdump did not start capturing on %s", l.bridge)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	l.logf("capturing DHCP traffic on %s into %s", l.bridge, abs)
	return func() error {
		p.stop(5 * time.Second) // SIGTERM: tcpdump flushes and exits
		return nil
	}, nil
}
