package overlayrender

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"text/template"
)

// errSkip is what the template function skip returns: the file is left out
// of the node's overlay.
var errSkip = errors.New("skip")

// funcs are the functions templates may call, besides text/template's
// built-ins (docs/overlays.md lists them).
var funcs = template.FuncMap{
	// skip leaves the file out of this node's overlay:
	// {{if not .Tags.gpu}}{{skip}}{{end}}
	"skip": func() (string, error) { return "", errSkip },
	// fail stops rendering this node with a message.
	"fail": func(msg string) (string, error) { return "", errors.New(msg) },
	// get returns a map's value for key, or def when the map has none:
	// {{get .Values "ntp" "10.0.0.1"}}. (A missing key read as
	// .Values.ntp is an error, which catches typos.)
	"get": func(m any, key string, def any) (any, error) {
		switch x := m.(type) {
		case map[string]any:
			if v, ok := x[key]; ok {
				return v, nil
			}
			return def, nil
		case map[string]string:
			if v, ok := x[key]; ok {
				return v, nil
			}
			return def, nil
		}
		return nil, fmt.Errorf("get: %T is not a map", m)
	},
	// has reports whether a map has key: {{if has .Tags "gpu"}}.
	"has": func(m any, key string) (bool, error) {
		switch x := m.(type) {
		case map[string]any:
			_, ok := x[key]
			return ok, nil
		case map[string]string:
			_, ok := x[key]
			return ok, nil
		}
		return false, fmt.Errorf("has: %T is not a map", m)
	},
	// default returns v, or def when v is empty (nil, "", 0, false, empty
	// list or map): {{.Values.ntp | default "10.0.0.1"}}
	"default": func(def, v any) any {
		if empty(v) {
			return def
		}
		return v
	},
	"join": func(sep string, v any) (string, error) {
		switch l := v.(type) {
		case []string:
			return strings.Join(l, sep), nil
		case []any:
			s := make([]string, len(l))
			for i, x := range l {
				s[i] = fmt.Sprint(x)
			}
			return strings.Join(s, sep), nil
		case []netip.Addr:
			s := make([]string, len(l))
			for i, x := range l {
				s[i] = x.String()
			}
			return strings.Join(s, sep), nil
		}
		return "", fmt.Errorf("join: cannot join %T", v)
	},
	"split":     func(sep, s string) []string { return strings.Split(s, sep) },
	"lower":     strings.ToLower,
	"upper":     strings.ToUpper,
	"trim":      strings.TrimSpace,
	"replace":   func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
	"contains":  func(sub, s string) bool { return strings.Contains(s, sub) },
	"hasPrefix": func(prefix, s string) bool { return strings.HasPrefix(s, prefix) },
	"hasSuffix": func(suffix, s string) bool { return strings.HasSuffix(s, suffix) },
	"indent": func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
	},
	"quote": func(s string) string { return fmt.Sprintf("%q", s) },
	"toJSON": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	// addr, prefixLen, netmask and network take an interface's Address
	// (10.0.0.11/24): 10.0.0.11, 24, 255.255.255.0, 10.0.0.0/24.
	"addr":      func(p netip.Prefix) netip.Addr { return p.Addr() },
	"prefixLen": func(p netip.Prefix) int { return p.Bits() },
	"netmask": func(p netip.Prefix) (string, error) {
		if !p.Addr().Is4() {
			return "", fmt.Errorf("netmask: %s is not IPv4", p)
		}
		m := ^uint32(0) << (32 - p.Bits())
		if p.Bits() == 0 {
			m = 0
		}
		return netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}).String(), nil
	},
	"network": func(p netip.Prefix) netip.Prefix { return p.Masked() },
}

func empty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case bool:
		return !x
	case int:
		return x == 0
	case int64:
		return x == 0
	case float64:
		return x == 0
	case []any:
		return len(x) == 0
	case []string:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	case map[string]string:
		return len(x) == 0
	}
	return false
}
