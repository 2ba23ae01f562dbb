package overlay_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
)

func TestSizeBytes(t *testing.T) {
	const mem = 8 << 30
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "50%", want: mem / 2},
		{in: "100%", want: mem},
		{in: "1", want: 1},
		{in: "512m", want: 512 << 20},
		{in: "4G", want: 4 << 30},
		{in: "3k", want: 3 << 10},
		{in: "2t", want: 2 << 40},
		{in: "101%", wantErr: "more than 100%"},
		{in: "0", wantErr: "not a size"},
		{in: "-1g", wantErr: "not a size"},
		{in: "1.5g", wantErr: "not a size"},
		{in: "g", wantErr: "not a size"},
		{in: "", wantErr: "not a size"},
		{in: "%", wantErr: "not a size"},
		{in: "9999999999999t", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := overlay.SizeBytes(tt.in, mem)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SizeBytes(%q) = %d, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("SizeBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestRootValidate(t *testing.T) {
	if err := (overlay.Root{}).Validate(); err != nil {
		t.Errorf("zero Root: %v", err)
	}
	err := overlay.Root{Mode: "squashfs", Size: "lots"}.Validate()
	if err == nil || !strings.Contains(err.Error(), `mode: "squashfs"`) || !strings.Contains(err.Error(), `size: "lots"`) {
		t.Errorf("bad Root: %v, want both problems", err)
	}
	cfg := overlay.Config{Node: "n1", HeadURL: "http://h", Token: "t",
		Interface: overlay.Interface{MAC: "52:54:00:00:00:01", Address: "10.0.0.2/24"},
		Root:      overlay.Root{Size: "200%"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "root: size") {
		t.Errorf("config with a bad root size: %v", err)
	}
}

func TestValidPath(t *testing.T) {
	for _, p := range []string{"etc/hosts", "etc/ssh/ssh_host_ed25519_key", "root/.ssh/authorized_keys"} {
		if err := overlay.ValidPath(p); err != nil {
			t.Errorf("ValidPath(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", ".", "..", "/etc/hosts", "../etc/hosts", "etc/../../x", "etc//hosts", "etc/hosts/", overlay.ConfigPath} {
		if err := overlay.ValidPath(p); err == nil {
			t.Errorf("ValidPath(%q) accepted", p)
		}
	}
}

func TestConfigURL(t *testing.T) {
	c := overlay.Config{Node: "n7", HeadURL: "http://10.0.0.1:8080/"}
	if got := c.URL(overlay.HeartbeatPath); got != "http://10.0.0.1:8080/api/v1/nodes/n7/heartbeat" {
		t.Errorf("URL = %s", got)
	}
	if got := c.URL(overlay.TimePath); got != "http://10.0.0.1:8080/api/v1/time" {
		t.Errorf("URL = %s", got)
	}
}

func TestScheduleDurations(t *testing.T) {
	var s overlay.Schedule
	if err := json.Unmarshal([]byte(`{"intervalSeconds":2.5,"downAfterSeconds":10,"overlayGeneration":"g","headTime":"2026-01-02T03:04:05.5Z"}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.Interval() != 2500*time.Millisecond || s.DownAfter() != 10*time.Second || s.HeadTime.Nanosecond() != 5e8 {
		t.Errorf("schedule %+v: interval %v, down after %v", s, s.Interval(), s.DownAfter())
	}
}

func TestConfigHeads(t *testing.T) {
	c := overlay.Config{Node: "n7", HeadURL: "http://10.0.0.1/", Peers: []string{"http://10.0.0.2", "http://10.0.0.1", "http://10.0.0.3/"}}
	if got, want := c.Heads(), []string{"http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3"}; !slices.Equal(got, want) {
		t.Errorf("Heads = %v, want %v", got, want)
	}
	o := c.OnHead("http://10.0.0.2")
	if o.HeadURL != "http://10.0.0.2" || !slices.Equal(o.Peers, []string{"http://10.0.0.1", "http://10.0.0.3"}) {
		t.Errorf("OnHead: head %s, peers %v", o.HeadURL, o.Peers)
	}
	if got := o.URL(overlay.RegisterPath); got != "http://10.0.0.2/api/v1/nodes/n7/register" {
		t.Errorf("URL after OnHead = %s", got)
	}
	if got := (overlay.Config{HeadURL: "http://h"}).Heads(); !slices.Equal(got, []string{"http://h"}) {
		t.Errorf("Heads without peers = %v", got)
	}
}

// TestConfigPeersCompatible: a configuration without peers (one head, or
// an older head) reads as before and encodes without the key; a bad peer
// URL is named.
func TestConfigPeersCompatible(t *testing.T) {
	base := `{"node":"n1","headURL":"http://10.0.0.1","token":"t","interface":{"mac":"52:54:00:00:00:01","address":"10.0.0.2/24"},"image":{"name":"i","digest":"d","contentDigest":"c"}`
	c, err := overlay.ParseConfig([]byte(base + `}`))
	if err != nil || len(c.Peers) != 0 {
		t.Fatalf("config without peers: %v, peers %v", err, c.Peers)
	}
	b, err := json.Marshal(c)
	if err != nil || strings.Contains(string(b), "peers") {
		t.Errorf("encoded without peers: %s (%v)", b, err)
	}
	c, err = overlay.ParseConfig([]byte(base + `,"peers":["http://10.0.0.3"]}`))
	if err != nil || !slices.Equal(c.Peers, []string{"http://10.0.0.3"}) {
		t.Errorf("config with peers: %v, peers %v", err, c.Peers)
	}
	if _, err := overlay.ParseConfig([]byte(base + `,"peers":["ftp://x"]}`)); err == nil || !strings.Contains(err.Error(), "peers[0]") {
		t.Errorf("bad peer: %v", err)
	}
}
