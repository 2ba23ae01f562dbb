package job_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/job"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

const testUID = 4242

type health struct{ runtime, head error }

func (h health) Runtime(context.Context) error { return h.runtime }
func (h health) Head(context.Context) error    { return h.head }

func newRegistry(t *testing.T, h job.Health) (*job.Registry, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (tmpfs, killing another user's processes)")
	}
	dir := t.TempDir()
	t.Cleanup(func() { unmountUnder(dir) })
	shm := filepath.Join(dir, "shm")
	os.Mkdir(shm, 0o1777)
	r, err := job.New(job.Config{Dir: filepath.Join(dir, "jobs"), ScratchDir: filepath.Join(dir, "scratch"),
		CleanDirs: []string{shm}, Health: h, Scontrol: "/bin/false"})
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

func TestEnvFrom(t *testing.T) {
	e, err := job.EnvFrom([]string{"SLURM_JOB_ID=12", "SLURM_JOB_UID=1000", "SLURM_JOB_GID=100", "SLURM_JOB_USER=alice", "SLURMD_NODENAME=n1", "SLURM_MEM_PER_NODE=2048"})
	if err != nil || e != (job.Env{JobID: "12", UID: 1000, GID: 100, User: "alice", Node: "n1", MemoryBytes: 2 << 30}) {
		t.Errorf("EnvFrom = %+v, %v", e, err)
	}
	if _, err := job.EnvFrom([]string{"SLURM_JOB_UID=x"}); err == nil || !strings.Contains(err.Error(), "SLURM_JOB_ID") || !strings.Contains(err.Error(), "SLURM_JOB_UID") {
		t.Errorf("bad env: %v, want both variables named", err)
	}
}

// TestPrologEpilog: the prolog makes the scratch; the epilog kills a
// process of the job that left its session, removes the scratch and the
// user's files in RAM, and is idempotent.
func TestPrologEpilog(t *testing.T) {
	r, dir := newRegistry(t, health{})
	ctx := context.Background()
	env := job.Env{JobID: "77", UID: testUID, GID: testUID, User: "u4242", MemoryBytes: 64 << 20}
	j, err := r.Prolog(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if j.ScratchBytes != 32<<20 || len(mountsUnder(j.Scratch)) != 1 {
		t.Fatalf("scratch %+v, mounts %v", j, mountsUnder(j.Scratch))
	}
	if fi, err := os.Stat(j.Scratch); err != nil || fi.Sys().(*syscall.Stat_t).Uid != testUID {
		t.Errorf("scratch not the user's: %v", err)
	}
	// The user may now run containers, in this job.
	if cj, err := r.JobFor(localapi.Cred{UID: testUID, GID: testUID, PID: os.Getpid()}, ""); err != nil || cj.ID != "77" {
		t.Errorf("JobFor = %+v, %v", cj, err)
	}
	if _, err := r.JobFor(localapi.Cred{UID: 4343, PID: os.Getpid()}, ""); !errors.Is(err, container.ErrForbidden) || !strings.Contains(err.Error(), "no job on this node") {
		t.Errorf("JobFor another user: %v", err)
	}
	if _, err := r.JobFor(localapi.Cred{UID: 4343, PID: os.Getpid()}, "77"); !errors.Is(err, container.ErrForbidden) {
		t.Errorf("JobFor another user's job: %v", err)
	}
	// A process of the job's user in a session of its own, and a file in
	// RAM.
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: testUID, Gid: testUID}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	f := filepath.Join(dir, "shm", "left")
	os.WriteFile(f, make([]byte, 8192), 0o600)
	os.Chown(f, testUID, testUID)

	res, err := r.Epilog(ctx, env)
	if err != nil {
		t.Fatalf("Epilog: %v (%+v)", err, res)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the escaped process survived the epilog")
	}
	if !res.Registered || res.Killed != 1 || res.FilesRemoved != 1 || res.FileBytes != 8192 {
		t.Errorf("result %+v", res)
	}
	if _, err := os.Stat(j.Scratch); !os.IsNotExist(err) || len(mountsUnder(j.Scratch)) != 0 {
		t.Errorf("scratch left: %v %v", err, mountsUnder(j.Scratch))
	}
	if _, err := r.JobFor(localapi.Cred{UID: testUID, PID: os.Getpid()}, ""); err == nil {
		t.Error("the user may still run containers after the epilog")
	}
	// Retried (Slurm retries an epilog): it succeeds.
	if res, err := r.Epilog(ctx, env); err != nil || res.Registered {
		t.Errorf("second epilog: %+v, %v", res, err)
	}
}

// TestPrologUnhealthy: no runtime, an unreachable head or too little RAM
// fail the prolog with every reason, and leave nothing.
func TestPrologUnhealthy(t *testing.T) {
	r, dir := newRegistry(t, health{runtime: errors.New("no working OCI runtime: runc: not installed"), head: errors.New("connection refused")})
	_, err := r.Prolog(context.Background(), job.Env{JobID: "5", UID: testUID, GID: testUID, MemoryBytes: 1 << 50})
	for _, want := range []string{"MiB of RAM available", "no working OCI runtime", "head unreachable"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Prolog = %v, want %q", err, want)
		}
	}
	if len(r.List()) != 0 || len(mountsUnder(filepath.Join(dir, "scratch"))) != 0 {
		t.Errorf("a failed prolog left %v", r.List())
	}
}
