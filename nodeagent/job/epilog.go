package job

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// EpilogResult says what the epilog did.
type EpilogResult struct {
	// Job is the job id.
	Job string `json:"job"`
	// Registered is false when the prolog had not registered the job (or
	// an earlier epilog already cleaned it).
	Registered bool `json:"registered"`
	// Containers is the number of containers removed.
	Containers int `json:"containers"`
	// Killed is the number of processes killed.
	Killed int `json:"killed"`
	// FilesRemoved counts what the user left in CleanDirs.
	FilesRemoved int `json:"filesRemoved"`
	// FileBytes is the size of those files.
	FileBytes int64 `json:"fileBytes"`
	// MemAvailableBefore is the node's available RAM at the prolog.
	MemAvailableBefore int64 `json:"memAvailableBefore"`
	// MemAvailableAfter is the node's available RAM now (the difference
	// includes other jobs').
	MemAvailableAfter int64 `json:"memAvailableAfter"`
	// Problems say why the node is not clean; empty when it is.
	Problems []string `json:"problems,omitempty"`
}

// Clean reports whether the node is clean of the job.
func (e EpilogResult) Clean() bool { return len(e.Problems) == 0 }

// Summary is one line for logs, the head and drain reasons.
func (e EpilogResult) Summary() string {
	if !e.Clean() {
		return "not clean: " + strings.Join(e.Problems, "; ")
	}
	return fmt.Sprintf("clean: %d containers removed, %d processes killed, %d files (%d KiB) removed", e.Containers, e.Killed, e.FilesRemoved, e.FileBytes>>10)
}

// Epilog gives the node back from the job: it removes the job's
// containers, kills every process of the job (found by its cgroup, and by
// its user when the user has no other job here, so processes that left
// their session are found too), removes its scratch and what its user left
// in RAM directories, and checks that nothing of the job remains. It is
// idempotent: a retried epilog succeeds, and an epilog of a job the
// prolog never registered still cleans up after it. The error (non-nil
// exactly when the node is not clean) says why.
func (r *Registry) Epilog(ctx context.Context, env Env) (EpilogResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := EpilogResult{Job: env.JobID}
	j, err := r.Get(env.JobID)
	if err == nil {
		res.Registered = true
		res.MemAvailableBefore = j.MemAvailable
	} else {
		j = Job{ID: env.JobID, User: env.User, UID: env.UID, GID: env.GID, Scratch: filepath.Join(r.cfg.ScratchDir, env.JobID)}
	}
	if r.cfg.Containers != nil {
		n, err := r.cfg.Containers.RemoveJob(ctx, j.ID)
		res.Containers = n
		if err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("containers: %v", err))
		}
	}
	others := r.otherJobsOf(j)
	killed, left := killJob(j, !others && j.UID != 0, r.cfg.KillTimeout)
	res.Killed = killed
	if len(left) > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d processes of the job did not die: %v", len(left), left))
	}
	if err := unmountAll(j.Scratch); err != nil {
		res.Problems = append(res.Problems, err.Error())
	} else if err := os.RemoveAll(j.Scratch); err != nil {
		res.Problems = append(res.Problems, fmt.Sprintf("scratch: %v", err))
	}
	if !others && j.UID != 0 {
		res.FilesRemoved, res.FileBytes = userFiles(r.cfg.CleanDirs, j.UID, true)
		if n, b := userFiles(r.cfg.CleanDirs, j.UID, false); n > 0 {
			res.Problems = append(res.Problems, fmt.Sprintf("%d files (%d KiB) of uid %d could not be removed from %v", n, b>>10, j.UID, r.cfg.CleanDirs))
		}
	}
	removeEmptyCgroups(j.ID)
	if m := mountsUnder(j.Scratch); len(m) > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("mounts of the job remain: %v", m))
	}
	res.MemAvailableAfter = memAvailable()
	if res.Clean() {
		os.Remove(r.path(j.ID))
		r.log.Info("job cleaned up", "job", j.ID, "user", j.User, "detail", res.Summary())
	} else {
		r.log.Warn("job left the node unclean", "job", j.ID, "user", j.User, "detail", res.Summary())
	}
	r.report(ctx, j, "epilog", res.Clean(), res.Summary())
	if !res.Clean() {
		return res, fmt.Errorf("epilog of job %s: node %s", j.ID, res.Summary())
	}
	return res, nil
}

// otherJobsOf reports whether j's user has another job registered here.
func (r *Registry) otherJobsOf(j Job) bool {
	for _, o := range r.List() {
		if o.ID != j.ID && o.UID == j.UID {
			return true
		}
	}
	return false
}

// inJobCgroup reports whether a /proc/PID/cgroup text puts the process in
// job id's cgroup (Slurm's .../job_<id>/..., v1 or v2).
func inJobCgroup(cgroup []byte, id string) bool {
	needle := "/job_" + id
	for _, l := range strings.Split(string(cgroup), "\n") {
		if i := strings.Index(l, needle); i >= 0 {
			rest := l[i+len(needle):]
			if rest == "" || rest[0] == '/' {
				return true
			}
		}
	}
	return false
}

// jobProcesses returns the processes of j: in its cgroup, or (byUID)
// running as its user. The caller, its ancestors and Slurm's daemons are
// never among them.
func jobProcesses(j Job, byUID bool) []int {
	spare := map[int]bool{}
	for p := os.Getpid(); p > 1; {
		spare[p] = true
		pp, err := ppid(p)
		if err != nil {
			break
		}
		p = pp
	}
	des, _ := os.ReadDir("/proc")
	var out []int
	for _, de := range des {
		pid, err := strconv.Atoi(de.Name())
		if err != nil || pid <= 1 || spare[pid] {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		c := strings.TrimSpace(string(comm))
		if c == "slurmstepd" || c == "slurmd" || c == "slurmctld" || c == "ramboot-agent" {
			continue
		}
		match := false
		if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil && inJobCgroup(cg, j.ID) {
			match = true
		}
		if !match && byUID {
			var st unix.Stat_t
			if unix.Stat(fmt.Sprintf("/proc/%d", pid), &st) == nil && int(st.Uid) == j.UID {
				match = true
			}
		}
		if match {
			out = append(out, pid)
		}
	}
	return out
}

func ppid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, errors.New("stat")
	}
	return strconv.Atoi(f[1])
}

// killJob SIGKILLs the job's processes until none is left or timeout
// passes, and returns how many it killed and those left.
func killJob(j Job, byUID bool, timeout time.Duration) (int, []int) {
	deadline := time.Now().Add(timeout)
	seen := map[int]bool{}
	for {
		ps := jobProcesses(j, byUID)
		for _, p := range ps {
			if unix.Kill(p, unix.SIGKILL) == nil {
				seen[p] = true
			}
		}
		if len(ps) == 0 {
			return len(seen), nil
		}
		if time.Now().After(deadline) {
			return len(seen), ps
		}
		// Give the kernel time to tear the processes down; re-scan
		// catches children forked meanwhile.
		time.Sleep(20 * time.Millisecond)
	}
}

// unmountAll unmounts every mount at or under dir, deepest first.
func unmountAll(dir string) error {
	mps := mountsUnder(dir)
	var errs []error
	for i := len(mps) - 1; i >= 0; i-- {
		if err := unix.Unmount(mps[i], 0); err != nil && err != unix.EINVAL {
			if err == unix.EBUSY {
				unix.Unmount(mps[i], unix.MNT_DETACH)
			}
			errs = append(errs, fmt.Errorf("unmount %s: %w", mps[i], err))
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or under dir.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) > 4 && (fs[4] == dir || strings.HasPrefix(fs[4], dir+"/")) {
			out = append(out, fs[4])
		}
	}
	return out
}

// userFiles finds (and with remove, removes) the top-level entries of
// dirs owned by uid, and returns how many and their size.
func userFiles(dirs []string, uid int, remove bool) (int, int64) {
	n, bytes := 0, int64(0)
	for _, d := range dirs {
		des, _ := os.ReadDir(d)
		for _, de := range des {
			p := filepath.Join(d, de.Name())
			var st unix.Stat_t
			if unix.Lstat(p, &st) != nil || int(st.Uid) != uid {
				continue
			}
			size := du(p)
			if remove && os.RemoveAll(p) != nil {
				continue
			}
			n++
			bytes += size
		}
	}
	return n, bytes
}

func du(p string) int64 {
	var n int64
	filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// slurmControllers are the cgroup v1 controllers Slurm's cgroup plugins
// manage (and clean) themselves.
var slurmControllers = []string{"memory", "cpuset", "freezer", "devices", "cpuacct", "cpu,cpuacct"}

// removeEmptyCgroups removes, in the v1 controllers Slurm does not manage,
// the empty job_<id> directories (and their empty parents) that the
// runtime made for the job's containers under the job's cgroup path.
func removeEmptyCgroups(id string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, root := range roots {
		if slices.Contains(slurmControllers, filepath.Base(root)) {
			continue
		}
		var st unix.Statfs_t
		if unix.Statfs(root, &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			continue
		}
		dirs, _ := filepath.Glob(filepath.Join(root, "slurm*", "uid_*", "job_"+id))
		for _, d := range dirs {
			subs, _ := filepath.Glob(filepath.Join(d, "ramboot_*"))
			for _, s := range subs {
				unix.Rmdir(s)
			}
			for p := d; p != root && unix.Rmdir(p) == nil; p = filepath.Dir(p) {
			}
		}
	}
}

// JobFor decides in which job caller may run a container: root anywhere
// (in job want, or in none); a user only in a job registered for their
// uid: want, or the job whose cgroup holds the caller, or their only job.
func (r *Registry) JobFor(caller localapi.Cred, want string) (container.Job, error) {
	if want != "" {
		j, err := r.Get(want)
		if err != nil {
			return container.Job{}, err
		}
		if !caller.Root() && j.UID != caller.UID {
			return container.Job{}, fmt.Errorf("job %s is not a job of uid %d: %w", want, caller.UID, container.ErrForbidden)
		}
		return r.containerJob(j, caller), nil
	}
	if caller.Root() {
		return container.Job{}, nil
	}
	var mine []Job
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", caller.PID))
	for _, j := range r.List() {
		if j.UID != caller.UID {
			continue
		}
		if inJobCgroup(cg, j.ID) {
			return r.containerJob(j, caller), nil
		}
		mine = append(mine, j)
	}
	switch len(mine) {
	case 0:
		return container.Job{}, fmt.Errorf("uid %d has no job on this node: containers run only inside a Slurm job (its prolog registers it): %w", caller.UID, container.ErrForbidden)
	case 1:
		return r.containerJob(mine[0], caller), nil
	}
	return container.Job{}, fmt.Errorf("uid %d has %d jobs on this node: name one with --job (or run inside it): %w", caller.UID, len(mine), container.ErrInvalid)
}

func (r *Registry) containerJob(j Job, caller localapi.Cred) container.Job {
	return container.Job{ID: j.ID, UID: j.UID, GID: j.GID, MemoryBytes: j.MemoryBytes, Cgroup: jobCgroup(j, caller.PID)}
}

// jobCgroup finds the job's cgroup path: from the caller's own cgroup
// when it is in the job, else where Slurm puts it.
func jobCgroup(j Job, pid int) string {
	needle := "/job_" + j.ID
	if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil {
		for _, l := range strings.Split(string(cg), "\n") {
			f := strings.SplitN(l, ":", 3)
			if len(f) != 3 || !(f[1] == "memory" || f[0] == "0" && f[1] == "") {
				continue
			}
			if i := strings.Index(f[2], needle); i >= 0 && (len(f[2]) == i+len(needle) || f[2][i+len(needle)] == '/') {
				return f[2][:i+len(needle)]
			}
		}
	}
	for _, pat := range []string{
		"/sys/fs/cgroup/memory/slurm*/uid_" + strconv.Itoa(j.UID) + "/job_" + j.ID,
		"/sys/fs/cgroup/system.slice/slurmstepd.scope/job_" + j.ID,
	} {
		if m, _ := filepath.Glob(pat); len(m) == 1 {
			p := strings.TrimPrefix(m[0], "/sys/fs/cgroup")
			return strings.TrimPrefix(p, "/memory")
		}
	}
	return ""
}
