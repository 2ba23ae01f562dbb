package dhcp

import (
	"errors"
	"fmt"
	"net/netip"
)

// Subnet is one IPv4 subnet the server serves: the one on its own link, or
// one behind a DHCP relay. A relayed request is answered for the subnet
// that holds its giaddr; a local one for the subnet that holds an address
// of the interface it came in on.
type Subnet struct {
	// Prefix is the subnet, such as 10.77.0.0/24. Required.
	Prefix netip.Prefix
	// Router (option 3), DNS (option 6) and MTU (option 26) are given to
	// discovery-pool clients; nodes get theirs from their reservation.
	Router netip.Addr
	DNS    []netip.Addr
	MTU    int
	// Discovery is the range of addresses lent, with short leases, to
	// clients the inventory does not know, so they can be found and
	// adopted; the zero Range lends none. It must lie inside Prefix and
	// hold no node's reserved address.
	Discovery Range
}

// Range is an inclusive range of IPv4 addresses, First to Last.
type Range struct {
	First, Last netip.Addr
}

// IsZero reports whether the range is unset.
func (r Range) IsZero() bool { return !r.First.IsValid() && !r.Last.IsValid() }

// Contains reports whether a is in the range.
func (r Range) Contains(a netip.Addr) bool {
	return !r.IsZero() && a.Is4() && r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0
}

// Size returns the number of addresses in the range.
func (r Range) Size() int {
	if r.IsZero() {
		return 0
	}
	f, l := r.First.As4(), r.Last.As4()
	return int(be32(l[:])-be32(f[:])) + 1
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// String returns "FIRST-LAST", or "" for the zero range.
func (r Range) String() string {
	if r.IsZero() {
		return ""
	}
	return r.First.String() + "-" + r.Last.String()
}

// Validate reports every problem with the subnet: a prefix that is not
// IPv4, a router or name server that is not IPv4, an MTU outside 68-65535,
// or a discovery range that is not inside the prefix or runs backwards.
func (s Subnet) Validate() error {
	var errs []error
	if !s.Prefix.IsValid() || !s.Prefix.Addr().Is4() {
		errs = append(errs, fmt.Errorf("prefix %q is not an IPv4 prefix", s.Prefix))
	} else if s.Prefix != s.Prefix.Masked() {
		errs = append(errs, fmt.Errorf("prefix %s has host bits set (want %s)", s.Prefix, s.Prefix.Masked()))
	}
	if s.Router.IsValid() && (!s.Router.Is4() || (s.Prefix.IsValid() && !s.Prefix.Contains(s.Router))) {
		errs = append(errs, fmt.Errorf("router %s is not an IPv4 address in %s", s.Router, s.Prefix))
	}
	for _, d := range s.DNS {
		if !d.Is4() {
			errs = append(errs, fmt.Errorf("name server %q is not IPv4", d))
		}
	}
	if s.MTU != 0 && (s.MTU < 68 || s.MTU > 65535) {
		errs = append(errs, fmt.Errorf("MTU %d is not in 68-65535", s.MTU))
	}
	if r := s.Discovery; !r.IsZero() {
		switch {
		case !r.First.Is4() || !r.Last.Is4():
			errs = append(errs, fmt.Errorf("discovery range %s is not IPv4", r))
		case r.Last.Less(r.First):
			errs = append(errs, fmt.Errorf("discovery range %s runs backwards", r))
		case s.Prefix.IsValid() && (!s.Prefix.Contains(r.First) || !s.Prefix.Contains(r.Last)):
			errs = append(errs, fmt.Errorf("discovery range %s is not inside %s", r, s.Prefix))
		case r.Size() > maxRange:
			errs = append(errs, fmt.Errorf("discovery range %s holds %d addresses, more than %d", r, r.Size(), maxRange))
		}
	}
	return errors.Join(errs...)
}

// checkSubnets validates every subnet and that no two overlap.
func checkSubnets(subnets []Subnet) error {
	var errs []error
	for i, s := range subnets {
		if err := s.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("subnet %s: %w", s.Prefix, err))
			continue
		}
		for _, o := range subnets[:i] {
			if o.Prefix.IsValid() && o.Prefix.Overlaps(s.Prefix) {
				errs = append(errs, fmt.Errorf("subnet %s overlaps subnet %s", s.Prefix, o.Prefix))
			}
		}
	}
	return errors.Join(errs...)
}

// subnetFor returns the configured subnet that holds a, if any.
func subnetFor(subnets []Subnet, a netip.Addr) (Subnet, bool) {
	for _, s := range subnets {
		if s.Prefix.Contains(a) {
			return s, true
		}
	}
	return Subnet{}, false
}
