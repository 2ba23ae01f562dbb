package provisioner_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
)

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
// it with real clients: HTTP, TFTP, the admin socket.
func TestDaemonOnLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: TFTP listens on port 69")
	}
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
	port := freePort(t)
	cfg, err := config.Parse("test.yaml", []byte(strings.Join([]string{
		"interface: lo",
		"state_dir: " + filepath.Join(dir, "state"),
		"dhcp: {enabled: false}",
		"ra: {enabled: false}",
		"tftp: {root: " + tftpRoot + "}",
		"http: {port: " + strconv.Itoa(port) + "}",
		"agent: {binary: " + agent + "}",
		"sftp: {address: 127.0.0.1, port: " + strconv.Itoa(freePort(t)) + "}",
	}, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan provisioner.Head, 1)
	done := make(chan error, 1)
	d := &provisioner.Daemon{Config: cfg, Ready: func(h provisioner.Head) { ready <- h }}
	go func() { done <- d.Run(ctx) }()
	var head provisioner.Head
	select {
	case head = <-ready:
	case err := <-done:
		t.Fatalf("daemon stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon not ready after 20s")
	}
	if head.IP.String() != "127.0.0.1" || head.Subnet.Bits() != 8 {
		t.Errorf("head %+v", head)
	}

	resp, err := http.Get(head.BaseURL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	c := apiclient.New(head.Socket)
	if _, err := c.AddNode(ctx, api.AddNodeRequest{Name: "n1", MAC: "52:54:00:00:00:01", IP: "127.0.0.5"}); err != nil {
		t.Fatal(err)
	}
	resp, err = http.Get(head.BaseURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ramboot_nodes{state="new"} 1`, "ramboot_tftp_transfers_total", "go_goroutines"} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
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

	tc, err := tftpclient.NewClient("127.0.0.1:69")
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

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not stop within 15s of cancel")
	}
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
	if err != nil || len(imgs) != 1 || imgs[0].Ref != "pushed:latest" {
		t.Errorf("images after push: %+v, %v", imgs, err)
	}
}
