package ociruntime

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroups, namespaces)")
	}
}

// TestProbe runs the real runtimes installed here: at least one must work,
// and a runtime that is not installed is reported as such.
func TestProbe(t *testing.T) {
	requireRoot(t)
	var have []string
	for _, n := range DefaultCandidates {
		if _, err := exec.LookPath(n); err == nil {
			have = append(have, n)
		}
	}
	if len(have) == 0 {
		t.Skip("no OCI runtime installed (make deps installs runc and crun)")
	}
	dir := t.TempDir()
	rt, rep, err := Probe(context.Background(), ProbeOptions{
		Candidates: append([]string{"no-such-runtime"}, DefaultCandidates...),
		Dir:        dir, Root: dir + "/state",
	})
	t.Logf("probe: %s", rep.Summary())
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if rep.Candidates[0].Works || rep.Candidates[0].Reason != "not installed" {
		t.Errorf("missing runtime reported %+v", rep.Candidates[0])
	}
	if rt.Name != rep.Chosen || rt.Version == "" {
		t.Errorf("chosen %q, runtime %+v", rep.Chosen, rt)
	}
	// On cgroup v1 hybrid hosts crun 1.8 refuses every container: the
	// probe must not pick it there (by trying it, not by its name).
	if rep.Cgroups == CgroupHybrid && rt.Name == "crun" {
		t.Errorf("crun chosen on a hybrid cgroup host: %s", rep.Summary())
	}
	ids, err := rt.List(context.Background())
	if err != nil || len(ids) != 0 {
		t.Errorf("trial container left behind: %v %v", ids, err)
	}
}

func TestProbeNone(t *testing.T) {
	_, rep, err := Probe(context.Background(), ProbeOptions{Candidates: []string{"no-such-runtime"}, Dir: t.TempDir()})
	if err == nil || len(rep.Candidates) != 1 || rep.Chosen != "" {
		t.Fatalf("Probe = %v, %+v; want ErrNoRuntime", err, rep)
	}
}

// TestLastLine: runc's error line wins over a warning logged after it.
func TestLastLine(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"crun: cgroups in hybrid mode not supported\n", "crun: cgroups in hybrid mode not supported"},
		{`time="2026-11-29T23:59:00Z" level=error msg="runc run failed: unable to apply cgroup configuration"` + "\n" +
			`time="2026-11-29T23:59:00Z" level=warning msg="signal: killed"`, "runc run failed: unable to apply cgroup configuration"},
		{`time="x" level=warning msg="a"` + "\n" + `time="x" level=info msg="b"`, "b"},
	} {
		if got := LastLine(tt.in); got != tt.want {
			t.Errorf("LastLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestTrialError: what a failed trial reports.
func TestTrialError(t *testing.T) {
	killed := errors.New("signal: killed")
	for _, tt := range []struct{ stderr, want string }{
		{"", "signal: killed"},
		{"crun: cgroups in hybrid mode not supported\n", "crun: cgroups in hybrid mode not supported"},
		{`time="x" level=debug msg="nsexec-0[310]: <~ nsexec stage-0"` + "\n" + `time="x" level=debug msg="child process in init()"`, "signal: killed"},
		{`time="x" level=debug msg="a"` + "\n" + `time="x" level=error msg="runc run failed: b"` + "\n" + `time="x" level=warning msg="signal: killed"`, "runc run failed: b"},
	} {
		if got := trialError(tt.stderr, killed); got != tt.want {
			t.Errorf("trialError(%q) = %q, want %q", tt.stderr, got, tt.want)
		}
	}
}

// TestProbeUnderNotify: the agent daemon runs under systemd as a
// Type=notify service, so NOTIFY_SOCKET is in its environment. A runtime
// that inherits it waits for the container to say READY=1 (runc and crun
// pass the socket through), which /bin/true never does: the trial hung
// until its time limit on every systemd node. The runtime must not see it.
func TestProbeUnderNotify(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed (make deps installs it)")
	}
	dir := t.TempDir()
	sock := dir + "/notify.sock"
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	_, rep, err := Probe(context.Background(), ProbeOptions{Candidates: []string{"runc"}, Dir: dir, Root: dir + "/state", Timeout: 15 * time.Second})
	if err != nil {
		t.Fatalf("Probe with NOTIFY_SOCKET set: %v (%s)", err, rep.Summary())
	}
	if rep.Candidates[0].Trial > 10*time.Second {
		t.Errorf("trial took %s", rep.Candidates[0].Trial)
	}
}
