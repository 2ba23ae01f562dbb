// Package bootserver is the head's HTTP boot service: everything iPXE fetches
// after DHCP. It renders each node's iPXE script and serves the image's
// kernel and root file system, the agent archive and the node's overlay,
// recording each step in the node's boot timeline.
//
// Routes (all GET):
//
//	/boot/ipxe?mac=MAC                          the node's iPXE script
//	/boot/image/{manifest-hex}/vmlinuz          the image's kernel
//	/boot/image/{manifest-hex}/rootfs.cpio.zst  the image's root file system
//	/boot/image/{manifest-hex}/rootfs.squashfs.cpio  its compressed root (the compressed root mode)
//	/boot/agent.cpio.zst                        ramboot-agent as /init
//	/boot/node/{name}/{nonce}/overlay.cpio.zst  the node's overlay
//	/boot/nbp/{file}                            an iPXE binary of the TFTP catalogue (UEFI HTTP boot)
//	/boot/discovery                             the script of machines the inventory does not know
//
// The script and the overlay are served only to the node's reserved address.
// Serving a script mints a boot nonce and revokes the previous boot's report
// token. The overlay needs that nonce and is served only whole (no HEAD,
// Range or conditional request): the first complete GET spends the nonce and
// makes the token inside it the node's token for this boot. A GET that fails
// midway spends nothing, so iPXE can retry it.
//
// What each node gets comes from the head's policy seam (provisioner/plan)
// through Nodes, a small interface this package defines: the server never
// sees the database.
//
//	s := &bootserver.Server{Nodes: head, Images: store, Agent: agent, BaseURL: "http://10.77.0.1"}
//	mux.Handle("/boot/", s.Handler())
package bootserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/newc"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/plan"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/pxe/ipxe"
)

// Names of the files in every node's script; the kernel's EFI stub finds
// the initrds by these names.
const (
	KernelName = "vmlinuz"
	RootfsName = "rootfs.cpio.zst"
	// CompressedRootName is the image's compressed root, sent instead of
	// RootfsName to nodes in the compressed root mode.
	CompressedRootName = "rootfs.squashfs.cpio"
	AgentName          = "agent.cpio.zst"
	OverlayName        = "overlay.cpio.zst"
	// AgentGzipName and OverlayGzipName are the agent and overlay
	// archives compressed with gzip, sent with an image whose root is
	// (images.MediaTypeRootfsGzip: kernels older than 5.9 unpack no zstd).
	AgentGzipName   = "agent.cpio.gz"
	OverlayGzipName = "overlay.cpio.gz"
)

// Retry is the iPXE script's schedule for a file it cannot fetch (see
// ipxe.Script's fields of the same names).
type Retry struct {
	Attempts           int
	MaxWait, FailPause time.Duration
}

// Compression is how the agent and overlay archives sent to a node are
// compressed: as the node's image's root is, so that a kernel that
// unpacks the image unpacks them too.
type Compression string

// Compressions.
const (
	Zstd Compression = "zstd"
	Gzip Compression = "gzip"
)

// CompressionOf returns the compression of m's root file system.
func CompressionOf(m images.Manifest) Compression {
	if m.Rootfs.MediaType == images.MediaTypeRootfsGzip {
		return Gzip
	}
	return Zstd
}

// names returns the agent's and the overlay's file names for c.
func (c Compression) names() (agent, overlay string) {
	if c == Gzip {
		return AgentGzipName, OverlayGzipName
	}
	return AgentName, OverlayName
}

// Nodes is what the boot server needs from the head: each node's boot
// plan, by the address its requests come from, and the boot's secrets and
// timeline.
type Nodes interface {
	// ByIP returns the plan of the node an address is reserved for; an
	// error wrapping state.ErrNotFound when there is none.
	ByIP(ip netip.Addr) (plan.Plan, error)
	// Plan returns the plan of the node called name.
	Plan(name string) (plan.Plan, error)
	// StartScript records the script step with detail, pins the image
	// digest the script names, and mints the boot nonce the script carries
	// (revoking the previous boot's token).
	StartScript(node, detail, ref, digest string) (nonce string, err error)
	// CheckNonce reports whether nonce is the node's unspent boot nonce
	// (an error wrapping state.ErrBadToken when not).
	CheckNonce(node, nonce string) error
	// ReserveToken makes token the node's report token for this boot if
	// nonce is its unspent boot nonce (an error wrapping
	// state.ErrBadToken when not), leaving the nonce unspent: called
	// before the overlay carrying token is sent.
	ReserveToken(node, nonce, token string) error
	// ExpectToken says an overlay carrying token is being sent to the
	// node: until release, the node's requests with it wait for
	// ConsumeNonce instead of failing (state.DB.ExpectToken).
	ExpectToken(node, token string) (release func())
	// ConsumeNonce spends the nonce and makes token the node's report
	// token for this boot, recording the overlay step with detail.
	ConsumeNonce(node, nonce, token, detail string) error
	// Post records a step in the node's timeline without waiting for it
	// to be written.
	Post(node string, step state.Step, detail string)
}

// Overlays renders nodes' overlays: a node's overlay archive (compressed
// newc, possibly several concatenated: the kernel unpacks them in order)
// for one boot, with token as its report token, in parts the server sends
// one after the other (so that the part every node shares, compressed
// once, is not copied for each request), the token in the last part only
// (the server sends the others while the token is being committed); and
// its runtime overlay, what the agent daemon applies to a running node.
type Overlays interface {
	Overlay(ctx context.Context, node, token string, c Compression) ([][]byte, error)
	RuntimeOverlay(node string) (overlay.RuntimeOverlay, error)
}

// Server serves the /boot/ routes. Its exported fields must be set before
// Handler is called and not changed after.
type Server struct {
	// Nodes answers what each node gets; required.
	Nodes Nodes
	// Images is the image store; required.
	Images *images.Store
	// Fetch, when set, brings an image this head lacks (a reference, or a
	// manifest digest "sha256:...") from a peer head, verified, into
	// Images (several heads on one etcd: docs/scale-out.md); nil means
	// none.
	Fetch func(ctx context.Context, ref string) error
	// Agent is the agent archive; required.
	Agent *Archive
	// Retry is the scripts' retry schedule; zero fields take ipxe's
	// defaults.
	Retry Retry
	// Overlays renders the nodes' overlays; nil serves the minimal one
	// (the agent's configuration and the host name, OverlayFiles).
	Overlays Overlays
	// BaseURL is the head's HTTP base URL as nodes reach it, e.g.
	// "http://10.77.0.1"; required.
	BaseURL string
	// Logger receives per-request detail at Debug; nil = discard.
	Logger *slog.Logger
	// Metrics, when set, counts requests by route and status.
	Metrics *Metrics
	// NBP holds the network boot programs (the iPXE binaries) that UEFI
	// HTTP boot fetches from /boot/nbp/; nil serves none. Only the names
	// in NBPFiles are served (the TFTP catalogue).
	NBP      fs.FS
	NBPFiles []string

	mu     sync.Mutex
	active map[netip.Addr]int // transfers under way, by client address
}

// Busy reports whether a transfer to ip is under way: a node downloading a
// large image is making progress even though its timeline has no new step
// until the download ends.
func (s *Server) Busy(ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[ip.Unmap()] > 0
}

// transfer counts a transfer to the request's client until the returned
// function is called.
func (s *Server) transfer(r *http.Request) (done func()) {
	ip, err := remoteIP(r)
	if err != nil {
		return func() {}
	}
	s.mu.Lock()
	if s.active == nil {
		s.active = map[netip.Addr]int{}
	}
	s.active[ip]++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.active[ip]--; s.active[ip] <= 0 {
			delete(s.active, ip)
		}
		s.mu.Unlock()
	}
}

// Metrics are the boot server's Prometheus metrics.
type Metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

// NewMetrics registers the boot server's metrics with reg:
// ramboot_http_boot_requests_total{route,code} and
// ramboot_http_boot_bytes_total{route}.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_http_boot_requests_total",
			Help: "Boot HTTP requests by route and status code.",
		}, []string{"route", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_http_boot_bytes_total",
			Help: "Bytes sent by the boot HTTP routes.",
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.bytes)
	return m
}

// Archive is a prebuilt file served with a strong ETag, zstd-compressed,
// and its gzip twin if any.
type Archive struct {
	data    []byte
	etag    string
	modTime time.Time
	gz      *Archive
}

// NewAgentArchive builds the agent archive: a zstd-compressed newc cpio
// holding the ramboot-agent executable at path as /init, with
// /dev/console and /dev/null; and the same compressed with gzip.
func NewAgentArchive(path string) (*Archive, error) {
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent binary: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("stat agent binary: %w", err)
	}
	// dev/console and dev/null: if the kernel finds no /dev/console it starts
	// /init with no open descriptors, and the Go runtime aborts before main
	// when it cannot open /dev/null for them: PID 1 would exit and the
	// kernel panic. Debian's kernels carry both in their built-in
	// initramfs; other kernels may not.
	files := []newc.File{
		{Name: "dev", Mode: 0o755 | os.ModeDir},
		{Name: "dev/console", Mode: 0o600 | os.ModeDevice | os.ModeCharDevice, Major: 5, Minor: 1},
		{Name: "dev/null", Mode: 0o666 | os.ModeDevice | os.ModeCharDevice, Major: 1, Minor: 3},
		{Name: "init", Mode: 0o755, Data: bin},
	}
	a, err := compressArchive(files, st.ModTime(), Zstd)
	if err != nil {
		return nil, err
	}
	if a.gz, err = compressArchive(files, st.ModTime(), Gzip); err != nil {
		return nil, err
	}
	return a, nil
}

// encoder compresses every archive the server builds. EncodeAll is safe
// for concurrent use, so one encoder serves all requests instead of a new
// one (and its buffers) per overlay.
var encoder = func() *zstd.Encoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		panic(fmt.Sprintf("zstd encoder: %v", err)) // only for invalid options
	}
	return e
}()

func compressArchive(files []newc.File, mod time.Time, c Compression) (*Archive, error) {
	var raw bytes.Buffer
	if err := newc.WriteFiles(&raw, files); err != nil {
		return nil, fmt.Errorf("write archive: %w", err)
	}
	data, err := Compress(raw.Bytes(), c)
	if err != nil {
		return nil, fmt.Errorf("write archive: %w", err)
	}
	sum := sha256.Sum256(data)
	return &Archive{data: data, etag: `"sha256:` + hex.EncodeToString(sum[:]) + `"`, modTime: mod}, nil
}

// Compress returns b compressed with c: one zstd frame, or one gzip
// member. Frames and members concatenate: the kernel unpacks each in turn.
func Compress(b []byte, c Compression) ([]byte, error) {
	if c != Gzip {
		return encoder.EncodeAll(b, nil), nil
	}
	var out bytes.Buffer
	out.Grow(len(b) / 2)
	zw, err := gzip.NewWriterLevel(&out, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// OverlayFiles returns the files of a node's overlay archive.
func OverlayFiles(c overlay.Config) ([]newc.File, error) {
	js, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode node config %s: %w", c.Node, err)
	}
	return []newc.File{
		{Name: "etc", Mode: 0o755 | os.ModeDir},
		{Name: "etc/ramboot", Mode: 0o755 | os.ModeDir},
		{Name: overlay.ConfigPath, Mode: 0o600, Data: append(js, '\n')},
		{Name: "etc/hostname", Mode: 0o644, Data: []byte(c.HostnameOrNode() + "\n")},
	}, nil
}

// Handler returns the handler of the /boot/ routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boot/ipxe", s.serveScript)
	mux.HandleFunc("GET /boot/blob/{digest}", s.serveBlob) // for peer heads
	mux.HandleFunc("GET /boot/ref/{ref}", s.serveRef)
	mux.HandleFunc("GET /boot/image/{digest}/{file}", s.serveImage)
	mux.HandleFunc("GET /boot/"+AgentName, s.serveAgent)
	mux.HandleFunc("GET /boot/"+AgentGzipName, s.serveAgent)
	mux.HandleFunc("GET /boot/node/{name}/{nonce}/"+OverlayName, s.serveOverlay)
	mux.HandleFunc("GET /boot/node/{name}/{nonce}/"+OverlayGzipName, s.serveOverlay)
	mux.HandleFunc("GET /boot/nbp/{file}", s.serveNBP)
	mux.HandleFunc("GET /boot/discovery", s.serveDiscovery)
	return mux
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func remoteIP(r *http.Request) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("remote address %q: %w", r.RemoteAddr, err)
	}
	return ap.Addr().Unmap(), nil
}

// remoteNode returns the plan of the node whose reserved address made the
// request.
func (s *Server) remoteNode(r *http.Request) (plan.Plan, netip.Addr, error) {
	ip, err := remoteIP(r)
	if err != nil {
		return plan.Plan{}, netip.Addr{}, err
	}
	p, err := s.Nodes.ByIP(ip)
	return p, ip, err
}

func (s *Server) fail(w http.ResponseWriter, route string, code int, err error, attrs ...any) {
	s.log().Debug("boot request refused", append(attrs, "route", route, "code", code, "err", err)...)
	s.count(route, code, 0)
	http.Error(w, err.Error(), code)
}

func (s *Server) count(route string, code int, n int64) {
	if s.Metrics == nil {
		return
	}
	s.Metrics.requests.WithLabelValues(route, fmt.Sprint(code)).Inc()
	if n > 0 {
		s.Metrics.bytes.WithLabelValues(route).Add(float64(n))
	}
}

// RootFor returns the root settings of a node with plan p booting image
// m: the plan's. A node in the compressed mode whose image has no
// compressed root boots in the tmpfs mode, and note says why: a node that
// boots with more RAM taken beats one that does not boot. The script's
// root initrd and the overlay's configuration both follow it.
func RootFor(p plan.Plan, m images.Manifest) (root overlay.Root, note string) {
	root = overlay.Root{Mode: overlay.RootMode(p.Root.Mode), Size: p.Root.Size}
	if root.ModeOrDefault() == overlay.RootCompressed && m.CompressedRoot == nil {
		root.Mode = overlay.RootTmpfs
		note = "compressed root mode, but the image has no compressed root: tmpfs"
	}
	return root, note
}

// imageFor returns the node's image: the digest its plan is pinned to,
// else what its reference resolves to now (the script then pins it). An
// image this head lacks, whole or in part, is fetched from a peer head
// first (Fetch), verified.
func (s *Server) imageFor(ctx context.Context, p plan.Plan) (string, images.Manifest, images.Digest, error) {
	m, d, err := s.localImage(p)
	if s.Fetch == nil || (err == nil && s.complete(m)) || (err != nil && !errors.Is(err, images.ErrNotFound)) {
		return p.Image, m, d, err
	}
	ref := p.Image
	if p.Digest != "" {
		ref = p.Digest
	}
	if ferr := s.Fetch(ctx, ref); ferr != nil {
		if err == nil {
			err = fmt.Errorf("node %s: image %s: blobs missing here: %w", p.Node, ref, ferr)
		} else {
			err = fmt.Errorf("%w; from the peer heads: %v", err, ferr)
		}
		return p.Image, images.Manifest{}, "", err
	}
	m, d, err = s.localImage(p)
	return p.Image, m, d, err
}

// complete reports whether every blob of m is stored here.
func (s *Server) complete(m images.Manifest) bool {
	arts := []images.Artifact{m.Kernel, m.Rootfs}
	if m.CompressedRoot != nil {
		arts = append(arts, *m.CompressedRoot)
	}
	for _, a := range arts {
		if !s.Images.HasBlob(a) {
			return false
		}
	}
	return true
}

// localImage is imageFor from this head's store alone.
func (s *Server) localImage(p plan.Plan) (images.Manifest, images.Digest, error) {
	if p.Digest != "" {
		d, err := images.ParseDigest(p.Digest)
		if err == nil {
			var m images.Manifest
			if m, err = s.Images.ReadManifest(d); err == nil {
				return m, d, nil
			}
		}
		return images.Manifest{}, "", fmt.Errorf("node %s: image %s pinned at %s: %w (move the node: ramboot node set %s --image %s)", p.Node, p.Image, p.Digest, err, p.Node, p.Image)
	}
	m, d, err := s.Images.Resolve(p.Image)
	if err != nil {
		return images.Manifest{}, "", fmt.Errorf("node %s: image %s: %w", p.Node, p.Image, err)
	}
	return m, d, nil
}

// serveBlob serves a stored blob (a manifest or an image file) by its
// digest's hex, to peer heads fetching what they lack; the fetcher
// verifies the digest. Blobs are content-addressed and public on the
// provisioning link like the image routes.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) {
	const route = "blob"
	d, err := images.ParseDigest("sha256:" + r.PathValue("digest"))
	if err != nil {
		s.fail(w, route, http.StatusNotFound, err)
		return
	}
	f, err := s.Images.OpenBlob(d)
	if err != nil {
		s.fail(w, route, http.StatusNotFound, err)
		return
	}
	defer f.Close()
	w.Header().Set("ETag", `"`+string(d)+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	cw := &countingWriter{ResponseWriter: w, code: http.StatusOK}
	http.ServeContent(cw, r, "", time.Time{}, f)
	s.count(route, cw.code, cw.n)
}

// serveRef answers the manifest digest a reference resolves to on this
// head (its own store only: a head never asks its peers on a peer's
// behalf).
func (s *Server) serveRef(w http.ResponseWriter, r *http.Request) {
	const route = "ref"
	_, d, err := s.Images.Resolve(r.PathValue("ref"))
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, images.ErrNotFound) {
			code = http.StatusNotFound
		}
		s.fail(w, route, code, err)
		return
	}
	s.count(route, http.StatusOK, 0)
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, d)
}

func (s *Server) serveScript(w http.ResponseWriter, r *http.Request) {
	const route = "script"
	if r.Method != http.MethodGet { // a HEAD would revoke the node's token for nothing
		w.Header().Set("Allow", http.MethodGet)
		s.fail(w, route, http.StatusMethodNotAllowed, errors.New("script: only GET"))
		return
	}
	mac, err := state.NormalizeMAC(r.URL.Query().Get("mac"))
	if err != nil {
		s.fail(w, route, http.StatusBadRequest, err)
		return
	}
	n, ip, err := s.remoteNode(r)
	if _, own := n.Interface(mac); err != nil || !own {
		s.fail(w, route, http.StatusForbidden, fmt.Errorf("script for %s is served only to its node's reserved address", mac), "mac", mac, "ip", ip)
		return
	}
	name, m, d, err := s.imageFor(r.Context(), n)
	if err != nil {
		s.fail(w, route, http.StatusNotFound, err, "node", n.Node)
		return
	}
	root, note := RootFor(n, m)
	if note != "" {
		s.log().Warn(note, "node", n.Node, "image", name)
	}
	base := strings.TrimRight(s.BaseURL, "/")
	img := base + "/boot/image/" + d.Hex() + "/"
	args := "ramboot.node=" + n.Node
	if n.KernelArgs != "" {
		args += " " + n.KernelArgs
	}
	sc := ipxe.Script{
		Comment:  fmt.Sprintf("node %s, image %s %s", n.Node, name, shortDigest(string(d))),
		Kernel:   ipxe.File{URL: img + KernelName},
		Args:     args,
		Attempts: s.Retry.Attempts, MaxWait: s.Retry.MaxWait, FailPause: s.Retry.FailPause,
	}
	if _, err := sc.Render(); err != nil { // before a nonce is minted
		s.fail(w, route, http.StatusInternalServerError, err, "node", n.Node)
		return
	}
	detail := fmt.Sprintf("image %s %s, root %s", name, shortDigest(string(d)), root.ModeOrDefault())
	if note != "" {
		detail += " (" + note + ")"
	}
	nonce, err := s.Nodes.StartScript(n.Node, detail, name, string(d))
	if err != nil {
		s.fail(w, route, http.StatusInternalServerError, err, "node", n.Node)
		return
	}
	rootfs := RootfsName
	if root.ModeOrDefault() == overlay.RootCompressed {
		rootfs = CompressedRootName
	}
	agentName, overlayName := CompressionOf(m).names()
	sc.Initrds = []ipxe.File{
		{URL: img + rootfs},
		{URL: base + "/boot/" + agentName},
		{URL: base + "/boot/node/" + n.Node + "/" + nonce + "/" + overlayName},
	}
	script, err := sc.Render()
	if err != nil {
		s.fail(w, route, http.StatusInternalServerError, err, "node", n.Node)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	nw, _ := w.Write(script)
	s.count(route, http.StatusOK, int64(nw))
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// record posts a download step to the node's timeline: the response
// does not wait for the disk.
func (s *Server) record(node string, step state.Step, detail string) {
	s.Nodes.Post(node, step, detail)
}

func (s *Server) serveImage(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	route, step := "", state.Step("")
	switch file {
	case KernelName:
		route, step = "kernel", state.StepKernel
	case RootfsName:
		route, step = "rootfs", state.StepImage
	case CompressedRootName:
		route, step = "compressed-root", state.StepImage
	default:
		s.fail(w, "image", http.StatusNotFound, fmt.Errorf("no file %q in an image", file))
		return
	}
	md, err := images.ParseDigest("sha256:" + r.PathValue("digest"))
	if err != nil {
		s.fail(w, route, http.StatusNotFound, err)
		return
	}
	m, err := s.Images.ReadManifest(md)
	if err != nil {
		s.fail(w, route, http.StatusNotFound, err)
		return
	}
	art := m.Kernel
	switch route {
	case "rootfs":
		art = m.Rootfs
	case "compressed-root":
		if m.CompressedRoot == nil {
			s.fail(w, route, http.StatusNotFound, fmt.Errorf("image %s has no compressed root (built with --no-compressed-root)", m.Name))
			return
		}
		art = *m.CompressedRoot
	}
	f, err := s.Images.OpenBlob(art.Digest)
	if err != nil {
		s.fail(w, route, http.StatusNotFound, fmt.Errorf("image %s %s: %w", m.Name, file, err))
		return
	}
	defer f.Close()
	w.Header().Set("ETag", `"`+string(art.Digest)+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("Content-Type", "application/octet-stream")
	s.serveContent(w, r, route, step, file, m.Created, f)
}

// serveContent serves content with Range and conditional requests, and
// records the step for the requesting node once the transfer ends.
func (s *Server) serveContent(w http.ResponseWriter, r *http.Request, route string, step state.Step, file string, mod time.Time, content io.ReadSeeker) {
	defer s.transfer(r)()
	start := time.Now()
	cw := &countingWriter{ResponseWriter: w, code: http.StatusOK}
	http.ServeContent(cw, r, file, mod, content)
	s.count(route, cw.code, cw.n)
	n, ip, err := s.remoteNode(r)
	if err != nil {
		s.log().Debug("boot file to a host that is not a node", "route", route, "ip", ip, "bytes", cw.n)
		return
	}
	if cw.code >= 300 && cw.code != http.StatusNotModified {
		s.record(n.Node, step, fmt.Sprintf("%s: HTTP %d", file, cw.code))
		return
	}
	s.record(n.Node, step, fmt.Sprintf("%s %s in %s", file, humanBytes(cw.n), time.Since(start).Round(time.Millisecond)))
}

// serveNBP serves an iPXE binary of the catalogue to UEFI HTTP boot
// firmware (to anyone: the same files TFTP serves), recording it as the
// node's TFTP step (the firmware's fetch of its iPXE binary).
func (s *Server) serveNBP(w http.ResponseWriter, r *http.Request) {
	const route = "nbp"
	name := r.PathValue("file")
	if s.NBP == nil || !slices.Contains(s.NBPFiles, name) || !fs.ValidPath(name) {
		s.fail(w, route, http.StatusNotFound, fmt.Errorf("nbp %q: not in the catalogue (tftp.files)", name))
		return
	}
	f, err := s.NBP.Open(name)
	if err != nil {
		s.fail(w, route, http.StatusNotFound, fmt.Errorf("nbp %s: %w", name, err))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	rs, ok := f.(io.ReadSeeker)
	if err != nil || !ok || !st.Mode().IsRegular() {
		s.fail(w, route, http.StatusNotFound, fmt.Errorf("nbp %s: not a regular file", name))
		return
	}
	w.Header().Set("Content-Type", "application/efi")
	s.serveContent(w, r, route, state.StepTFTP, "http "+name, st.ModTime(), rs)
}

// DiscoveryScript is the iPXE script of a machine the inventory does not
// know (the DHCP server's discovery pool gives it this URL): it says what
// to do and asks DHCP again every 30 seconds, until the machine is adopted
// (ramboot node adopt) and DHCP names its own script instead.
const DiscoveryScript = `#!ipxe
:wait
echo ramboot: ${mac} (${manufacturer} ${product}, serial ${serial}) is not in the inventory.
echo ramboot: it is recorded; adopt it on the head with: ramboot node adopt ${mac} NAME --ip IP
echo ramboot: asking DHCP again in 30 seconds
sleep 30
dhcp || goto wait
chain --replace --autofree ${filename} || goto wait
`

func (s *Server) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	n, _ := io.WriteString(w, DiscoveryScript)
	s.count("discovery", http.StatusOK, int64(n))
}

func (s *Server) serveAgent(w http.ResponseWriter, r *http.Request) {
	a, name := s.Agent, AgentName
	if strings.HasSuffix(r.URL.Path, "/"+AgentGzipName) {
		a, name = s.Agent.gz, AgentGzipName
		if a == nil {
			s.fail(w, "agent", http.StatusNotFound, errors.New("no gzip agent archive"))
			return
		}
	}
	w.Header().Set("ETag", a.etag)
	w.Header().Set("Content-Type", "application/octet-stream")
	s.serveContent(w, r, "agent", state.StepAgent, name, a.modTime, bytes.NewReader(a.data))
}

func (s *Server) serveOverlay(w http.ResponseWriter, r *http.Request) {
	const route = "overlay"
	name, nonce := r.PathValue("name"), r.PathValue("nonce")
	n, ip, err := s.remoteNode(r)
	if err != nil || n.Node != name {
		s.fail(w, route, http.StatusForbidden, fmt.Errorf("overlay of node %s is served only to its reserved address", name), "node", name, "ip", ip)
		return
	}
	// Only a plain, whole GET may spend the nonce: the overlay carries the
	// node's secret, which must not be minted for a probe or a fragment.
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.fail(w, route, http.StatusMethodNotAllowed, fmt.Errorf("overlay of node %s: only GET", name), "node", name)
		return
	}
	for _, h := range []string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"} {
		if r.Header.Get(h) != "" {
			s.fail(w, route, http.StatusBadRequest, fmt.Errorf("overlay of node %s is served only whole: no %s", name, h), "node", name)
			return
		}
	}
	if err := s.Nodes.CheckNonce(name, nonce); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, state.ErrBadToken) {
			code = http.StatusForbidden
		}
		s.fail(w, route, code, err, "node", name)
		return
	}
	imgName, m, d, err := s.imageFor(r.Context(), n)
	if err != nil {
		s.fail(w, route, http.StatusNotFound, err, "node", name)
		return
	}
	// The name in the script says the compression: the image's.
	comp, file := Zstd, OverlayName
	if strings.HasSuffix(r.URL.Path, "/"+OverlayGzipName) {
		comp, file = Gzip, OverlayGzipName
	}
	token := state.NewToken()
	// The token is the node's before the overlay carrying it leaves: a
	// node that has the overlay can register with any head, even if this
	// one dies before it records the overlay step below. The commit runs
	// while the overlay is rendered and its shared part sent: made first,
	// it held the first byte back for a whole commit, and under a storm
	// nodes gave up on the overlay (a stall) while the head went on to
	// send it and spend the nonce (their retries were refused).
	reserved := make(chan error, 1)
	go func() { reserved <- s.Nodes.ReserveToken(name, nonce, token) }()
	var parts [][]byte
	if s.Overlays != nil {
		if parts, err = s.Overlays.Overlay(r.Context(), name, token, comp); err != nil {
			// A template that fails for this node: its timeline says
			// why; other nodes are not affected.
			s.record(name, state.StepOverlay, "overlay not rendered: "+err.Error())
			s.fail(w, route, http.StatusInternalServerError, err, "node", name)
			return
		}
	} else {
		c, err := s.NodeConfig(n, imgName, m, d)
		if err != nil {
			s.fail(w, route, http.StatusInternalServerError, err, "node", name)
			return
		}
		c.Token = token
		files, err := OverlayFiles(c)
		if err != nil {
			s.fail(w, route, http.StatusInternalServerError, err, "node", name)
			return
		}
		a, err := compressArchive(files, time.Now(), comp)
		if err != nil {
			s.fail(w, route, http.StatusInternalServerError, err, "node", name)
			return
		}
		parts = [][]byte{a.data}
	}
	size := 0
	for _, p := range parts {
		size += len(p)
	}
	// The parts before the last carry no token (Overlays): with none, the
	// commit is waited for before anything is sent, and a refusal is an
	// answer.
	if len(parts) == 0 {
		s.fail(w, route, http.StatusInternalServerError, fmt.Errorf("overlay of node %s: rendered empty", name), "node", name)
		return
	}
	pre, last := parts[:len(parts)-1], parts[len(parts)-1]
	if len(pre) == 0 {
		if err := <-reserved; err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, state.ErrBadToken) {
				code = http.StatusForbidden
			}
			s.fail(w, route, code, err, "node", name)
			return
		}
		reserved <- nil
	}
	defer s.transfer(r)()
	// The node may use the token the moment it has the last byte, before
	// ConsumeNonce below committed it: its requests wait until then.
	defer s.Nodes.ExpectToken(name, token)()
	start := time.Now()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", fmt.Sprint(size))
	var nw int
	write := func(p []byte) {
		if err == nil {
			var k int
			k, err = w.Write(p)
			nw += k
		}
	}
	for _, p := range pre {
		write(p)
	}
	if rerr := <-reserved; rerr != nil {
		// Headers and the shared part are gone: cut the transfer. The
		// node's retry (iPXE) asks again, and is refused if the nonce
		// was spent or replaced meanwhile.
		s.count(route, http.StatusOK, int64(nw))
		s.log().Debug("overlay cut: its token could not be committed", "node", name, "ip", ip, "err", rerr)
		s.record(name, state.StepOverlay, fmt.Sprintf("%s: cut after %d of %d bytes: token not committed: %v", file, nw, size, rerr))
		panic(http.ErrAbortHandler)
	}
	write(last)
	if err == nil {
		err = http.NewResponseController(w).Flush()
	}
	s.count(route, http.StatusOK, int64(nw))
	if err != nil || nw != size {
		// The nonce stays unspent: iPXE's retry gets a new token.
		s.log().Debug("overlay not sent whole", "node", name, "ip", ip, "bytes", nw, "err", err)
		s.record(name, state.StepOverlay, fmt.Sprintf("%s: sent %d of %d bytes: %v", file, nw, size, err))
		return
	}
	err = s.Nodes.ConsumeNonce(name, nonce, token,
		fmt.Sprintf("%s %s in %s, token minted", file, humanBytes(int64(nw)), time.Since(start).Round(time.Millisecond)))
	if err != nil {
		s.log().Warn("overlay sent, but its token could not be made the node's", "node", name, "err", err)
	}
}

// hostnameIfNotName returns the plan's host name when it is not the
// node's name (node.json carries it only then).
func hostnameIfNotName(p plan.Plan) string {
	if p.Hostname == p.Node {
		return ""
	}
	return p.Hostname
}

type countingWriter struct {
	http.ResponseWriter
	code int
	n    int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadFrom keeps the underlying writer's sendfile path for files.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, r)
	c.n += n
	return n, err
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
