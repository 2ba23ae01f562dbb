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

// dhcpService is the DHCP server on the provisioning interface, with the
// rival detector.
type dhcpService struct {
	iface  string
	srv    *dhcp.Server
	det    *dhcp.RivalDetector // nil: off
	conn   net.PacketConn
	rivals net.PacketConn
}

func newDHCPService(cfg config.Config, headIP netip.Addr, bootFiles map[uint16]string, inv dhcp.Inventory, observe func(dhcp.Event), log *slog.Logger, reg prometheus.Registerer) *dhcpService {
	arches := map[pxe.Arch]string{}
	for a, f := range bootFiles {
		arches[pxe.Arch(a)] = f
	}
	m := dhcp.NewMetrics(reg)
	s := &dhcpService{iface: cfg.Interface, srv: &dhcp.Server{
		ServerIP:      headIP,
		Inventory:     inv,
		BootFiles:     arches,
		LeaseTime:     time.Duration(cfg.DHCP.LeaseTime),
		ReceiveBuffer: cfg.DHCP.ReceiveBuffer,
		Observer:      observe,
		Logger:        log,
		Metrics:       m,
	}}
	if cfg.DHCP.DetectRivals {
		s.det = &dhcp.RivalDetector{ServerIP: headIP, Inventory: inv, Logger: log, Metrics: m}
	}
	return s
}

func (s *dhcpService) Name() string { return "dhcp" }

func (s *dhcpService) Listen(ctx context.Context) error {
	var err error
	if s.conn, err = dhcp.Listen(ctx, s.iface); err != nil {
		return err
	}
	if s.det != nil {
		if s.rivals, err = dhcp.ListenRivals(s.iface); err != nil {
			s.Close()
			return fmt.Errorf("%w (set dhcp.detect_rivals: false to run without it)", err)
		}
	}
	return nil
}

func (s *dhcpService) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.srv.Serve(gctx, s.conn) })
	if s.rivals != nil {
		g.Go(func() error { return s.det.Serve(gctx, s.rivals) })
	}
	return g.Wait()
}

func (s *dhcpService) Close() {
	for _, c := range []net.PacketConn{s.conn, s.rivals} {
		if c != nil {
			c.Close()
		}
	}
}

// tftpService is the TFTP server on the head's address, tftp.port.
type tftpService struct {
	addr string
	srv  *tftp.Server
	conn *net.UDPConn
}

func newTFTPService(cfg config.Config, headIP netip.Addr, observe func(tftp.Event), log *slog.Logger, reg prometheus.Registerer) *tftpService {
	return &tftpService{
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
}

func (s *tftpService) Name() string { return "tftp" }

func (s *tftpService) Listen(ctx context.Context) (err error) {
	s.conn, err = tftp.Listen(ctx, s.addr)
	return err
}

func (s *tftpService) Serve(ctx context.Context) error { return s.srv.Serve(ctx, s.conn) }

func (s *tftpService) Close() {
	if s.conn != nil {
		s.conn.Close()
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
