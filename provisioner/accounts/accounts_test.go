package accounts_test

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/ramboot/ramboot/provisioner/accounts"
)

func lines(s ...string) []byte { return []byte(strings.Join(s, "\n") + "\n") }

// head is a head node's files: system accounts, two people, a service
// account, and a group of both people.
var head = accounts.Files{
	Passwd: lines(
		"root:x:0:0:root:/root:/bin/bash",
		"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
		"alice:x:1001:1001:Alice,,,:/home/alice:/bin/bash",
		"bob:x:1002:1002:Bob:/home/bob:/bin/zsh",
		"carol:x:2001:100:Carol:/home/carol:/bin/bash",
		"munge:x:998:998::/nonexistent:/usr/sbin/nologin",
	),
	Group: lines(
		"root:x:0:",
		"users:x:100:",
		"munge:x:998:",
		"alice:x:1001:",
		"bob:x:1002:",
		"hpc:x:3000:alice,bob",
	),
	Shadow: lines(
		"root:$y$j9T$rootsecret:19700:0:99999:7:::",
		"alice:$y$j9T$alicehash:19700:0:99999:7:::",
		"bob:!:19700:0:99999:7:::",
		"munge:!:19700::::::",
	),
	GShadow: lines(
		"root:*::",
		"alice:!::",
		"hpc:!:alice:alice,bob",
	),
}

// image is an image's files, with lines the merge must not touch: a NIS
// compat line, a comment, a line with too few fields, and its own users.
var image = accounts.Files{
	Passwd: lines(
		"root:x:0:0:root:/root:/bin/sh",
		"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
		"# a comment an admin left",
		"systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin",
		"broken line",
		"alice:x:1001:1001:old gecos:/home/alice:/bin/sh",
		"+::::::",
	),
	Group: lines(
		"root:x:0:",
		"users:x:100:imageuser",
		"systemd-network:x:998:",
		"alice:x:1001:",
	),
	Shadow: lines(
		"root:*:19000:0:99999:7:::",
		"alice:!:19000:0:99999:7:::",
		"systemd-network:!*:19000::::::",
	),
	GShadow: lines(
		"root:*::",
		"users:*::imageuser",
	),
}

func TestMerge(t *testing.T) {
	set, err := accounts.Select(head, accounts.Selection{
		Users:  []string{"alice"},
		UIDs:   []accounts.IDRange{{First: 2000, Last: 2999}}, // carol
		Groups: []string{"hpc"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(set.Users(), " "); got != "alice carol" {
		t.Errorf("users %s", got)
	}
	// carol's primary group (users, 100) and alice's (alice) come along.
	if got := strings.Join(set.Groups(), " "); got != "users alice hpc" {
		t.Errorf("groups %s", got)
	}
	got, err := accounts.Merge(image, set)
	if err != nil {
		t.Fatal(err)
	}
	want := accounts.Files{
		Passwd: lines(
			"root:x:0:0:root:/root:/bin/sh",
			"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
			"# a comment an admin left",
			"systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin",
			"broken line",
			"alice:x:1001:1001:Alice,,,:/home/alice:/bin/bash",
			"+::::::",
			"carol:x:2001:100:Carol:/home/carol:/bin/bash",
		),
		Group: lines(
			"root:x:0:",
			"users:x:100:",
			"systemd-network:x:998:",
			"alice:x:1001:",
			"hpc:x:3000:alice,bob",
		),
		Shadow: lines(
			"root:*:19000:0:99999:7:::",
			"alice:$y$j9T$alicehash:19700:0:99999:7:::",
			"systemd-network:!*:19000::::::",
			"carol:*:::::::",
		),
		GShadow: lines(
			"root:*::",
			"users:!::",
			"alice:!::",
			"hpc:!:alice:alice,bob",
		),
	}
	for _, f := range []struct {
		name      string
		got, want []byte
	}{{"passwd", got.Passwd, want.Passwd}, {"group", got.Group, want.Group}, {"shadow", got.Shadow, want.Shadow}, {"gshadow", got.GShadow, want.GShadow}} {
		if string(f.got) != string(f.want) {
			t.Errorf("%s:\n%s\nwant:\n%s", f.name, f.got, f.want)
		}
	}
	ids := got.IDs()
	if uid, ok := ids.User("carol"); !ok || uid != 2001 {
		t.Errorf("IDs.User(carol) = %d, %v", uid, ok)
	}
	if gid, ok := ids.Group("hpc"); !ok || gid != 3000 {
		t.Errorf("IDs.Group(hpc) = %d, %v", gid, ok)
	}
	if _, ok := ids.User("bob"); ok {
		t.Error("bob is on the node but was not selected")
	}
}

// TestMergeKeepsImage: with nothing selected, every file comes out byte
// for byte.
func TestMergeKeepsImage(t *testing.T) {
	set, err := accounts.Select(head, accounts.Selection{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := accounts.Merge(image, set)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Passwd) != string(image.Passwd) || string(got.Group) != string(image.Group) ||
		string(got.Shadow) != string(image.Shadow) || string(got.GShadow) != string(image.GShadow) {
		t.Errorf("merge of nothing changed the image:\n%s%s%s%s", got.Passwd, got.Group, got.Shadow, got.GShadow)
	}
	if same, _ := accounts.Merge(image, nil); string(same.Passwd) != string(image.Passwd) {
		t.Error("nil set changed the image")
	}
}

func TestMergeConflicts(t *testing.T) {
	img := accounts.Files{
		Passwd: lines(
			"root:x:0:0:root:/root:/bin/sh",
			"alice:x:1005:1005::/home/alice:/bin/sh", // alice has another UID
			"dave:x:1002:1002::/home/dave:/bin/sh",   // bob's UID is dave's
		),
		Group: lines(
			"root:x:0:",
			"alice:x:1005:",
			"dave:x:1002:", // bob's GID is dave's group
		),
	}
	set, err := accounts.Select(head, accounts.Selection{Users: []string{"alice", "bob"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = accounts.Merge(img, set)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"user alice: uid 1001 on the head, 1005 in the image",
		"uid 1002: bob on the head, dave in the image",
		"group alice: gid 1001 on the head, 1005 in the image",
		"gid 1002: bob on the head, dave in the image",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\ndoes not say %q", err, want)
		}
	}
}

func TestSelectErrors(t *testing.T) {
	_, err := accounts.Select(head, accounts.Selection{Users: []string{"alice", "mallory"}, Groups: []string{"nogroup"}})
	if err == nil || !strings.Contains(err.Error(), `select user "mallory": not on the head`) || !strings.Contains(err.Error(), `select group "nogroup": not on the head`) {
		t.Errorf("Select: %v", err)
	}
	for _, s := range []string{"1000-", "a-b", "5-1", "-1", "01"} {
		if _, err := accounts.ParseIDRange(s); err == nil {
			t.Errorf("ParseIDRange(%q): no error", s)
		}
	}
	r, err := accounts.ParseIDRange("1000-59999")
	if err != nil || r != (accounts.IDRange{First: 1000, Last: 59999}) {
		t.Errorf("ParseIDRange: %v %v", r, err)
	}
}

// TestMergeNoShadow: a busybox image without shadow or gshadow gets a
// shadow with the selected users and no gshadow.
func TestMergeNoShadow(t *testing.T) {
	fsys := fstest.MapFS{
		"etc/passwd": {Data: lines("root:x:0:0:root:/root:/bin/sh")},
		"etc/group":  {Data: lines("root:x:0:")},
	}
	img, err := accounts.ReadFiles(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if img.Shadow != nil || img.GShadow != nil {
		t.Fatal("missing files read as present")
	}
	set, err := accounts.Select(head, accounts.Selection{Users: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := accounts.Merge(img, set)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Shadow) != "bob:!:19700:0:99999:7:::\n" || got.GShadow != nil {
		t.Errorf("shadow %q gshadow %q", got.Shadow, got.GShadow)
	}
	if _, err := accounts.ReadFiles(fstest.MapFS{"etc/group": {}}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no passwd: %v", err)
	}
}

// TestShadowUtilsAccept runs the merged files through shadow-utils' own
// consistency checks (pwck and grpck, read-only), which parse them as the
// node's login tools will.
func TestShadowUtilsAccept(t *testing.T) {
	pwck, err1 := exec.LookPath("pwck")
	grpck, err2 := exec.LookPath("grpck")
	if err1 != nil || err2 != nil {
		t.Skip("pwck/grpck not installed (Debian's passwd package)")
	}
	img := accounts.Files{
		Passwd:  lines("root:x:0:0:root:/root:/bin/sh", "users:x:100:100::/:/bin/sh"),
		Group:   lines("root:x:0:", "users:x:100:"),
		Shadow:  lines("root:*:19000:0:99999:7:::", "users:*:19000:0:99999:7:::"),
		GShadow: lines("root:*::", "users:*::"),
	}
	set, err := accounts.Select(head, accounts.Selection{Users: []string{"alice", "bob", "carol"}, Groups: []string{"hpc"}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := accounts.Merge(img, set)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Skip("pwck and grpck check a root file system with --root, which chroots: needs root")
	}
	// grpck looks members up in the passwd of the root it checks, so the
	// files go into a root of their own.
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(root, "etc", name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("passwd", got.Passwd)
	write("shadow", got.Shadow)
	write("group", got.Group)
	write("gshadow", got.GShadow)
	// pwck -r warns about home directories that do not exist here; it
	// fails (exit 2) on bad entries and on users missing from shadow.
	if out, err := exec.Command(pwck, "-r", "-q", "-R", root).CombinedOutput(); err != nil {
		t.Errorf("pwck: %v\n%s", err, out)
	}
	if out, err := exec.Command(grpck, "-r", "-R", root).CombinedOutput(); err != nil {
		t.Errorf("grpck: %v\n%s", err, out)
	}
	// And they do fail on a broken file, so the checks above can fail.
	write("passwd", append(got.Passwd, "eve:x:notanumber:1::/:/bin/sh\n"...))
	if out, err := exec.Command(pwck, "-r", "-q", "-R", root).CombinedOutput(); err == nil {
		t.Errorf("pwck accepted a broken passwd:\n%s", out)
	}
}

// FuzzMerge: whatever an image's files hold, Merge does not panic, and
// with nothing selected gives every line back.
func FuzzMerge(f *testing.F) {
	f.Add(string(image.Passwd), string(image.Group), string(image.Shadow))
	f.Add("a:b:c\n:::::::\n\n", "x:x:-1:\n", "")
	f.Fuzz(func(t *testing.T, passwd, group, shadow string) {
		img := accounts.Files{Passwd: []byte(passwd), Group: []byte(group), Shadow: []byte(shadow)}
		set, err := accounts.Select(head, accounts.Selection{UIDs: []accounts.IDRange{{First: 0, Last: 1 << 30}}})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = accounts.Merge(img, set)
		none, _ := accounts.Select(head, accounts.Selection{})
		got, err := accounts.Merge(img, none)
		if err != nil {
			t.Fatal(err)
		}
		if passwd != "" && strings.TrimSuffix(string(got.Passwd), "\n") != strings.TrimSuffix(passwd, "\n") {
			t.Fatalf("passwd %q came back as %q", passwd, got.Passwd)
		}
	})
}
