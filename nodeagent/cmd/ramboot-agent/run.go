package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/ramboot/ramboot/nodeagent"
	"github.com/ramboot/ramboot/nodeagent/initproc"
	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "devel"

const usage = `ramboot-agent: the ramboot node agent.

Booted as the kernel's /init (PID 1), whatever its arguments, it boots the
node: mounts /proc /sys /dev /run, reads etc/ramboot/node.json, sets the host
name, loads kernel modules, configures the provisioning interface, reports
to the head, then stays PID 1 (reaping children; SIGTERM/SIGINT reboot,
SIGUSR1 halts, SIGUSR2 powers off) or execs the program that
ramboot.exec=PATH on the kernel command line names.

Usage:
  ramboot-agent init [--root DIR] [--release R] [--dry-run]
        run the boot sequence; without --dry-run only as PID 1
  ramboot-agent version
        print version information
  ramboot-agent help
        print this help

See docs/agent.md.
`

// run is the agent's main: as PID 1 it boots the node and never returns;
// otherwise it runs the subcommand in args[1:].
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if os.Getpid() == 1 {
		// The kernel passes init the command-line words it did not
		// understand: ignore them.
		return runInit(ctx, initOptions{root: "/"}, stdout, stderr)
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command: see 'ramboot-agent help'")
	}
	switch args[1] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage+workloadUsage)
		return nil
	case "version", "--version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "init":
		var o initOptions
		fs := flag.NewFlagSet("init", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.StringVar(&o.root, "root", "/", "the node's root `directory`")
		fs.StringVar(&o.release, "release", "", "kernel `release` whose modules to use (default: uname -r)")
		fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be done, change nothing")
		if err := fs.Parse(args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("init: unexpected argument %q", fs.Arg(0))
		}
		if !o.dryRun {
			return errors.New("init: not PID 1: boot the binary as the kernel's /init, or use --dry-run")
		}
		return runInit(ctx, o, stdout, stderr)
	default:
		if handled, err := runWorkload(ctx, args, stdout, stderr); handled { // workload.go
			return err
		}
		fmt.Fprint(stderr, usage+workloadUsage)
		return fmt.Errorf("unknown command %q", args[1])
	}
}

func versionString() string {
	s := "ramboot-agent " + version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" {
				s += " " + kv.Value
			}
		}
	}
	return s + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// initOptions are the init subcommand's flags.
type initOptions struct {
	root    string
	release string
	dryRun  bool
}

// runInit boots the node. For real (PID 1) it never returns: after the
// boot it execs ramboot.exec or stays PID 1, reaping children until a
// signal powers the node off.
func runInit(ctx context.Context, o initOptions, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var supervised chan error
	if !o.dryRun {
		// First of all: handle signals (Go's default for SIGTERM, SIGHUP,
		// ... is to exit, and PID 1 exiting panics the kernel) and reap.
		sup := &initproc.Supervisor{Console: stdout, Logger: log}
		supervised = make(chan error, 1)
		go func() { supervised <- sup.Run(context.Background()) }()
	}
	a := &nodeagent.Agent{Root: o.root, Release: o.release, Console: stdout, Logger: log, DryRun: o.dryRun}
	_, bootErr := a.Boot(ctx) // Boot printed each failure

	var exe string
	if cl, err := procfs.ReadCmdline(os.DirFS(o.root)); err == nil {
		exe, _ = cl.Get("ramboot.exec")
	} else {
		log.Warn("read kernel command line", "err", err)
	}
	if o.dryRun {
		if exe != "" {
			fmt.Fprintf(stdout, "ramboot-agent: would exec %s\n", exe)
		} else {
			fmt.Fprintln(stdout, "ramboot-agent: would stay PID 1")
		}
		return bootErr
	}
	if exe != "" {
		fmt.Fprintf(stdout, "ramboot-agent: exec %s\n", exe)
		err := initproc.Exec(exe)
		fmt.Fprintf(stdout, "ramboot-agent: exec failed: %v\n", err)
	}
	fmt.Fprintln(stdout, "ramboot-agent: staying PID 1")
	return <-supervised // Run's context never ends: this blocks for good
}
