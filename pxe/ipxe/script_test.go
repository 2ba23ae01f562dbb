package ipxe

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestRender(t *testing.T) {
	s := Script{
		Comment: "node n1, image default sha256:0123456789ab",
		Kernel:  File{URL: "http://10.77.0.1/boot/image/abcd/vmlinuz"},
		Args:    "ramboot.node=n1 console=ttyS0,115200",
		Initrds: []File{
			{URL: "http://10.77.0.1/boot/image/abcd/rootfs.cpio.zst"},
			{URL: "http://10.77.0.1/boot/agent.cpio.zst"},
			{URL: "http://10.77.0.1/boot/node/n1/f00d/overlay.cpio.zst"},
		},
	}
	b, err := s.Render()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "node.ipxe", b)

	s.Initrds = []File{{URL: "http://h/x?y=1", Name: "named.img"}}
	s.Comment, s.Args = "", ""
	b, err = s.Render()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "named.ipxe", b)
}

func TestRenderRefuses(t *testing.T) {
	ok := File{URL: "http://h/vmlinuz"}
	cases := []struct {
		name string
		s    Script
		want string
	}{
		{"relative kernel", Script{Kernel: File{URL: "/boot/vmlinuz"}}, "kernel"},
		{"ftp initrd", Script{Kernel: ok, Initrds: []File{{URL: "ftp://h/i"}}}, "initrds[0]"},
		{"expansion in url", Script{Kernel: File{URL: "http://h/${x}"}}, "kernel"},
		{"newline in args", Script{Kernel: ok, Args: "a\nshell"}, "args"},
		{"expansion in comment", Script{Kernel: ok, Comment: "${net0/mac}"}, "comment"},
		{"no file name", Script{Kernel: File{URL: "http://h/"}}, "image name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.Render()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want mention of %q", err, tc.want)
			}
		})
	}
}

// TestRetries checks the retry knobs and that every goto has its label.
func TestRetries(t *testing.T) {
	s := Script{
		Kernel:    File{URL: "http://h/vmlinuz"},
		Initrds:   []File{{URL: "http://h/a.img"}, {URL: "http://h/b?x=1", Name: "b.img"}},
		Attempts:  3,
		MaxWait:   5 * time.Second,
		FailPause: 2 * time.Second,
	}
	b, err := s.Render()
	if err != nil {
		t.Fatal(err)
	}
	script := string(b)
	for _, want := range []string{"iseq ${ramboot-try} 3 || goto wait0", "iseq ${ramboot-wait} 4 || inc ramboot-wait ${ramboot-wait}", "sleep 2\nreboot\n", "initrd --name b.img http://h/b?x=1 || goto retry2", "boot || goto failed"} {
		if !strings.Contains(script, want) {
			t.Errorf("script lacks %q:\n%s", want, script)
		}
	}
	labels := map[string]bool{}
	for _, l := range strings.Split(script, "\n") {
		if name, ok := strings.CutPrefix(l, ":"); ok {
			if labels[name] {
				t.Errorf("label %s defined twice", name)
			}
			labels[name] = true
		}
	}
	for _, l := range strings.Split(script, "\n") {
		if _, target, ok := strings.Cut(l, "goto "); ok {
			target, _, _ = strings.Cut(target, " ")
			if !labels[target] {
				t.Errorf("goto %s has no label", target)
			}
		}
	}
}
