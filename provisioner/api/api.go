// Package api is the head's versioned JSON API (/api/v1): the admin routes
// the ramboot CLI uses over the daemon's unix socket, and the node routes
// that booted nodes call with their per-boot token.
//
//	admin := &api.Admin{DB: db, Images: store}
//	unixMux.Handle("/api/", admin.Handler())
//	node := &api.Node{DB: db, Images: store}
//	tcpMux.Handle("/api/", node.Handler())
//
// Errors are JSON objects {"error": "..."} with a 4xx or 5xx status.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// maxBody bounds every request body.
const maxBody = 1 << 20

// AddNodeRequest is the body of POST /api/v1/nodes.
type AddNodeRequest struct {
	// Name is the node's name.
	Name string `json:"name"`
	// MAC is the provisioning interface's MAC.
	MAC string `json:"mac"`
	// IP is the node's reserved IPv4 address.
	IP string `json:"ip"`
	// Image is the image to boot; empty = the default image.
	Image string `json:"image,omitempty"`
}

// Image is one entry of GET /api/v1/images.
type Image struct {
	// Name is the image's name.
	Name string `json:"name"`
	// Digest is its manifest digest.
	Digest string `json:"digest"`
	// Manifest is the manifest itself.
	Manifest images.Manifest `json:"manifest"`
}

// Error is the body of every error response.
type Error struct {
	// Error says what went wrong.
	Error string `json:"error"`
}

// Admin serves the admin routes. Put it only on a listener that only the
// administrator can reach (the root-only unix socket).
type Admin struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images is the image store; required.
	Images *images.Store
	// Subnet, when valid, is the provisioning subnet node addresses must be in.
	Subnet netip.Prefix
	// Logger logs inventory changes at Info; nil = discard.
	Logger *slog.Logger
}

// Handler returns the admin routes:
//
//	GET    /api/v1/nodes          list nodes with their status
//	POST   /api/v1/nodes          add a node (AddNodeRequest)
//	GET    /api/v1/nodes/{name}   one node with its status and timeline
//	DELETE /api/v1/nodes/{name}   remove a node
//	GET    /api/v1/images         list images
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/nodes", a.listNodes)
	mux.HandleFunc("POST /api/v1/nodes", a.addNode)
	mux.HandleFunc("GET /api/v1/nodes/{name}", a.getNode)
	mux.HandleFunc("DELETE /api/v1/nodes/{name}", a.deleteNode)
	mux.HandleFunc("GET /api/v1/images", a.listImages)
	return mux
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, state.ErrNotFound), errors.Is(err, images.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, state.ErrExists):
		code = http.StatusConflict
	case errors.Is(err, state.ErrBadToken):
		code = http.StatusUnauthorized
	case errors.As(err, new(badRequest)):
		code = http.StatusBadRequest
	}
	writeJSON(w, code, Error{Error: err.Error()})
}

type badRequest struct{ error }

func (b badRequest) Unwrap() error { return b.error }

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest{fmt.Errorf("decode request body: %w", err)}
	}
	return nil
}

func (a *Admin) listNodes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.DB.List())
}

func (a *Admin) getNode(w http.ResponseWriter, r *http.Request) {
	n, err := a.DB.Get(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (a *Admin) addNode(w http.ResponseWriter, r *http.Request) {
	var req AddNodeRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	ip, err := netip.ParseAddr(req.IP)
	if err != nil || !ip.Is4() {
		writeError(w, badRequest{fmt.Errorf("node %s: ip %q: not an IPv4 address", req.Name, req.IP)})
		return
	}
	if a.Subnet.IsValid() && !a.Subnet.Contains(ip) {
		writeError(w, badRequest{fmt.Errorf("node %s: ip %s is not in the provisioning subnet %s", req.Name, ip, a.Subnet.Masked())})
		return
	}
	if a.Subnet.IsValid() && (ip == a.Subnet.Addr() || ip == a.Subnet.Masked().Addr()) {
		writeError(w, badRequest{fmt.Errorf("node %s: ip %s is the head's or the subnet's address", req.Name, ip)})
		return
	}
	if req.Image != "" {
		if err := images.ValidName(req.Image); err != nil {
			writeError(w, badRequest{err})
			return
		}
	}
	n := state.Node{Name: req.Name, MAC: req.MAC, IP: ip, Image: req.Image}
	if err := a.DB.AddNode(n); err != nil {
		if !errors.Is(err, state.ErrExists) {
			err = badRequest{err}
		}
		writeError(w, err)
		return
	}
	got, err := a.DB.Get(req.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("node added", "node", got.Name, "mac", got.MAC, "ip", got.IP, "image", got.Image)
	writeJSON(w, http.StatusCreated, got)
}

func (a *Admin) deleteNode(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := a.DB.DeleteNode(name); err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("node deleted", "node", name)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Admin) listImages(w http.ResponseWriter, r *http.Request) {
	refs, err := a.Images.List()
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Image, 0, len(refs))
	for _, ref := range refs {
		out = append(out, Image{Name: ref.Name, Digest: string(ref.Digest), Manifest: ref.Manifest})
	}
	writeJSON(w, http.StatusOK, out)
}

// Node serves the routes booted nodes call.
type Node struct {
	// DB is the inventory; required.
	DB *state.DB
	// Images is the image store, to resolve what a node reports it runs;
	// required.
	Images *images.Store
	// DefaultImage is the image of nodes that have none.
	DefaultImage string
	// Logger logs reports at Info; nil = discard.
	Logger *slog.Logger
}

// Handler returns the node routes:
//
//	POST /api/v1/nodes/{name}/report   the agent's report (overlay.Report),
//	                                   with "Authorization: Bearer TOKEN"
//
// and the routes of the node's containers and jobs (see workloadRoutes).
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+overlay.ReportPath, n.report)
	n.workloadRoutes(mux) // nodeworkload.go
	return mux
}

func (n *Node) report(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("node")
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		writeError(w, fmt.Errorf("report from node %s: missing bearer token: %w", name, state.ErrBadToken))
		return
	}
	var rep overlay.Report
	if err := decode(r, &rep); err != nil {
		writeError(w, err)
		return
	}
	if rep.State != overlay.StateReady && rep.State != overlay.StateFailed {
		writeError(w, badRequest{fmt.Errorf("report from node %s: unknown state %q", name, rep.State)})
		return
	}
	node, err := n.DB.Get(name)
	if err != nil {
		writeError(w, err)
		return
	}
	assigned := node.Image
	if assigned == "" {
		assigned = n.DefaultImage
	}
	imgName, imgDigest := n.resolve(assigned, rep.ContentDigest)
	err = n.DB.SetReport(name, token, state.Report{
		State:         string(rep.State),
		Error:         rep.Error,
		ImageName:     imgName,
		ImageDigest:   imgDigest,
		ContentDigest: rep.ContentDigest,
		Kernel:        rep.Kernel,
		MemTotalBytes: rep.MemTotalBytes,
		UptimeSeconds: rep.UptimeSeconds,
	})
	if err != nil {
		writeError(w, err)
		return
	}
	l := logger(n.Logger)
	if rep.State == overlay.StateReady {
		l.Info("node booted", "node", name, "ip", node.IP, "image", imgName, "digest", imgDigest, "kernel", rep.Kernel, "uptime", rep.UptimeSeconds)
	} else {
		l.Warn("node boot failed", "node", name, "ip", node.IP, "err", rep.Error)
	}
	w.WriteHeader(http.StatusNoContent)
}

// resolve maps the content digest a node reports to the image it runs:
// the node's assigned image when the content matches it, else any image
// with that content; the digest is empty when no image matches.
func (n *Node) resolve(assigned, content string) (name, digest string) {
	refs, err := n.Images.List()
	if err != nil || content == "" {
		return assigned, ""
	}
	for _, ref := range refs {
		if string(ref.Manifest.ContentDigest) != content {
			continue
		}
		if name == "" || ref.Name == assigned {
			name, digest = ref.Name, string(ref.Digest)
		}
	}
	if name == "" {
		return assigned, ""
	}
	return name, digest
}
