package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// workloadRoutes adds the routes of the node's containers and jobs, under
// the same rules as the agent's other routes (see authenticate):
//
//	GET  /api/v1/nodes/{node}/images/{ref}  resolve an image (overlay.NodeImage)
//	POST /api/v1/nodes/{node}/jobs          a prolog or epilog (overlay.JobEvent)
func (n *Node) workloadRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+overlay.ImagePath, n.counted("image", n.image))
	mux.HandleFunc("POST "+overlay.JobEventPath, n.counted("jobs", n.jobEvent))
}

// resolveRef resolves a reference: a manifest digest, a name, or
// name:tag. A store without tags takes "name:latest" as "name".
func (n *Node) resolveRef(ref string) (images.Manifest, images.Digest, error) {
	if strings.HasPrefix(ref, "sha256:") {
		d, err := images.ParseDigest(ref)
		if err != nil {
			return images.Manifest{}, "", badRequest{err}
		}
		m, err := n.Images.ReadManifest(d)
		return m, d, err
	}
	m, d, err := n.Images.Resolve(ref)
	if err != nil && !errors.Is(err, images.ErrNotFound) {
		if name, ok := strings.CutSuffix(ref, ":latest"); ok {
			return n.Images.Resolve(name)
		}
		err = badRequest{err}
	}
	return m, d, err
}

func (n *Node) image(w http.ResponseWriter, r *http.Request) {
	c, err := n.authenticate(w, r, nil)
	if err != nil {
		return
	}
	ref := r.PathValue("ref")
	if len(ref) > MaxImageRef {
		writeError(w, badRequest{fmt.Errorf("image reference of %d bytes, more than %d", len(ref), MaxImageRef)})
		return
	}
	m, d, err := n.resolveRef(ref)
	if err != nil {
		if errors.Is(err, images.ErrNotFound) {
			err = fmt.Errorf("unknown image %q: not in the head's store: %w", ref, images.ErrNotFound)
		}
		writeError(w, err)
		return
	}
	logger(n.Logger).Debug("container image resolved", "node", c.node.Name, "image", ref, "digest", d)
	img := overlay.NodeImage{
		Ref:                    ref,
		Name:                   m.Name,
		Digest:                 string(d),
		Rootfs:                 string(m.Rootfs.Digest),
		RootfsSize:             m.Rootfs.Size,
		RootfsUncompressedSize: m.RootfsUncompressedSize,
		RootfsPath:             "/boot/image/" + d.Hex() + "/rootfs.cpio.zst",
	}
	if c := m.CompressedRoot; c != nil {
		img.CompressedRoot, img.CompressedRootSize = string(c.Digest), c.Size
		img.CompressedRootPath = "/boot/image/" + d.Hex() + "/rootfs.squashfs.cpio"
	}
	writeJSON(w, http.StatusOK, img)
}

func (n *Node) jobEvent(w http.ResponseWriter, r *http.Request) {
	var ev overlay.JobEvent
	c, err := n.authenticate(w, r, &ev)
	if err != nil {
		return
	}
	var step state.Step
	switch ev.Hook {
	case "prolog":
		step = state.StepJobProlog
	case "epilog":
		step = state.StepJobEpilog
	default:
		writeError(w, badRequest{fmt.Errorf("job event from node %s: unknown hook %q", c.node.Name, state.Clip(state.Printable(ev.Hook), 32))})
		return
	}
	if err := errors.Join(checkWord("job", ev.Job), checkWord("user", ev.User)); err != nil || ev.Job == "" {
		writeError(w, badRequest{fmt.Errorf("job event from node %s: %w", c.node.Name, errors.Join(err, errIf(ev.Job == "", "job: empty")))})
		return
	}
	result := "ok"
	if !ev.OK {
		result = "failed"
	}
	detail := fmt.Sprintf("job %s (%s) %s", ev.Job, ev.User, result)
	if ev.Detail != "" {
		detail += ": " + state.Printable(ev.Detail)
	}
	// The timeline keeps state.MaxDetail bytes of it.
	if err := n.DB.Record(c.node.Name, state.Event{Step: step, Detail: detail}, false); err != nil {
		writeError(w, err)
		return
	}
	l := logger(n.Logger)
	if ev.OK {
		l.Info("job hook", "node", c.node.Name, "hook", ev.Hook, "job", ev.Job, "detail", state.Clip(state.Printable(ev.Detail), state.MaxDetail))
	} else {
		l.Warn("job hook failed", "node", c.node.Name, "hook", ev.Hook, "job", ev.Job, "detail", state.Clip(state.Printable(ev.Detail), state.MaxDetail))
	}
	w.WriteHeader(http.StatusNoContent)
}

// errIf returns an error saying msg when cond holds.
func errIf(cond bool, msg string) error {
	if cond {
		return errors.New(msg)
	}
	return nil
}
