package localapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// whoami answers with the caller's credentials.
func whoami(w http.ResponseWriter, r *http.Request) {
	c, ok := localapi.CallerFrom(r.Context())
	if !ok {
		localapi.WriteError(w, http.StatusInternalServerError, errors.New("no caller"))
		return
	}
	localapi.WriteJSON(w, http.StatusOK, c)
}

// serve starts a server on a socket in a fresh world-traversable
// directory and returns the socket path.
func serve(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "localapi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "agent.sock")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/whoami", whoami)
	mux.Handle("GET /v1/root", localapi.RequireRoot(http.HandlerFunc(whoami)))
	ln, err := localapi.Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&localapi.Server{Handler: mux}).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

func TestCallerIsThisProcess(t *testing.T) {
	sock := serve(t)
	var c localapi.Cred
	if err := localapi.NewClient(sock).Do(context.Background(), http.MethodGet, "/v1/whoami", nil, &c); err != nil {
		t.Fatal(err)
	}
	want := localapi.Cred{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid()}
	if c != want {
		t.Fatalf("caller %+v, want %+v", c, want)
	}
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != localapi.DefaultMode {
		t.Errorf("socket mode %v, want %v", st.Mode().Perm(), localapi.DefaultMode)
	}
}

func TestSecondServerRefused(t *testing.T) {
	sock := serve(t)
	if _, err := localapi.Listen(sock, 0); err == nil {
		t.Fatal("a second Listen on a live socket succeeded")
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	ln, err := localapi.Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Close without unlinking, as a daemon killed by SIGKILL leaves it.
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket missing: %v", err)
	}
	ln, err = localapi.Listen(sock, 0)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()
}

func TestNoDaemon(t *testing.T) {
	err := localapi.NewClient(filepath.Join(t.TempDir(), "none.sock")).Do(context.Background(), http.MethodGet, "/v1/whoami", nil, nil)
	if err == nil {
		t.Fatal("call without a daemon succeeded")
	}
}

// TestOtherUser connects as uid/gid 65534 (nobody) from a child process:
// the handler sees that uid, and a root-only route refuses it with 403.
func TestOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	sock := serve(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Go's build directory is private: run a copy that nobody can reach.
	exe = copyExecutable(t, exe, filepath.Dir(filepath.Dir(sock)))
	for _, tc := range []struct{ path, want string }{
		{"/v1/whoami", "uid=65534 gid=65534"},
		{"/v1/root", "status=403"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, exe, "-test.run=^TestHelperClient$")
		cmd.Env = append(os.Environ(), "LOCALAPI_HELPER_SOCK="+sock, "LOCALAPI_HELPER_PATH="+tc.path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: helper: %v\n%s", tc.path, err, out)
		}
		if got := lastLine(string(out)); got != tc.want {
			t.Errorf("%s as nobody: %q, want %q\n%s", tc.path, got, tc.want, out)
		}
	}
}

// TestHelperClient is the child of TestOtherUser; it does nothing in a
// normal run.
func TestHelperClient(t *testing.T) {
	sock := os.Getenv("LOCALAPI_HELPER_SOCK")
	if sock == "" {
		t.Skip("helper process only")
	}
	var c localapi.Cred
	err := localapi.NewClient(sock).Do(context.Background(), http.MethodGet, os.Getenv("LOCALAPI_HELPER_PATH"), nil, &c)
	var e *localapi.Error
	switch {
	case errors.As(err, &e):
		fmt.Println("status=" + strconv.Itoa(e.Status))
	case err != nil:
		t.Fatal(err)
	default:
		fmt.Printf("uid=%d gid=%d\n", c.UID, c.GID)
	}
}

func copyExecutable(t *testing.T, src, dir string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "localapi.test")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func lastLine(s string) string {
	var last string
	for _, l := range splitLines(s) {
		if l != "" && l != "PASS" {
			last = l
		}
	}
	return last
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
