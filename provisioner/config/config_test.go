package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "interface: required") {
		t.Fatalf("default without interface: got %v, want interface required", err)
	}
	c.Interface = "eth1"
	if err := c.Validate(); err != nil {
		t.Fatalf("default + interface: %v", err)
	}
	if c.StateDir != "/var/lib/ramboot" || c.HTTP.Port != 80 || time.Duration(c.DHCP.LeaseTime) != 168*time.Hour || c.TFTP.Root != "/usr/lib/ipxe" {
		t.Errorf("unexpected defaults: %+v", c)
	}
	m, err := c.BootFileMap()
	if err != nil {
		t.Fatal(err)
	}
	if m[0] != "undionly.kpxe" || m[7] != "snponly.efi" || m[9] != "snponly.efi" {
		t.Errorf("boot files %v", m)
	}
	if got := strings.Join(c.TFTPFiles(), ","); got != "ipxe.efi,snponly.efi,undionly.kpxe" {
		t.Errorf("tftp catalogue %q", got)
	}
}

func TestOverride(t *testing.T) {
	c, err := Parse("site.yaml", []byte("interface: eth2\ndhcp:\n  lease_time: 2h\n  boot_files:\n    \"7\": ipxe.efi\nboot:\n  modules: [e1000]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Interface != "eth2" || time.Duration(c.DHCP.LeaseTime) != 2*time.Hour || c.Boot.Modules[0] != "e1000" {
		t.Errorf("override not applied: %+v", c)
	}
	// Keys the file does not set keep their defaults.
	if c.HTTP.Port != 80 || c.Boot.DefaultImage != "default" {
		t.Errorf("defaults lost: %+v", c)
	}
	m, err := c.BootFileMap()
	if err != nil {
		t.Fatal(err)
	}
	// A file's boot_files replaces the default table as a whole.
	if len(m) != 1 || m[7] != "ipxe.efi" {
		t.Errorf("boot files %v, want only 7 -> ipxe.efi", m)
	}
	dup, err := Parse("dup.yaml", []byte("dhcp:\n  boot_files:\n    \"7\": a.efi\n    efi-x64: b.efi\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dup.BootFileMap(); err == nil || !strings.Contains(err.Error(), "also set") {
		t.Errorf("two spellings of one architecture not refused: %v", err)
	}
}

func TestErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", "interface: eth1\ndhcp:\n  lease_tme: 1h\n", []string{"site.yaml:3: dhcp.lease_tme: unknown key"}},
		{"unknown top key", "interfac: eth1\n", []string{"site.yaml:1: interfac: unknown key"}},
		{"bad duration", "interface: eth1\nra:\n  interval: soon\n", []string{"site.yaml:3: ra.interval: \"soon\" is not a duration"}},
		{"bad type", "interface: eth1\nhttp:\n  port: eighty\n", []string{"site.yaml:3: http.port: \"eighty\" is not a whole number"}},
		{"bad bool", "dhcp:\n  enabled: maybe\n", []string{"site.yaml:2: dhcp.enabled: \"maybe\" is not true or false"}},
		{"list item of a wrong type", "dhcp:\n  dns:\n    - 10.0.0.1\n    - {a: b}\n", []string{"site.yaml:4: dhcp.dns[1]: must be a single value, not a mapping"}},
		{"flow list item", "tftp:\n  files: [a.efi, [b]]\n", []string{"site.yaml:2: tftp.files[1]: must be a single value, not a list"}},
		{"list where a value goes", "interface: [eth1, eth2]\n", []string{"site.yaml:1: interface: must be a single value, not a list"}},
		{"value where a list goes", "boot:\n  modules: e1000\n", []string{"site.yaml:2: boot.modules: must be a list"}},
		{"value where a section goes", "dhcp: yes\n", []string{"site.yaml:1: dhcp: must be a mapping of keys"}},
		{"key set twice", "dhcp:\n  router: 10.0.0.1\n  router: 10.0.0.2\n", []string{"site.yaml:3: dhcp.router: set twice (also on line 2)"}},
		{"not a mapping", "- interface\n", []string{"site.yaml:1: (top level): must be a mapping"}},
		{"syntax", "interface: [eth1\n", []string{"site.yaml:1: "}},
		{"every problem at once", "interfac: x\nhttp:\n  port: x\n", []string{"site.yaml:1: interfac: unknown key", "site.yaml:3: http.port"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("site.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestValidateReportsEverything(t *testing.T) {
	c, err := Parse("site.yaml", []byte(`interface: eth1
state_dir: relative
log_level: loud
dhcp:
  lease_time: 10s
  router: not-an-ip
  dns: [1.2.3.4, nope]
  boot_files:
    sparc: x.bin
    "7": ../etc/passwd
http:
  port: 70000
  send_timeout: 1ms
  max_conns_per_client: 0
boot:
  modules: ["a b"]
  root:
    mode: squashfs
    size: lots
tftp:
  files:
    - undionly.kpxe
    - ../etc/passwd
    - ""
state:
  boot_history: 0
  backup_interval: 1s
agent:
  heartbeat_interval: 10s
  down_after: 15s
`))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"site.yaml:2: state_dir", "site.yaml:3: log_level", "site.yaml:5: dhcp.lease_time", "site.yaml:6: dhcp.router",
		"site.yaml:7: dhcp.dns[1]", "site.yaml:9: dhcp.boot_files.sparc", "site.yaml:10: dhcp.boot_files.7", "site.yaml:12: http.port",
		"site.yaml:13: http.send_timeout", "site.yaml:14: http.max_conns_per_client", "site.yaml:16: boot.modules[0]",
		`site.yaml:18: boot.root.mode: "squashfs" is not a root mode`, `site.yaml:19: boot.root.size: "lots" is not a size`,
		"site.yaml:23: tftp.files[1]", "site.yaml:24: tftp.files[2]", "site.yaml:26: state.boot_history", "site.yaml:27: state.backup_interval",
		"site.yaml:30: agent.down_after: 15s is shorter than two heartbeat intervals (20s)",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ramboot.yaml")
	if err := os.WriteFile(p, []byte("interface: br0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil || c.Interface != "br0" {
		t.Fatalf("Load: %+v %v", c, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file: no error")
	}
}

// TestEtcdBackend: state.backend etcd needs endpoints; every problem of
// its keys names the key and its line; a good etcd section passes.
func TestEtcdBackend(t *testing.T) {
	c, err := Parse("site.yaml", []byte(`interface: eth1
state:
  backend: etcd
  etcd:
    endpoints: [https://10.0.0.1:2379, "10.0.0.2:2379", http://10.0.0.3:2379]
    prefix: ramboot
    ca_file: ca.pem
    cert_file: /etc/ramboot/etcd.pem
    username: ramboot
    dial_timeout: 1ms
    max_txn_ops: 4
`))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		`site.yaml:5: state.etcd.endpoints[1]: "10.0.0.2:2379" is not an http:// or https:// URL`,
		`site.yaml:5: state.etcd.endpoints[2]: "http://10.0.0.3:2379" is plain http while TLS files are set`,
		`site.yaml:6: state.etcd.prefix`, `site.yaml:7: state.etcd.ca_file: "ca.pem" must be an absolute path`,
		"site.yaml:8: state.etcd.cert_file: a client certificate needs both", "site.yaml:9: state.etcd.username",
		"site.yaml:10: state.etcd.dial_timeout", "site.yaml:11: state.etcd.max_txn_ops",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	if strings.Contains(err.Error(), "endpoints[0]") {
		t.Errorf("a good https endpoint refused:\n%v", err)
	}

	c, err = Parse("site.yaml", []byte("interface: eth1\nstate:\n  backend: etcd\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "state.etcd.endpoints: required") {
		t.Errorf("etcd without endpoints: %v", err)
	}
	c, err = Parse("site.yaml", []byte("interface: eth1\nstate:\n  backend: sqlite\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `site.yaml:3: state.backend: "sqlite" is not one of bolt, etcd`) {
		t.Errorf("unknown backend: %v", err)
	}
	c, err = Parse("site.yaml", []byte("interface: eth1\nstate:\n  backend: etcd\n  etcd:\n    endpoints: [http://127.0.0.1:2379, http://127.0.0.2:2379]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("a good etcd section: %v", err)
	}
}
