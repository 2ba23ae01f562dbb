package provisioner_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tftpclient "github.com/pin/tftp/v3"
	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push"
	"github.com/ramboot/ramboot/images/push/pushtest"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/state"
)

// commitImage puts an image named default, with a 32 MiB kernel, into the
// store at dir and returns its manifest digest.
func commitImage(t *testing.T, dir string) images.Digest {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &images.Store{Dir: dir}
	put := func(b []byte, mt string) images.Artifact {
		a, err := s.Put(context.Background(), bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		a.MediaType = mt
		return a
	}
	m := images.Manifest{
		SchemaVersion: 1, Name: "default", Created: time.Unix(1700000000, 0).UTC(), Source: "/test",
		Kernel: put(make([]byte, 32<<20), images.MediaTypeKernel), Rootfs: put([]byte("rootfs"), images.MediaTypeRootfs),
		RootfsUncompressedSize: 6, ContentDigest: images.DigestOf([]byte("content")),
	}
	d, err := s.Commit("default", m)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDaemonRefusesDamagedState: an empty or truncated database makes
// ramboot serve fail with the file, the problem and how to recover; it
// starts no empty inventory and leaves the file as it was.
func TestDaemonRefusesDamagedState(t *testing.T) {
	for name, data := range map[string][]byte{"empty": nil, "truncated": bytes.Repeat([]byte{0}, 100)} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			db := filepath.Join(dir, provisioner.DBFile)
			if err := os.WriteFile(db, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, provisioner.BackupFile), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			agent := filepath.Join(t.TempDir(), "ramboot-agent")
			if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Parse("t.yaml", []byte("interface: lo\nstate_dir: "+dir+"\nagent: {binary: "+agent+"}\n"))
			if err != nil {
				t.Fatal(err)
			}
			// Bounded, so that a daemon that serves anyway ends the test.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d := &provisioner.Daemon{Config: cfg, Ready: func(provisioner.Head) { t.Error("the daemon served a damaged database") }}
			err = d.Run(ctx)
			var de *state.DamageError
			if !errors.As(err, &de) {
				t.Fatalf("Run: %v, want a damage error", err)
			}
			for _, want := range []string{db, "ramboot state restore " + filepath.Join(dir, provisioner.BackupFile), "move " + db + " away"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
			if after, _ := os.ReadFile(db); !bytes.Equal(after, data) {
				t.Errorf("the damaged file was changed")
			}
		})
	}
}

// startDaemon runs a daemon on cfg until the returned stop is called (at
// the latest when the test ends) and returns the head it serves once it
// is ready. stop waits for Run to return, at most 15 s, and fails the
// test if it returned an error.
func startDaemon(t *testing.T, cfg config.Config) (provisioner.Head, *provisioner.Daemon, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan provisioner.Head, 1)
	done := make(chan error, 1)
	d := &provisioner.Daemon{Config: cfg, Ready: func(h provisioner.Head) { ready <- h }}
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon after cancel: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("daemon did not stop within 15 s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case head := <-ready:
		return head, d, stop
	case err := <-done:
		once.Do(cancel)
		t.Fatalf("daemon stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon not ready after 20 s")
	}
	return provisioner.Head{}, nil, nil
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestDaemonOnLoopback runs the whole daemon on lo (127.0.0.1/8) with the
// services that need a real link (DHCP broadcasts, RAs) off, and talks to
// it with real clients: HTTP, TFTP, the admin socket. TFTP and HTTP bind
// port 0: no root, no clash with another test on the machine.
func TestDaemonOnLoopback(t *testing.T) {
	dir := t.TempDir()
	tftpRoot := filepath.Join(dir, "ipxe")
	if err := os.MkdirAll(tftpRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	nbp := bytes.Repeat([]byte("undionly"), 4000)
	if err := os.WriteFile(filepath.Join(tftpRoot, "undionly.kpxe"), nbp, 0o644); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(dir, "ramboot-agent")
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	digest := commitImage(t, filepath.Join(stateDir, provisioner.ImagesDir))
	cfg, err := config.Parse("test.yaml", []byte(strings.Join([]string{
		"interface: lo",
		"state_dir: " + stateDir,
		"dhcp: {enabled: false}",
		"ra: {enabled: false}",
		"tftp: {root: " + tftpRoot + ", port: 0}",
		"http: {port: 0, idle_timeout: 1s, send_timeout: 1s}",
		"boot: {stall_timeout: 1s}",
		"agent: {binary: " + agent + "}",
		"sftp: {address: 127.0.0.1, port: 0}",
	}, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	head, _, stop := startDaemon(t, cfg)
	if head.IP.String() != "127.0.0.1" || head.Subnet.Bits() != 8 || head.TFTP.Port() == 0 || head.TFTP.Port() == 69 {
		t.Errorf("head %+v", head)
	}

	resp, err := http.Get(head.BaseURL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	c := apiclient.New(head.Socket)
	if _, err := c.AddNodes(ctx, api.AddNodesRequest{Names: "n1", MAC: "52:54:00:00:00:01", IP: "127.0.0.5"}); err != nil {
		t.Fatal(err)
	}
	resp, err = http.Get(head.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ramboot_nodes{state="new"} 1`, `ramboot_nodes{state="stalled"} 0`, "ramboot_tftp_transfers_total", "go_goroutines",
		`ramboot_state_backups_total{result="ok"} 1`, "ramboot_state_write_failures_total 0", "ramboot_http_connections_open",
		`ramboot_http_timeouts_total{kind="idle"}`, `ramboot_node_reports_total{result="applied"} 0`, "ramboot_boots_stalled_total 0",
		`ramboot_node_info{image="",node="n1",state="new"} 1`, `ramboot_boot_duration_seconds_count{result="ready"} 0`,
		"ramboot_state_writer_batches_total"} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Every metric the daemon exports is documented.
	doc, err := os.ReadFile(filepath.Join("..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (ramboot_\w+) `).FindAllSubmatch(metrics, -1) {
		if !bytes.Contains(doc, append(append([]byte("`"), m[1]...), '`')) {
			t.Errorf("metric %s is not in docs/metrics.md", m[1])
		}
	}
	// The rolling backup was written at start and verifies.
	if sum, err := state.Verify(filepath.Join(stateDir, provisioner.BackupFile)); err != nil {
		t.Errorf("rolling backup: %v", err)
	} else {
		t.Logf("rolling backup: %+v", sum)
	}

	// A keep-alive connection left idle is closed after http.idle_timeout.
	kc, err := net.Dial("tcp4", head.BaseURL[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(kc, "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
	kr := bufio.NewReader(kc)
	if resp, err := http.ReadResponse(kr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("keep-alive healthz: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	kc.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := kr.ReadByte(); err != io.EOF {
		t.Errorf("idle keep-alive connection: %v, want EOF (closed by the head)", err)
	}
	kc.Close()

	// A client that stops reading a download is cut off (http.send_timeout
	// 1s); one with a small receive buffer, so the kernel cannot take the
	// whole file for it.
	sd := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
	}}
	sc, err := sd.Dial("tcp4", head.BaseURL[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(sc, "GET /boot/image/%s/vmlinuz HTTP/1.1\r\nHost: h\r\n\r\n", digest.Hex())
	sresp, err := http.ReadResponse(bufio.NewReader(sc), nil)
	if err != nil || sresp.StatusCode != 200 {
		t.Fatalf("kernel download: %v", err)
	}
	if _, err := io.CopyN(io.Discard, sresp.Body, 64<<10); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // stopped reading
	sc.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := io.Copy(io.Discard, sresp.Body); err == nil && n+64<<10 == 32<<20 {
		t.Errorf("a client that stopped reading for 4s got the whole download (send_timeout 1s)")
	}
	sc.Close()

	// A boot with no progress is marked stalled (boot.stall_timeout 1s):
	// the node fetches its script, then nothing.
	nodeClient := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}).DialContext}}
	resp, err = nodeClient.Get(head.BaseURL + "/boot/ipxe?mac=52:54:00:00:00:01")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("script: %v %v", resp, err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := c.GetNode(ctx, "n1")
		if err != nil {
			t.Fatal(err)
		}
		if n.Status.State == string(state.StateStalled) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("boot not marked stalled: %+v", n.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The admin API is not on the public listener.
	resp, err = http.Get(head.BaseURL + "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Error("admin route answered on the public listener")
	}

	tc, err := tftpclient.NewClient(head.TFTP.String())
	if err != nil {
		t.Fatal(err)
	}
	wt, err := tc.Receive("undionly.kpxe", "octet")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := wt.WriteTo(&got); err != nil || !bytes.Equal(got.Bytes(), nbp) {
		t.Fatalf("tftp: %d bytes, %v", got.Len(), err)
	}

	testPushToDaemon(t, dir, head)

	stop()
	if _, err := os.Stat(head.Socket); !os.IsNotExist(err) {
		t.Errorf("admin socket left behind: %v", err)
	}
}

// testPushToDaemon pushes an image to the daemon's SFTP endpoint with a
// key added to STATE_DIR/authorized_keys after it started, and trusts the
// host key the daemon generated in the state directory.
func testPushToDaemon(t *testing.T, dir string, head provisioner.Head) {
	t.Helper()
	stateDir := filepath.Join(dir, "state")
	if head.SFTP == "" {
		t.Fatal("no SFTP endpoint")
	}
	signer, keyFile := pushtest.NewKey(t, t.TempDir(), "admin")
	if err := os.WriteFile(filepath.Join(stateDir, "authorized_keys"), ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(filepath.Join(stateDir, provisioner.HostKeyFile+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	known := filepath.Join(t.TempDir(), "known_hosts")
	host, port, _ := net.SplitHostPort(head.SFTP)
	os.WriteFile(known, []byte("["+host+"]:"+port+" "+string(hostPub)), 0o600)
	cfg, err := push.ClientConfig(push.ClientOptions{IdentityFiles: []string{keyFile}, KnownHostsFile: known})
	if err != nil {
		t.Fatal(err)
	}
	local := &images.Store{Dir: filepath.Join(t.TempDir(), "images")}
	k, _ := local.Put(context.Background(), strings.NewReader("kernel"))
	k.MediaType = images.MediaTypeKernel
	r, _ := local.Put(context.Background(), strings.NewReader("rootfs"))
	r.MediaType = images.MediaTypeRootfs
	if _, err := local.Commit("pushed", images.Manifest{SchemaVersion: images.SchemaVersion, Created: time.Now().UTC().Truncate(time.Second),
		Source: "/x", Kernel: k, Rootfs: r, RootfsUncompressedSize: 1, Files: 1, ContentDigest: images.DigestOf(nil)}); err != nil {
		t.Fatal(err)
	}
	c, err := push.Dial(context.Background(), head.SFTP, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Push(context.Background(), local, "pushed", "", nil); err != nil {
		t.Fatal(err)
	}
	imgs, err := apiclient.New(head.Socket).ListImages(context.Background())
	pushed := slices.ContainsFunc(imgs, func(i api.Image) bool { return i.Ref == "pushed:latest" })
	if err != nil || !pushed {
		t.Errorf("images after push: %+v, %v", imgs, err)
	}
}
