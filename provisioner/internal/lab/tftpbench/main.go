// Command tftpbench measures `ramboot serve`'s TFTP server against
// tftpd-hpa, side by side in the same run on the same files: the server in
// one network namespace, the clients in another, joined by a veth pair
// (MTU 1500); nothing touches the host's network.
//
//   - single fetches: atftp at blksize 1468 fetches a 64 MiB file and the
//     real snponly.efi (Debian's ipxe package), -repeat times, alternating
//     the servers; every copy is checked byte for byte. It prints the
//     throughput of each and ramboot's ratio to tftpd-hpa as a range.
//
//   - concurrent fetches: -concurrent curl clients (--tftp-blksize 1468),
//     each from its own address as a rack of nodes would, fetch
//     snponly.efi at once; every copy is checked, failures are counted.
//
//     go run ./provisioner/internal/lab/tftpbench -repeat 5 -concurrent 200
//
// It needs root, atftp, curl and tftpd-hpa's in.tftpd, and builds ramboot.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	serverIP = "10.241.0.1"
	bigName  = "big.bin"
	nbpName  = "snponly.efi"
	nbpPath  = "/usr/lib/ipxe/snponly.efi"
)

func main() {
	repeat := flag.Int("repeat", 5, "single fetches of each file per server")
	concurrent := flag.Int("concurrent", 200, "clients fetching snponly.efi at once")
	bigMiB := flag.Int("mib", 64, "size of the large file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *repeat, *concurrent, *bigMiB)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tftpbench:", err)
		os.Exit(1)
	}
}

// bench is the namespaces and the files.
type bench struct {
	work, root   string
	srvNS, cliNS string
	ramboot      string
	sums         map[string][32]byte
	nsUp         []string
}

func run(ctx context.Context, repeat, concurrent, bigMiB int) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	for _, bin := range []string{"atftp", "curl", "in.tftpd", "go", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s: %w (apt-get install atftp curl tftpd-hpa)", bin, err)
		}
	}
	b := &bench{srvNS: fmt.Sprintf("tbs%d", os.Getpid()), cliNS: fmt.Sprintf("tbc%d", os.Getpid()), sums: map[string][32]byte{}}
	if b.work, err = os.MkdirTemp("", "tftpbench-"); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.close()) }()
	if err := b.setup(ctx, bigMiB, concurrent); err != nil {
		return err
	}

	type single struct {
		server, file string
		secs         float64
	}
	var singles []single
	servers := []string{"ramboot", "tftpd-hpa"}
	for rep := range repeat {
		order := slices.Clone(servers)
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, name := range order {
			stop, err := b.start(ctx, name)
			if err != nil {
				return err
			}
			for _, file := range []string{bigName, nbpName} {
				secs, err := b.atftp(ctx, file)
				if err != nil {
					stop()
					return fmt.Errorf("%s, %s: %w", name, file, err)
				}
				singles = append(singles, single{name, file, secs})
				fmt.Fprintf(os.Stderr, "%-9s %-11s %7.3f s %8.1f MiB/s\n", name, file, secs, b.mib(file)/secs)
			}
			stop()
		}
	}
	fmt.Println("single fetches, atftp --option \"blksize 1468\" (MiB/s: median and range; ratio of the medians, and range of the ratios of the repetitions):")
	for _, file := range []string{bigName, nbpName} {
		var rb, hpa []float64
		for _, s := range singles {
			if s.file != file {
				continue
			}
			if s.server == "ramboot" {
				rb = append(rb, b.mib(file)/s.secs)
			} else {
				hpa = append(hpa, b.mib(file)/s.secs)
			}
		}
		var ratios []float64
		for i := range min(len(rb), len(hpa)) {
			ratios = append(ratios, rb[i]/hpa[i])
		}
		fmt.Printf("  %-11s ramboot %.1f (%s)  tftpd-hpa %.1f (%s)  ratio %.2f (%s)\n", file,
			median(rb), span(rb), median(hpa), span(hpa), median(rb)/median(hpa), span(ratios))
	}

	fmt.Printf("%d concurrent fetches of %s, curl --tftp-blksize 1468, one address each:\n", concurrent, nbpName)
	for _, name := range servers {
		stop, err := b.start(ctx, name)
		if err != nil {
			return err
		}
		ok, failed, secs, why := b.concurrent(ctx, concurrent)
		stop()
		fmt.Printf("  %-9s %d ok, %d failed, all done in %.2f s%s\n", name, ok, failed, secs, why)
	}
	return nil
}

// setup creates the namespaces (the client one with an address per
// concurrent client), the files and ramboot's configuration.
func (b *bench) setup(ctx context.Context, bigMiB, concurrent int) error {
	for _, ns := range []string{b.srvNS, b.cliNS} {
		if err := ip(ctx, "netns", "add", ns); err != nil {
			return err
		}
		b.nsUp = append(b.nsUp, ns)
	}
	cmds := [][]string{
		{"-n", b.srvNS, "link", "set", "lo", "up"},
		{"-n", b.cliNS, "link", "set", "lo", "up"},
		{"-n", b.srvNS, "link", "add", "s0", "type", "veth", "peer", "name", "c0", "netns", b.cliNS},
		{"-n", b.srvNS, "addr", "add", serverIP + "/16", "dev", "s0"},
		{"-n", b.srvNS, "link", "set", "s0", "up"},
		{"-n", b.cliNS, "link", "set", "c0", "up"},
	}
	for i := range max(concurrent, 1) {
		cmds = append(cmds, []string{"-n", b.cliNS, "addr", "add", clientAddr(i) + "/16", "dev", "c0"})
	}
	for _, c := range cmds {
		if err := ip(ctx, c...); err != nil {
			return err
		}
	}
	b.root = filepath.Join(b.work, "root")
	if err := os.MkdirAll(b.root, 0o755); err != nil {
		return err
	}
	os.Chmod(b.work, 0o755) // tftpd-hpa drops to user tftp
	big := make([]byte, bigMiB<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(big); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			big[i+j] = byte(v >> (8 * j))
		}
	}
	nbp, err := os.ReadFile(nbpPath)
	if err != nil {
		return fmt.Errorf("the real snponly.efi (apt-get install ipxe): %w", err)
	}
	for name, data := range map[string][]byte{bigName: big, nbpName: nbp} {
		if err := os.WriteFile(filepath.Join(b.root, name), data, 0o644); err != nil {
			return err
		}
		b.sums[name] = sha256.Sum256(data)
	}
	// ramboot serve: TFTP only, on the catalogue of the two files.
	conf := fmt.Sprintf(`interface: s0
state_dir: %s
dhcp:
  enabled: false
ra:
  enabled: false
sftp:
  enabled: false
http:
  port: 8080
tftp:
  root: %s
  files: [%s, %s]
`, filepath.Join(b.work, "state"), b.root, bigName, nbpName)
	if err := os.WriteFile(filepath.Join(b.work, "ramboot.yaml"), []byte(conf), 0o644); err != nil {
		return err
	}
	b.ramboot = filepath.Join(b.work, "ramboot")
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return err
	}
	// ramboot serve wants its agent next to it.
	for out, pkg := range map[string]string{b.ramboot: "./provisioner/cmd/ramboot", filepath.Join(b.work, "ramboot-agent"): "./nodeagent/cmd/ramboot-agent"} {
		build := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w: %s", pkg, err, msg)
		}
	}
	return nil
}

// clientAddr is the i-th client address, 10.241.1.1 on.
func clientAddr(i int) string { return fmt.Sprintf("10.241.%d.%d", 1+i/250, 1+i%250) }

func (b *bench) mib(file string) float64 {
	fi, err := os.Stat(filepath.Join(b.root, file))
	if err != nil {
		return 0
	}
	return float64(fi.Size()) / (1 << 20)
}

// start runs server name in the server namespace until stop is called.
func (b *bench) start(ctx context.Context, name string) (stop func(), err error) {
	var args []string
	switch name {
	case "ramboot":
		args = []string{b.ramboot, "serve", "--config", filepath.Join(b.work, "ramboot.yaml")}
	case "tftpd-hpa":
		// -L foreground, -s secure (chroot to root), -B largest block.
		args = []string{"in.tftpd", "-L", "-s", "-a", serverIP + ":69", "-B", "1468", b.root}
	}
	logFile, err := os.Create(filepath.Join(b.work, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", b.srvNS}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done); logFile.Close() }()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	// Ready when a fetch of snponly.efi works.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := b.atftp(ctx, nbpName); err == nil {
			return stop, nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logFile.Name())
			return nil, fmt.Errorf("%s exited: %s", name, log)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(logFile.Name())
			return nil, fmt.Errorf("%s did not serve within 30 s: %s", name, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// atftp fetches file once with atftp at blksize 1468 and returns the wall
// time of the fetch; the copy must match.
func (b *bench) atftp(ctx context.Context, file string) (float64, error) {
	out := filepath.Join(b.work, "out-"+file)
	os.Remove(out)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	msg, err := exec.CommandContext(ctx, "ip", "netns", "exec", b.cliNS, "atftp", "--option", "blksize 1468",
		"-g", "-r", file, "-l", out, serverIP, "69").CombinedOutput()
	secs := time.Since(start).Seconds()
	if err != nil {
		return 0, fmt.Errorf("atftp: %w: %s", err, msg)
	}
	return secs, b.check(out, file)
}

// check compares a fetched copy with the file.
func (b *bench) check(path, file string) error {
	got, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if sha256.Sum256(got) != b.sums[file] {
		return fmt.Errorf("%s: %d bytes, not the file", file, len(got))
	}
	return nil
}

// concurrent starts n curl fetches of snponly.efi at once, each from its
// own address, and counts those that brought the whole file.
func (b *bench) concurrent(ctx context.Context, n int) (ok, failed int, secs float64, why string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var reasons []string
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			out := filepath.Join(b.work, fmt.Sprintf("c%d", i))
			cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			msg, err := exec.CommandContext(cctx, "ip", "netns", "exec", b.cliNS, "curl", "-sS", "--interface", clientAddr(i),
				"--tftp-blksize", "1468", "-o", out, "tftp://"+serverIP+"/"+nbpName).CombinedOutput()
			if err == nil {
				err = b.check(out, nbpName)
			}
			os.Remove(out)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if len(reasons) < 3 {
					reasons = append(reasons, strings.TrimSpace(fmt.Sprintf("%v %s", err, bytes.TrimSpace(msg))))
				}
				return
			}
			ok++
		})
	}
	wg.Wait()
	if len(reasons) > 0 {
		why = " (" + strings.Join(reasons, "; ") + ")"
	}
	return ok, failed, time.Since(start).Seconds(), why
}

// close deletes the namespaces (killing what is left in them) and the
// work directory.
func (b *bench) close() error {
	var errs []error
	for _, ns := range b.nsUp {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		for _, p := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(p, &pid); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if err := exec.Command("ip", "netns", "del", ns).Run(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.work != "" {
		os.RemoveAll(b.work)
	}
	return errors.Join(errs...)
}

// median returns the median of xs, 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// span formats the range of xs.
func span(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f-%.2f", slices.Min(xs), slices.Max(xs))
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}
