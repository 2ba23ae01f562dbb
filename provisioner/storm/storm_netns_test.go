package storm_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/internal/lab"
	"github.com/ramboot/ramboot/provisioner/storm"
	"github.com/ramboot/ramboot/provisioner/storm/stormtest"
)

// stormArgs are the arguments of `ramboot bench storm` against the head
// of n.
func stormArgs(n *lab.StormNet, h *lab.StormHead, nodes int, extra ...string) []string {
	args := []string{"bench", "storm", "--state-dir", h.State, "--nodes", strconv.Itoa(nodes),
		"--head", n.HeadIP.Addr().String(), "--head-pid", strconv.Itoa(h.PID()),
		"--relay", n.GenIP.String(), "--first-ip", n.FirstNode().String(), "-o", "json"}
	return append(args, extra...)
}

// runStorm runs `ramboot bench storm` in the generator's namespace and
// decodes its report.
func runStorm(t *testing.T, n *lab.StormNet, ramboot string, args []string) (*storm.Report, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := stormtest.Output(t, n.Command(ctx, n.Gen, ramboot, args...))
	var rep storm.Report
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("decode the report: %v (exit: %v)\n%s", jerr, err, out)
	}
	return &rep, err
}

// TestStorm is the short storm CI runs: 200 UEFI nodes power on at once
// against a real `ramboot serve`, through the relay path, every phase up
// to the agent's registration, every digest checked, while a misbehaving
// client floods the head's HTTP and TFTP and stalls downloads. Every node
// must register, the head must record every one booted, its per-client
// limits must hold the misbehaving client, and its goroutines must come
// back down.
func TestStorm(t *testing.T) {
	n := stormtest.New(t)
	ramboot := stormtest.Binaries(t)
	h := stormtest.Head(t, n, lab.StormHeadOptions{Ramboot: ramboot, ImageMiB: 8, KernelMiB: 2})
	plot := filepath.Join(t.TempDir(), "storm.svg")
	rep, err := runStorm(t, n, ramboot, stormArgs(n, h, 200, "--digest-every", "1", "--misbehave", "all", "--plot", plot))
	if err != nil {
		t.Fatalf("ramboot bench storm: %v; lost %v", err, rep.LostNodes)
	}
	if rep.Completed != 200 || rep.Lost != 0 {
		t.Fatalf("completed %d, lost %d: %+v", rep.Completed, rep.Lost, rep.LostNodes)
	}
	for _, p := range rep.Phases {
		if p.Done != 200 {
			t.Errorf("phase %s: %d done, want 200", p.Name, p.Done)
		}
	}
	if len(rep.Phases) != len(storm.Phases()) {
		t.Errorf("%d phases reported, want %d", len(rep.Phases), len(storm.Phases()))
	}
	if got := rep.HeadStates["booted"]; got != 200 {
		t.Errorf("the head recorded %d nodes booted, want 200: %v", got, rep.HeadStates)
	}
	if len(rep.Heads) != 1 {
		t.Fatalf("%d heads reported", len(rep.Heads))
	}
	hr := rep.Heads[0]
	if hr.Nodes != 200 || hr.CPUSeconds <= 0 || hr.RSSPeak <= 0 || hr.Error != "" {
		t.Errorf("head report %+v", hr)
	}
	if drops := hr.Counters["dhcp_socket_drops_total"]; drops != 0 {
		t.Errorf("the head's DHCP socket dropped %v requests", drops)
	}
	if rep.DHCP.Dropped != 0 {
		t.Errorf("the relay's socket dropped %d replies", rep.DHCP.Dropped)
	}
	// The nodes closed their connections: the head's goroutines are back
	// near where they started (the misbehaving client's connections were
	// closed too).
	if hr.GoroutinesEnd > hr.GoroutinesStart+20 {
		t.Errorf("goroutines: %d before, %d after the storm", hr.GoroutinesStart, hr.GoroutinesEnd)
	}
	if rep.Misbehave == nil || len(rep.Misbehave.Kinds) != 3 {
		t.Fatalf("misbehaving client report %+v", rep.Misbehave)
	}
	for _, k := range rep.Misbehave.Kinds {
		t.Logf("misbehaving %s: %+v", k.Kind, k)
		switch k.Kind {
		case storm.MisbehaveConnFlood:
			// http.max_conns_per_client (16) holds it; the rest are closed
			// at accept.
			if k.HeldMax > 16 || k.Refused == 0 {
				t.Errorf("conn-flood: held at most %d (cap 16), %d refused", k.HeldMax, k.Refused)
			}
		case storm.MisbehaveTFTPFlood:
			// tftp.max_transfers_per_client (8).
			if k.HeldMax > 8 || k.Refused == 0 {
				t.Errorf("tftp-flood: held at most %d (cap 8), %d refused", k.HeldMax, k.Refused)
			}
		case storm.MisbehaveSlowReader:
			if k.HeldMax > 16 || k.Attempts == 0 {
				t.Errorf("slow-reader: held at most %d (cap 16) of %d", k.HeldMax, k.Attempts)
			}
		}
	}
	f, err := os.Open(plot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("plot: %v", err)
		}
	}
}

// TestStormLost: nodes the head does not know are lost, the report says
// where, and the command fails.
func TestStormLost(t *testing.T) {
	n := stormtest.New(t)
	ramboot := stormtest.Binaries(t)
	h := stormtest.Head(t, n, lab.StormHeadOptions{Ramboot: ramboot, ImageMiB: 1, KernelMiB: 1})
	rep, err := runStorm(t, n, ramboot, stormArgs(n, h, 3, "--no-inventory", "--deadline", "3s"))
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("exit %v, want a failure", err)
	}
	if rep.Lost != 3 || len(rep.LostNodes) != 3 || rep.LostNodes[0].Phase != "dhcp" {
		t.Fatalf("lost %d: %+v", rep.Lost, rep.LostNodes)
	}
}

// TestStormDirect: the direct path, the generator broadcasting on the
// link as the nodes themselves, BIOS firmware.
func TestStormDirect(t *testing.T) {
	n := stormtest.New(t)
	ramboot := stormtest.Binaries(t)
	h := stormtest.Head(t, n, lab.StormHeadOptions{Ramboot: ramboot, ImageMiB: 2, KernelMiB: 1})
	args := []string{"bench", "storm", "--state-dir", h.State, "--nodes", "20", "--head", n.HeadIP.Addr().String(),
		"--interface", n.GenIface, "--first-ip", n.FirstNode().String(), "--firmware", "bios", "-o", "json"}
	rep, err := runStorm(t, n, ramboot, args)
	if err != nil || rep.Completed != 20 || rep.HeadStates["booted"] != 20 {
		t.Fatalf("exit %v: completed %d, head states %v, lost %+v", err, rep.Completed, rep.HeadStates, rep.LostNodes)
	}
	if rep.Path != "direct "+n.GenIface {
		t.Errorf("path %q", rep.Path)
	}
}
