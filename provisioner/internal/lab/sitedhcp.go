package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SiteHost is a fixed address the site's DHCP server gives a MAC.
type SiteHost struct {
	MAC, IP string
}

// StartSiteDHCP runs a site's own DHCP server next to the head, as
// ramboot's proxy mode expects: dnsmasq (Debian's dnsmasq-base) handing
// out addresses only (the given hosts their fixed address, others one
// from .100-.199), no boot file, no PXE options, no TFTP, no DNS. It runs
// in a network namespace of its own (another host on the link), joined to
// the lab bridge by a veth pair, at the subnet's .2. The lab stops it and
// deletes the namespace on Close.
func (l *Lab) StartSiteDHCP(ctx context.Context, hosts []SiteHost) error {
	ns, err := l.Host(ctx, "site", l.opt.Subnet+".2/24")
	if err != nil {
		return err
	}
	dir := filepath.Join(l.work, "site-dhcp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := []string{"-k", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface=eth0", "--bind-interfaces", "--except-interface=lo",
		"--no-resolv", "--no-hosts", "--no-ping", "--log-dhcp", "--log-facility=-",
		"--dhcp-authoritative",
		"--dhcp-range=" + l.opt.Subnet + ".100," + l.opt.Subnet + ".199,255.255.255.0,1h",
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"),
		"--pid-file=" + filepath.Join(dir, "pid")}
	for _, h := range hosts {
		args = append(args, "--dhcp-host="+h.MAC+","+h.IP)
	}
	logFile := filepath.Join(l.work, "site-dhcp.log")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	f.Close()
	p, err := l.startIn(ns, logFile, "dnsmasq", args...)
	if err != nil {
		return err
	}
	// Ready when dnsmasq says its range.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if b, _ := os.ReadFile(logFile); strings.Contains(string(b), "DHCP, IP range") {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			b, _ := os.ReadFile(logFile)
			return fmt.Errorf("the site's dnsmasq did not start:\n%s", b)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	l.logf("site DHCP server (dnsmasq, addresses only) at %s.2 in %s, log %s", l.opt.Subnet, ns, logFile)
	return nil
}
