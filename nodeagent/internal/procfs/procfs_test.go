package procfs_test

import (
	"math"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
)

const meminfo = `MemTotal:        1014020 kB
MemFree:          911228 kB
MemAvailable:     880000 kB
`

func TestMemTotal(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int64
		wantErr bool
	}{
		{name: "real", in: meminfo, want: 1014020 * 1024},
		{name: "not-first", in: "MemFree: 1 kB\nMemTotal: 2 kB\n", want: 2048},
		{name: "no-newline", in: "MemTotal: 3 kB", want: 3072},
		{name: "missing", in: "MemFree: 1 kB\n", wantErr: true},
		{name: "bad-unit", in: "MemTotal: 3 MB\n", wantErr: true},
		{name: "not-number", in: "MemTotal: x kB\n", wantErr: true},
		{name: "negative", in: "MemTotal: -1 kB\n", wantErr: true},
		{name: "overflow", in: "MemTotal: 9223372036854775807 kB\n", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := procfs.ParseMemTotal([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseMemTotal(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestUptime(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    float64
		wantErr bool
	}{
		{name: "real", in: "13.02 11.98\n", want: 13.02},
		{name: "one-field", in: "7", want: 7},
		{name: "empty", in: "", wantErr: true},
		{name: "nan", in: "NaN 1", wantErr: true},
		{name: "inf", in: "+Inf 1", wantErr: true},
		{name: "negative", in: "-1.5 0", wantErr: true},
		{name: "junk", in: "abc def", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := procfs.ParseUptime([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseUptime(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestCmdline(t *testing.T) {
	c := procfs.ParseCmdline(`BOOT_IMAGE=/vmlinuz initrd=initrd.img console=ttyS0,115200 quiet ramboot.exec=/sbin/init msg="hello  world" ramboot.exec=/lib/systemd/systemd empty= "q=x y"` + "\n")
	tests := []struct {
		key, want string
		ok        bool
	}{
		{"ramboot.exec", "/lib/systemd/systemd", true},
		{"console", "ttyS0,115200", true},
		{"quiet", "", true},
		{"msg", "hello  world", true},
		{"empty", "", true},
		{"q", "x y", true},
		{"nope", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got, ok := c.Get(tt.key)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Get(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.ok)
			}
		})
	}
	var keys []string
	for _, p := range c {
		keys = append(keys, p.Key)
	}
	want := []string{"BOOT_IMAGE", "initrd", "console", "quiet", "ramboot.exec", "msg", "ramboot.exec", "empty", "q"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
}

func TestReaders(t *testing.T) {
	root := fstest.MapFS{
		"proc/meminfo": {Data: []byte(meminfo)},
		"proc/uptime":  {Data: []byte("5.50 1.00\n")},
		"proc/cmdline": {Data: []byte("ramboot.exec=/sbin/init\n")},
	}
	if m, err := procfs.ReadMemTotal(root); err != nil || m != 1014020*1024 {
		t.Errorf("ReadMemTotal = %d, %v", m, err)
	}
	if u, err := procfs.ReadUptime(root); err != nil || u != 5.5 {
		t.Errorf("ReadUptime = %v, %v", u, err)
	}
	if c, err := procfs.ReadCmdline(root); err != nil {
		t.Error(err)
	} else if v, _ := c.Get("ramboot.exec"); v != "/sbin/init" {
		t.Errorf("ramboot.exec = %q", v)
	}
	if _, err := procfs.ReadUptime(fstest.MapFS{}); err == nil || !strings.Contains(err.Error(), "uptime") {
		t.Errorf("ReadUptime of empty fs: %v", err)
	}
}

// Seeds: testdata/fuzz/FuzzParseMemTotal.
func FuzzParseMemTotal(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := procfs.ParseMemTotal(b)
		if err == nil && (n < 0 || n%1024 != 0) {
			t.Errorf("ParseMemTotal(%q) = %d", b, n)
		}
	})
}

// Seeds: testdata/fuzz/FuzzParseUptime.
func FuzzParseUptime(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := procfs.ParseUptime(b)
		if err == nil && (s < 0 || math.IsNaN(s) || math.IsInf(s, 0)) {
			t.Errorf("ParseUptime(%q) = %v", b, s)
		}
	})
}

// Seeds: testdata/fuzz/FuzzParseCmdline.
func FuzzParseCmdline(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range procfs.ParseCmdline(s) {
			if strings.Contains(p.Key, `"`) || strings.Contains(p.Value, `"`) {
				t.Errorf("quote left in %+v", p)
			}
			if p.Key == "" && !p.HasValue && p.Value == "" && !strings.Contains(s, `"`) {
				t.Errorf("empty word from %q", s)
			}
		}
	})
}
