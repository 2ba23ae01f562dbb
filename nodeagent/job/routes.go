package job

import (
	"net/http"

	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// HookRequest is the body of POST /v1/jobs/prolog and /v1/jobs/epilog:
// what Slurm gave the hook.
type HookRequest struct {
	// Env is the hook's Slurm environment.
	Env Env `json:"env"`
}

// PrologReply is the answer to POST /v1/jobs/prolog.
type PrologReply struct {
	// Job is the registered job; empty when Error is set.
	Job Job `json:"job"`
	// Error is why the node cannot take the job: the drain reason.
	Error string `json:"error,omitempty"`
}

// Routes adds the job routes to mux:
//
//	POST /v1/jobs/prolog   register a job (HookRequest) -> PrologReply; root only
//	POST /v1/jobs/epilog   clean up after a job (HookRequest) -> EpilogResult; root only
//	GET  /v1/jobs          the registered jobs (a user sees theirs) -> []Job
//
// A failed prolog or an unclean epilog is still a 200 answer: the reply
// says why, and the hook's command drains the node with it.
func (r *Registry) Routes(mux *http.ServeMux) {
	mux.Handle("POST /v1/jobs/prolog", localapi.RequireRoot(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var h HookRequest
		if err := localapi.Decode(req, &h); err != nil {
			localapi.WriteError(w, http.StatusBadRequest, err)
			return
		}
		j, err := r.Prolog(req.Context(), h.Env)
		rep := PrologReply{Job: j}
		if err != nil {
			rep = PrologReply{Error: err.Error()}
		}
		localapi.WriteJSON(w, http.StatusOK, rep)
	})))
	mux.Handle("POST /v1/jobs/epilog", localapi.RequireRoot(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var h HookRequest
		if err := localapi.Decode(req, &h); err != nil {
			localapi.WriteError(w, http.StatusBadRequest, err)
			return
		}
		res, _ := r.Epilog(req.Context(), h.Env)
		localapi.WriteJSON(w, http.StatusOK, res)
	})))
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, req *http.Request) {
		c, ok := localapi.CallerFrom(req.Context())
		out := []Job{}
		for _, j := range r.List() {
			if ok && (c.Root() || c.UID == j.UID) {
				out = append(out, j)
			}
		}
		localapi.WriteJSON(w, http.StatusOK, out)
	})
}

// Summary is the node's workload for the head: its jobs and containers.
// The agent daemon sends it with its heartbeat.
type Summary struct {
	// Jobs are the registered jobs.
	Jobs []Job `json:"jobs"`
	// Containers are the node's containers.
	Containers []container.Container `json:"containers"`
}

// Summarize returns the node's jobs and, when m is not nil, its containers.
func (r *Registry) Summarize(m *container.Manager) Summary {
	s := Summary{Jobs: r.List()}
	if m != nil {
		s.Containers = m.List(localapi.Cred{})
	}
	return s
}
