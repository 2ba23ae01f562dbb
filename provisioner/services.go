package provisioner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/icmp"
	"golang.org/x/sync/errgroup"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/push"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/internal/httplimit"
	"github.com/ramboot/ramboot/pxe"
	"github.com/ramboot/ramboot/pxe/dhcp"
	"github.com/ramboot/ramboot/pxe/ra"
	"github.com/ramboot/ramboot/pxe/tftp"
)

// service is one of the head's services, shaped like net/http: its
// constructor takes what it needs, Listen opens its sockets (the daemon
// opens every service's before any serves, so a port conflict fails at
// start), Serve runs until ctx ends and returns nil then. Close releases
// what Listen opened when Serve never runs.
type service interface {
	Name() string
	Listen(ctx context.Context) error
	Serve(ctx context.Context) error
	Close()
}

// dhcpService is the DHCP server on the provisioning interface: port 67
// (unless dhcp.mode is off), port 4011, the rival detector, and the
// discovery pool's persistence.
type dhcpService struct {
	iface string
	srv   *dhcp.Server
	det   *dhcp.RivalDetector // nil: off
	conns []net.PacketConn
	rival net.PacketConn
}

// newDHCPService returns the DHCP service of cfg: the boot table from
// dhcp.boot_files, the subnets (the provisioning interface's, then
// cfg.Subnets) with their discovery ranges, and disc as the discovery
// pool (nil: off). HTTPBootURL and DiscoveryScriptURL are set once the
// HTTP port is known (setURLs).
func newDHCPService(cfg config.Config, headIP netip.Addr, prefix netip.Prefix, bootFiles map[uint16]string, inv dhcp.Inventory, disc *dhcp.Discovery, observe func(dhcp.Event), log *slog.Logger, reg prometheus.Registerer) *dhcpService {
	table := dhcp.BootTable{}
	for a, f := range bootFiles {
		table[pxe.Arch(a)] = f
	}
	mode, _ := dhcp.ParseMode(cfg.DHCP.Mode) // validated
	m := dhcp.NewMetrics(reg)
	s := &dhcpService{iface: cfg.Interface, srv: &dhcp.Server{
		Mode:          mode,
		ServerIP:      headIP,
		Inventory:     inv,
		Subnets:       dhcpSubnets(cfg, prefix, disc != nil),
		BootFiles:     table,
		Discovery:     disc,
		LeaseTime:     time.Duration(cfg.DHCP.LeaseTime),
		Workers:       cfg.DHCP.Workers,
		ReceiveBuffer: cfg.DHCP.ReceiveBuffer,
		Observer:      observe,
		Logger:        log,
		Metrics:       m,
	}}
	if cfg.DHCP.DetectRivals && mode != dhcp.ModeOff {
		s.det = &dhcp.RivalDetector{ServerIP: headIP, Mode: mode, Inventory: inv, Logger: log, Metrics: m}
	}
	return s
}

// dhcpSubnets returns the subnets the DHCP server serves: the provisioning
// interface's (dhcp.router, dhcp.dns, dhcp.discovery.range), then
// subnets[] (relayed ones), with their discovery ranges if discovery is on.
// The configuration is validated.
func dhcpSubnets(cfg config.Config, prefix netip.Prefix, discovery bool) []dhcp.Subnet {
	disc := func(r string) dhcp.Range {
		if !discovery || r == "" {
			return dhcp.Range{}
		}
		first, last, _ := config.ParseRange(r)
		return dhcp.Range{First: first, Last: last}
	}
	own := dhcp.Subnet{Prefix: prefix.Masked(), Discovery: disc(cfg.DHCP.Discovery.Range)}
	if cfg.DHCP.Router != "" {
		own.Router = netip.MustParseAddr(cfg.DHCP.Router)
	}
	for _, a := range cfg.DHCP.DNS {
		own.DNS = append(own.DNS, netip.MustParseAddr(a))
	}
	out := []dhcp.Subnet{own}
	for _, sn := range cfg.Subnets {
		s := dhcp.Subnet{Prefix: netip.MustParsePrefix(sn.Prefix).Masked(), MTU: sn.MTU, Discovery: disc(sn.Discovery)}
		if s.Prefix == own.Prefix {
			continue // the provisioning subnet, listed for its gateway or MTU: plan.Defaults has it
		}
		if sn.Gateway != "" {
			s.Router = netip.MustParseAddr(sn.Gateway)
		}
		for _, a := range sn.DNS {
			s.DNS = append(s.DNS, netip.MustParseAddr(a))
		}
		out = append(out, s)
	}
	return out
}

// discoveryRanges returns the subnets' discovery ranges.
func discoveryRanges(subnets []dhcp.Subnet) []dhcp.Range {
	var out []dhcp.Range
	for _, sn := range subnets {
		if !sn.Discovery.IsZero() {
			out = append(out, sn.Discovery)
		}
	}
	return out
}

// setURLs sets the URLs DHCP hands out, under the HTTP base URL: the NBPs
// of UEFI HTTP boot (with dhcp.http_boot) and the discovery script.
func (s *dhcpService) setURLs(cfg config.Config, baseURL string) {
	if cfg.DHCP.HTTPBoot {
		s.srv.HTTPBootURL = baseURL + "/boot/nbp/"
	}
	if s.srv.Discovery != nil {
		s.srv.DiscoveryScriptURL = baseURL + "/boot/discovery"
	}
}

func (s *dhcpService) Name() string { return "dhcp" }

func (s *dhcpService) Listen(ctx context.Context) error {
	if s.srv.Mode != dhcp.ModeOff {
		c, err := dhcp.Listen(ctx, s.iface)
		if err != nil {
			return err
		}
		s.conns = append(s.conns, c)
	}
	c, err := dhcp.ListenPXE(ctx, s.iface)
	if err != nil {
		s.Close()
		return err
	}
	s.conns = append(s.conns, c)
	if s.det != nil {
		if s.rival, err = dhcp.ListenRivals(s.iface); err != nil {
			s.Close()
			return fmt.Errorf("%w (set dhcp.detect_rivals: false to run without it)", err)
		}
	}
	return nil
}

func (s *dhcpService) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range s.conns {
		g.Go(func() error { return s.srv.Serve(gctx, c) })
	}
	if s.rival != nil {
		g.Go(func() error { return s.det.Serve(gctx, s.rival) })
	}
	if d := s.srv.Discovery; d != nil {
		g.Go(func() error { return d.Run(gctx) })
	}
	return g.Wait()
}

func (s *dhcpService) Close() {
	for _, c := range append(s.conns, s.rival) {
		if c != nil {
			c.Close()
		}
	}
}

// tftpService is the TFTP server on the head's address, tftp.port, and
// with tftp.ipv6 on the interface's IPv6 addresses too.
type tftpService struct {
	addr  string
	iface string // "": no IPv6
	srv   *tftp.Server
	conn  *net.UDPConn
	conn6 *net.UDPConn
}

func newTFTPService(cfg config.Config, headIP netip.Addr, observe func(tftp.Event), log *slog.Logger, reg prometheus.Registerer) *tftpService {
	s := &tftpService{
		addr: net.JoinHostPort(headIP.String(), strconv.Itoa(cfg.TFTP.Port)),
		srv: &tftp.Server{
			Root:                  os.DirFS(cfg.TFTP.Root),
			Files:                 cfg.TFTPFiles(),
			MaxTransfers:          cfg.TFTP.MaxTransfers,
			MaxTransfersPerClient: cfg.TFTP.MaxTransfersPerClient,
			ReceiveBuffer:         cfg.TFTP.ReceiveBuffer,
			Observer:              observe,
			Logger:                log,
			Metrics:               tftp.NewMetrics(reg),
		},
	}
	if cfg.TFTP.IPv6 {
		s.iface = cfg.Interface
	}
	return s
}

func (s *tftpService) Name() string { return "tftp" }

func (s *tftpService) Listen(ctx context.Context) (err error) {
	if s.conn, err = tftp.Listen(ctx, s.addr); err != nil {
		return err
	}
	if s.iface != "" {
		port := s.Addr().Port() // tftp.port 0 picks one: the same for IPv6
		s.conn6, err = tftp.ListenIPv6(ctx, s.iface, int(port))
		switch {
		case errors.Is(err, syscall.EAFNOSUPPORT):
			// A kernel booted with ipv6.disable=1: nothing to serve there.
			if s.srv.Logger != nil {
				s.srv.Logger.Warn("tftp: no IPv6 in this kernel, serving IPv4 only", "err", err)
			}
		case err != nil:
			s.Close()
			return fmt.Errorf("%w (set tftp.ipv6: false to serve IPv4 only)", err)
		}
	}
	return nil
}

func (s *tftpService) Serve(ctx context.Context) error {
	if s.conn6 == nil {
		return s.srv.Serve(ctx, s.conn)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.srv.Serve(gctx, s.conn) })
	g.Go(func() error { return s.srv.Serve(gctx, s.conn6) })
	return g.Wait()
}

func (s *tftpService) Close() {
	for _, c := range []*net.UDPConn{s.conn, s.conn6} {
		if c != nil {
			c.Close()
		}
	}
}

// Addr returns the address the service listens on.
func (s *tftpService) Addr() netip.AddrPort {
	if s.conn == nil {
		return netip.AddrPort{}
	}
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// httpService is an HTTP listener with the limits of httplimit: the
// public boot and node API server on TCP, or the admin API on the unix
// socket.
type httpService struct {
	name    string
	network string
	addr    string
	srv     *httplimit.Server
	ln      net.Listener
}

func newHTTPService(cfg config.Config, headIP netip.Addr, log *slog.Logger, reg prometheus.Registerer) *httpService {
	return &httpService{
		name: "http", network: "tcp4", addr: net.JoinHostPort(headIP.String(), strconv.Itoa(cfg.HTTP.Port)),
		srv: &httplimit.Server{
			ReadHeaderTimeout: time.Duration(cfg.HTTP.ReadHeaderTimeout), IdleTimeout: time.Duration(cfg.HTTP.IdleTimeout),
			SendTimeout: time.Duration(cfg.HTTP.SendTimeout), MinSendRate: cfg.HTTP.MinSendRate,
			MaxConnsPerClient: cfg.HTTP.MaxConnsPerClient, MaxConns: cfg.HTTP.MaxConns,
			Logger: log, Metrics: httplimit.NewMetrics(reg),
		},
	}
}

func newAdminService(cfg config.Config, socket string, log *slog.Logger) *httpService {
	return &httpService{
		name: "admin socket", network: "unix", addr: socket,
		srv: &httplimit.Server{ReadHeaderTimeout: time.Duration(cfg.HTTP.ReadHeaderTimeout), IdleTimeout: time.Duration(cfg.HTTP.IdleTimeout), Logger: log},
	}
}

func (s *httpService) Name() string { return s.name }

func (s *httpService) Listen(context.Context) error {
	if s.network == "unix" {
		ln, err := listenUnix(s.addr)
		s.ln = ln
		return err
	}
	ln, err := net.Listen(s.network, s.addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.name, err)
	}
	s.ln = ln
	return nil
}

// Handle sets the handler; call it before Serve.
func (s *httpService) Handle(h http.Handler) { s.srv.Handler = h }

func (s *httpService) Serve(ctx context.Context) error {
	if s.network == "unix" {
		defer os.Remove(s.addr)
	}
	return s.srv.Serve(ctx, s.ln)
}

func (s *httpService) Close() {
	if s.ln != nil {
		s.ln.Close()
		if s.network == "unix" {
			os.Remove(s.addr)
		}
	}
}

// raService sends IPv6 router advertisements on the interface.
type raService struct {
	srv  *ra.Server
	conn *icmp.PacketConn
}

func newRAService(cfg config.Config, log *slog.Logger, reg prometheus.Registerer) *raService {
	return &raService{srv: &ra.Server{Interface: cfg.Interface, Interval: time.Duration(cfg.RA.Interval), Logger: log, Metrics: ra.NewMetrics(reg)}}
}

func (s *raService) Name() string { return "ra" }

func (s *raService) Listen(context.Context) (err error) {
	s.conn, err = ra.Listen(s.srv.Interface)
	return err
}

func (s *raService) Serve(ctx context.Context) error { return s.srv.Serve(ctx, s.conn) }

func (s *raService) Close() {
	if s.conn != nil {
		s.conn.Close()
	}
}

// sftpService is the image push endpoint (SFTP, keys only): its host key
// is generated at first start, its authorized keys read at every login.
type sftpService struct {
	cfg config.Config
	srv *push.Server
	log *slog.Logger
	ln  net.Listener
}

func newSFTPService(cfg config.Config, store *images.Store, log *slog.Logger, reg prometheus.Registerer) *sftpService {
	minFree := cfg.SFTPMinFreeBytes()
	if minFree == 0 {
		minFree = -1 // push.Server: none
	}
	return &sftpService{cfg: cfg, log: log, srv: &push.Server{
		Store: store, AuthorizedKeysFile: cfg.SFTPAuthorizedKeys(), Logger: log, Metrics: push.NewMetrics(reg),
		HandshakeTimeout: time.Duration(cfg.SFTP.LoginTimeout), IdleTimeout: time.Duration(cfg.SFTP.IdleTimeout),
		MaxConns: cfg.SFTP.MaxConns, MaxConnsPerClient: cfg.SFTP.MaxConnsPerClient,
		MaxUploadBytes: cfg.SFTPMaxUploadBytes(), MinFreeBytes: minFree,
	}}
}

func (s *sftpService) Name() string { return "sftp" }

func (s *sftpService) Listen(context.Context) error {
	key, err := push.LoadOrCreateHostKey(filepath.Join(s.cfg.StateDir, HostKeyFile))
	if err != nil {
		return err
	}
	s.srv.HostKey = key
	keys := s.srv.AuthorizedKeysFile
	if ks, err := push.ReadAuthorizedKeys(keys); err != nil {
		return fmt.Errorf("sftp: %w", err)
	} else if len(ks) == 0 {
		s.log.Warn("no authorized keys yet: image push refused until keys are added", "path", keys)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.cfg.SFTP.Address, strconv.Itoa(s.cfg.SFTP.Port)))
	if err != nil {
		return fmt.Errorf("listen sftp: %w", err)
	}
	s.ln = ln
	return nil
}

func (s *sftpService) Serve(ctx context.Context) error { return s.srv.Serve(ctx, s.ln) }

func (s *sftpService) Close() {
	if s.ln != nil {
		s.ln.Close()
	}
}

// loopService is a background loop of the head (backups, stall watch)
// with no socket.
type loopService struct {
	name string
	run  func(ctx context.Context) error
}

func (s loopService) Name() string                    { return s.name }
func (s loopService) Listen(context.Context) error    { return nil }
func (s loopService) Serve(ctx context.Context) error { return s.run(ctx) }
func (s loopService) Close()                          {}

// listenAll opens every service's sockets, in order; on a failure it
// closes those already open.
func listenAll(ctx context.Context, svcs []service) error {
	for i, s := range svcs {
		if err := s.Listen(ctx); err != nil {
			for _, o := range svcs[:i] {
				o.Close()
			}
			return err
		}
	}
	return nil
}

// serveAll serves every service until ctx ends or one fails (then the
// others stop too).
func serveAll(ctx context.Context, svcs []service) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range svcs {
		g.Go(func() error {
			err := s.Serve(gctx)
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("%s: %w", s.Name(), err)
			}
			return nil
		})
	}
	return g.Wait()
}
