// Package provisioner is the head-node daemon behind `ramboot serve`: it
// owns the state directory and runs, on the provisioning interface, the
// DHCP, TFTP, HTTP boot and IPv6 router-advertisement services plus the
// admin API socket, feeding every boot step into the nodes' timelines.
//
//	cfg, _ := config.Load("")
//	cfg.Interface = "eth1"
//	d := &provisioner.Daemon{Config: cfg, Logger: slog.Default()}
//	err := d.Run(ctx) // until ctx ends
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/overlayrender"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/dhcp"
)

// Files under the state directory.
const (
	DBFile      = "ramboot.db"            // the bbolt database
	SocketFile  = "ramboot.sock"          // the admin API socket (root only)
	ImagesDir   = "images"                // the image store
	HostKeyFile = "sftp_host_ed25519_key" // the SFTP endpoint's host key
	// DiscoveryFile is the discovery pool: the machines the inventory does
	// not know and the addresses lent to them (dhcp.discovery).
	DiscoveryFile = "discovery.json"
)

// HeadLeaseTTL is how long a dead head stays registered in a shared store
// (etcd) before its peers stop counting it.
const HeadLeaseTTL = 10 * time.Second

// Daemon is one running head. Set its fields, then call Run once.
type Daemon struct {
	// Config is the validated configuration.
	Config config.Config
	// Logger receives the daemon's logs; nil = discard.
	Logger *slog.Logger
	// Registry collects the metrics served at /metrics; nil = a new one.
	Registry *prometheus.Registry
	// Ready, if set, is called once every listener is open.
	Ready func(Head)
	// Level, if set, is the logger's level, changed by a reload.
	Level *slog.LevelVar

	mu     sync.Mutex
	reload func(config.Config) ([]string, error)
}

// Reload applies a new configuration to the running daemon without
// dropping boots in flight: the boot defaults and subnets (every plan
// resolved from then on), the overlays' templates, accounts, authorized
// keys and cluster names, the admin API's tokens and certificate, and the
// log level. Keys that need a restart (interface, state directory, ports,
// services on or off, the DHCP, TFTP and HTTP servers' settings) keep their
// running values; Reload returns their names. An invalid configuration
// (every problem at once) changes nothing.
func (d *Daemon) Reload(cfg config.Config) (needRestart []string, err error) {
	d.mu.Lock()
	fn := d.reload
	d.mu.Unlock()
	if fn == nil {
		return nil, errors.New("reload: the daemon is not serving")
	}
	return fn(cfg)
}

// Head describes where a running daemon serves.
type Head struct {
	// IP is the head's address on the provisioning interface.
	IP netip.Addr
	// Subnet is the provisioning subnet (the address with its prefix).
	Subnet netip.Prefix
	// BaseURL is the HTTP base URL nodes use.
	BaseURL string
	// Socket is the admin API socket path.
	Socket string
	// TFTP is the TFTP server's address; zero when TFTP is off.
	TFTP netip.AddrPort
	// SFTP is the address of the image push endpoint; empty when off.
	SFTP string
	// API is the address of the admin API on TCP; empty when off.
	API string
}

// InterfaceAddr returns the first IPv4 address of iface with its prefix.
func InterfaceAddr(iface string) (netip.Prefix, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("find interface %s: %w", iface, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list addresses of %s: %w", iface, err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP.To4())
		ones, _ := ipn.Mask.Size()
		return netip.PrefixFrom(ip, ones), nil
	}
	return netip.Prefix{}, fmt.Errorf("interface %s has no IPv4 address: give it the head's address first (ip addr add 10.0.0.1/24 dev %s)", iface, iface)
}

// AgentBinary finds the ramboot-agent executable: path if set, else next
// to the running executable, else on $PATH.
func AgentBinary(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "ramboot-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("ramboot-agent")
	if err != nil {
		return "", fmt.Errorf("find ramboot-agent (set agent.binary, or put it next to ramboot or on $PATH): %w", err)
	}
	return p, nil
}

func (d *Daemon) log() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

// Run serves until ctx ends, then stops every service and returns nil; it
// returns an error if a service cannot start or fails. It only wires: each
// service has its own constructor, opens its sockets in Listen (all of
// them before any serves, so another DHCP or TFTP server on the link stops
// this one at start with an error naming it) and runs in Serve.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.Config
	log := d.log()
	// Every problem at once: the configuration's values, the interface,
	// the agent binary, the TLS files and tokens, the overlay templates.
	chk, err := Check(cfg, log)
	if err != nil {
		return err
	}
	prefix, headIP, bootFiles, agent, agentPath := chk.prefix, chk.prefix.Addr(), chk.bootFiles, chk.agent, chk.agentPath
	heads := &Nodes{}
	heads.SetDefaults(Defaults(cfg, prefix))
	db, err := OpenConfiguredState(ctx, cfg, state.Options{History: cfg.State.BootHistory, Check: heads.Check}, log)
	if err != nil {
		return err
	}
	defer db.Close()
	heads.db = db
	store := &images.Store{Dir: filepath.Join(cfg.StateDir, ImagesDir)}

	reg := d.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	reg.MustRegister(newNodesCollector(db))
	stateMetrics := newStateMetrics(reg, db)
	bak := &backups{db: db, path: filepath.Join(cfg.StateDir, BackupFile), interval: time.Duration(cfg.State.BackupInterval), log: log, m: stateMetrics, last: -1}
	bak.once() // the last good database, before anything changes it
	rec := newRecorder(db, log)
	var disc *dhcp.Discovery
	if cfg.DHCP.Enabled && cfg.DHCP.Discovery.Enabled {
		if disc, err = dhcp.OpenDiscovery(filepath.Join(cfg.StateDir, DiscoveryFile)); err != nil {
			return err
		}
		disc.LeaseTime = time.Duration(cfg.DHCP.Discovery.LeaseTime)
		disc.MaxMachines = cfg.DHCP.Discovery.MaxMachines
		disc.InUse = func(ip netip.Addr) bool { _, err := db.ByIP(ip); return err == nil }
		heads.SetDiscoveryRanges(discoveryRanges(dhcpSubnets(cfg, prefix, true)))
	}

	sock := filepath.Join(cfg.StateDir, SocketFile)
	pub := newHTTPService(cfg, headIP, log.With("svc", "http"), reg)
	admin := newAdminService(cfg, sock, log.With("svc", "admin"))
	var svcs []service
	var dhcpSvc *dhcpService
	if cfg.DHCP.Enabled {
		dhcpSvc = newDHCPService(cfg, headIP, prefix, bootFiles, heads, disc, rec.dhcp, log.With("svc", "dhcp"), reg)
		svcs = append(svcs, dhcpSvc)
	}
	var tftpSvc *tftpService
	if cfg.TFTP.Enabled {
		tftpSvc = newTFTPService(cfg, headIP, rec.tftp, log.With("svc", "tftp"), reg)
		svcs = append(svcs, tftpSvc)
	}
	svcs = append(svcs, pub, admin)
	var sftpSvc *sftpService
	if cfg.SFTP.Enabled {
		sftpSvc = newSFTPService(cfg, store, log.With("svc", "sftp"), reg)
		svcs = append(svcs, sftpSvc)
	}
	var apiSvc *apiService
	if cfg.API.Listen != "" {
		apiSvc = newAPIService(log.With("svc", "api"))
		if err := apiSvc.load(cfg); err != nil {
			return err
		}
		svcs = append(svcs, apiSvc)
	}
	if cfg.RA.Enabled {
		svcs = append(svcs, newRAService(cfg, log.With("svc", "ra"), reg))
	}
	if err := listenAll(ctx, svcs); err != nil {
		return err
	}

	for _, s := range svcs {
		if d, ok := s.(*dhcpService); ok && d.det != nil {
			d.det.Peer = db.IsHead // heads on one etcd all answer: not rivals
		}
	}

	// The HTTP port is known now (http.port 0 picks a free one).
	baseURL := "http://" + pub.ln.Addr().String()
	if port := pub.ln.Addr().(*net.TCPAddr).Port; port == 80 {
		baseURL = "http://" + headIP.String()
	}
	heads.baseURL = baseURL
	if dhcpSvc != nil {
		dhcpSvc.setURLs(cfg, baseURL)
	}
	ovl := &overlays{db: db, nodes: heads, images: store, log: log.With("svc", "overlay")}
	ovl.keys = db.SharedHostKeys // nodes' host keys the same from every head
	ovl.setSetup(newOverlaySetup(cfg, headOf(cfg, headIP, baseURL, db), slices.Sorted(maps.Keys(db.Profiles())), ovl.log))
	boot := &bootserver.Server{
		Nodes: heads, Images: store, Agent: agent, Overlays: ovl, BaseURL: baseURL,
		Logger: log, Metrics: bootserver.NewMetrics(reg),
		Retry: bootserver.Retry{Attempts: cfg.Boot.Retry.Attempts, MaxWait: time.Duration(cfg.Boot.Retry.MaxWait), FailPause: time.Duration(cfg.Boot.Retry.FailPause)},
	}
	if cfg.DHCP.HTTPBoot {
		boot.NBP, boot.NBPFiles = os.DirFS(cfg.TFTP.Root), cfg.TFTPFiles()
	}
	nodeAPI := &api.Node{
		DB: db, Images: store, Plan: heads.Plan, Overlays: boot,
		Interval: time.Duration(cfg.Agent.HeartbeatInterval), DownAfter: time.Duration(cfg.Agent.DownAfter),
		RequirePrivilegedPort: cfg.Agent.RequirePrivilegedPort, Logger: log, Metrics: api.NewMetrics(reg),
	}
	removals := headImageRemovals(db, store, baseURL, log.With("svc", "images"), reg)
	adminAPI := &api.Admin{DB: db, Images: store, Plan: heads.Plan, Render: ovl.Render, Discovery: disc, BootEvents: rec.events.get, Logger: log,
		RemoveImage: removals.Remove}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	pubMux := http.NewServeMux()
	pubMux.Handle("/boot/", boot.Handler())
	pubMux.Handle("/api/", nodeAPI.Handler())
	pubMux.Handle("GET /metrics", metrics)
	pubMux.HandleFunc("GET /healthz", healthz)
	pub.Handle(pubMux)
	privMux := http.NewServeMux()
	privMux.Handle("/api/", adminAPI.Handler())
	privMux.Handle("GET /metrics", metrics)
	privMux.HandleFunc("GET /healthz", healthz)
	admin.Handle(privMux)
	boot.Fetch = peerFetch(db, store, baseURL, removals, log, reg) // heads on one etcd: images from the peers
	if apiSvc != nil {
		apiSvc.handler = privMux
	}

	started := time.Now()
	busy := func(n state.Node) bool {
		for _, ifc := range n.Interfaces {
			if ifc.IP.IsValid() && boot.Busy(ifc.IP) {
				return true
			}
		}
		return false
	}
	svcs = append(svcs,
		loopService{"backups", bak.run},
		loopService{"image removals", removals.Run},
		loopService{"heartbeat watch", func(ctx context.Context) error {
			return watchHeartbeats(ctx, db, time.Duration(cfg.Agent.DownAfter), started, log.With("svc", "heartbeat"))
		}},
		loopService{"head registration", func(ctx context.Context) error {
			// A shared store (etcd): the peers see this head, and what it
			// hears from the agents (docs/scale-out.md).
			host, _ := os.Hostname()
			h := state.Head{ID: strings.TrimPrefix(baseURL, "http://"), URL: baseURL, IP: headIP.String(), Name: host, Started: started}
			return db.RunHead(ctx, h, HeadLeaseTTL, min(max(time.Duration(cfg.Agent.DownAfter)/4, time.Second), 5*time.Second))
		}},
		loopService{"overlay prepare", func(ctx context.Context) error { return ovl.prepareLoop(ctx, time.Second) }},
		loopService{"stall watch", func(ctx context.Context) error {
			return watchStalls(ctx, db, time.Duration(cfg.Boot.StallTimeout), busy, log, stateMetrics)
		}},
	)

	running := cfg
	var reloadMu sync.Mutex
	d.mu.Lock()
	d.reload = func(nc config.Config) ([]string, error) {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		nc.Interface, nc.StateDir = cfg.Interface, cfg.StateDir // flags, or restart-only
		if err := nc.Validate(); err != nil {
			return nil, fmt.Errorf("reload refused, the running configuration stays:\n%w", err)
		}
		setup := newOverlaySetup(nc, headOf(nc, headIP, baseURL, db), slices.Sorted(maps.Keys(db.Profiles())), ovl.log)
		if err := setup.Check(); err != nil {
			return nil, fmt.Errorf("reload refused, the running configuration stays:\n%w", err)
		}
		var next *apiService
		if apiSvc != nil {
			next = newAPIService(apiSvc.log)
			if err := next.load(nc); err != nil {
				return nil, fmt.Errorf("reload refused, the running configuration stays:\n%w", err)
			}
		}
		if dhcpSvc != nil {
			// subnets, dhcp.router, dhcp.dns and the discovery pool's
			// ranges: the DHCP server's too. The pool itself is open or
			// not as at start (dhcp.discovery.enabled needs a restart).
			subnets := dhcpSubnets(nc, prefix, disc != nil)
			if err := dhcpSvc.srv.SetSubnets(subnets); err != nil {
				return nil, fmt.Errorf("reload refused, the running configuration stays:\n%w", err)
			}
			heads.SetDiscoveryRanges(discoveryRanges(subnets))
			if disc != nil {
				disc.SetLimits(time.Duration(nc.DHCP.Discovery.LeaseTime), nc.DHCP.Discovery.MaxMachines)
			}
		}
		heads.SetDefaults(Defaults(nc, prefix))
		ovl.setSetup(setup)
		if next != nil {
			apiSvc.tokens.Store(next.tokens.Load())
			apiSvc.cert.Store(next.cert.Load())
		}
		if d.Level != nil {
			var l slog.Level
			if l.UnmarshalText([]byte(strings.ToUpper(nc.LogLevel))) == nil {
				d.Level.Set(l)
			}
		}
		restart := config.RestartKeys(running, nc)
		running = nc
		log.Info("configuration reloaded", "restart_needed", strings.Join(restart, " "))
		return restart, nil
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.reload = nil
		d.mu.Unlock()
	}()

	head := Head{IP: headIP, Subnet: prefix, BaseURL: baseURL, Socket: sock}
	if tftpSvc != nil {
		head.TFTP = tftpSvc.Addr()
	}
	if sftpSvc != nil {
		head.SFTP = sftpSvc.ln.Addr().String()
	}
	if apiSvc != nil {
		head.API = apiSvc.ln.Addr().String()
	}
	log.Info("ramboot serving", "iface", cfg.Interface, "ip", headIP, "http", baseURL, "socket", sock,
		"state_dir", cfg.StateDir, "sftp", head.SFTP, "api", head.API, "agent", agentPath, "dhcp", cfg.DHCP.Enabled, "tftp", head.TFTP, "ra", cfg.RA.Enabled)
	if d.Ready != nil {
		d.Ready(head)
	}
	err = serveAll(ctx, svcs)
	log.Info("ramboot stopped")
	return err
}

// checked is what Check found usable.
type checked struct {
	prefix    netip.Prefix
	bootFiles map[uint16]string
	agentPath string
	agent     *bootserver.Archive
}

// Check checks everything `ramboot serve` needs before it opens anything
// and reports every problem at once: the configuration's values (with
// file, line and key), the interface and its address, the boot files, the
// agent binary, and the overlay templates and accounts.
func Check(cfg config.Config, log *slog.Logger) (checked, error) {
	var c checked
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	var err error
	if cfg.Interface != "" {
		if c.prefix, err = InterfaceAddr(cfg.Interface); err != nil {
			errs = append(errs, err)
		}
	}
	if r := cfg.DHCP.Discovery.Range; r != "" && c.prefix.IsValid() {
		if first, last, err := config.ParseRange(r); err == nil && (!c.prefix.Contains(first) || !c.prefix.Contains(last)) {
			errs = append(errs, fmt.Errorf("%sdhcp.discovery.range: %s is not inside %s, the subnet of interface %s", cfg.Line("dhcp.discovery.range"), r, c.prefix.Masked(), cfg.Interface))
		}
	}
	c.bootFiles, _ = cfg.BootFileMap() // Validate reported its problems
	if c.agentPath, err = AgentBinary(cfg.Agent.Binary); err != nil {
		errs = append(errs, err)
	} else if c.agent, err = bootserver.NewAgentArchive(c.agentPath); err != nil {
		errs = append(errs, err)
	}
	if cfg.API.Listen != "" && cfg.API.TLSCert != "" && cfg.API.Tokens != "" {
		if err := newAPIService(log).load(cfg); err != nil {
			errs = append(errs, err)
		}
	}
	if dir := cfg.Overlay.Templates; dir != "" {
		if ents, err := os.ReadDir(dir); err == nil {
			var names []string
			for _, e := range ents {
				if e.IsDir() {
					names = append(names, e.Name())
				}
			}
			if err := newOverlaySetup(cfg, overlayrender.Head{}, names, log).Check(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("cannot serve:\n%w", err)
	}
	return c, nil
}

// headOf returns the head as overlays show it.
func headOf(cfg config.Config, ip netip.Addr, baseURL string, db *state.DB) overlayrender.Head {
	name := cfg.Cluster.HeadName
	if name == "" {
		if h, err := os.Hostname(); err == nil {
			name, _, _ = strings.Cut(h, ".")
		}
	}
	h := overlayrender.Head{Name: name, Addresses: []netip.Addr{ip}, URL: baseURL}
	if db != nil {
		// The live heads of a shared store (heads/), this one left out:
		// the agent's fall-over list.
		h.Peers = func() []string {
			var out []string
			for _, p := range db.Heads() {
				if p.URL != baseURL {
					out = append(out, p.URL)
				}
			}
			return out
		}
	}
	return h
}

func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("ok\n"))
}

// listenUnix listens on a root-only unix socket, replacing a stale one.
func listenUnix(path string) (net.Listener, error) {
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen %s: another ramboot daemon is serving this state directory", path)
	}
	_ = os.Remove(path) // stale socket of a daemon that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict %s: %w", path, err)
	}
	return ln, nil
}
