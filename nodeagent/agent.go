// Package nodeagent is the node side of ramboot: the boot sequence that
// ramboot-agent runs as /init (PID 1) in a node's RAM root before it hands
// PID 1 to the image's init (handover.go). An [Agent] mounts the kernel
// file systems, reads the node configuration the head put in the node's
// overlay, moves the root into a size-capped tmpfs, sets the host name,
// loads the kernel modules the devices need, configures the provisioning
// interface (and tells the image's network stack about it), and sets the
// clock from the head, printing one line per step on the console. It
// leaves a record of all that in /run for the agent daemon, which reports
// to the head. Each step that needs PID 1 or root is behind a small
// interface, so tests replace exactly those.
//
//	a := &nodeagent.Agent{Console: os.Stdout, Logger: logger}
//	rec, err := a.Boot(ctx)
//	// console: ramboot-agent: root: tmpfs, 612 MiB of 7.8 GiB (moved off the initramfs in 2.1s)
//	//          ramboot-agent: modules loaded: e1000 (device) ...
//	//          ramboot-agent: eth0 10.77.0.10/24 up
//	init, why := nodeagent.FindInit("/")
//
// The steps live in sub-packages: initproc (mounts, console, reaping,
// shutdown), rootfs (the root), kmod (modules), netconf and netstack (the
// interface), headapi (the head's clock and API).
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/initproc"
	"github.com/ramboot/ramboot/nodeagent/internal/bootrec"
	"github.com/ramboot/ramboot/nodeagent/internal/etcfiles"
	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
	"github.com/ramboot/ramboot/nodeagent/kmod"
	"github.com/ramboot/ramboot/nodeagent/netconf"
	"github.com/ramboot/ramboot/nodeagent/netstack"
	"github.com/ramboot/ramboot/nodeagent/rootfs"
)

// DefaultClockTimeout is how long Boot tries to read the head's clock.
const DefaultClockTimeout = 10 * time.Second

// ClockParam is the kernel command-line parameter that keeps the node's
// clock as it is ("ramboot.clock=keep"), for sites whose nodes keep time
// by other means; the offset to the head's is still recorded.
const ClockParam = "ramboot.clock"

// Step names, as printed and recorded in overlay.Report.Steps.
const (
	StepMounts   = "mounts"
	StepConfig   = "config"
	StepRoot     = "root"
	StepHostname = "hostname"
	StepModules  = "modules"
	StepNetwork  = "network"
	StepClock    = "clock"
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

// RootSetter moves the root into its mode and makes it the root.
type RootSetter interface {
	SetupRoot(ctx context.Context, c rootfs.Config) (rootfs.Result, error)
}

// RootSetterFunc adapts a function to RootSetter.
type RootSetterFunc func(ctx context.Context, c rootfs.Config) (rootfs.Result, error)

// SetupRoot calls f.
func (f RootSetterFunc) SetupRoot(ctx context.Context, c rootfs.Config) (rootfs.Result, error) {
	return f(ctx, c)
}

// HostnameSetter sets the kernel's host name.
type HostnameSetter interface {
	SetHostname(name string) error
}

// HostnameSetterFunc adapts a function to HostnameSetter.
type HostnameSetterFunc func(name string) error

// SetHostname calls f.
func (f HostnameSetterFunc) SetHostname(name string) error { return f(name) }

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
	// mounts, moves, writes, loads, configures and asks nothing, and does
	// not call the steps below.
	DryRun bool
	// NetworkWait bounds the wait for the interface to appear. Zero means
	// netconf.DefaultWait.
	NetworkWait time.Duration
	// ClockTimeout bounds the attempts to read the head's clock. Zero
	// means DefaultClockTimeout.
	ClockTimeout time.Duration

	// Mounter does the mounts step. Nil means initproc.MountAll of
	// initproc.KernelFS then initproc.OpenConsole of Root/dev/console.
	Mounter Mounter
	// Root sets up the root. Nil means rootfs.Setup (on "/").
	RootSetter RootSetter
	// Hostname sets the host name. Nil means sethostname(2).
	Hostname HostnameSetter
	// InsertModule inserts one module file into the kernel. Nil means
	// kmod.Insert.
	InsertModule func(path string) error
	// Network configures the interface. Nil means netconf.Configure.
	Network NetworkConfigurer
	// SetClock sets the wall clock. Nil means clock_settime(2).
	SetClock func(t time.Time) error
	// HTTPClient reaches the head. Nil means headapi's default client.
	HTTPClient *http.Client
}

// boot is the state of one Boot call.
type boot struct {
	*Agent
	root    string
	console io.Writer
	log     *slog.Logger
	fsys    fs.FS
	cfg     overlay.Config
	rec     bootrec.Record
	errs    []error
}

// Boot runs the boot sequence: mounts, config, root, hostname, modules,
// network, clock. A failed step does not stop the later ones (the network
// may still come up, so that the failure can be reported), except a
// failed config step: without the configuration nothing else can be done.
// Each failure is printed as "ramboot-agent: <step> failed: <err>".
// Boot writes the record of the boot (bootrec) under Root/run/ramboot for
// the daemon, which reports it to the head, and returns it with all
// errors, joined.
func (a *Agent) Boot(ctx context.Context) (bootrec.Record, error) {
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
	b.rec.Boot.InitSeconds = b.uptime()

	b.step(StepMounts, func() error { return b.mount(ctx) })
	if !b.step(StepConfig, b.readConfig) {
		b.finish()
		return b.rec, errors.Join(b.errs...)
	}
	b.step(StepRoot, func() error { return b.setupRoot(ctx) })
	b.step(StepHostname, b.setHostname)
	b.step(StepModules, func() error { return b.loadModules(ctx) })
	if b.step(StepNetwork, func() error { return b.configureNetwork(ctx) }) {
		b.step(StepClock, func() error { return b.setClock(ctx) })
	}
	b.finish()
	return b.rec, errors.Join(b.errs...)
}

// finish settles the record's state and writes it for the daemon.
func (b *boot) finish() {
	b.rec.State = overlay.StateReady
	if len(b.errs) > 0 {
		b.rec.State = overlay.StateFailed
		b.rec.Error = OneLine(errors.Join(b.errs...))
	}
	if b.DryRun {
		return
	}
	if err := bootrec.Write(b.root, b.rec); err != nil {
		b.say("boot record failed: %s", OneLine(err))
	}
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
		b.say("%s failed: %s", name, OneLine(err))
		b.errs = append(b.errs, fmt.Errorf("%s: %w", name, err))
		return false
	}
	b.log.Debug("boot step done", "step", name, "dur", time.Since(start))
	b.rec.Steps = append(b.rec.Steps, overlay.Step{Name: name, UptimeSeconds: b.uptime()})
	return true
}

func (b *boot) say(format string, args ...any) {
	fmt.Fprintf(b.console, "ramboot-agent: "+format+"\n", args...)
}

func (b *boot) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.say("%s", msg)
	b.rec.Warnings = append(b.rec.Warnings, msg)
}

// uptime returns the seconds since boot from /proc/uptime, or from
// CLOCK_BOOTTIME (the same clock) when that cannot be read.
func (b *boot) uptime() float64 {
	if s, err := procfs.ReadUptime(b.fsys); err == nil {
		return s
	}
	return Uptime()
}

// Uptime returns CLOCK_BOOTTIME in seconds: the time since the kernel's
// timekeeping started, suspend included, as /proc/uptime counts it.
func Uptime() float64 {
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

// setupRoot moves the root into its mode with its cap. When that fails
// the node stays on the kernel's initramfs, which still works, uncapped.
func (b *boot) setupRoot(ctx context.Context) error {
	mode := b.cfg.Root.ModeOrDefault()
	mem, err := procfs.ReadMemTotal(b.fsys)
	if err != nil {
		return err
	}
	size, err := overlay.SizeBytes(b.cfg.Root.SizeOrDefault(), mem)
	if err != nil {
		return fmt.Errorf("root.size: %w", err)
	}
	b.rec.Root = overlay.RootUsage{Mode: "rootfs", SizeBytes: size}
	if b.DryRun {
		if mode == overlay.RootCompressed {
			b.say("would mount the compressed root under an overlay with a tmpfs upper of %s (root.size %s)", mib(size), b.cfg.Root.SizeOrDefault())
			return nil
		}
		b.say("would move the root into a %s of %s (root.size %s)", mode, mib(size), b.cfg.Root.SizeOrDefault())
		return nil
	}
	rs := b.RootSetter
	if rs == nil {
		rs = RootSetterFunc(rootfs.Setup)
	}
	start := time.Now()
	rel, _ := b.release()
	res, err := rs.SetupRoot(ctx, rootfs.Config{Mode: mode, SizeBytes: size, Release: rel})
	if err != nil {
		return fmt.Errorf("%w; the node runs on the kernel's initramfs, uncapped", err)
	}
	if !res.Switched {
		b.rec.Root.Mode = res.Was
		b.say("root: %s, left as it is", res.Was)
		return nil
	}
	b.rec.Root.Mode = string(res.Mode)
	if res.Mode == overlay.RootCompressed {
		b.rec.Root.LowerBytes = res.ImageBytes
		b.say("root: compressed, a %s squashfs image under an overlay with a tmpfs upper capped at %s (%d files moved in, %s)",
			mib(res.ImageBytes), mib(size), res.Files, time.Since(start).Round(10*time.Millisecond))
		return nil
	}
	how := "capped in place"
	if !res.InPlace {
		how = "moved off the initramfs"
	}
	b.say("root: %s, image %s under a cap of %s (%s in %s)", res.Mode, mib(res.ImageBytes), mib(size), how, time.Since(start).Round(10*time.Millisecond))
	return nil
}

func (b *boot) setHostname() error {
	name := b.cfg.HostnameOrNode()
	files := etcfiles.Files{Hostname: name, DNS: b.cfg.Interface.DNS, Keep: b.cfg.Provides}
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

// Release returns the running kernel's release (uname -r).
func Release() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

func (b *boot) release() (string, error) {
	if b.Release != "" {
		return b.Release, nil
	}
	return Release()
}

// loadModules loads the listed modules, then those the devices present
// need (by modalias), rescanning while new devices appear.
func (b *boot) loadModules(ctx context.Context) error {
	rel, err := b.release()
	if err != nil {
		return err
	}
	loader := &kmod.Loader{
		Dir:       filepath.Join(b.root, "lib", "modules", rel),
		SysModule: filepath.Join(b.root, "sys", "module"),
		Insert:    b.InsertModule,
		Logger:    b.log,
	}
	if b.DryRun {
		mods, err := loader.Plan(b.cfg.Modules)
		if len(b.cfg.Modules) > 0 {
			b.say("would load modules: %s", strings.Join(moduleNames(mods), " "))
		}
		b.say("would load the modules of the devices present (modalias)")
		return err
	}
	start := time.Now()
	listed, lerr := loader.Load(ctx, b.cfg.Modules)
	var cmdline []string
	if cl, err := procfs.ReadCmdline(b.fsys); err == nil {
		for _, p := range cl {
			if p.Key == "modprobe.blacklist" {
				cmdline = append(cmdline, p.Value)
			}
		}
	}
	devices, derr := loader.LoadForDevices(ctx, kmod.DeviceOptions{
		SysDevices: filepath.Join(b.root, "sys", "devices"),
		Blacklist:  kmod.ReadBlacklist(b.root, cmdline),
	})
	names := moduleNames(listed)
	for _, m := range devices {
		names = append(names, m.Name+"(device)")
	}
	for _, m := range append(listed, devices...) {
		b.rec.Modules = append(b.rec.Modules, m.Name)
	}
	if len(names) == 0 {
		names = []string{"none"}
	}
	b.say("modules loaded in %s: %s", time.Since(start).Round(10*time.Millisecond), strings.Join(names, " "))
	// A device's module that will not load is worth knowing, not a failed
	// boot: the node may not need that device. A listed one is.
	if derr != nil {
		b.warn("modules for the devices present: %s", OneLine(derr))
	}
	return lerr
}

func moduleNames(mods []kmod.Module) []string {
	var names []string
	for _, m := range mods {
		if m.Builtin {
			names = append(names, m.Name+"(built-in)")
		} else {
			names = append(names, m.Name)
		}
	}
	return names
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

// configureNetwork configures the interface and writes its configuration
// for the image's network stack.
func (b *boot) configureNetwork(ctx context.Context) error {
	c, err := b.netConfig()
	if err != nil {
		return err
	}
	ifc := netstack.Interface{MAC: c.MAC.String(), Address: c.Address, Gateway: c.Gateway}
	for _, d := range b.cfg.Interface.DNS {
		if a, err := netip.ParseAddr(d); err == nil {
			ifc.DNS = append(ifc.DNS, a)
		}
	}
	if b.DryRun {
		b.say("would configure the interface with MAC %s: %s", c.MAC, c.Address)
		if c.Gateway.IsValid() {
			b.say("would add the default route via %s", c.Gateway)
		}
		if stacks := netstack.Stacks(b.root); len(stacks) > 0 {
			b.say("would write its configuration for %s", strings.Join(stacks, ", "))
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
	written, err := netstack.Write(b.root, ifc)
	if len(written) > 0 {
		b.say("interface configuration written for the image's network stack: %s", strings.Join(written, " "))
	}
	return err
}

// setClock reads the head's clock and sets the node's. A head that does
// not answer is a warning, not a failure: the node boots on its hardware
// clock and the daemon reaches the head later.
func (b *boot) setClock(ctx context.Context) error {
	if b.DryRun {
		b.say("would set the clock from %s", b.cfg.URL(overlay.TimePath))
		return nil
	}
	timeout := b.ClockTimeout
	if timeout <= 0 {
		timeout = DefaultClockTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &headapi.Client{Config: b.cfg, AttemptTimeout: 3 * time.Second}
	if b.HTTPClient != nil {
		c.HTTPClient = b.HTTPClient
	}
	bo := headapi.Backoff{Min: 250 * time.Millisecond, Max: 2 * time.Second}
	var (
		head time.Time
		err  error
	)
	for {
		if head, _, err = c.Time(ctx); err == nil {
			break
		}
		t := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			b.warn("clock: the head did not answer (%s): keeping the hardware clock", OneLine(err))
			b.rec.Boot.KernelStart = time.Now().Add(-time.Duration(b.uptime() * float64(time.Second)))
			return nil
		case <-t.C:
		}
	}
	offset := time.Until(head)
	if cl, err := procfs.ReadCmdline(b.fsys); err == nil {
		if v, _ := cl.Get(ClockParam); v == "keep" {
			b.rec.ClockOffsetSeconds = offset.Seconds()
			b.rec.Boot.KernelStart = head.Add(-time.Duration(b.uptime() * float64(time.Second))).UTC()
			b.say("clock kept (%s=keep); the head's is %+.3fs from it", ClockParam, offset.Seconds())
			return nil
		}
	}
	set := b.SetClock
	if set == nil {
		set = func(t time.Time) error {
			ts := unix.NsecToTimespec(t.UnixNano())
			return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
		}
	}
	if err := set(time.Now().Add(offset)); err != nil {
		return fmt.Errorf("set the clock: %w", err)
	}
	b.rec.ClockOffsetSeconds = offset.Seconds()
	b.rec.Boot.KernelStart = time.Now().Add(-time.Duration(b.uptime() * float64(time.Second))).UTC()
	b.say("clock set from the head (moved %+.3fs)", offset.Seconds())
	return nil
}

// OneLine returns err's message with joined errors separated by "; ".
func OneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func mib(n int64) string {
	if n >= 10<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
