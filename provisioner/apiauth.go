package provisioner

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ramboot/ramboot/provisioner/config"
)

// Token roles of api.tokens.
const (
	RoleAdmin = "admin" // every route
	RoleRead  = "read"  // GET routes only
)

// tokenSet is the bearer tokens of the TCP admin API, kept as sha256
// digests, compared in constant time.
type tokenSet struct {
	admin, read [][32]byte
}

// ReadTokens parses a tokens file: one "ROLE TOKEN" per line, ROLE admin
// or read, blank lines and # comments ignored, tokens at least 16
// characters. An error names the file and line.
func ReadTokens(path string) (*tokenSet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("api.tokens: %w", err)
	}
	ts := &tokenSet{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			errs = append(errs, fmt.Errorf("%s:%d: want \"admin TOKEN\" or \"read TOKEN\"", path, n))
			continue
		}
		if len(f[1]) < 16 {
			errs = append(errs, fmt.Errorf("%s:%d: token shorter than 16 characters", path, n))
			continue
		}
		h := sha256.Sum256([]byte(f[1]))
		switch f[0] {
		case RoleAdmin:
			ts.admin = append(ts.admin, h)
		case RoleRead:
			ts.read = append(ts.read, h)
		default:
			errs = append(errs, fmt.Errorf("%s:%d: role %q: want admin or read", path, n, f[0]))
		}
	}
	if len(ts.admin)+len(ts.read) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: no token", path))
	}
	return ts, errors.Join(errs...)
}

// role returns the role of token, "" for none.
func (ts *tokenSet) role(token string) string {
	h := sha256.Sum256([]byte(token))
	role := ""
	for _, t := range ts.admin {
		if subtle.ConstantTimeCompare(t[:], h[:]) == 1 {
			role = RoleAdmin
		}
	}
	for _, t := range ts.read {
		if subtle.ConstantTimeCompare(t[:], h[:]) == 1 && role == "" {
			role = RoleRead
		}
	}
	return role
}

// apiService is the admin API on TCP: TLS, and bearer tokens (admin, or
// read-only: GET and HEAD only). The tokens and the certificate are read
// again on reload.
type apiService struct {
	addr    string
	handler http.Handler
	log     *slog.Logger
	tokens  atomic.Pointer[tokenSet]
	cert    atomic.Pointer[tls.Certificate]
	ln      net.Listener
}

func newAPIService(log *slog.Logger) *apiService { return &apiService{log: log} }

// load reads the certificate and the tokens cfg names.
func (s *apiService) load(cfg config.Config) error {
	s.addr = cfg.API.Listen
	var errs []error
	cert, err := tls.LoadX509KeyPair(cfg.API.TLSCert, cfg.API.TLSKey)
	if err != nil {
		errs = append(errs, fmt.Errorf("%sapi.tls_cert: %w", cfg.Line("api.tls_cert"), err))
	} else {
		s.cert.Store(&cert)
	}
	ts, err := ReadTokens(cfg.API.Tokens)
	if err != nil {
		errs = append(errs, err)
	} else {
		s.tokens.Store(ts)
	}
	return errors.Join(errs...)
}

func (s *apiService) Name() string { return "api" }

func (s *apiService) Listen(context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen api: %w", err)
	}
	s.ln = ln
	return nil
}

// ServeHTTP authenticates the request, then serves it.
func (s *apiService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	role := ""
	if ok {
		role = s.tokens.Load().role(strings.TrimSpace(token))
	}
	deny := func(code int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ramboot"`)
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "{\"error\": %q}\n", msg)
		s.log.Info("admin API request refused", "ip", r.RemoteAddr, "path", r.URL.Path, "code", code)
	}
	switch {
	case role == "":
		deny(http.StatusUnauthorized, "missing or unknown bearer token")
		return
	case role == RoleRead && r.Method != http.MethodGet && r.Method != http.MethodHead:
		deny(http.StatusForbidden, "a read-only token cannot "+r.Method+" "+r.URL.Path)
		return
	case role == RoleRead && r.URL.Path == "/api/v1/state/backup":
		deny(http.StatusForbidden, "a read-only token cannot copy the state database (it holds the nodes' token hashes)")
		return
	}
	s.handler.ServeHTTP(w, r)
}

func (s *apiService) Serve(ctx context.Context) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.cert.Load(), nil },
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	})
	defer stop()
	err := hs.ServeTLS(s.ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *apiService) Close() {
	if s.ln != nil {
		s.ln.Close()
	}
}
