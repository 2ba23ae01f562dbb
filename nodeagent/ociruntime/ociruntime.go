// Package ociruntime finds the OCI runtime that works on this host (runc or
// crun) and drives its command line: run a bundle detached, exec into it,
// signal, query and delete it.
//
// A runtime is chosen by what works, not by its name: [Probe] looks at the
// host's cgroup layout, asks each candidate for its `features`, and runs a
// trial container with a memory limit and the agent's seccomp profile. The
// first candidate whose trial succeeds wins. On cgroup v1 "hybrid" hosts
// crun 1.8 refuses every container and runc works; on pure v2 hosts both
// work and crun, listed first, wins (it starts containers faster).
//
//	rt, report, err := ociruntime.Probe(ctx, ociruntime.ProbeOptions{Dir: "/run/ramboot/probe"})
//	// report says why each candidate was or was not chosen
//	err = rt.Run(ctx, "c1", bundle, ociruntime.IO{Stdout: f, Stderr: f})
//	st, err := rt.State(ctx, "c1")
//	err = rt.Kill(ctx, "c1", syscall.SIGTERM)
//	err = rt.Delete(ctx, "c1", true)
package ociruntime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// DefaultRoot is where the runtime keeps its container state for the
// agent, apart from the runtime's default (/run/runc, /run/crun) so that
// the agent lists and cleans only its own containers.
const DefaultRoot = "/run/ramboot/runtime"

// ErrNotExist means the runtime has no container with that id.
var ErrNotExist = errors.New("no such container")

// Runtime is one OCI runtime command line.
type Runtime struct {
	// Name is the runtime's name ("runc", "crun").
	Name string `json:"name"`
	// Path is its executable.
	Path string `json:"path"`
	// Version is the first line of `--version`.
	Version string `json:"version"`
	// Root is the runtime's state directory (--root). Default DefaultRoot.
	Root string `json:"root"`
	// Features is what `features` reported; nil when the runtime has no
	// such command.
	Features *features.Features `json:"features,omitempty"`
}

func (r *Runtime) root() string {
	if r.Root == "" {
		return DefaultRoot
	}
	return r.Root
}

// Seccomp reports whether the runtime was built with seccomp, as far as
// it says (a runtime without `features` is assumed to have it).
func (r *Runtime) Seccomp() bool {
	if r.Features == nil || r.Features.Linux == nil || r.Features.Linux.Seccomp == nil || r.Features.Linux.Seccomp.Enabled == nil {
		return true
	}
	return *r.Features.Linux.Seccomp.Enabled
}

// IO is a container's standard streams; nil means /dev/null.
type IO struct {
	// Stdin is the standard input.
	Stdin io.Reader
	// Stdout is the standard output.
	Stdout io.Writer
	// Stderr is the standard error.
	Stderr io.Writer
}

// command returns the runtime invoked with args after its global flags,
// in the agent's environment without NOTIFY_SOCKET.
func (r *Runtime) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.Path, append([]string{"--root", r.root()}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = runtimeEnv(os.Environ())
	return cmd
}

// runtimeEnv returns env without NOTIFY_SOCKET. The agent daemon is a
// Type=notify service: systemd gives it the variable, and a runtime that
// sees it (runc, crun) passes the socket into the container and waits for
// the container to send READY=1 before `run` returns or ends, which a
// container that is not a systemd service never does.
func runtimeEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			out = append(out, kv)
		}
	}
	return out
}

// run runs the runtime and returns its error with its stderr.
func (r *Runtime) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := r.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "does not exist") || strings.Contains(msg, "not found") {
			return nil, fmt.Errorf("%s %s: %s: %w", r.Name, args[0], LastLine(msg), ErrNotExist)
		}
		if msg != "" {
			return nil, fmt.Errorf("%s %s: %w: %s", r.Name, args[0], err, LastLine(msg))
		}
		return nil, fmt.Errorf("%s %s: %w", r.Name, args[0], err)
	}
	return stdout.Bytes(), nil
}

// LastLine returns the last non-empty line of runtime output, stripped of
// runc's logrus prefix, which is where runc and crun say what failed; of
// runc's log lines, the last at level error (runc may log a warning, such
// as "signal: killed" for the init it killed, after the error).
func LastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := lines[len(lines)-1]
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "level=error") || strings.Contains(lines[i], "level=fatal") {
			l = lines[i]
			break
		}
	}
	if i := strings.Index(l, `msg="`); i >= 0 {
		l = strings.TrimSuffix(l[i+5:], `"`)
	}
	return l
}

// Run creates and starts the container id from the bundle directory and
// returns once its process runs (the runtime's `run --detach`), with the
// process id. The process's standard streams are io's, passed through.
func (r *Runtime) Run(ctx context.Context, id, bundle string, io IO) (pid int, err error) {
	pidFile := filepath.Join(bundle, "pid")
	cmd := r.command(ctx, "run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id)
	var stderr bytes.Buffer
	cmd.Stdin = io.Stdin
	cmd.Stdout = io.Stdout
	cmd.Stderr = io.Stderr
	if cmd.Stderr == nil {
		cmd.Stderr = &stderr
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "see the container's log"
		}
		return 0, fmt.Errorf("%s run %s: %w: %s", r.Name, id, err, LastLine(msg))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("%s run %s: %w", r.Name, id, err)
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s run %s: pid file: %w", r.Name, id, err)
	}
	return pid, nil
}

// Exec runs p in the running container id and waits for it; the exit
// status is in the returned error (an *exec.ExitError) when not zero.
func (r *Runtime) Exec(ctx context.Context, id string, p *specs.Process, bundle string, io IO) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("%s exec %s: %w", r.Name, id, err)
	}
	f, err := os.CreateTemp(bundle, "exec-*.json")
	if err != nil {
		return fmt.Errorf("%s exec %s: %w", r.Name, id, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("%s exec %s: %w", r.Name, id, err)
	}
	f.Close()
	cmd := r.command(ctx, "exec", "--process", f.Name(), id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = io.Stdin, io.Stdout, io.Stderr
	return cmd.Run()
}

// Kill sends sig to every process of the container id.
func (r *Runtime) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	_, err := r.run(ctx, "kill", "--all", id, strconv.Itoa(int(sig)))
	return err
}

// Delete removes the container id; force kills it first if it runs. A
// container the runtime does not know is not an error.
func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := r.run(ctx, append(args, id)...)
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	return err
}

// State returns the runtime's state of the container id; the error wraps
// ErrNotExist when there is none.
func (r *Runtime) State(ctx context.Context, id string) (specs.State, error) {
	out, err := r.run(ctx, "state", id)
	if err != nil {
		return specs.State{}, err
	}
	var st specs.State
	if err := json.Unmarshal(out, &st); err != nil {
		return specs.State{}, fmt.Errorf("%s state %s: %w", r.Name, id, err)
	}
	return st, nil
}

// List returns the ids of the containers under the runtime's root.
func (r *Runtime) List(ctx context.Context) ([]string, error) {
	out, err := r.run(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var cs []struct {
		ID string `json:"id"`
	}
	if s := strings.TrimSpace(string(out)); s != "" && s != "null" {
		if err := json.Unmarshal(out, &cs); err != nil {
			return nil, fmt.Errorf("%s list: %w", r.Name, err)
		}
	}
	ids := make([]string, 0, len(cs))
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids, nil
}
