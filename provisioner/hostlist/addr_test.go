package hostlist_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/hostlist"
)

func TestIPs(t *testing.T) {
	sub := netip.MustParsePrefix("10.0.0.0/24")
	for _, tc := range []struct {
		spec string
		n    int
		subs []netip.Prefix
		want string
	}{
		{"10.0.0.101+", 3, []netip.Prefix{sub}, "10.0.0.101 10.0.0.102 10.0.0.103"},
		{"10.0.0.101", 1, []netip.Prefix{sub}, "10.0.0.101"},
		{"10.0.0.253-10.0.0.254", 2, []netip.Prefix{sub}, "10.0.0.253 10.0.0.254"},
		{"10.0.0.5,10.0.0.9-10.0.0.10,10.0.0.20+", 5, []netip.Prefix{sub}, "10.0.0.5 10.0.0.9 10.0.0.10 10.0.0.20 10.0.0.21"},
		{"10.0.0.255+", 2, nil, "10.0.0.255 10.0.1.0"},
		{"fd00::fffe+", 3, []netip.Prefix{netip.MustParsePrefix("fd00::/64")}, "fd00::fffe fd00::ffff fd00::1:0"},
		{" 10.0.0.7 , 10.0.0.8 ", 2, nil, "10.0.0.7 10.0.0.8"},
		{"::ffff:10.0.0.7", 1, []netip.Prefix{sub}, "10.0.0.7"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := hostlist.IPs(tc.spec, tc.n, tc.subs...)
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.Trim(fmt.Sprint(got), "[]"); s != tc.want {
				t.Errorf("IPs(%q, %d) = %s, want %s", tc.spec, tc.n, s, tc.want)
			}
		})
	}
}

func TestIPsErrors(t *testing.T) {
	subs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.1.0.0/16")}
	for _, tc := range []struct {
		spec string
		n    int
		want string
	}{
		{"10.0.0.250+", 10, "10.0.0.255 is the network or broadcast address of 10.0.0.0/24"},
		{"10.0.0.0", 1, "network or broadcast"},
		{"10.2.0.1+", 1, "10.2.0.1 is outside 10.0.0.0/24, 10.1.0.0/16"},
		{"10.0.0.10-10.0.0.12", 2, "more than the 2 needed"},
		{"10.0.0.10-10.0.0.12", 4, "3 addresses for 4 names"},
		{"10.0.0.12-10.0.0.10", 3, "reversed"},
		{"10.0.0.1+,10.0.0.50", 2, "must be the last item"},
		{"10.0.0.5,10.0.0.5", 2, "10.0.0.5 given twice"},
		{"10.0.0.5-10.0.0.6,10.0.0.6+", 4, "given twice"},
		{"10.0.0", 1, "address \"10.0.0\""},
		{"10.0.0.1-fd00::1", 2, "mixes IPv4 and IPv6"},
		{"fe80::1%eth0", 1, "zones"},
		{"10.0.0.1+", 0, "at least one name"},
		{"10.0.0.1+", hostlist.DefaultMax + 1, "too many names"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := hostlist.IPs(tc.spec, tc.n, subs...)
			if err == nil {
				t.Fatalf("IPs(%q, %d) = %v, want an error", tc.spec, tc.n, got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("IPs(%q, %d): %v, want it to say %q", tc.spec, tc.n, err, tc.want)
			}
		})
	}
	if _, err := hostlist.IPs("255.255.255.254+", 3); err == nil || !strings.Contains(err.Error(), "runs past the last address") {
		t.Errorf("run past 255.255.255.255: %v", err)
	}
}

func TestMACs(t *testing.T) {
	for _, tc := range []struct {
		spec string
		n    int
		want string
	}{
		{"52:54:00:00:01:00+", 3, "52:54:00:00:01:00 52:54:00:00:01:01 52:54:00:00:01:02"},
		{"52:54:00:00:01:ff+", 2, "52:54:00:00:01:ff 52:54:00:00:02:00"},
		{"52:54:00:00:01:0a-52:54:00:00:01:0b", 2, "52:54:00:00:01:0a 52:54:00:00:01:0b"},
		{"52:54:00:00:00:01,52:54:00:00:00:09+", 3, "52:54:00:00:00:01 52:54:00:00:00:09 52:54:00:00:00:0a"},
		{"52:54:00:FF:FF:FF+", 2, "52:54:00:ff:ff:ff 52:54:01:00:00:00"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := hostlist.MACs(tc.spec, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if s := strings.Trim(fmt.Sprint(got), "[]"); s != tc.want {
				t.Errorf("MACs(%q, %d) = %s, want %s", tc.spec, tc.n, s, tc.want)
			}
		})
	}
}

func TestMACsErrors(t *testing.T) {
	for _, tc := range []struct {
		spec string
		n    int
		want string
	}{
		{"01:00:5e:00:00:01", 1, "multicast"},
		{"00:00:00:00:00:00", 1, "no NIC has it"},
		{"52:ff:ff:ff:ff:ff+", 2, "runs into multicast addresses at 53:00:00:00:00:00"},
		{"52:ff:ff:ff:ff:fe-54:00:00:00:00:00", 5, "runs into multicast"},
		{"fe:ff:ff:ff:ff:ff+", 2, "runs into multicast addresses at ff:00:00:00:00:00"},
		{"52:54:00:00:01:00-52:54:00:00:01:03", 2, "more than the 2 needed"},
		{"52:54:00:00:01:00-52:54:00:00:01:01", 3, "2 addresses for 3 names"},
		{"52:54:00:00:01:03-52:54:00:00:01:00", 4, "reversed"},
		{"52:54:00:00:01", 1, "want six octets"},
		{"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", 1, "want six octets"},
		{"52:54:00:00:01:zz", 1, "invalid MAC"},
		{"52-54-00-00-01-00", 1, "want six octets"},
		{"52:54:00:00:01:00,52:54:00:00:01:00", 2, "given twice"},
		{"52:54:00:00:01:00+,52:54:00:00:02:00", 2, "must be the last item"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := hostlist.MACs(tc.spec, tc.n)
			if err == nil {
				t.Fatalf("MACs(%q, %d) = %v, want an error", tc.spec, tc.n, got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("MACs(%q, %d): %v, want it to say %q", tc.spec, tc.n, err, tc.want)
			}
		})
	}
}

func FuzzIPs(f *testing.F) {
	for _, s := range []string{"10.0.0.101+", "10.0.0.1-10.0.0.9,10.0.0.20+", "fd00::1+", "x", "1.2.3.4-"} {
		f.Add(s, 5)
	}
	sub := netip.MustParsePrefix("10.0.0.0/16")
	f.Fuzz(func(t *testing.T, spec string, n int) {
		n = n%300 + 1
		if n < 1 {
			n = -n + 1
		}
		got, err := hostlist.IPs(spec, n, sub)
		if err != nil {
			return
		}
		if len(got) != n {
			t.Fatalf("IPs(%q, %d) gave %d addresses", spec, n, len(got))
		}
		seen := map[netip.Addr]bool{}
		for _, a := range got {
			if !sub.Contains(a) || seen[a] {
				t.Fatalf("IPs(%q, %d) = %v: %s outside or twice", spec, n, got, a)
			}
			seen[a] = true
		}
	})
}

func FuzzMACs(f *testing.F) {
	for _, s := range []string{"52:54:00:00:01:00+", "52:54:00:00:01:00-52:54:00:00:01:07", "x", "01:00:00:00:00:00"} {
		f.Add(s, 5)
	}
	f.Fuzz(func(t *testing.T, spec string, n int) {
		n = n%300 + 1
		if n < 1 {
			n = -n + 1
		}
		got, err := hostlist.MACs(spec, n)
		if err != nil {
			return
		}
		if len(got) != n {
			t.Fatalf("MACs(%q, %d) gave %d addresses", spec, n, len(got))
		}
		seen := map[string]bool{}
		for _, m := range got {
			if len(m) != 6 || m[0]&1 != 0 || seen[m.String()] {
				t.Fatalf("MACs(%q, %d) = %v: bad %s", spec, n, got, m)
			}
			seen[m.String()] = true
		}
	})
}
