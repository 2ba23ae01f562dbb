// Package nodeagent is the node side of ramboot: the boot sequence that
// ramboot-agent runs as /init (PID 1) in a node's RAM root. An [Agent]
// mounts the kernel file systems, reads the node configuration the head put
// in the node's overlay, sets the host name, loads kernel modules, configures
// the provisioning interface and reports to the head, printing one line per
// step on the console. Each step that needs PID 1 or root is behind a small
// interface, so tests replace exactly those.
//
//	a := &nodeagent.Agent{Console: os.Stdout, Logger: logger}
//	rep, err := a.Boot(ctx)
//	// console: ramboot-agent: modules loaded: virtio_ring ... virtio_net
//	//          ramboot-agent: eth0 10.77.0.10/24 up
//	//          ramboot-agent: n001 ready
//
// The steps live in sub-packages: initproc (mounts, console, reaping,
// shutdown), kmod (modules), netconf (interface) and report (the head's
// API).
package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/initproc"
	"github.com/ramboot/ramboot/nodeagent/internal/etcfiles"
	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
	"github.com/ramboot/ramboot/nodeagent/kmod"
	"github.com/ramboot/ramboot/nodeagent/netconf"
	"github.com/ramboot/ramboot/nodeagent/report"
)

// DefaultReportTimeout is how long Boot retries the report by default.
const DefaultReportTimeout = 2 * time.Minute

// Step names, as printed and reported in overlay.Report.Steps.
const (
	StepMounts   = "mounts"
	StepConfig   = "config"
	StepHostname = "hostname"
	StepModules  = "modules"
	StepNetwork  = "network"
	StepReport   = "report"
)

// Mounter mounts the kernel file systems under root and makes the console
// the standard streams.
type Mounter interface {
	Mount(ctx context.Context, root string) error
}

// MounterFunc adapts a function to Mounter.
type MounterFunc func(ctx context.Context, root string) error

// Mount calls f.
func (f MounterFunc) Mount(ctx context.Context, root string) error { return f(ctx, root) }

// HostnameSetter sets the kernel's host name.
type HostnameSetter interface {
	SetHostname(name string) error
}

// HostnameSetterFunc adapts a function to HostnameSetter.
type HostnameSetterFunc func(name string) error

// SetHostname calls f.
func (f HostnameSetterFunc) SetHostname(name string) error { return f(name) }

// ModuleLoader loads kernel modules, each after its dependencies, and
// returns the modules it went through in load order.
type ModuleLoader interface {
	LoadModules(ctx context.Context, names []string) ([]kmod.Module, error)
}

// ModuleLoaderFunc adapts a function to ModuleLoader.
type ModuleLoaderFunc func(ctx context.Context, names []string) ([]kmod.Module, error)

// LoadModules calls f.
func (f ModuleLoaderFunc) LoadModules(ctx context.Context, names []string) ([]kmod.Module, error) {
	return f(ctx, names)
}

// NetworkConfigurer configures the provisioning interface and returns its
// name.
type NetworkConfigurer interface {
	ConfigureNetwork(ctx context.Context, c netconf.Config) (iface string, err error)
}

// NetworkConfigurerFunc adapts a function to NetworkConfigurer.
type NetworkConfigurerFunc func(ctx context.Context, c netconf.Config) (string, error)

// ConfigureNetwork calls f.
func (f NetworkConfigurerFunc) ConfigureNetwork(ctx context.Context, c netconf.Config) (string, error) {
	return f(ctx, c)
}

// Reporter delivers a report to the head named by cfg.
type Reporter interface {
	Report(ctx context.Context, cfg overlay.Config, r overlay.Report) error
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(ctx context.Context, cfg overlay.Config, r overlay.Report) error

// Report calls f.
func (f ReporterFunc) Report(ctx context.Context, cfg overlay.Config, r overlay.Report) error {
	return f(ctx, cfg, r)
}

// Agent runs the node's boot sequence. The zero value does the real thing
// on the running system (it must be PID 1 or at least root); tests and dry
// runs set Root and replace the steps they cannot do.
type Agent struct {
	// Root is the directory the node's root file system is at. The node
	// configuration, image id, module tree, name files and /proc are all
	// read or written under it. Empty means "/".
	Root string
	// Release is the kernel release whose modules are loaded (from
	// Root/lib/modules/<Release>). Empty means the running kernel's
	// (uname -r).
	Release string
	// Console receives the progress lines ("ramboot-agent: ..."). Nil
	// discards.
	Console io.Writer
	// Logger receives details at Debug and problems at Warn. Nil discards.
	Logger *slog.Logger
	// DryRun makes Boot print what it would do instead of doing it: it
	// reads the configuration and resolves the module load order, but
	// mounts, writes, loads, configures and reports nothing, and does not
	// call the steps below.
	DryRun bool
	// ReportTimeout bounds how long the report to the head is retried.
	// Zero means DefaultReportTimeout.
	ReportTimeout time.Duration
	// NetworkWait bounds the wait for the interface to appear. Zero means
	// netconf.DefaultWait.
	NetworkWait time.Duration

	// Mounter does the mounts step. Nil means initproc.MountAll of
	// initproc.KernelFS then initproc.OpenConsole of Root/dev/console.
	Mounter Mounter
	// Hostname sets the host name. Nil means sethostname(2).
	Hostname HostnameSetter
	// Modules loads modules. Nil means a kmod.Loader on
	// Root/lib/modules/<Release> with Root/sys/module.
	Modules ModuleLoader
	// Network configures the interface. Nil means netconf.Configure.
	Network NetworkConfigurer
	// Reporter sends the report. Nil means a report.Client with the
	// configuration's URL and token.
	Reporter Reporter
}

// boot is the state of one Boot call.
type boot struct {
	*Agent
	root    string
	console io.Writer
	log     *slog.Logger
	fsys    fs.FS
	cfg     overlay.Config
	steps   []overlay.Step
	errs    []error
}

// Boot runs the boot sequence: mounts, config, hostname, modules, network,
// report. A failed step does not stop the later ones (the network may
// still come up, so that the failure can be reported), except a failed
// config step: without the configuration nothing else can be done. Each
// failure is printed as "ramboot-agent: <step> failed: <err>".
// When the network is up Boot reports to the head: overlay.StateReady if
// every step succeeded, otherwise overlay.StateFailed with the errors. It
// prints "ramboot-agent: <node> ready" once the head accepted a ready
// report. Boot returns the report it sent (or would have sent) and all
// errors, joined.
func (a *Agent) Boot(ctx context.Context) (overlay.Report, error) {
	b := &boot{Agent: a, root: a.Root, console: a.Console, log: a.Logger}
	if b.root == "" {
		b.root = "/"
	}
	if b.console == nil {
		b.console = io.Discard
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.fsys = os.DirFS(b.root)

	b.step(StepMounts, func() error { return b.mount(ctx) })
	if !b.step(StepConfig, b.readConfig) {
		return overlay.Report{}, errors.Join(b.errs...)
	}
	b.step(StepHostname, b.setHostname)
	b.step(StepModules, func() error { return b.loadModules(ctx) })
	if !b.step(StepNetwork, func() error { return b.configureNetwork(ctx) }) {
		return overlay.Report{}, errors.Join(b.errs...)
	}
	rep := b.report()
	if !b.step(StepReport, func() error { return b.send(ctx, rep) }) {
		return rep, errors.Join(b.errs...)
	}
	switch {
	case a.DryRun:
	case rep.State == overlay.StateReady:
		b.say("%s ready", b.cfg.Node)
	default:
		b.say("%s reported failed", b.cfg.Node)
	}
	return rep, errors.Join(b.errs...)
}

// step runs fn as the named step: it records the step's uptime on
// success, prints and records the error on failure, and turns a panic into
// an error (a panic in PID 1 would panic the kernel).
func (b *boot) step(name string, fn func() error) (ok bool) {
	start := time.Now()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return fn()
	}()
	if err != nil {
		b.say("%s failed: %s", name, oneLine(err))
		b.errs = append(b.errs, fmt.Errorf("%s: %w", name, err))
		return false
	}
	b.log.Debug("boot step done", "step", name, "dur", time.Since(start))
	if name != StepReport {
		b.steps = append(b.steps, overlay.Step{Name: name, UptimeSeconds: b.uptime()})
	}
	return true
}

func (b *boot) say(format string, args ...any) {
	fmt.Fprintf(b.console, "ramboot-agent: "+format+"\n", args...)
}

// uptime returns the seconds since boot from /proc/uptime, or from
// CLOCK_BOOTTIME (the same clock) when that cannot be read.
func (b *boot) uptime() float64 {
	if s, err := procfs.ReadUptime(b.fsys); err == nil {
		return s
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Nano()) / 1e9
}

func (b *boot) mount(ctx context.Context) error {
	if b.DryRun {
		for _, m := range initproc.KernelFS() {
			b.say("would mount %s on %s", m.FSType, filepath.Join(b.root, m.Target))
		}
		return nil
	}
	m := b.Mounter
	if m == nil {
		m = MounterFunc(func(ctx context.Context, root string) error {
			err := initproc.MountAll(root, initproc.KernelFS())
			// The console comes after the mounts (/dev) but before
			// reporting their error, so that it is seen.
			if cerr := initproc.OpenConsole(filepath.Join(root, "dev", "console")); cerr != nil {
				err = errors.Join(err, cerr)
			}
			return err
		})
	}
	if err := m.Mount(ctx, b.root); err != nil {
		return err
	}
	b.say("file systems mounted")
	return nil
}

func (b *boot) readConfig() error {
	cfg, err := overlay.ReadConfig(b.fsys)
	if err != nil {
		return err
	}
	b.cfg = cfg
	b.log.Debug("node config read", "node", cfg.Node, "image", cfg.Image.Name, "path", overlay.ConfigPath)
	b.say("node %s, image %s", cfg.Node, orNone(cfg.Image.Name))
	return nil
}

func (b *boot) setHostname() error {
	name := b.cfg.HostnameOrNode()
	files := etcfiles.Files{Hostname: name, DNS: b.cfg.Interface.DNS}
	if p, err := netip.ParsePrefix(b.cfg.Interface.Address); err == nil {
		files.Address = p.Addr()
	}
	if b.DryRun {
		b.say("would set host name %s and write %s", name, strings.Join(files.Names(b.root), " "))
		return nil
	}
	h := b.Hostname
	if h == nil {
		h = HostnameSetterFunc(func(name string) error { return unix.Sethostname([]byte(name)) })
	}
	if err := h.SetHostname(name); err != nil {
		return fmt.Errorf("set host name %s: %w", name, err)
	}
	if err := etcfiles.Write(b.root, files); err != nil {
		return err
	}
	b.say("host name %s", name)
	return nil
}

func (b *boot) release() (string, error) {
	if b.Release != "" {
		return b.Release, nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

func (b *boot) loadModules(ctx context.Context) error {
	rel, err := b.release()
	if err != nil {
		return err
	}
	loader := &kmod.Loader{
		Dir:       filepath.Join(b.root, "lib", "modules", rel),
		SysModule: filepath.Join(b.root, "sys", "module"),
		Logger:    b.log,
	}
	var mods []kmod.Module
	switch {
	case b.DryRun:
		mods, err = loader.Plan(b.cfg.Modules)
	case b.Modules != nil:
		mods, err = b.Modules.LoadModules(ctx, b.cfg.Modules)
	default:
		mods, err = loader.Load(ctx, b.cfg.Modules)
	}
	if err != nil && len(mods) == 0 {
		return err
	}
	var names []string
	for _, m := range mods {
		if m.Builtin {
			names = append(names, m.Name+"(built-in)")
		} else {
			names = append(names, m.Name)
		}
	}
	if len(names) == 0 {
		names = []string{"none"}
	}
	if b.DryRun {
		b.say("would load modules: %s", strings.Join(names, " "))
	} else {
		b.say("modules loaded: %s", strings.Join(names, " "))
	}
	return err
}

// netConfig converts the overlay's interface to netconf's.
func (b *boot) netConfig() (netconf.Config, error) {
	ifc := b.cfg.Interface
	mac, err := net.ParseMAC(ifc.MAC)
	if err != nil {
		return netconf.Config{}, fmt.Errorf("parse interface MAC: %w", err)
	}
	c := netconf.Config{MAC: mac, Wait: b.NetworkWait}
	if c.Address, err = netip.ParsePrefix(ifc.Address); err != nil {
		return netconf.Config{}, fmt.Errorf("parse interface address: %w", err)
	}
	if ifc.Gateway != "" {
		if c.Gateway, err = netip.ParseAddr(ifc.Gateway); err != nil {
			return netconf.Config{}, fmt.Errorf("parse gateway: %w", err)
		}
	}
	return c, nil
}

func (b *boot) configureNetwork(ctx context.Context) error {
	c, err := b.netConfig()
	if err != nil {
		return err
	}
	if b.DryRun {
		b.say("would configure the interface with MAC %s: %s", c.MAC, c.Address)
		if c.Gateway.IsValid() {
			b.say("would add the default route via %s", c.Gateway)
		}
		return nil
	}
	n := b.Network
	if n == nil {
		n = NetworkConfigurerFunc(netconf.Configure)
	}
	iface, err := n.ConfigureNetwork(ctx, c)
	if err != nil {
		return err
	}
	b.log.Debug("interface configured", "iface", iface, "mac", c.MAC.String(), "ip", c.Address.String())
	b.say("%s %s up", iface, c.Address)
	if c.Gateway.IsValid() {
		b.say("default route via %s", c.Gateway)
	}
	return nil
}

// report builds the report from the steps so far.
func (b *boot) report() overlay.Report {
	rep := overlay.Report{State: overlay.StateReady, Steps: b.steps}
	if len(b.errs) > 0 {
		rep.State = overlay.StateFailed
		rep.Error = oneLine(errors.Join(b.errs...))
	}
	if id, err := fs.ReadFile(b.fsys, overlay.ImageIDPath); err == nil {
		rep.ContentDigest = strings.TrimSpace(string(id))
	} else if !errors.Is(err, fs.ErrNotExist) {
		b.log.Warn("read image id", "path", overlay.ImageIDPath, "err", err)
	}
	rep.Kernel, _ = b.release()
	if mem, err := procfs.ReadMemTotal(b.fsys); err == nil {
		rep.MemTotalBytes = mem
	} else {
		b.log.Warn("read memory size", "err", err)
	}
	rep.UptimeSeconds = b.uptime()
	return rep
}

func (b *boot) send(ctx context.Context, rep overlay.Report) error {
	if b.DryRun {
		js, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		b.say("would report to %s: %s", b.cfg.ReportURL(), js)
		return nil
	}
	timeout := b.ReportTimeout
	if timeout <= 0 {
		timeout = DefaultReportTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := b.Reporter
	if r == nil {
		r = ReporterFunc(func(ctx context.Context, cfg overlay.Config, rep overlay.Report) error {
			c := &report.Client{URL: cfg.ReportURL(), Token: cfg.Token, Logger: b.log}
			return c.Send(ctx, rep)
		})
	}
	return r.Report(ctx, b.cfg, rep)
}

// oneLine returns err's message with joined errors separated by "; ".
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
