package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ramboot/ramboot/nodeagent/container"
	"github.com/ramboot/ramboot/nodeagent/job"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/workload"
)

const workloadUsage = `
Containers and jobs (docs/containers.md, docs/slurm.md):
  ramboot-agent run IMAGE[:TAG] [--name N] [--env K=V] [--bind SRC:DST[:ro]]
        [--tmpfs-size SIZE] [--memory SIZE] [--cpus N] [--job ID] [--user UID[:GID]]
        [-d] [--rm] -- CMD...
  ramboot-agent ps [-o json] | stop ID | rm [--force] ID | logs [-f] ID | exec ID -- CMD...
  ramboot-agent bundle IMAGE --job ID [--rootless]   print a bundle directory for srun --container
  ramboot-agent prolog | epilog           Slurm's Prolog/Epilog (root; SLURM_* environment)
  ramboot-agent runtime                   which OCI runtime works here, and why
`

// runWorkload runs the container and job subcommands; handled is false
// for other commands.
func runWorkload(ctx context.Context, args []string, stdout, stderr io.Writer) (handled bool, err error) {
	sock := os.Getenv("RAMBOOT_AGENT_SOCKET")
	if sock == "" {
		sock = localapi.DefaultSocket
	}
	cli := &container.Client{API: localapi.NewClient(sock)}
	sub, rest := args[1], args[2:]
	switch sub {
	case "run":
		return true, runRun(ctx, cli, rest, stdout, stderr)
	case "ps":
		fs := newFlags("ps", stderr)
		out := fs.String("o", "table", "output: table or json")
		if err := parse(fs, rest); err != nil {
			return true, err
		}
		cs, err := cli.List(ctx)
		if err != nil {
			return true, err
		}
		if *out == "json" {
			return true, writeJSON(stdout, cs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tIMAGE\tJOB\tUID\tSTATE\tEXIT\tTMPFS USED\tCOMMAND")
		for _, c := range cs {
			exit := ""
			if c.State == container.StateExited {
				exit = strconv.Itoa(c.ExitCode)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s/%s\t%s\n", c.ID, c.Name, c.Image, c.Job, c.UID, c.State, exit,
				mebi(c.TmpfsUsed), mebi(c.TmpfsBytes), strings.Join(c.Args, " "))
		}
		return true, tw.Flush()
	case "stop":
		fs := newFlags("stop", stderr)
		grace := fs.Duration("grace", 0, "SIGKILL after this long (default 10s)")
		if err := parse(fs, rest); err != nil {
			return true, err
		}
		for _, id := range fs.Args() {
			if _, err := cli.Stop(ctx, id, *grace); err != nil {
				return true, err
			}
		}
		return true, nil
	case "rm":
		fs := newFlags("rm", stderr)
		force := fs.Bool("force", false, "kill a running container")
		if err := parse(fs, rest); err != nil {
			return true, err
		}
		for _, id := range fs.Args() {
			if err := cli.Remove(ctx, id, *force); err != nil {
				return true, err
			}
		}
		return true, nil
	case "logs":
		fs := newFlags("logs", stderr)
		follow := fs.Bool("f", false, "follow until the container exits")
		if err := parse(fs, rest); err != nil || fs.NArg() != 1 {
			return true, errors.Join(err, errors.New("logs: want one container"))
		}
		_, err := cli.Logs(ctx, fs.Arg(0), *follow, stdout, stderr)
		return true, err
	case "exec":
		fs := newFlags("exec", stderr)
		var env multi
		fs.Var(&env, "env", "K=V to add (repeatable)")
		if err := parse(fs, rest); err != nil || fs.NArg() < 2 {
			return true, errors.Join(err, errors.New("exec: want ID -- CMD"))
		}
		code, err := cli.Exec(ctx, fs.Arg(0), container.ExecRequest{Args: dashes(fs.Args()[1:]), Env: env}, stdout, stderr)
		if err != nil {
			return true, err
		}
		return true, exitStatus(code)
	case "bundle":
		fs := newFlags("bundle", stderr)
		jobID := fs.String("job", os.Getenv("SLURM_JOB_ID"), "job the bundle belongs to (default $SLURM_JOB_ID)")
		tmpfs := fs.String("tmpfs-size", "", "size of the writable layer")
		rootless := fs.Bool("rootless", false, "for a runtime the user runs (runc --rootless in Slurm's oci.conf)")
		if err := parse(fs, rest); err != nil || fs.NArg() != 1 {
			return true, errors.Join(err, errors.New("bundle: want IMAGE"))
		}
		t, err := parseSize(*tmpfs)
		if err != nil {
			return true, err
		}
		c, err := cli.Run(ctx, container.RunRequest{Image: fs.Arg(0), Job: *jobID, BundleOnly: true, Rootless: *rootless, TmpfsBytes: t})
		if err != nil {
			return true, err
		}
		fmt.Fprintln(stdout, c.Bundle)
		return true, nil
	case "runtime":
		var rep workload.RuntimeReport
		if err := cli.API.Do(ctx, http.MethodGet, "/v1/runtime", nil, &rep); err != nil {
			return true, err
		}
		fmt.Fprintf(stdout, "chosen: %s\n%s\n", orNone(rep.Chosen), rep.Summary())
		if rep.Error != "" {
			return true, errors.New(rep.Error)
		}
		return true, nil
	case "prolog", "epilog":
		return true, runHook(ctx, cli.API, sub, stdout, stderr)
	}
	return false, nil
}

// dashes drops the "--" that separates a command from the flags (the flag
// package keeps it when a positional argument came first).
func dashes(args []string) []string {
	if len(args) > 0 && args[0] == "--" {
		return args[1:]
	}
	return args
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// exitError carries a container's exit status to main.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// ExitCode is the status the process exits with.
func (e exitError) ExitCode() int { return int(e) }

func exitStatus(code int) error {
	if code == 0 {
		return nil
	}
	return exitError(code)
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	return nil
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// parseSize parses 512M, 2G, 1.5G, 1048576 ("" = 0).
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	u := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i"))
	switch {
	case strings.HasSuffix(u, "K"):
		mult, u = 1<<10, u[:len(u)-1]
	case strings.HasSuffix(u, "M"):
		mult, u = 1<<20, u[:len(u)-1]
	case strings.HasSuffix(u, "G"):
		mult, u = 1<<30, u[:len(u)-1]
	case strings.HasSuffix(u, "T"):
		mult, u = 1<<40, u[:len(u)-1]
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: want a number with K, M, G or T", s)
	}
	return int64(f * float64(mult)), nil
}

// mebi prints a size in MiB with one decimal, for ps's narrow columns.
func mebi(n int64) string { return fmt.Sprintf("%.1fM", float64(n)/(1<<20)) }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runRun(ctx context.Context, cli *container.Client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	var req container.RunRequest
	var env, binds multi
	var tmpfs, memory string
	fs.StringVar(&req.Name, "name", "", "container name")
	fs.Var(&env, "env", "K=V (repeatable)")
	fs.Var(&binds, "bind", "SRC:DST[:ro] host path to mount (repeatable)")
	fs.StringVar(&tmpfs, "tmpfs-size", "", "size of the writable layer (default 256M, at most half the memory)")
	fs.StringVar(&memory, "memory", "", "memory limit (default: the job's memory, else 1G)")
	fs.Float64Var(&req.CPUs, "cpus", 0, "CPU limit in CPUs (default: the job's)")
	fs.StringVar(&req.Job, "job", os.Getenv("SLURM_JOB_ID"), "job to run in (default $SLURM_JOB_ID)")
	fs.StringVar(&req.User, "user", "", "UID[:GID] to run as (root callers only)")
	fs.StringVar(&req.Cwd, "workdir", "", "working directory in the container")
	fs.BoolVar(&req.PrivateNetwork, "private-network", false, "a network namespace of its own (loopback only)")
	detach := fs.Bool("d", false, "print the container id and return; do not wait")
	rm := fs.Bool("rm", false, "remove the container once it exits")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() < 1 {
		return errors.New("run: want IMAGE[:TAG] [-- CMD...]")
	}
	req.Image, req.Args, req.Env, req.Binds = fs.Arg(0), dashes(fs.Args()[1:]), env, binds
	var err error
	if req.TmpfsBytes, err = parseSize(tmpfs); err != nil {
		return err
	}
	if req.MemoryBytes, err = parseSize(memory); err != nil {
		return err
	}
	c, err := cli.Run(ctx, req)
	if err != nil {
		return err
	}
	if *detach {
		fmt.Fprintln(stdout, c.ID)
		return nil
	}
	// Interrupted: stop the container, as a foreground process would be.
	sctx, stop := signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := cli.Logs(sctx, c.ID, true, stdout, stderr)
	if sctx.Err() != nil {
		cli.Stop(context.WithoutCancel(ctx), c.ID, 5*time.Second)
		code = 130
		err = nil
	}
	if *rm {
		if rerr := cli.Remove(context.WithoutCancel(ctx), c.ID, true); rerr != nil {
			fmt.Fprintln(stderr, "ramboot-agent: rm:", rerr)
		}
	}
	if err != nil {
		return err
	}
	return exitStatus(code)
}

// runHook is `ramboot-agent prolog` and `epilog`: it asks the daemon to
// do the work and drains the node with the reason when it fails.
func runHook(ctx context.Context, api *localapi.Client, hook string, stdout, stderr io.Writer) error {
	env, err := job.EnvFrom(os.Environ())
	if err != nil {
		return fmt.Errorf("%s: %w", hook, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var reason string
	switch hook {
	case "prolog":
		var rep job.PrologReply
		if err := api.Do(ctx, http.MethodPost, "/v1/jobs/prolog", job.HookRequest{Env: env}, &rep); err != nil {
			reason = "agent: " + err.Error()
		} else if rep.Error != "" {
			reason = rep.Error
		} else {
			fmt.Fprintf(stdout, "ramboot-agent: job %s registered, scratch %s\n", rep.Job.ID, rep.Job.Scratch)
		}
	case "epilog":
		var res job.EpilogResult
		if err := api.Do(ctx, http.MethodPost, "/v1/jobs/epilog", job.HookRequest{Env: env}, &res); err != nil {
			reason = "agent: " + err.Error()
		} else if !res.Clean() {
			reason = res.Summary()
		} else {
			fmt.Fprintf(stdout, "ramboot-agent: job %s %s\n", env.JobID, res.Summary())
		}
	}
	if reason == "" {
		return nil
	}
	reason = fmt.Sprintf("ramboot %s job %s: %s", hook, env.JobID, reason)
	if derr := job.Drain(context.WithoutCancel(ctx), os.Getenv("RAMBOOT_SCONTROL"), env.Node, reason); derr != nil {
		fmt.Fprintln(stderr, "ramboot-agent:", derr)
	}
	return errors.New(reason)
}
