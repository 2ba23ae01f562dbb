package ipxescript

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/pxe/ipxe"
)

// env records what a script did; fetches of a URL fail while fail[URL] > 0.
type env struct {
	fail    map[string]int
	fetched []string
	sleeps  []time.Duration
	echoes  []string
}

func (e *env) Fetch(_ context.Context, img Image) error {
	if e.fail[img.URL] > 0 {
		e.fail[img.URL]--
		return errors.New("connection refused")
	}
	e.fetched = append(e.fetched, string(img.Kind)+" "+img.Name)
	return nil
}

func (e *env) Sleep(_ context.Context, d time.Duration) error {
	e.sleeps = append(e.sleeps, d)
	return nil
}

func (e *env) Echo(s string) { e.echoes = append(e.echoes, s) }

// nodeScript is the script ramboot's boot server renders, from pxe/ipxe.
func nodeScript(t *testing.T) []byte {
	t.Helper()
	s := ipxe.Script{
		Comment: "node n1, image default",
		Kernel:  ipxe.File{URL: "http://10.77.0.1/boot/image/abcd/vmlinuz"},
		Args:    "ramboot.node=n1 console=ttyS0",
		Initrds: []ipxe.File{
			{URL: "http://10.77.0.1/boot/image/abcd/rootfs.cpio.zst"},
			{URL: "http://10.77.0.1/boot/agent.cpio.zst"},
			{URL: "http://10.77.0.1/boot/node/n1/f00d/overlay.cpio.zst"},
		},
	}
	b, err := s.Render()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRunRamboot(t *testing.T) {
	const rootfs = "http://10.77.0.1/boot/image/abcd/rootfs.cpio.zst"
	tests := []struct {
		name       string
		fails      int
		wantEnd    End
		wantSleeps []time.Duration
	}{
		{"first try", 0, Boot, nil},
		{"two failures", 2, Boot, []time.Duration{time.Second, 2 * time.Second}},
		// pxe/ipxe's schedule: 8 attempts, waits 1..32 s doubling, then
		// the failure pause and a reboot.
		{"gives up", 8, Reboot, []time.Duration{1, 2, 4, 8, 16, 32, 32, 30}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &env{fail: map[string]int{rootfs: tt.fails}}
			res, err := Run(context.Background(), nodeScript(t), e)
			if err != nil {
				t.Fatal(err)
			}
			if res.End != tt.wantEnd {
				t.Fatalf("end %v, want %v; echoes %q", res.End, tt.wantEnd, e.echoes)
			}
			want := tt.wantSleeps
			if tt.wantEnd == Reboot {
				want = nil
				for _, s := range tt.wantSleeps {
					want = append(want, s*time.Second)
				}
			}
			if !reflect.DeepEqual(e.sleeps, want) {
				t.Errorf("sleeps %v, want %v", e.sleeps, want)
			}
			if tt.wantEnd != Boot {
				return
			}
			if res.Kernel.Name != "vmlinuz" || !strings.Contains(res.Kernel.Args, "initrd=overlay.cpio.zst") || !strings.Contains(res.Kernel.Args, "ramboot.node=n1") {
				t.Errorf("kernel %+v", res.Kernel)
			}
			var names []string
			for _, i := range res.Initrds {
				names = append(names, i.Name)
			}
			if want := []string{"rootfs.cpio.zst", "agent.cpio.zst", "overlay.cpio.zst"}; !reflect.DeepEqual(names, want) {
				t.Errorf("initrds %v, want %v", names, want)
			}
		})
	}
}

func TestRunSyntax(t *testing.T) {
	tests := []struct {
		name, script, wantErr string
		wantEnd               End
	}{
		{"not ipxe", "#!/bin/sh\nboot\n", "not an iPXE script", 0},
		{"unknown command", "#!ipxe\nntp pool.ntp.org\n", `"ntp"`, 0},
		{"missing label", "#!ipxe\ngoto nowhere\n", `no label "nowhere"`, 0},
		{"uncaught failure", "#!ipxe\niseq 1 2\nboot\n", "line 2: iseq", 0},
		{"boot without kernel", "#!ipxe\nboot || goto f\nexit\n:f\nreboot\n", "", Reboot},
		{"and chain", "#!ipxe\nset a 1\niseq ${a} 1 && goto x\nexit\n:x\nreboot\n", "", Reboot},
		{"runs off the end", "#!ipxe\necho hi\n", "", Exit},
		{"endless loop", "#!ipxe\n:top\ngoto top\n", "never ends", 0},
		{"named initrd", "#!ipxe\nkernel http://h/k a=b\ninitrd --name x.img http://h/i?y=1\nboot\n", "", Boot},
		{"chain", "#!ipxe\nchain http://h/next.ipxe\n", "", Boot},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Run(context.Background(), []byte(tt.script), &env{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.End != tt.wantEnd {
				t.Fatalf("end %v, want %v", res.End, tt.wantEnd)
			}
		})
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, nodeScript(t), &env{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// quick is an Env that fetches nothing and never waits.
type quick struct{}

func (quick) Fetch(context.Context, Image) error         { return nil }
func (quick) Sleep(context.Context, time.Duration) error { return nil }
func (quick) Echo(string)                                {}

// FuzzRun: any script the head could send ends, with a result or an
// error, and never panics.
func FuzzRun(f *testing.F) {
	f.Add([]byte("#!ipxe\nkernel http://h/k a\ninitrd http://h/i\nboot\n"))
	f.Add([]byte("#!ipxe\nset a:int32 1\n:x\ninc a\niseq ${a} 5 || goto x\nreboot\n"))
	f.Add([]byte("#!ipxe\nchain http://h/${net0/mac}.ipxe || exit\n"))
	f.Fuzz(func(t *testing.T, script []byte) {
		_ = Check(script)
		res, err := Run(context.Background(), script, quick{})
		if err == nil && res.End == 0 {
			t.Fatalf("no end and no error: %+v", res)
		}
	})
}
