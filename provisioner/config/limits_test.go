package config

import (
	"strings"
	"testing"
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
