package api

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/provisioner/state"
)

// Timeline steps of the scheduler's hooks on a node.
const (
	StepJobProlog = "job-prolog" // a job's prolog ran on the node
	StepJobEpilog = "job-epilog" // a job's epilog ran: the node is clean, or why not
)

// maxDetail bounds the detail of a job event kept in the timeline.
const maxDetail = 512

// workloadRoutes adds the routes of the node's containers and jobs:
//
//	GET  /api/v1/nodes/{node}/images/{ref}  resolve an image (overlay.NodeImage)
//	POST /api/v1/nodes/{node}/jobs          a prolog or epilog (overlay.JobEvent)
func (n *Node) workloadRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET "+overlay.ImagePath, n.image)
	mux.HandleFunc("POST "+overlay.JobEventPath, n.jobEvent)
}

// authNode checks the bearer token and that the request comes from the
// node's reserved address.
func (n *Node) authNode(r *http.Request) (state.NodeStatus, error) {
	name := r.PathValue("node")
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return state.NodeStatus{}, fmt.Errorf("node %s: missing bearer token: %w", name, state.ErrBadToken)
	}
	if err := n.DB.CheckToken(name, token); err != nil {
		return state.NodeStatus{}, err
	}
	node, err := n.DB.Get(name)
	if err != nil {
		return state.NodeStatus{}, err
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return state.NodeStatus{}, fmt.Errorf("node %s: remote address %q: %w", name, r.RemoteAddr, state.ErrBadToken)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Unmap() != node.IP {
		return state.NodeStatus{}, fmt.Errorf("node %s: request from %s, not its reserved address: %w", name, host, state.ErrBadToken)
	}
	return node, nil
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
	node, err := n.authNode(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ref := r.PathValue("ref")
	m, d, err := n.resolveRef(ref)
	if err != nil {
		if errors.Is(err, images.ErrNotFound) {
			err = fmt.Errorf("unknown image %q: not in the head's store: %w", ref, images.ErrNotFound)
		}
		writeError(w, err)
		return
	}
	logger(n.Logger).Debug("container image resolved", "node", node.Name, "image", ref, "digest", d)
	writeJSON(w, http.StatusOK, overlay.NodeImage{
		Ref:                    ref,
		Name:                   m.Name,
		Digest:                 string(d),
		Rootfs:                 string(m.Rootfs.Digest),
		RootfsSize:             m.Rootfs.Size,
		RootfsUncompressedSize: m.RootfsUncompressedSize,
		RootfsPath:             "/boot/image/" + d.Hex() + "/rootfs.cpio.zst",
	})
}

func (n *Node) jobEvent(w http.ResponseWriter, r *http.Request) {
	node, err := n.authNode(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var ev overlay.JobEvent
	if err := decode(r, &ev); err != nil {
		writeError(w, err)
		return
	}
	step := ""
	switch ev.Hook {
	case "prolog":
		step = StepJobProlog
	case "epilog":
		step = StepJobEpilog
	default:
		writeError(w, badRequest{fmt.Errorf("job event from node %s: unknown hook %q", node.Name, ev.Hook)})
		return
	}
	if ev.Job == "" || len(ev.Job) > 64 {
		writeError(w, badRequest{fmt.Errorf("job event from node %s: job id %q", node.Name, ev.Job)})
		return
	}
	result := "ok"
	if !ev.OK {
		result = "failed"
	}
	detail := fmt.Sprintf("job %s (%s) %s", ev.Job, ev.User, result)
	if ev.Detail != "" {
		detail += ": " + ev.Detail
	}
	if len(detail) > maxDetail {
		detail = detail[:maxDetail]
	}
	if err := n.DB.Record(node.Name, state.Event{Step: step, Detail: detail}, false); err != nil {
		writeError(w, err)
		return
	}
	l := logger(n.Logger)
	if ev.OK {
		l.Info("job hook", "node", node.Name, "hook", ev.Hook, "job", ev.Job, "detail", ev.Detail)
	} else {
		l.Warn("job hook failed", "node", node.Name, "hook", ev.Hook, "job", ev.Job, "detail", ev.Detail)
	}
	w.WriteHeader(http.StatusNoContent)
}
