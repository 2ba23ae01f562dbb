package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/template"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ramboot/ramboot/images"
)

// StormNet is the boot storm's network: two namespaces joined by a veth
// pair, one for the head and one for the load generator. The node
// addresses (Nodes) belong to the generator through a local route, so any
// of them can be bound there; the head reaches them through a route via
// the generator, as it reaches nodes behind a relay, and keeps one
// neighbour entry instead of one per node. Nothing is connected to the
// host's network.
type StormNet struct {
	// Head and Gen are the namespaces' names.
	Head, Gen string
	// HeadIface and GenIface are the veth ends.
	HeadIface, GenIface string
	// HeadIP is the head's address with the link's prefix.
	HeadIP netip.Prefix
	// GenIP is the generator's address: the relay's giaddr.
	GenIP netip.Addr
	// Nodes is the node address range.
	Nodes netip.Prefix

	up      []string // namespaces created
	bridged bool     // the generator's end is on a bridge (AddHost)
}

var stormCounter atomic.Int32

// NewStormNet creates the storm's namespaces: the head at 10.88.0.1/16,
// the generator at 10.88.0.2, nodes in 10.88.128.0/17. Close deletes them.
func NewStormNet(ctx context.Context) (*StormNet, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the storm network needs root (network namespaces)")
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), stormCounter.Add(1))
	n := &StormNet{
		Head: "rbsh-" + id, Gen: "rbsg-" + id, HeadIface: "sh0", GenIface: "sg0",
		HeadIP: netip.MustParsePrefix("10.88.0.1/16"),
		GenIP:  netip.MustParseAddr("10.88.0.2"),
		Nodes:  netip.MustParsePrefix("10.88.128.0/17"),
	}
	steps := [][]string{}
	for _, ns := range []string{n.Head, n.Gen} {
		if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
			n.Close()
			return nil, err
		}
		n.up = append(n.up, ns)
		steps = append(steps, []string{"-n", ns, "link", "set", "lo", "up"})
	}
	gen := netip.PrefixFrom(n.GenIP, n.HeadIP.Bits()).String()
	steps = append(steps,
		[]string{"link", "add", n.HeadIface, "netns", n.Head, "type", "veth", "peer", "name", n.GenIface, "netns", n.Gen},
		[]string{"-n", n.Head, "addr", "add", n.HeadIP.String(), "dev", n.HeadIface},
		[]string{"-n", n.Head, "link", "set", n.HeadIface, "up"},
		[]string{"-n", n.Gen, "addr", "add", gen, "dev", n.GenIface},
		[]string{"-n", n.Gen, "link", "set", n.GenIface, "up"},
		[]string{"-n", n.Head, "route", "add", n.Nodes.String(), "via", n.GenIP.String()},
		[]string{"-n", n.Gen, "route", "add", "local", n.Nodes.String(), "dev", "lo"},
	)
	for _, args := range steps {
		if _, err := run(ctx, "ip", args...); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// Close kills, by pid, every process left in the namespaces and deletes
// them.
func (n *StormNet) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, ns := range n.up {
		killAll(ctx, ns)
		if _, err := run(ctx, "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	n.up = nil
	return errors.Join(errs...)
}

// AddHost adds a namespace on the storm's link, for another head or an
// etcd member: the first call moves the generator's address onto a
// bridge in the generator's namespace (the first head's veth is plugged
// into it), and each host gets a veth on that bridge with addr (its
// prefix the link's) and, like the head, a route to the nodes via the
// generator. It returns the namespace and the host's interface; Close
// deletes it with the others.
func (n *StormNet) AddHost(ctx context.Context, name string, addr netip.Addr) (ns, iface string, err error) {
	const bridge = "sbr0"
	gen := netip.PrefixFrom(n.GenIP, n.HeadIP.Bits()).String()
	var steps [][]string
	if !n.bridged {
		steps = append(steps,
			[]string{"-n", n.Gen, "link", "add", bridge, "type", "bridge"},
			[]string{"-n", n.Gen, "addr", "del", gen, "dev", n.GenIface},
			[]string{"-n", n.Gen, "link", "set", n.GenIface, "master", bridge},
			[]string{"-n", n.Gen, "addr", "add", gen, "dev", bridge},
			[]string{"-n", n.Gen, "link", "set", bridge, "up"},
		)
	}
	ns = strings.Replace(n.Gen, "rbsg-", "rbs"+name+"-", 1)
	iface = "s" + name
	if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return "", "", err
	}
	n.up = append(n.up, ns)
	steps = append(steps,
		[]string{"-n", ns, "link", "set", "lo", "up"},
		[]string{"link", "add", iface, "netns", ns, "type", "veth", "peer", "name", "g" + name, "netns", n.Gen},
		[]string{"-n", n.Gen, "link", "set", "g" + name, "master", bridge, "up"},
		[]string{"-n", ns, "addr", "add", netip.PrefixFrom(addr, n.HeadIP.Bits()).String(), "dev", iface},
		[]string{"-n", ns, "link", "set", iface, "up"},
		[]string{"-n", ns, "route", "add", n.Nodes.String(), "via", n.GenIP.String()},
	)
	for _, args := range steps {
		if _, err := run(ctx, "ip", args...); err != nil {
			return "", "", err
		}
	}
	n.bridged = true
	return ns, iface, nil
}

// FirstNode is the first node address.
func (n *StormNet) FirstNode() netip.Addr { return n.Nodes.Addr().Next() }

// Do runs fn on an OS thread inside namespace ns: the sockets fn opens
// live there, and keep working from any goroutine afterwards.
func (n *StormNet) Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		res := fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and ends with this goroutine.
			errc <- fmt.Errorf("leave namespace %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- res
	}()
	return <-errc
}

// Command returns a command that runs name inside namespace ns and is
// killed if this process dies.
func (n *StormNet) Command(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Start runs name in namespace ns in the background with its output in
// logFile; Proc.Stop ends it.
func (n *StormNet) Start(ns, logFile, name string, args ...string) (*Proc, error) {
	return startIn(ns, logFile, name, args...)
}

// BuildBinaries compiles ramboot and ramboot-agent (static) into dir.
func BuildBinaries(ctx context.Context, dir string) (ramboot, agent string, err error) {
	gomod, err := run(ctx, "go", "env", "GOMOD")
	if err != nil {
		return "", "", err
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	ramboot, agent = filepath.Join(dir, "ramboot"), filepath.Join(dir, "ramboot-agent")
	for out, pkg := range map[string]string{ramboot: "./provisioner/cmd/ramboot", agent: "./nodeagent/cmd/ramboot-agent"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w: %s", pkg, err, b)
		}
	}
	return ramboot, agent, nil
}

// StormHeadOptions configure a storm's head.
type StormHeadOptions struct {
	// Ramboot is the ramboot binary (ramboot-agent next to it).
	Ramboot string
	// Dir holds the head's state, tree and logs.
	Dir string
	// ImageMiB is the size of the image's incompressible payload; the
	// image is a small tree with a kernel file of KernelMiB.
	ImageMiB, KernelMiB int
	// Config is YAML appended to the head's configuration.
	Config string
	// LogLevel is the head's log level; default info.
	LogLevel string
	// Netns, Iface and Addr place the head on a host of AddHost; the
	// default is the storm's own head namespace, veth and address.
	Netns, Iface string
	Addr         netip.Addr
	// NoImage starts the head without building an image: a head of
	// several that shares its peers' store gets it from them.
	NoImage bool
}

// StormHead is `ramboot serve` in the storm's head namespace, with a
// default image built.
type StormHead struct {
	*Proc
	// State is its state directory (the admin socket is in it).
	State string
	// Log is its log file.
	Log string
	// Image is the default image's manifest, ImageDigest the manifest's
	// digest.
	Image       images.Manifest
	ImageDigest images.Digest
	// Blobs is the image store's blob directory (sha256/HEX files), for
	// a server of the same files.
	Blobs string
}

// StartStormHead builds the default image (unless opt.NoImage) and starts
// `ramboot serve` in the head's namespace (or opt.Netns), waiting until it
// answers.
func StartStormHead(ctx context.Context, n *StormNet, opt StormHeadOptions) (*StormHead, error) {
	if opt.LogLevel == "" {
		opt.LogLevel = "info"
	}
	if opt.Netns == "" {
		opt.Netns, opt.Iface, opt.Addr = n.Head, n.HeadIface, n.HeadIP.Addr()
	}
	h := &StormHead{State: filepath.Join(opt.Dir, "state"), Log: filepath.Join(opt.Dir, "ramboot-serve.log")}
	if !opt.NoImage {
		if err := stormImage(ctx, opt, h); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(opt.Dir, "serve.yaml")
	yaml := "log_level: " + opt.LogLevel + "\ndhcp:\n  detect_rivals: false\nra:\n  enabled: false\nsftp:\n  enabled: false\n" + opt.Config
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	var err error
	h.Proc, err = n.Start(opt.Netns, h.Log, opt.Ramboot, "serve", "--interface", opt.Iface, "--state-dir", h.State, "--config", cfg)
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, n, net.JoinHostPort(opt.Addr.String(), "80"), h.Proc); err != nil {
		h.Stop()
		b, _ := os.ReadFile(h.Log)
		return nil, fmt.Errorf("ramboot serve did not come up: %w; log:\n%s", err, b)
	}
	return h, nil
}

// stormImage builds the head's default image: a small tree with an
// incompressible payload, and a kernel, of the options' sizes.
func stormImage(ctx context.Context, opt StormHeadOptions, h *StormHead) error {
	tree := filepath.Join(opt.Dir, "tree")
	for _, d := range []string{"bin", "usr", "etc", "data"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	// The kernel stays out of the tree, so the image is the payload (and
	// not the kernel twice).
	kernel := filepath.Join(opt.Dir, "vmlinuz-6.1.0-storm")
	for path, mib := range map[string]int{kernel: opt.KernelMiB, filepath.Join(tree, "data", "payload"): opt.ImageMiB} {
		if err := writeRandom(path, int64(mib)<<20); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("storm\n"), 0o644); err != nil {
		return err
	}
	if _, err := run(ctx, opt.Ramboot, "image", "build", tree, "--name", "default", "--state-dir", h.State, "-q", "--kernel", kernel); err != nil {
		return err
	}
	store := &images.Store{Dir: filepath.Join(h.State, "images")}
	m, d, err := store.Resolve("default")
	if err != nil {
		return fmt.Errorf("storm image: %w", err)
	}
	h.Image, h.ImageDigest, h.Blobs = m, d, filepath.Join(store.Dir, "blobs")
	return nil
}

// waitHTTP waits until something answers HTTP at addr (host:port) from
// inside the generator's namespace, or p exits, or 30 s pass.
func waitHTTP(ctx context.Context, n *StormNet, addr string, p *Proc) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var status string
		// The dial happens on Do's thread, inside the namespace (an
		// http.Transport would dial from another goroutine).
		_ = n.Do(n.Gen, func() error {
			c, err := net.DialTimeout("tcp4", addr, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.0\r\n\r\n"); err != nil {
				return err
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil {
				status = line
			}
			return nil
		})
		if strings.HasPrefix(status, "HTTP/") {
			return nil
		}
		if p.Exited() {
			return errors.New("it exited")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing answered HTTP at %s within 30 s", addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeRandom(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// nginxConf is nginx's configuration for serving the same blobs as the
// head: the workers run as root because the store's blobs are readable by
// root only, sendfile on, no access log.
var nginxConf = template.Must(template.New("nginx").Parse(`daemon off;
master_process on;
user root;
worker_processes {{.Workers}};
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;
    types { }
    default_type application/octet-stream;
    server {
        listen {{.Addr}};
        root {{.Root}};
    }
}
`))

// StartNginx runs nginx in the head's namespace on addr, serving root
// (the image store's blobs: URL /sha256/HEX), with workers processes
// ("auto" if empty).
func StartNginx(ctx context.Context, n *StormNet, dir, root, addr, workers string) (*Proc, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return nil, fmt.Errorf("find nginx (Debian package nginx-light; make deps installs it): %w", err)
	}
	if workers == "" {
		workers = "auto"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var conf bytes.Buffer
	if err := nginxConf.Execute(&conf, map[string]string{"Dir": dir, "Root": root, "Addr": addr, "Workers": workers}); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, conf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	p, err := n.Start(n.Head, filepath.Join(dir, "nginx.log"), bin, "-c", path, "-p", dir)
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, n, addr, p); err != nil {
		p.Stop()
		return nil, fmt.Errorf("nginx: %w", err)
	}
	return p, nil
}

// LoadAverage returns the machine's 1-minute load average.
func LoadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
