package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/state"
)

// Image is one image reference, as GET /api/v1/images lists them.
type Image struct {
	// Name is the image's name.
	Name string `json:"name"`
	// Tag is the reference's tag.
	Tag string `json:"tag"`
	// Ref is "name:tag".
	Ref string `json:"ref"`
	// Digest is its manifest digest.
	Digest string `json:"digest"`
	// Manifest is the manifest itself.
	Manifest images.Manifest `json:"manifest"`
	// Nodes are the nodes assigned this reference (by name, or through
	// boot.default_image); only in GET /api/v1/images/{ref}.
	Nodes []string `json:"nodes,omitempty"`
}

// TagRequest is the body of POST /api/v1/images/{ref}/tags.
type TagRequest struct {
	// Tag is the new reference, "name" or "name:tag".
	Tag string `json:"tag"`
}

// GCRequest is the body of POST /api/v1/images/gc.
type GCRequest struct {
	// DryRun reports what would be removed and removes nothing.
	DryRun bool `json:"dryRun"`
	// MinAge keeps blobs younger than this, e.g. "1h" (the default); "0s"
	// keeps none for their age.
	MinAge string `json:"minAge,omitempty"`
}

// GCResponse is the answer of POST /api/v1/images/gc.
type GCResponse struct {
	images.GCResult
	// InUse are the manifest digests kept because nodes use them.
	InUse []images.Digest `json:"inUse"`
}

// imageRoutes adds the image routes to mux:
//
//	GET    /api/v1/images             list image references
//	GET    /api/v1/images/{ref}       one reference, with the nodes assigned it
//	POST   /api/v1/images/{ref}/tags  tag the image (TagRequest) -> 201 Image
//	DELETE /api/v1/images/{ref}       remove a reference (RemoveImage); 409 while nodes are assigned it, unless ?force=true
//	POST   /api/v1/images/gc          remove unused blobs (GCRequest) -> GCResponse
func (a *Admin) imageRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/images", a.listImages)
	mux.HandleFunc("POST /api/v1/images/gc", a.gcImages)
	mux.HandleFunc("GET /api/v1/images/{ref}", a.getImage)
	mux.HandleFunc("POST /api/v1/images/{ref}/tags", a.tagImage)
	mux.HandleFunc("DELETE /api/v1/images/{ref}", a.deleteImage)
}

func imageOf(r images.Ref) Image {
	return Image{Name: r.Name, Tag: r.Tag, Ref: r.Reference(), Digest: string(r.Digest), Manifest: r.Manifest}
}

func (a *Admin) listImages(w http.ResponseWriter, r *http.Request) {
	refs, err := a.Images.List()
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]Image, 0, len(refs))
	for _, ref := range refs {
		out = append(out, imageOf(ref))
	}
	writeJSON(w, http.StatusOK, out)
}

func parseRef(s string) (images.Reference, error) {
	r, err := images.ParseReference(s)
	if err != nil {
		return r, badRequest{err}
	}
	return r, nil
}

func (a *Admin) getImage(w http.ResponseWriter, r *http.Request) {
	ref, err := parseRef(r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	m, d, err := a.Images.Resolve(ref.String())
	if err != nil {
		writeError(w, err)
		return
	}
	img := imageOf(images.Ref{Name: ref.Name, Tag: ref.Tag, Digest: d, Manifest: m})
	img.Nodes = NodesAssigned(a.DB.List(), a.imageOf, ref)
	writeJSON(w, http.StatusOK, img)
}

func (a *Admin) tagImage(w http.ResponseWriter, r *http.Request) {
	src, err := parseRef(r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	var req TagRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	dst, err := parseRef(req.Tag)
	if err != nil {
		writeError(w, err)
		return
	}
	d, err := a.Images.Tag(src.String(), dst.String())
	if err != nil {
		writeError(w, err)
		return
	}
	m, _ := a.Images.ReadManifest(d)
	logger(a.Logger).Info("image tagged", "image", dst.String()+"@"+string(d), "from", src.String())
	writeJSON(w, http.StatusCreated, imageOf(images.Ref{Name: dst.Name, Tag: dst.Tag, Digest: d, Manifest: m}))
}

// errInUse reports an image reference that nodes are assigned.
var errInUse = errors.New("in use")

func (a *Admin) deleteImage(w http.ResponseWriter, r *http.Request) {
	ref, err := parseRef(r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	if nodes := NodesAssigned(a.DB.List(), a.imageOf, ref); len(nodes) > 0 && r.URL.Query().Get("force") != "true" {
		writeJSON(w, http.StatusConflict, Error{Error: fmt.Sprintf("remove image %s: %v: assigned to %d node(s): %v (move them first, or force: they keep booting the digest they were given only until the next boot)",
			ref, errInUse, len(nodes), shorten(nodes))})
		return
	}
	remove := a.RemoveImage
	if remove == nil {
		remove = func(_ context.Context, ref string) (images.Digest, error) { return a.Images.Remove(ref) }
	}
	d, err := remove(r.Context(), ref.String())
	if err != nil {
		writeError(w, err)
		return
	}
	logger(a.Logger).Info("image removed", "image", ref.String()+"@"+string(d))
	w.WriteHeader(http.StatusNoContent)
}

func shorten(ns []string) []string {
	if len(ns) > 10 {
		return append(ns[:10:10], fmt.Sprintf("and %d more", len(ns)-10))
	}
	return ns
}

func (a *Admin) gcImages(w http.ResponseWriter, r *http.Request) {
	var req GCRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			writeError(w, err)
			return
		}
	}
	opt := images.GCOptions{DryRun: req.DryRun}
	if req.MinAge != "" {
		d, err := time.ParseDuration(req.MinAge)
		if err != nil || d < 0 {
			writeError(w, badRequest{fmt.Errorf("minAge %q: not a duration like 1h or 0s", req.MinAge)})
			return
		}
		opt.MinAge = d
		if d == 0 {
			opt.MinAge = -1
		}
	}
	opt.InUse = InUse(a.DB.List(), a.Images, a.imageOf)
	res, err := a.Images.GC(opt)
	if err != nil {
		writeError(w, err)
		return
	}
	if !req.DryRun {
		logger(a.Logger).Info("image garbage collected", "blobs", len(res.Removed), "bytes", res.RemovedBytes)
	}
	writeJSON(w, http.StatusOK, GCResponse{GCResult: res, InUse: opt.InUse})
}

// imageOf returns the image reference a node's plan assigns it; "" when
// it has no plan.
func (a *Admin) imageOf(n state.NodeStatus) string {
	if a.Plan == nil {
		return n.Image
	}
	p, err := a.Plan(n.Name)
	if err != nil {
		return ""
	}
	return p.Image
}

// InUse returns the manifest digests nodes use: the digest each node is
// pinned to (the one its last script named: it boots that one until an
// admin moves it), what each node's image reference resolves to now (its
// next boot, when it has no pin for it), and what each node last reported
// running. GC keeps them although a reference moved away.
func InUse(nodes []state.NodeStatus, st *images.Store, refOf func(state.NodeStatus) string) []images.Digest {
	var out []images.Digest
	add := func(d images.Digest) {
		if _, err := images.ParseDigest(string(d)); err == nil && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	for _, n := range nodes {
		if p := n.Status.Pin; p != nil {
			add(images.Digest(p.Digest))
		}
		if ref := refOf(n); ref != "" {
			if _, d, err := st.Resolve(ref); err == nil {
				add(d)
			}
		}
		if rep := n.Status.Report; rep != nil {
			add(images.Digest(rep.ImageDigest))
		}
	}
	slices.Sort(out)
	return out
}

// NodesAssigned returns the names of the nodes whose plan's image
// reference is ref.
func NodesAssigned(nodes []state.NodeStatus, refOf func(state.NodeStatus) string, ref images.Reference) []string {
	var out []string
	for _, n := range nodes {
		if r, err := images.ParseReference(refOf(n)); err == nil && r == ref {
			out = append(out, n.Name)
		}
	}
	return out
}
