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
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/images/push"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/bootserver"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/internal/httplimit"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe"
	"github.com/ramboot/ramboot/pxe/dhcp"
	"github.com/ramboot/ramboot/pxe/ra"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// Files under the state directory.
const (
	DBFile      = "ramboot.db"            // the bbolt database
	SocketFile  = "ramboot.sock"          // the admin API socket (root only)
	ImagesDir   = "images"                // the image store
	HostKeyFile = "sftp_host_ed25519_key" // the SFTP endpoint's host key
)

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
	// SFTP is the address of the image push endpoint; empty when off.
	SFTP string
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
// returns an error if a service cannot start or fails.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.Config
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	log := d.log()
	prefix, err := InterfaceAddr(cfg.Interface)
	if err != nil {
		return err
	}
	headIP := prefix.Addr()
	bootFiles, err := cfg.BootFileMap()
	if err != nil {
		return err
	}
	agentPath, err := AgentBinary(cfg.Agent.Binary)
	if err != nil {
		return err
	}
	agent, err := bootserver.NewAgentArchive(agentPath)
	if err != nil {
		return err
	}
	db, err := OpenState(cfg.StateDir, state.Options{History: cfg.State.BootHistory}, log)
	if err != nil {
		return err
	}
	defer db.Close()
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
	var gateway netip.Addr
	if cfg.DHCP.Router != "" {
		gateway = netip.MustParseAddr(cfg.DHCP.Router) // validated
	}
	var dns []netip.Addr
	for _, s := range cfg.DHCP.DNS {
		dns = append(dns, netip.MustParseAddr(s))
	}
	baseURL := "http://" + headIP.String()
	if cfg.HTTP.Port != 80 {
		baseURL += ":" + strconv.Itoa(cfg.HTTP.Port)
	}
	rec := &recorder{db: db, log: log}

	// Listeners first, so a port conflict fails before anything serves:
	// another DHCP or TFTP server on the link's interface stops this one
	// here with an error naming it (issue 12: one server per link).
	socks, err := listenPXE(ctx, cfg, headIP)
	if err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp4", net.JoinHostPort(headIP.String(), strconv.Itoa(cfg.HTTP.Port)))
	if err != nil {
		socks.close()
		return fmt.Errorf("listen http: %w", err)
	}
	sock := filepath.Join(cfg.StateDir, SocketFile)
	sockLn, err := listenUnix(sock)
	if err != nil {
		socks.close()
		httpLn.Close()
		return err
	}

	var sftpLn net.Listener
	var sftpSrv *push.Server
	if cfg.SFTP.Enabled {
		if sftpSrv, sftpLn, err = d.sftpServer(store, reg); err != nil {
			socks.close()
			httpLn.Close()
			sockLn.Close()
			return err
		}
	}

	boot := &bootserver.Server{
		DB: db, Images: store, Agent: agent, BaseURL: baseURL, PrefixLen: prefix.Bits(),
		Gateway: gateway, DNS: dns, DefaultImage: cfg.Boot.DefaultImage,
		KernelArgs: cfg.Boot.KernelArgs, Modules: cfg.Boot.Modules,
		Root:         overlay.Root{Mode: overlay.RootMode(cfg.Boot.Root.Mode), Size: cfg.Boot.Root.Size},
		ConsoleShell: cfg.Boot.ConsoleShell,
		Logger:       log, Metrics: bootserver.NewMetrics(reg),
	}
	nodeAPI := &api.Node{
		DB: db, Images: store, DefaultImage: cfg.Boot.DefaultImage, Overlays: boot,
		Interval: time.Duration(cfg.Agent.HeartbeatInterval), DownAfter: time.Duration(cfg.Agent.DownAfter),
		RequirePrivilegedPort: cfg.Agent.RequirePrivilegedPort, Logger: log, Metrics: api.NewMetrics(reg),
	}
	admin := &api.Admin{DB: db, Images: store, Subnet: prefix, DefaultImage: cfg.Boot.DefaultImage, Logger: log}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})

	pub := http.NewServeMux()
	pub.Handle("/boot/", boot.Handler())
	pub.Handle("/api/", nodeAPI.Handler())
	pub.Handle("GET /metrics", metrics)
	pub.HandleFunc("GET /healthz", healthz)
	priv := http.NewServeMux()
	priv.Handle("/api/", admin.Handler())
	priv.Handle("GET /metrics", metrics)
	priv.HandleFunc("GET /healthz", healthz)

	g, gctx := errgroup.WithContext(ctx)
	started := time.Now()
	g.Go(func() error {
		return watchHeartbeats(gctx, db, time.Duration(cfg.Agent.DownAfter), started, log.With("svc", "heartbeat"))
	})
	pubSrv := &httplimit.Server{
		Handler: pub, ReadHeaderTimeout: time.Duration(cfg.HTTP.ReadHeaderTimeout), IdleTimeout: time.Duration(cfg.HTTP.IdleTimeout),
		SendTimeout: time.Duration(cfg.HTTP.SendTimeout), MinSendRate: cfg.HTTP.MinSendRate,
		MaxConnsPerClient: cfg.HTTP.MaxConnsPerClient, MaxConns: cfg.HTTP.MaxConns,
		Logger: log.With("svc", "http"), Metrics: httplimit.NewMetrics(reg),
	}
	privSrv := &httplimit.Server{Handler: priv, ReadHeaderTimeout: time.Duration(cfg.HTTP.ReadHeaderTimeout), IdleTimeout: time.Duration(cfg.HTTP.IdleTimeout), Logger: log.With("svc", "admin")}
	g.Go(func() error { return wrapErr("serve http", pubSrv.Serve(gctx, httpLn)) })
	g.Go(func() error { return wrapErr("serve admin socket", privSrv.Serve(gctx, sockLn)) })
	defer os.Remove(sock)
	g.Go(func() error { return bak.run(gctx) })
	g.Go(func() error {
		busy := func(n state.Node) bool { return boot.Busy(n.IP) }
		return watchStalls(gctx, db, time.Duration(cfg.Boot.StallTimeout), busy, log, stateMetrics)
	})

	if cfg.DHCP.Enabled {
		arches := map[pxe.Arch]string{}
		for a, f := range bootFiles {
			arches[pxe.Arch(a)] = f
		}
		inventory := dhcp.InventoryFunc(rec.reservation(prefix.Bits(), gateway, dns, baseURL))
		dhcpMetrics := dhcp.NewMetrics(reg)
		srv := &dhcp.Server{
			ServerIP:      headIP,
			Inventory:     inventory,
			BootFiles:     arches,
			LeaseTime:     time.Duration(cfg.DHCP.LeaseTime),
			ReceiveBuffer: cfg.DHCP.ReceiveBuffer,
			Observer:      rec.dhcp,
			Logger:        log.With("svc", "dhcp"),
			Metrics:       dhcpMetrics,
		}
		g.Go(func() error { return srv.Serve(gctx, socks.dhcp) })
		if socks.rivals != nil {
			det := &dhcp.RivalDetector{ServerIP: headIP, Inventory: inventory, Logger: log.With("svc", "dhcp"), Metrics: dhcpMetrics}
			g.Go(func() error { return det.Serve(gctx, socks.rivals) })
		}
	}
	if cfg.TFTP.Enabled {
		srv := &tftp.Server{
			Root:                  os.DirFS(cfg.TFTP.Root),
			Files:                 cfg.TFTPFiles(),
			MaxTransfers:          cfg.TFTP.MaxTransfers,
			MaxTransfersPerClient: cfg.TFTP.MaxTransfersPerClient,
			ReceiveBuffer:         cfg.TFTP.ReceiveBuffer,
			Observer:              rec.tftp,
			Logger:                log.With("svc", "tftp"),
			Metrics:               tftp.NewMetrics(reg),
		}
		g.Go(func() error { return srv.Serve(gctx, socks.tftp) })
	}
	if cfg.RA.Enabled {
		srv := &ra.Server{
			Interface: cfg.Interface,
			Interval:  time.Duration(cfg.RA.Interval),
			Logger:    log.With("svc", "ra"),
			Metrics:   ra.NewMetrics(reg),
		}
		g.Go(func() error { return srv.ListenAndServe(gctx) })
	}

	head := Head{IP: headIP, Subnet: prefix, BaseURL: baseURL, Socket: sock}
	if sftpSrv != nil {
		g.Go(func() error { return sftpSrv.Serve(gctx, sftpLn) })
		head.SFTP = sftpLn.Addr().String()
	}
	log.Info("ramboot serving", "iface", cfg.Interface, "ip", headIP, "http", baseURL, "socket", sock,
		"state_dir", cfg.StateDir, "sftp", head.SFTP, "agent", agentPath, "dhcp", cfg.DHCP.Enabled, "tftp", cfg.TFTP.Enabled, "ra", cfg.RA.Enabled)
	if d.Ready != nil {
		d.Ready(head)
	}
	err = g.Wait()
	log.Info("ramboot stopped")
	return err
}

func wrapErr(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// sftpServer opens the image push endpoint: its listener, its host key
// (generated at first start), and its authorized keys file.
func (d *Daemon) sftpServer(store *images.Store, reg prometheus.Registerer) (*push.Server, net.Listener, error) {
	cfg := d.Config
	key, err := push.LoadOrCreateHostKey(filepath.Join(cfg.StateDir, HostKeyFile))
	if err != nil {
		return nil, nil, err
	}
	keys := cfg.SFTPAuthorizedKeys()
	if ks, err := push.ReadAuthorizedKeys(keys); err != nil {
		return nil, nil, fmt.Errorf("sftp: %w", err)
	} else if len(ks) == 0 {
		d.log().Warn("sftp: no authorized keys yet: image push refused until keys are added", "path", keys)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.SFTP.Address, strconv.Itoa(cfg.SFTP.Port)))
	if err != nil {
		return nil, nil, fmt.Errorf("listen sftp: %w", err)
	}
	return &push.Server{
		Store: store, HostKey: key, AuthorizedKeysFile: keys,
		Logger: d.log().With("svc", "sftp"), Metrics: push.NewMetrics(reg),
	}, ln, nil
}

// pxeConns are the sockets of the enabled DHCP and TFTP services, opened
// before anything serves.
type pxeConns struct {
	dhcp, rivals net.PacketConn
	tftp         *net.UDPConn
}

// listenPXE opens the DHCP socket on the interface (and the rival
// detector's), and the TFTP socket on the head's address, as configured. A
// DHCP or TFTP server already there makes it fail with an error that names
// it.
func listenPXE(ctx context.Context, cfg config.Config, headIP netip.Addr) (c pxeConns, err error) {
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if cfg.DHCP.Enabled {
		if c.dhcp, err = dhcp.Listen(ctx, cfg.Interface); err != nil {
			return c, err
		}
		if cfg.DHCP.DetectRivals {
			if c.rivals, err = dhcp.ListenRivals(cfg.Interface); err != nil {
				return c, fmt.Errorf("%w (set dhcp.detect_rivals: false to run without it)", err)
			}
		}
	}
	if cfg.TFTP.Enabled {
		if c.tftp, err = tftp.Listen(ctx, net.JoinHostPort(headIP.String(), "69")); err != nil {
			return c, err
		}
	}
	return c, nil
}

// close closes the sockets that are open.
func (c pxeConns) close() {
	for _, conn := range []net.PacketConn{c.dhcp, c.rivals} {
		if conn != nil {
			conn.Close()
		}
	}
	if c.tftp != nil {
		c.tftp.Close()
	}
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
