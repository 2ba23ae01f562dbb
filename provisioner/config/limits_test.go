package config

import (
	"strings"
	"testing"
	"time"
)

// TestPXELimits checks the defaults and the validation of the keys that
// bound the DHCP and TFTP servers (issue 12).
func TestPXELimits(t *testing.T) {
	c, err := Parse("site.yaml", []byte("interface: eth1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.TFTP.MaxTransfers != 1000 || c.TFTP.MaxTransfersPerClient != 8 ||
		c.TFTP.ReceiveBuffer != 4<<20 || c.DHCP.ReceiveBuffer != 4<<20 || !c.DHCP.DetectRivals {
		t.Errorf("defaults: dhcp %+v, tftp %+v", c.DHCP, c.TFTP)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}

	c, err = Parse("site.yaml", []byte(`interface: eth1
dhcp:
  receive_buffer: 100
  detect_rivals: false
tftp:
  max_transfers: 4
  max_transfers_per_client: 5
  receive_buffer: 2000000000
`))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"site.yaml:3: dhcp.receive_buffer: 100 is not between 4096 and 1073741824 bytes",
		"site.yaml:7: tftp.max_transfers_per_client: 5 is not between 1 and tftp.max_transfers (4)",
		"site.yaml:8: tftp.receive_buffer: 2000000000 is not between",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}

	c, err = Parse("site.yaml", []byte("interface: eth1\ntftp:\n  max_transfers: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "site.yaml:3: tftp.max_transfers: 0 is less than 1") {
		t.Errorf("max_transfers 0: %v", err)
	}
}

// TestSFTPLimits checks the defaults and the validation of the keys that
// bound the SFTP endpoint.
func TestSFTPLimits(t *testing.T) {
	c, err := Parse("site.yaml", []byte("interface: eth1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.SFTP.MaxConns != 64 || c.SFTP.MaxConnsPerClient != 8 || c.SFTP.LoginTimeout != Duration(30*time.Second) ||
		c.SFTP.IdleTimeout != Duration(5*time.Minute) || c.SFTPMaxUploadBytes() != 64<<30 || c.SFTPMinFreeBytes() != 1<<30 {
		t.Errorf("defaults: %+v", c.SFTP)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c, err = Parse("site.yaml", []byte("interface: eth1\nsftp:\n  max_upload: \"0\"\n  min_free: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil || c.SFTPMaxUploadBytes() != 0 || c.SFTPMinFreeBytes() != 0 {
		t.Errorf("0 for no cap and no reserve: %v, %d, %d", err, c.SFTPMaxUploadBytes(), c.SFTPMinFreeBytes())
	}

	c, err = Parse("site.yaml", []byte(`interface: eth1
sftp:
  max_conns: 4
  max_conns_per_client: 5
  login_timeout: 100ms
  idle_timeout: 1s
  max_upload: lots
  min_free: 10%
`))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"site.yaml:3: sftp.max_conns: 4 is less than sftp.max_conns_per_client (5)",
		"site.yaml:5: sftp.login_timeout: 100ms is shorter than 1s",
		"site.yaml:6: sftp.idle_timeout: 1s is shorter than 10s",
		`site.yaml:7: sftp.max_upload: "lots" is not a size`,
		`site.yaml:8: sftp.min_free: "10%": a size such as 512m or 64g, not a percentage`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

// TestBootRetry checks boot.retry's defaults (ipxe's) and bounds.
func TestBootRetry(t *testing.T) {
	c, err := Parse("site.yaml", []byte("interface: eth1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Boot.Retry; r.Attempts != 8 || r.MaxWait != Duration(32*time.Second) || r.FailPause != Duration(30*time.Second) {
		t.Errorf("defaults: %+v", r)
	}
	c, err = Parse("site.yaml", []byte("interface: eth1\nboot:\n  retry:\n    attempts: 1\n    max_wait: 500ms\n    fail_pause: 1s\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	for _, w := range []string{
		"site.yaml:4: boot.retry.attempts: 1 is not between 2 and 100",
		"site.yaml:5: boot.retry.max_wait: 500ms is not between 1s and 10m",
		"site.yaml:6: boot.retry.fail_pause: 1s is not between 2s and 1h",
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}
