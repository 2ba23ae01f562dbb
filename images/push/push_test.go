package push_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push"
	"github.com/ramboot/ramboot/images/push/pushtest"
)

func newStore(t *testing.T) *images.Store {
	return &images.Store{Dir: filepath.Join(t.TempDir(), "store")}
}

// addImage commits an image with a random rootfs of size bytes.
func addImage(t *testing.T, st *images.Store, ref string, size int) (images.Manifest, images.Digest) {
	t.Helper()
	return addImageTB(t, st, ref, size)
}

func addImageTB(t testing.TB, st *images.Store, ref string, size int) (images.Manifest, images.Digest) {
	t.Helper()
	ctx := context.Background()
	rootfs := make([]byte, size)
	rand.Read(rootfs)
	k, err := st.Put(ctx, strings.NewReader("kernel for "+ref))
	if err != nil {
		t.Fatal(err)
	}
	k.MediaType = images.MediaTypeKernel
	r, err := st.Put(ctx, bytes.NewReader(rootfs))
	if err != nil {
		t.Fatal(err)
	}
	r.MediaType = images.MediaTypeRootfs
	m := images.Manifest{SchemaVersion: images.SchemaVersion, Created: time.Now().UTC().Truncate(time.Second), Source: "/test",
		Kernel: k, Rootfs: r, RootfsUncompressedSize: int64(size) * 2, Files: 3, ContentDigest: images.DigestOf(rootfs)}
	d, err := st.Commit(ref, m)
	if err != nil {
		t.Fatal(err)
	}
	m, _, _ = st.Resolve(ref)
	return m, d
}

func dial(t *testing.T, srv *pushtest.Server) *push.Client {
	t.Helper()
	c, err := push.Dial(context.Background(), srv.Addr, srv.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func tmpFiles(t *testing.T, st *images.Store) []string {
	des, _ := os.ReadDir(filepath.Join(st.Dir, "tmp"))
	var n []string
	for _, de := range des {
		n = append(n, de.Name())
	}
	return n
}

func TestPushPull(t *testing.T) {
	local, head := newStore(t), newStore(t)
	m, d := addImage(t, local, "compute:v1", 6<<20)
	srv := pushtest.NewServer(t, head)
	c := dial(t, srv)

	var events []push.Progress
	res, err := c.Push(context.Background(), local, "compute:v1", "", func(p push.Progress) { events = append(events, p) })
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := local.ManifestBytes(d)
	want := m.Kernel.Size + m.Rootfs.Size + int64(len(mb))
	if res.Digest != d || res.Blobs != 2 || res.Bytes != want || res.Unchanged {
		t.Errorf("first push %+v, want 2 blobs, %d bytes", res, want)
	}
	if _, got, err := head.Resolve("compute:v1"); err != nil || got != d {
		t.Fatalf("head resolves %s, %v; want %s", got, err, d)
	}
	if len(events) < 3 || !events[len(events)-1].Done {
		t.Errorf("progress %+v", events)
	}

	// The second push of the same image transfers nothing.
	res, err = c.Push(context.Background(), local, "compute:v1", "", nil)
	if err != nil || res.Bytes != 0 || res.Blobs != 0 || res.Skipped != 2 || !res.Unchanged {
		t.Errorf("second push %+v, %v; want nothing transferred", res, err)
	}
	// A new tag of it sends the manifest only.
	res, err = c.Push(context.Background(), local, "compute:v1", "compute", nil)
	if err != nil || res.Blobs != 0 || res.Bytes != int64(len(mb)) {
		t.Errorf("push as another tag %+v, %v", res, err)
	}

	// Pull into a third store, then again: nothing moves the second time.
	other := newStore(t)
	res, err = c.Pull(context.Background(), other, "compute", "mine:v1", nil)
	if err != nil || res.Blobs != 2 || res.Digest != d {
		t.Fatalf("pull %+v, %v", res, err)
	}
	if _, got, err := other.Resolve("mine:v1"); err != nil || got != d {
		t.Errorf("pulled image resolves %s, %v", got, err)
	}
	res, err = c.Pull(context.Background(), other, "compute", "mine:v1", nil)
	if err != nil || res.Blobs != 0 || !res.Unchanged {
		t.Errorf("second pull %+v, %v", res, err)
	}
	if _, err := c.Pull(context.Background(), other, "nope", "", nil); !errors.Is(err, images.ErrNotFound) {
		t.Errorf("pull of a missing image: %v", err)
	}
	if tmp := tmpFiles(t, head); len(tmp) != 0 {
		t.Errorf("head tmp/ after pushes: %v", tmp)
	}
}

func TestWrongKeyRefused(t *testing.T) {
	srv := pushtest.NewServer(t, newStore(t))
	other, _ := pushtest.NewKey(t, t.TempDir(), "intruder")
	cfg := srv.ClientConfig()
	cfg.Auth = []ssh.AuthMethod{ssh.PublicKeys(other)}
	_, err := push.Dial(context.Background(), srv.Addr, cfg)
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("Dial with an unknown key = %v", err)
	}
	cfg.Auth = []ssh.AuthMethod{ssh.Password("secret")}
	if _, err := push.Dial(context.Background(), srv.Addr, cfg); err == nil {
		t.Fatal("password login accepted")
	}
	// A client that does not know the host key refuses it.
	cfg2, err := push.ClientConfig(push.ClientOptions{IdentityFiles: []string{srv.ClientKeyFile}, KnownHostsFile: filepath.Join(t.TempDir(), "known_hosts")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := push.Dial(context.Background(), srv.Addr, cfg2); err == nil || !strings.Contains(err.Error(), "--accept-new-host-key") {
		t.Fatalf("unknown host key: %v", err)
	}
}

// rawSFTP opens a plain pkg/sftp client on the server, to try what the
// push client never does.
func rawSFTP(t *testing.T, srv *pushtest.Server) (*sftp.Client, *ssh.Client) {
	t.Helper()
	conn, err := ssh.Dial("tcp", srv.Addr, srv.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	c, err := sftp.NewClient(conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); conn.Close() })
	return c, conn
}

func TestJail(t *testing.T) {
	head := newStore(t)
	_, d := addImage(t, head, "img", 1000)
	srv := pushtest.NewServer(t, head)
	c, _ := rawSFTP(t, srv)
	outside := filepath.Join(t.TempDir(), "escaped")
	for _, p := range []string{
		"../../../../" + outside, outside, "/etc/passwd", "/blobs/../../etc/x", "/blobs/sha256/../../../tmp/x",
		"/refs/img:latest", "/x", "/blobs/sha256/not-a-digest", "/manifests/../blobs",
	} {
		f, err := c.OpenFile(p, os.O_WRONLY|os.O_CREATE)
		if err == nil {
			f.Write([]byte("x"))
			err = f.Close()
		}
		if err == nil {
			t.Errorf("write %s accepted", p)
		}
	}
	if _, err := os.Stat(outside); err == nil {
		t.Fatalf("%s was created", outside)
	}
	for _, p := range []string{"/etc/passwd", "../../etc/passwd", "/blobs/sha256/../../../etc/passwd"} {
		if f, err := c.Open(p); err == nil {
			b, _ := io.ReadAll(f)
			t.Errorf("read %s: %q", p, b)
		}
	}
	blob := push.BlobPath(d)
	for name, op := range map[string]func() error{
		"remove": func() error { return c.Remove(blob) },
		"rename": func() error { return c.Rename(blob, "/blobs/sha256/x") },
		"mkdir":  func() error { return c.Mkdir("/blobs/x") },
		"rmdir":  func() error { return c.RemoveDirectory("/refs") },
		"link":   func() error { return c.Symlink("/etc/passwd", "/blobs/sha256/"+strings.Repeat("a", 64)) },
		"chmod":  func() error { return c.Chmod("/etc/passwd", 0o777) },
	} {
		if err := op(); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, _, err := head.Resolve("img"); err != nil {
		t.Errorf("image damaged: %v", err)
	}
	// Reading inside the namespace works.
	if fis, err := c.ReadDir("/refs"); err != nil || len(fis) != 1 || fis[0].Name() != "img:latest" {
		t.Errorf("ls /refs = %v, %v", fis, err)
	}
}

func TestCorruptedBlobRejected(t *testing.T) {
	local, head := newStore(t), newStore(t)
	m, _ := addImage(t, local, "img", 1<<20)
	srv := pushtest.NewServer(t, head)
	c, _ := rawSFTP(t, srv)
	f, err := c.Create(push.BlobPath(m.Rootfs.Digest))
	if err != nil {
		t.Fatal(err)
	}
	bad := make([]byte, m.Rootfs.Size)
	rand.Read(bad)
	if _, err := f.Write(bad); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("close of a corrupted blob = %v", err)
	}
	if head.HasBlob(m.Rootfs) {
		t.Error("corrupted blob stored")
	}
	// A manifest naming blobs the head lacks is refused.
	mb, _ := local.ManifestBytes(mustDigest(t, local, "img"))
	w, _ := c.Create(push.ManifestPath("img"))
	w.Write(mb)
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("manifest without blobs = %v", err)
	}
	if refs, _ := head.List(); len(refs) != 0 {
		t.Errorf("refs %v", refs)
	}
	if tmp := tmpFiles(t, head); len(tmp) != 0 {
		t.Errorf("tmp/ %v", tmp)
	}
}

func mustDigest(t *testing.T, st *images.Store, ref string) images.Digest {
	_, d, err := st.Resolve(ref)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestKilledUpload cuts the connection in the middle of a blob: nothing
// becomes visible and the staging file goes.
func TestKilledUpload(t *testing.T) {
	local, head := newStore(t), newStore(t)
	m, _ := addImage(t, local, "img", 8<<20)
	srv := pushtest.NewServer(t, head)
	c, conn := rawSFTP(t, srv)
	f, err := c.Create(push.BlobPath(m.Rootfs.Digest))
	if err != nil {
		t.Fatal(err)
	}
	src, _ := local.OpenBlob(m.Rootfs.Digest)
	defer src.Close()
	if _, err := io.CopyN(f, src, 3<<20); err != nil {
		t.Fatal(err)
	}
	if len(tmpFiles(t, head)) != 1 {
		t.Fatalf("no staging file during the upload: %v", tmpFiles(t, head))
	}
	conn.Close() // the client dies
	deadline := time.Now().Add(10 * time.Second)
	for len(tmpFiles(t, head)) != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if tmp := tmpFiles(t, head); len(tmp) != 0 {
		t.Errorf("staging files left: %v", tmp)
	}
	if head.HasBlob(m.Rootfs) {
		t.Error("partial blob stored")
	}
	if bs, _ := head.Blobs(); len(bs) != 0 {
		t.Errorf("blobs %v", bs)
	}
}

func TestConcurrentPushes(t *testing.T) {
	local, head := newStore(t), newStore(t)
	_, d := addImage(t, local, "img", 4<<20)
	srv := pushtest.NewServer(t, head)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			c, err := push.Dial(context.Background(), srv.Addr, srv.ClientConfig())
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			_, errs[i] = c.Push(context.Background(), local, "img", fmt.Sprintf("img:c%d", i%2), nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("push %d: %v", i, err)
		}
	}
	for _, ref := range []string{"img:c0", "img:c1"} {
		if _, got, err := head.Resolve(ref); err != nil || got != d {
			t.Errorf("%s = %s, %v", ref, got, err)
		}
	}
	if tmp := tmpFiles(t, head); len(tmp) != 0 {
		t.Errorf("tmp/ %v", tmp)
	}
}

// TestOpenSSHClient pushes and pulls with OpenSSH's sftp client, as a
// script would without ramboot: interop with the reference client.
func TestOpenSSHClient(t *testing.T) {
	if _, err := exec.LookPath("sftp"); err != nil {
		t.Skip("sftp (openssh-client) not installed")
	}
	local, head := newStore(t), newStore(t)
	m, d := addImage(t, local, "img:v1", 3<<20)
	srv := pushtest.NewServer(t, head)
	dir := t.TempDir()
	mb, _ := local.ManifestBytes(d)
	os.WriteFile(filepath.Join(dir, "manifest.json"), mb, 0o644)
	blobFile := func(a images.Artifact) string { return filepath.Join(local.Dir, "blobs", "sha256", a.Digest.Hex()) }
	batch := strings.Join([]string{
		"put " + blobFile(m.Kernel) + " " + push.BlobPath(m.Kernel.Digest),
		"put " + blobFile(m.Rootfs) + " " + push.BlobPath(m.Rootfs.Digest),
		"put " + filepath.Join(dir, "manifest.json") + " " + push.ManifestPath("img:v1"),
		"ls -1 /refs",
		"get " + push.BlobPath(m.Rootfs.Digest) + " " + filepath.Join(dir, "rootfs.back"),
		"get " + push.RefPath("img:v1") + " " + filepath.Join(dir, "ref"),
	}, "\n")
	out := openSSH(t, srv, batch)
	if !strings.Contains(out, "img:v1") {
		t.Errorf("ls /refs:\n%s", out)
	}
	if _, got, err := head.Resolve("img:v1"); err != nil || got != d {
		t.Fatalf("pushed with OpenSSH: %s, %v", got, err)
	}
	back, _ := os.ReadFile(filepath.Join(dir, "rootfs.back"))
	if images.DigestOf(back) != m.Rootfs.Digest {
		t.Error("rootfs fetched with OpenSSH differs")
	}
	if ref, _ := os.ReadFile(filepath.Join(dir, "ref")); string(ref) != string(d)+"\n" {
		t.Errorf("ref = %q", ref)
	}
	// A corrupted put fails in OpenSSH too, and escaping is refused.
	os.WriteFile(filepath.Join(dir, "bad"), []byte("not the kernel"), 0o644)
	if _, err := openSSHErr(srv, "put "+filepath.Join(dir, "bad")+" "+push.BlobPath(images.DigestOf([]byte("x")))); err == nil {
		t.Error("OpenSSH put of a corrupted blob succeeded")
	}
	if _, err := openSSHErr(srv, "put "+filepath.Join(dir, "bad")+" ../../../tmp/escaped"); err == nil {
		t.Error("OpenSSH put outside the jail succeeded")
	}
}

func openSSHArgs(srv *pushtest.Server) []string {
	return []string{"-b", "-", "-i", srv.ClientKeyFile, "-P", fmt.Sprint(srv.Port),
		"-o", "UserKnownHostsFile=" + srv.KnownHostsFile, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "ramboot@127.0.0.1"}
}

func openSSHErr(srv *pushtest.Server, batch string) (string, error) {
	cmd := exec.Command("sftp", openSSHArgs(srv)...)
	cmd.Stdin = strings.NewReader(batch + "\n")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func openSSH(t *testing.T, srv *pushtest.Server, batch string) string {
	t.Helper()
	out, err := openSSHErr(srv, batch)
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	return out
}

// TestOutOfOrderUpload writes a blob back to front: the server cannot
// hash it on the way and verifies the file when it is closed.
func TestOutOfOrderUpload(t *testing.T) {
	local, head := newStore(t), newStore(t)
	m, _ := addImage(t, local, "img", 1<<20)
	srv := pushtest.NewServer(t, head)
	c, _ := rawSFTP(t, srv)
	data, err := os.ReadFile(filepath.Join(local.Dir, "blobs", "sha256", m.Rootfs.Digest.Hex()))
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Create(push.BlobPath(m.Rootfs.Digest))
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 64 << 10
	for off := (len(data) - 1) / chunk * chunk; off >= 0; off -= chunk {
		if _, err := f.WriteAt(data[off:min(off+chunk, len(data))], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !head.HasBlob(m.Rootfs) {
		t.Error("blob written out of order not stored")
	}
}

// TestPushFullDisk pushes to a head whose store is on a 2 MiB tmpfs: the
// push fails with the head's error, and the head keeps nothing.
func TestPushFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	local := newStore(t)
	addImage(t, local, "img", 4<<20)
	head := &images.Store{Dir: filepath.Join(mnt, "store")}
	// No reserve: the disk really fills (TestUploadReserve has one).
	srv := pushtest.NewServerWith(t, head, func(s *push.Server) { s.MinFreeBytes = -1 })
	c := dial(t, srv)
	_, err := c.Push(context.Background(), local, "img", "", nil)
	if err == nil {
		t.Fatal("push to a full disk succeeded")
	}
	if strings.Contains(err.Error(), "sftp.min_free") {
		t.Fatalf("refused by the reserve, not by the full disk: %v", err)
	}
	if refs, _ := head.List(); len(refs) != 0 {
		t.Errorf("refs %v", refs)
	}
	if tmp := tmpFiles(t, head); len(tmp) != 0 {
		t.Errorf("tmp/ %v", tmp)
	}
}

// TestPushPullCompressedRoot: an image's compressed root travels with it,
// and a second push of the image sends nothing.
func TestPushPullCompressedRoot(t *testing.T) {
	local, head := newStore(t), newStore(t)
	ctx := context.Background()
	m, _ := addImage(t, local, "small:v1", 1<<20)
	sq := make([]byte, 3<<20)
	rand.Read(sq)
	a, err := local.Put(ctx, bytes.NewReader(sq))
	if err != nil {
		t.Fatal(err)
	}
	a.MediaType = images.MediaTypeCompressedRoot
	m.CompressedRoot = &a
	d, err := local.Commit("small:v2", m)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, pushtest.NewServer(t, head))
	var names []string
	res, err := c.Push(ctx, local, "small:v2", "", func(p push.Progress) {
		if p.Done && !slices.Contains(names, p.Blob) {
			names = append(names, p.Blob)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs != 3 || res.Digest != d {
		t.Errorf("push %+v, want 3 blobs", res)
	}
	if !slices.Contains(names, "compressed-root") {
		t.Errorf("progress named %v, not the compressed root", names)
	}
	got, _, err := head.Resolve("small:v2")
	if err != nil || got.CompressedRoot == nil || !head.HasBlob(*got.CompressedRoot) {
		t.Fatalf("head has %+v, %v", got.CompressedRoot, err)
	}
	res, err = c.Push(ctx, local, "small:v2", "", nil)
	if err != nil || res.Blobs != 0 || res.Skipped != 3 || !res.Unchanged {
		t.Errorf("second push %+v, %v", res, err)
	}
	other := newStore(t)
	res, err = c.Pull(ctx, other, "small:v2", "", nil)
	if err != nil || res.Blobs != 3 {
		t.Fatalf("pull %+v, %v", res, err)
	}
	f, err := other.OpenBlob(a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(b, sq) {
		t.Error("pulled compressed root differs")
	}
}
