package daemon

import (
	"testing"

	"github.com/ramboot/ramboot/images/overlay"
)

// TestActionFromJobs reads real `systemctl list-jobs --no-legend` lines.
func TestActionFromJobs(t *testing.T) {
	for _, tc := range []struct {
		jobs string
		want overlay.ShutdownAction
		ok   bool
	}{
		{"1012 poweroff.target start waiting\n1015 systemd-poweroff.service start waiting\n", overlay.ActionPoweroff, true},
		{"880 reboot.target start waiting\n", overlay.ActionReboot, true},
		{"880 kexec.target start waiting\n", overlay.ActionReboot, true},
		{"901 halt.target start waiting\n", overlay.ActionHalt, true},
		{"77 ramboot-agent.service stop running\n", "", false},
		{"", "", false},
	} {
		got, ok := actionFromJobs(tc.jobs)
		if got != tc.want || ok != tc.ok {
			t.Errorf("actionFromJobs(%q) = %q, %v; want %q, %v", tc.jobs, got, ok, tc.want, tc.ok)
		}
	}
}
