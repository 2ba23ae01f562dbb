package tftp_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ramboot/ramboot/pxe/tftp"
	"github.com/ramboot/ramboot/pxe/tftp/tftptest"
)

// rolloverSize is larger than 65536 blocks of 512 bytes (32 MiB), so a
// 512-byte transfer wraps the 16-bit block counter; the odd tail leaves a
// short last block.
const rolloverSize = 32<<20 + 3*512 + 123

// client runs one real TFTP client binary.
type client struct {
	name string
	bin  string
	args func(port int, file, out string) []string
}

var clients = []client{
	{"tftp-hpa", "tftp", func(port int, file, out string) []string {
		// tftp-hpa cannot negotiate options: 512-byte blocks, no tsize.
		return []string{"-m", "binary", "127.0.0.1", strconv.Itoa(port), "-c", "get", file, out}
	}},
	{"atftp", "atftp", func(port int, file, out string) []string {
		return []string{"--option", "blksize 1468", "-g", "-r", file, "-l", out, "127.0.0.1", strconv.Itoa(port)}
	}},
	{"curl", "curl", func(port int, file, out string) []string {
		return []string{"-sS", "--tftp-blksize", "1468", "-o", out, fmt.Sprintf("tftp://127.0.0.1:%d/%s", port, file)}
	}},
}

// interopServer serves files written to a temporary directory through
// os.DirFS, as in production.
func interopServer(t *testing.T, files map[string][]byte) (port int, reg *prometheus.Registry) {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	reg = prometheus.NewRegistry()
	addr := tftptest.Start(t, &tftp.Server{
		Root:    os.DirFS(dir),
		Files:   names,
		Metrics: tftp.NewMetrics(reg),
		Logger:  slog.New(slog.DiscardHandler),
	})
	return int(addr.Port()), reg
}

func (c client) fetch(t *testing.T, port int, file string) ([]byte, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, c.args(port, file, out)...)
	cmd.Dir = t.TempDir()
	output, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", c.name, err, output)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (output %q)", c.name, err, output)
	}
	return got, nil
}

func (c client) lookPath(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(c.bin); err != nil {
		t.Skipf("%s client %q not installed", c.name, c.bin)
	}
}

func TestInteropClients(t *testing.T) {
	files := map[string][]byte{
		"undionly.kpxe": randomBytes(70_001, 11),
		"snponly.efi":   randomBytes(1468*100, 12),
		"ipxe.efi":      randomBytes(1<<20+7, 13),
		"tiny":          []byte("x"),
	}
	port, reg := interopServer(t, files)
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			c.lookPath(t)
			for name, want := range files {
				got, err := c.fetch(t, port, name)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: got %d bytes, want %d identical bytes", name, len(got), len(want))
				}
			}
		})
	}
	if got := testutil.ToFloat64(gathered{reg, "ramboot_tftp_transfers_total", "error"}); got != 0 {
		t.Errorf("transfers error = %v, want 0", got)
	}
}

func TestInteropRefused(t *testing.T) {
	port, reg := interopServer(t, map[string][]byte{"ipxe.efi": []byte("ipxe")})
	refused := 0
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			c.lookPath(t)
			for _, name := range []string{"missing.efi", "../etc/passwd"} {
				got, err := c.fetch(t, port, name)
				// atftp exits 0 even when the server refuses; it then
				// leaves no file or an empty one.
				if err == nil && len(got) > 0 {
					t.Errorf("%s: got %d bytes for a refused name", name, len(got))
				}
				refused++
			}
		})
	}
	if got := testutil.ToFloat64(gathered{reg, "ramboot_tftp_transfers_total", "refused"}); got != float64(refused) {
		t.Errorf("transfers refused = %v, want %d", got, refused)
	}
}

// TestBlockCounterRollover fetches a file of more than 65536 blocks with
// 512-byte blocks, so the 16-bit block number wraps to 0.
func TestBlockCounterRollover(t *testing.T) {
	if testing.Short() {
		t.Skip("32 MiB transfer skipped in -short mode")
	}
	want := randomBytes(rolloverSize, 21)
	port, _ := interopServer(t, map[string][]byte{"big.bin": want})
	c := clients[0] // tftp-hpa: always 512-byte blocks
	c.lookPath(t)
	start := time.Now()
	got, err := c.fetch(t, port, "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d identical bytes", len(got), len(want))
	}
	t.Logf("%d bytes in %v", len(want), time.Since(start))
}
