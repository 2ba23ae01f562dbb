package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "devel"

// command is one subcommand.
type command struct {
	// name is the word after ramboot-agent.
	name string
	// args is the synopsis of its arguments.
	args string
	// summary is its line of help.
	summary string
	// run runs it with the arguments after its name.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands is the dispatch table: a subcommand is one entry here and a
// function in a file of its own.
var commands = []command{
	{"init", "[--root DIR] [--release R] [--dry-run]", "run the boot sequence: only as PID 1, or with --dry-run", initCmd},
	{"daemon", "[--root DIR] [--socket PATH]", "run the agent daemon: register with the head, heartbeat, serve the local API", daemonCmd},
	{"status", "[-o table|json] [--socket PATH]", "print the node's view from the daemon (root only)", statusCmd},
	{"version", "", "print version information", versionCmd},
}

func usage() string {
	var b strings.Builder
	b.WriteString(`ramboot-agent: the ramboot node agent.

Booted as the kernel's /init (PID 1), whatever its arguments, it prepares
the node (see docs/agent.md) and hands PID 1 to the image's /sbin/init,
with the daemon installed as a systemd service, or stays PID 1 and runs the
daemon itself.

Usage:
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  ramboot-agent %s %s\n        %s\n", c.name, c.args, c.summary)
	}
	b.WriteString("  ramboot-agent help\n        print this help\n")
	b.WriteString(workloadUsage)
	b.WriteString("\nSee docs/agent.md.\n")
	return b.String()
}

// run is the agent's main: as PID 1 it boots the node and never returns;
// otherwise it runs the subcommand in args[1:].
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if os.Getpid() == 1 {
		// The kernel passes init the command-line words it did not
		// understand: ignore them.
		return runInit(ctx, initOptions{root: "/"}, stdout, stderr)
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, usage())
		return errors.New("no command: see 'ramboot-agent help'")
	}
	name := args[1]
	switch name {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage())
		return nil
	case "--version":
		name = "version"
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(ctx, args[2:], stdout, stderr)
		}
	}
	if handled, err := runWorkload(ctx, args, stdout, stderr); handled { // workload.go
		return err
	}
	fmt.Fprint(stderr, usage())
	return fmt.Errorf("unknown command %q", args[1])
}

// parseFlags parses a subcommand's flags; it returns done when they asked
// for help (already printed).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (done bool, err error) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, err
	}
	if fs.NArg() > 0 {
		return false, fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return false, nil
}

func versionCmd(_ context.Context, _ []string, stdout, _ io.Writer) error {
	fmt.Fprintln(stdout, versionString())
	return nil
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
