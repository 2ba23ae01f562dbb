package ra

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// ndOptions splits the options of a Neighbor Discovery message by type.
func ndOptions(t *testing.T, opts []byte) map[byte][][]byte {
	t.Helper()
	m := map[byte][][]byte{}
	for len(opts) > 0 {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			t.Fatalf("bad option encoding: % x", opts)
		}
		n := int(opts[1]) * 8
		m[opts[0]] = append(m[opts[0]], opts[:n])
		opts = opts[n:]
	}
	return m
}

func TestMarshalRA(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x20, 0x30}
	p1 := netip.MustParsePrefix("fd00:77::/64")
	p2 := netip.MustParsePrefix("2001:db8:1:2::/64")
	tests := []struct {
		name     string
		a        advert
		lifetime uint16
		prefixes []netip.Prefix
	}{
		{"default", advert{linkAddr: mac}, 0, nil},
		{"no link-layer address", advert{}, 0, nil},
		{"router lifetime", advert{routerLifetime: 1800, linkAddr: mac}, 1800, nil},
		{"prefixes", advert{linkAddr: mac, prefixes: []netip.Prefix{p1, p2}}, 0, []netip.Prefix{p1, p2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.a.marshal()
			m, err := icmp.ParseMessage(ipv6.ICMPTypeRouterAdvertisement.Protocol(), b)
			if err != nil {
				t.Fatal(err)
			}
			if m.Type != ipv6.ICMPTypeRouterAdvertisement || m.Code != 0 {
				t.Fatalf("type %v code %d, want router advertisement code 0", m.Type, m.Code)
			}
			body, ok := m.Body.(*icmp.RawBody)
			if !ok || !bytes.Equal(body.Data, b[4:]) {
				t.Fatalf("body %T does not hold the message after the header", m.Body)
			}
			if b[0] != 134 || len(b) < 16 || len(b)%8 != 0 {
				t.Fatalf("type byte %d, length %d", b[0], len(b))
			}
			if b[4] != 0 {
				t.Errorf("cur hop limit = %d, want 0 (unspecified)", b[4])
			}
			if b[5] != 0 {
				t.Errorf("flags = %#x, want no M and no O", b[5])
			}
			if got := binary.BigEndian.Uint16(b[6:8]); got != tt.lifetime {
				t.Errorf("router lifetime = %d, want %d", got, tt.lifetime)
			}
			if !bytes.Equal(b[8:16], make([]byte, 8)) {
				t.Errorf("reachable time and retrans timer = % x, want zero", b[8:16])
			}
			opts := ndOptions(t, b[16:])
			sll := opts[optSourceLinkLayerAddress]
			switch {
			case tt.a.linkAddr == nil && len(sll) != 0:
				t.Errorf("unexpected link-layer address option % x", sll)
			case tt.a.linkAddr != nil && (len(sll) != 1 || !bytes.Equal(sll[0], append([]byte{1, 1}, mac...))):
				t.Errorf("link-layer address options = % x, want 01 01 %s", sll, mac)
			}
			pis := opts[optPrefixInformation]
			if len(pis) != len(tt.prefixes) {
				t.Fatalf("%d prefix options, want %d", len(pis), len(tt.prefixes))
			}
			for i, pi := range pis {
				if len(pi) != 32 || pi[1] != 4 || pi[2] != 64 || pi[3] != 0xc0 {
					t.Errorf("prefix option % x: want length 4, /64, flags L|A", pi)
				}
				if v, p := binary.BigEndian.Uint32(pi[4:]), binary.BigEndian.Uint32(pi[8:]); v != prefixValidLifetime || p != prefixPreferredLifetime {
					t.Errorf("lifetimes valid %d preferred %d", v, p)
				}
				if got := netip.PrefixFrom(netip.AddrFrom16([16]byte(pi[16:32])), int(pi[2])); got != tt.prefixes[i] {
					t.Errorf("prefix %v, want %v", got, tt.prefixes[i])
				}
			}
		})
	}
}

// rsBytes builds a Router Solicitation with the given options.
func rsBytes(code byte, opts ...byte) []byte {
	return append([]byte{typeRouterSolicitation, code, 0, 0, 0, 0, 0, 0}, opts...)
}

func TestParseRS(t *testing.T) {
	ll := netip.MustParseAddr("fe80::1")
	sll := []byte{1, 1, 2, 0, 0, 0, 0, 7}
	tests := []struct {
		name     string
		b        []byte
		src      netip.Addr
		hopLimit int
		wantMAC  string
		wantErr  bool
	}{
		{"plain", rsBytes(0), ll, 255, "", false},
		{"with link-layer address", rsBytes(0, sll...), ll, 255, "02:00:00:00:00:07", false},
		{"hop limit unknown", rsBytes(0, sll...), ll, -1, "02:00:00:00:00:07", false},
		{"unknown option skipped", rsBytes(0, append([]byte{200, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, sll...)...), ll, 255, "02:00:00:00:00:07", false},
		{"unspecified source", rsBytes(0), netip.IPv6Unspecified(), 255, "", false},
		{"unspecified source with link-layer address", rsBytes(0, sll...), netip.IPv6Unspecified(), 255, "", true},
		{"hop limit 64", rsBytes(0), ll, 64, "", true},
		{"code 1", rsBytes(1), ll, 255, "", true},
		{"short", rsBytes(0)[:7], ll, 255, "", true},
		{"empty", nil, ll, 255, "", true},
		{"wrong type", append([]byte{134}, rsBytes(0)[1:]...), ll, 255, "", true},
		{"zero-length option", rsBytes(0, 1, 0, 0, 0, 0, 0, 0, 0), ll, 255, "", true},
		{"overrunning option", rsBytes(0, 1, 2, 0, 0, 0, 0, 0, 0), ll, 255, "", true},
		{"truncated option", rsBytes(0, 1), ll, 255, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := parseRS(tt.b, tt.src, tt.hopLimit)
			if tt.wantErr {
				if !errors.Is(err, errMalformed) {
					t.Fatalf("parseRS = %v, want errMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rs.src != tt.src || rs.linkAddr.String() != tt.wantMAC {
				t.Errorf("parseRS = %+v, want src %v mac %q", rs, tt.src, tt.wantMAC)
			}
		})
	}
}

// FuzzParseRS feeds arbitrary bytes to the solicitation parser. Seeds:
// testdata/fuzz/FuzzParseRS.
func FuzzParseRS(f *testing.F) {
	f.Add(rsBytes(0, 1, 1, 2, 0, 0, 0, 0, 7), true, 255)
	f.Add(rsBytes(0, 1, 0), false, 255)
	f.Fuzz(func(t *testing.T, b []byte, unspecified bool, hopLimit int) {
		src := netip.MustParseAddr("fe80::2")
		if unspecified {
			src = netip.IPv6Unspecified()
		}
		rs, err := parseRS(b, src, hopLimit)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("parseRS error %v does not wrap errMalformed", err)
			}
			return
		}
		if len(b) < 8 || b[0] != typeRouterSolicitation || b[1] != 0 || (hopLimit >= 0 && hopLimit != 255) {
			t.Fatalf("parseRS accepted % x with hop limit %d", b, hopLimit)
		}
		if rs.linkAddr != nil && (unspecified || len(rs.linkAddr) != 6) {
			t.Fatalf("parseRS returned link-layer address %v from %v", rs.linkAddr, src)
		}
	})
}
