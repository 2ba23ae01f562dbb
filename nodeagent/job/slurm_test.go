package job_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/imagecache/imagecachetest"
)

// proc is a daemon the test started, stopped by pid when it ends.
func startProc(t *testing.T, name string, env []string, args ...string) *exec.Cmd {
	return startProcAs(t, nil, name, env, args...)
}

func startProcAs(t *testing.T, cred *syscall.Credential, name string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return cmd
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor retries fn until it returns nil or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSlurm runs Debian's slurmctld and slurmd (with munge) on this
// machine, configured here, with the agent's prolog and epilog: a job runs
// a container through the agent and leaves nothing behind; a prolog that
// fails drains the node with its reason.
func TestSlurm(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, b := range []string{"slurmctld", "slurmd", "munged", "sbatch", "scontrol", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s (make deps installs slurm-wlm, munge, runc)", b)
		}
	}
	// The job's user: the epilog kills every process of that user, so not
	// nobody, whom other tests on the machine run as.
	ju, err := user.Lookup("games")
	if err != nil {
		t.Skip("needs the user games (Debian's base-passwd)")
	}
	jobUID := ju.Uid
	h := imagecachetest.Start(t)
	h.BuildImage(t, "busybox", imagecachetest.BusyboxTree(t))
	cfg := h.Boot(t)
	// The job's user (games) reaches the agent, its socket and the
	// output directory: not under the test's 0700 temporary directory.
	dir, err := os.MkdirTemp("", "ramboot-slurm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)

	// The agent: built from this module, its daemon on a socket of ours.
	agent := filepath.Join(dir, "ramboot-agent")
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", agent, "./nodeagent/cmd/ramboot-agent")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v %s", err, out)
	}
	// The daemon's node root: only its node configuration, as the
	// node's overlay gave it.
	nodeRoot := filepath.Join(dir, "node")
	nodeCfg := filepath.Join(nodeRoot, overlay.ConfigPath)
	os.MkdirAll(filepath.Dir(nodeCfg), 0o700)
	b := fmt.Sprintf(`{"node":%q,"headURL":%q,"token":%q,"interface":{"mac":%q,"address":"127.0.0.2/8"},"image":{"name":"","digest":"","contentDigest":""}}`,
		cfg.Node, cfg.HeadURL, cfg.Token, cfg.Interface.MAC)
	if err := os.WriteFile(nodeCfg, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	state := filepath.Join(dir, "agent-state")
	slurmConf := filepath.Join(dir, "slurm", "slurm.conf")
	t.Cleanup(func() { unmountUnder(state) })

	// munge, as its own user, on a socket of ours.
	// munged checks every directory above its files: not under the test's
	// 0700 temporary directory.
	mdir, err := os.MkdirTemp("", "ramboot-munge-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(mdir) })
	os.Chmod(mdir, 0o755) // the socket needs x for all
	key := make([]byte, 1024)
	rand.Read(key)
	os.WriteFile(filepath.Join(mdir, "key"), key, 0o400)
	exec.Command("chown", "-R", "munge:munge", mdir).Run()
	msock := filepath.Join(mdir, "munge.sock")
	mu, err := user.Lookup("munge")
	if err != nil {
		t.Skip("needs the munge user (the munge package)")
	}
	muid, _ := strconv.Atoi(mu.Uid)
	mgid, _ := strconv.Atoi(mu.Gid)
	// munged itself is our child (a wrapper such as runuser would not
	// pass the signal on), so it is stopped by its pid.
	startProcAs(t, &syscall.Credential{Uid: uint32(muid), Gid: uint32(mgid)}, "munged", nil, "-F", "-S", msock,
		"--key-file", filepath.Join(mdir, "key"), "--pid-file", filepath.Join(mdir, "pid"),
		"--log-file", filepath.Join(mdir, "log"), "--seed-file", filepath.Join(mdir, "seed"))
	waitFor(t, "munged", 20*time.Second, func() error { _, err := os.Stat(msock); return err })

	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	sdir := filepath.Dir(slurmConf)
	for _, d := range []string{sdir, filepath.Join(sdir, "state"), filepath.Join(sdir, "spool"), filepath.Join(dir, "out")} {
		os.MkdirAll(d, 0o755)
	}
	os.Chmod(filepath.Join(dir, "out"), 0o1777)
	hook := func(name string) string {
		p := filepath.Join(sdir, name+".sh")
		os.WriteFile(p, []byte(fmt.Sprintf("#!/bin/sh\nexport RAMBOOT_AGENT_SOCKET=%s SLURM_CONF=%s\nexec %s %s\n", sock, slurmConf, agent, name)), 0o755)
		return p
	}
	conf := fmt.Sprintf(`ClusterName=ramboottest
SlurmctldHost=%[1]s
SlurmctldPort=%[2]d
SlurmdPort=%[3]d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=%[4]s
StateSaveLocation=%[5]s/state
SlurmdSpoolDir=%[5]s/spool
SlurmctldPidFile=%[5]s/slurmctld.pid
SlurmdPidFile=%[5]s/slurmd.pid
SlurmctldLogFile=%[5]s/slurmctld.log
SlurmdLogFile=%[5]s/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
PrologFlags=Alloc,Contain
Prolog=%[6]s
Epilog=%[7]s
ReturnToService=1
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
NodeName=%[1]s CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000000
PartitionName=debug Nodes=%[1]s Default=YES MaxTime=INFINITE State=UP
`, host, freePort(t), freePort(t), msock, sdir, hook("prolog"), hook("epilog"))
	os.WriteFile(slurmConf, []byte(conf), 0o644)
	// Slurm's own OCI support runs steps of `srun --container` with
	// rootless runc, with the oci.conf of docs/slurm.md: runc's state in
	// the job's RAM scratch (the prolog makes it, the user's, and the
	// epilog removes it; Slurm 22.05 has %j, not %U).
	runc := "runc --rootless=true --root=" + filepath.Join(state, "scratch") + "/%j/.runc"
	oci := fmt.Sprintf("RunTimeQuery=\"%[1]s state %%n.%%u.%%j.%%s.%%t\"\n"+
		"RunTimeRun=\"%[1]s run %%n.%%u.%%j.%%s.%%t -b %%b\"\n"+
		"RunTimeKill=\"%[1]s kill -a %%n.%%u.%%j.%%s.%%t\"\n"+
		"RunTimeDelete=\"%[1]s delete --force %%n.%%u.%%j.%%s.%%t\"\n", runc)
	os.WriteFile(filepath.Join(sdir, "oci.conf"), []byte(oci), 0o644)
	t.Cleanup(func() {
		if t.Failed() { // slurmstepd's own lines are only in the log file
			b, _ := os.ReadFile(filepath.Join(sdir, "slurmd.log"))
			t.Logf("%s:\n%s", filepath.Join(sdir, "slurmd.log"), tailLines(b, 40))
		}
	})
	os.WriteFile(filepath.Join(sdir, "cgroup.conf"), []byte("CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nCgroupAutomount=no\nConstrainCores=yes\nConstrainRAMSpace=yes\nConstrainDevices=no\n"), 0o644)
	env := []string{"SLURM_CONF=" + slurmConf}

	startProc(t, agent, env, "daemon", "--socket", sock, "--state-dir", state, "--root", nodeRoot, "--source-addr", imagecachetest.NodeIP, "--log-level", "debug")
	waitFor(t, "agent daemon", 30*time.Second, func() error { _, err := os.Stat(sock); return err })
	startProc(t, "slurmctld", env, "-D", "-i")
	startProc(t, "slurmd", env, "-D")
	scontrol := func(args ...string) (string, error) {
		cmd := exec.Command("scontrol", args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	waitFor(t, "the node idle", 60*time.Second, func() error {
		out, err := scontrol("show", "node", host)
		if err != nil || !strings.Contains(out, "State=IDLE") {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	submit := func(args ...string) string {
		cmd := exec.Command("sbatch", append([]string{"--parsable"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sbatch: %v %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	jobState := func(id string) string {
		out, _ := scontrol("show", "job", "-o", id)
		for _, f := range strings.Fields(out) {
			if v, ok := strings.CutPrefix(f, "JobState="); ok {
				return v
			}
		}
		return ""
	}

	// A job of user games runs a container through the agent, a step in
	// a bundle of the agent's through Slurm's own OCI support (srun
	// --container), and leaves a process behind in a session of its own.
	result, srunResult := filepath.Join(dir, "out", "result"), filepath.Join(dir, "out", "srun")
	script := fmt.Sprintf("#!/bin/sh\nexport RAMBOOT_AGENT_SOCKET=%[1]s\nsetsid sleep 1000 </dev/null >/dev/null 2>&1 &\n"+
		"%[2]s run --tmpfs-size 16M busybox -- sh -c 'echo hello from the container; id -u' > %[3]s 2>&1\necho exit $? >> %[3]s\n"+
		"b=$(%[2]s bundle --rootless --tmpfs-size 16M busybox 2>>%[4]s) && echo bundle $b >> %[4]s\n"+
		"srun --container=\"$b\" sh -c 'echo hello from srun; cat /proc/self/uid_map' >> %[4]s 2>&1\necho exit $? >> %[4]s\n",
		sock, agent, result, srunResult)
	scriptPath := filepath.Join(dir, "out", "job.sh")
	os.WriteFile(scriptPath, []byte(script), 0o755)
	id := submit("--uid="+jobUID, "--gid="+ju.Gid, "--mem=1G", "--output="+filepath.Join(dir, "out", "slurm-%j.out"), scriptPath)
	t.Cleanup(func() { // a job that hangs must not outlive the test
		if s := jobState(id); s == "RUNNING" || s == "PENDING" {
			scontrol("cancel", id)
			cmd := exec.Command("scancel", "--signal=KILL", "--full", id)
			cmd.Env = append(os.Environ(), env...)
			cmd.Run()
			time.Sleep(2 * time.Second) // slurmd delivers it; the steps go
		}
	})
	waitFor(t, "job "+id+" completed", 90*time.Second, func() error {
		if s := jobState(id); s != "COMPLETED" && s != "FAILED" {
			return fmt.Errorf("state %q", s)
		}
		return nil
	})
	got, _ := os.ReadFile(result)
	if !strings.Contains(string(got), "hello from the container\n"+jobUID+"\nexit 0") {
		slurmOut, _ := os.ReadFile(filepath.Join(dir, "out", "slurm-"+id+".out"))
		t.Errorf("job output %q (slurm output %q), want the container's output as uid %s", got, slurmOut, jobUID)
	}
	// srun --container: slurmstepd ran the step with rootless runc in the
	// agent's bundle, in a user namespace whose root is the job's user.
	got, _ = os.ReadFile(srunResult)
	if !strings.Contains(string(got), "hello from srun\n") || !regexp.MustCompile(`(?m)^\s*0\s+`+jobUID+`\s+1\s*$`).Match(got) || !strings.HasSuffix(string(got), "exit 0\n") {
		t.Errorf("srun --container output %q, want the step's output in a user namespace of uid %s", got, jobUID)
	}
	// The epilog ran: nothing of the job remains.
	waitFor(t, "the epilog", 30*time.Second, func() error {
		if _, err := os.Stat(filepath.Join(state, "jobs", id+".json")); err == nil {
			return fmt.Errorf("job %s still registered", id)
		}
		return nil
	})
	if ps, _ := exec.Command("pgrep", "-u", jobUID).Output(); len(bytes.TrimSpace(ps)) > 0 {
		t.Errorf("processes of the job's user left: %s", ps)
	}
	// The image cache stays (the next job's containers start from it);
	// nothing of the job does.
	for _, d := range []string{"scratch", "containers"} {
		if m := mountsUnder(filepath.Join(state, d)); len(m) != 0 {
			t.Errorf("mounts left: %v", m)
		}
		if des, _ := os.ReadDir(filepath.Join(state, d)); len(des) != 0 {
			t.Errorf("%s left: %v", d, des)
		}
	}
	tl := strings.Join(h.Timeline(t), "\n")
	if !strings.Contains(tl, "job-epilog: job "+id+" (games) ok: clean") {
		t.Errorf("head timeline lacks the clean epilog:\n%s", tl)
	}
	// The same daemon registered the node and heartbeats with its jobs
	// and containers: none left after the epilog.
	waitFor(t, "a heartbeat with the workload after the epilog", 30*time.Second, func() error {
		n := h.Node(t)
		if n.Status.State != "booted" || n.Agent == nil || n.Agent.Workload == nil || len(n.Agent.Workload.Jobs)+len(n.Agent.Workload.Containers) != 0 {
			return fmt.Errorf("head's view: %+v %+v", n.Status, n.Agent)
		}
		return nil
	})

	// A job the node cannot hold: the prolog fails and drains the node
	// with its own reason.
	id2 := submit("--uid="+jobUID, "--gid="+ju.Gid, "--mem=3000G", "--output=/dev/null", "--wrap=true")
	waitFor(t, "the node drained", 60*time.Second, func() error {
		out, _ := scontrol("show", "node", host)
		if !strings.Contains(out, "Reason=ramboot prolog job "+id2) {
			_, reason, _ := strings.Cut(out, "Reason=")
			return fmt.Errorf("reason %q", reason)
		}
		if !strings.Contains(out, "MiB of RAM available") {
			return fmt.Errorf("reason lacks the RAM: %s", out)
		}
		return nil
	})
	scontrol("cancel", id2)
	exec.Command("scancel", id2).Run()
}

func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

func unmountUnder(dir string) {
	m := mountsUnder(dir)
	for i := len(m) - 1; i >= 0; i-- {
		exec.Command("umount", "-l", m[i]).Run()
	}
}

// tailLines returns the last n lines of b.
func tailLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
