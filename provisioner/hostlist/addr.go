package hostlist

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// IPs returns n addresses from spec, for the n names of a bulk add. spec is
// a comma-separated list of items:
//
//	10.0.0.101              one address
//	10.0.0.101-10.0.0.228   every address from the first to the second
//	10.0.0.101+             consecutive addresses from 10.0.0.101, as many
//	                        as the names still need (last item only)
//
// The list must give exactly n addresses, each once. When subnets are
// given, every address must lie in one of them and, in an IPv4 subnet of
// /30 or wider, be neither its network nor its broadcast address, so a run
// that would leave its subnet is an error, not a surprise.
func IPs(spec string, n int, subnets ...netip.Prefix) ([]netip.Addr, error) {
	if err := checkCount(n); err != nil {
		return nil, fmt.Errorf("addresses %q: %w", spec, err)
	}
	out := make([]netip.Addr, 0, n)
	seen := make(map[netip.Addr]struct{}, n)
	items, err := splitRanges(spec)
	if err != nil {
		return nil, fmt.Errorf("addresses %q: %w", spec, err)
	}
	for _, r := range items {
		it, open := r.text, r.open
		lo, hi, err := parseIPItem(r.body)
		if err != nil {
			return nil, fmt.Errorf("addresses %q: %w", spec, err)
		}
		for a := lo; ; a = a.Next() {
			if len(out) == n {
				return nil, fmt.Errorf("addresses %q: more than the %d needed", spec, n)
			}
			if !a.IsValid() {
				return nil, fmt.Errorf("addresses %q: %q runs past the last address", spec, it)
			}
			if err := checkIP(a, subnets); err != nil {
				return nil, fmt.Errorf("addresses %q: %w", spec, err)
			}
			if _, dup := seen[a]; dup {
				return nil, fmt.Errorf("addresses %q: %s given twice", spec, a)
			}
			seen[a] = struct{}{}
			out = append(out, a)
			if open && len(out) == n || !open && a == hi {
				break
			}
		}
	}
	if len(out) != n {
		return nil, fmt.Errorf("addresses %q: %d addresses for %d names", spec, len(out), n)
	}
	return out, nil
}

func parseIPItem(s string) (lo, hi netip.Addr, err error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	lo, err = netip.ParseAddr(loS)
	if err != nil {
		return lo, hi, fmt.Errorf("address %q: %w", loS, err)
	}
	if lo.Zone() != "" {
		return lo, hi, fmt.Errorf("address %q: zones are not allowed", loS)
	}
	lo = lo.Unmap()
	if !isRange {
		return lo, lo, nil
	}
	hi, err = netip.ParseAddr(hiS)
	if err != nil {
		return lo, hi, fmt.Errorf("address %q: %w", hiS, err)
	}
	hi = hi.Unmap()
	if lo.Is4() != hi.Is4() {
		return lo, hi, fmt.Errorf("range %q: mixes IPv4 and IPv6", s)
	}
	if hi.Less(lo) {
		return lo, hi, fmt.Errorf("range %q: reversed", s)
	}
	return lo, hi, nil
}

func checkIP(a netip.Addr, subnets []netip.Prefix) error {
	if len(subnets) == 0 {
		return nil
	}
	for _, p := range subnets {
		if !p.Contains(a) {
			continue
		}
		p = p.Masked()
		if a.Is4() && p.Bits() <= 30 && (a == p.Addr() || a == lastIP(p)) {
			return fmt.Errorf("%s is the network or broadcast address of %s", a, p)
		}
		return nil
	}
	return fmt.Errorf("%s is outside %s", a, prefixList(subnets))
}

// lastIP returns the last address of an IPv4 prefix (its broadcast).
func lastIP(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// rangeItem is one item of an address list: its text, the text without a
// trailing "+", and whether it had one.
type rangeItem struct {
	text, body string
	open       bool
}

// splitRanges splits an address list at commas; only its last item may be
// open ("+").
func splitRanges(spec string) ([]rangeItem, error) {
	parts := strings.Split(spec, ",")
	out := make([]rangeItem, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		body, open := strings.CutSuffix(p, "+")
		if open && i != len(parts)-1 {
			return nil, fmt.Errorf("%q: an open range (+) must be the last item", p)
		}
		out[i] = rangeItem{text: p, body: body, open: open}
	}
	return out, nil
}

func checkCount(n int) error {
	if n < 1 {
		return fmt.Errorf("need at least one name, have %d", n)
	}
	if n > DefaultMax {
		return fmt.Errorf("%w: %d names, at most %d", ErrTooMany, n, DefaultMax)
	}
	return nil
}

// macMax is the last 48-bit MAC address.
const macMax = 1<<48 - 1

// MACs returns n MAC addresses (EUI-48) from spec, in the syntax of [IPs]:
// "52:54:00:00:01:00" (one), "52:54:00:00:01:00-52:54:00:00:01:7f" (a
// range), "52:54:00:00:01:00+" (consecutive from there, last item only),
// separated by commas. The list must give exactly n addresses, each once;
// multicast and all-zero addresses are errors, since no NIC has one.
func MACs(spec string, n int) ([]net.HardwareAddr, error) {
	if err := checkCount(n); err != nil {
		return nil, fmt.Errorf("MAC addresses %q: %w", spec, err)
	}
	out := make([]net.HardwareAddr, 0, n)
	seen := make(map[uint64]struct{}, n)
	items, err := splitRanges(spec)
	if err != nil {
		return nil, fmt.Errorf("MAC addresses %q: %w", spec, err)
	}
	for _, r := range items {
		it, open := r.text, r.open
		lo, hi, err := parseMACItem(r.body)
		if err != nil {
			return nil, fmt.Errorf("MAC addresses %q: %w", spec, err)
		}
		if open {
			hi = macMax
		}
		for v := lo; ; v++ {
			// An open range ends at n addresses: it meets multicast
			// addresses (ff:...) before the end of the address space.
			if v > hi {
				break
			}
			if len(out) == n {
				if open {
					break
				}
				return nil, fmt.Errorf("MAC addresses %q: more than the %d needed", spec, n)
			}
			if v>>40&1 != 0 {
				return nil, fmt.Errorf("MAC addresses %q: %q runs into multicast addresses at %s", spec, it, macOf(v))
			}
			if _, dup := seen[v]; dup {
				return nil, fmt.Errorf("MAC addresses %q: %s given twice", spec, macOf(v))
			}
			seen[v] = struct{}{}
			out = append(out, macOf(v))
		}
	}
	if len(out) != n {
		return nil, fmt.Errorf("MAC addresses %q: %d addresses for %d names", spec, len(out), n)
	}
	return out, nil
}

func parseMACItem(s string) (lo, hi uint64, err error) {
	loS, hiS, isRange := strings.Cut(s, "-")
	if lo, err = parseMAC(loS); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	if hi, err = parseMAC(hiS); err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("range %q: reversed", s)
	}
	return lo, hi, nil
}

// ParseMAC parses one EUI-48 address a NIC can have: six octets separated
// by colons (dashes would be ambiguous in ranges), not multicast, not all
// zeros.
func ParseMAC(s string) (net.HardwareAddr, error) {
	v, err := parseMAC(s)
	if err != nil {
		return nil, err
	}
	return macOf(v), nil
}

func parseMAC(s string) (uint64, error) {
	if strings.Count(s, ":") != 5 {
		return 0, fmt.Errorf("MAC address %q: want six octets like 52:54:00:12:34:56", s)
	}
	hw, err := net.ParseMAC(s)
	if err != nil {
		return 0, fmt.Errorf("MAC address %q: %w", s, err)
	}
	if len(hw) != 6 {
		return 0, fmt.Errorf("MAC address %q: want six octets like 52:54:00:12:34:56", s)
	}
	var v uint64
	for _, b := range hw {
		v = v<<8 | uint64(b)
	}
	switch {
	case v == 0:
		return 0, errors.New("MAC address 00:00:00:00:00:00: no NIC has it")
	case hw[0]&1 != 0:
		return 0, fmt.Errorf("MAC address %q: multicast (the first octet is odd)", s)
	}
	return v, nil
}

func macOf(v uint64) net.HardwareAddr {
	return net.HardwareAddr{byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}
