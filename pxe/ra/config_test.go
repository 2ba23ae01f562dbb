package ra_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/pxe/ra"
)

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		s     ra.Server
		wants []string
	}{
		{"zero value", ra.Server{}, []string{"(Interface)"}},
		{"bad durations", ra.Server{Interface: "lo", Interval: -time.Second, RouterLifetime: 70000 * time.Second},
			[]string{"(Interval)", "(RouterLifetime)"}},
		{"bad prefixes", ra.Server{Interface: "lo", Prefixes: []netip.Prefix{
			netip.MustParsePrefix("fd00::/48"),
			netip.MustParsePrefix("10.0.0.0/24"),
			netip.MustParsePrefix("fd00::1/64"),
			netip.MustParsePrefix("fd00:1::/64"),
		}}, []string{"fd00::/48", "10.0.0.0/24", "fd00::1/64"}},
		{"missing interface", ra.Server{Interface: "ramboot-nosuch0"}, []string{"find interface ramboot-nosuch0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.ListenAndServe(context.Background())
			if err == nil {
				t.Fatal("ListenAndServe accepted an invalid configuration")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
			if strings.Contains(err.Error(), "fd00:1::/64") {
				t.Errorf("error %q mentions a valid prefix", err)
			}
		})
	}
}
