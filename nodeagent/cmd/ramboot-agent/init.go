package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent"
	"github.com/ramboot/ramboot/nodeagent/daemon"
	"github.com/ramboot/ramboot/nodeagent/initproc"
	"github.com/ramboot/ramboot/nodeagent/internal/bootrec"
)

// agentPath is where the agent archive puts the agent: the kernel runs it
// as /init, and the daemon's unit runs it from there.
const agentPath = "/init"

// initOptions are the init subcommand's flags.
type initOptions struct {
	root    string
	release string
	dryRun  bool
}

func initCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o initOptions
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	fs.StringVar(&o.root, "root", "/", "the node's root `directory`")
	fs.StringVar(&o.release, "release", "", "kernel `release` whose modules to use (default: uname -r)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be done, change nothing")
	if done, err := parseFlags(fs, args, stderr); done || err != nil {
		return err
	}
	if !o.dryRun {
		return errors.New("init: not PID 1: boot the binary as the kernel's /init, or use --dry-run")
	}
	return runInit(ctx, o, stdout, stderr)
}

// runInit boots the node. For real (PID 1) it never returns: after the
// boot it hands PID 1 to the image's init, or stays PID 1, running the
// daemon (and a console shell) until a signal powers the node off.
func runInit(ctx context.Context, o initOptions, stdout, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	say := func(format string, args ...any) { fmt.Fprintf(stdout, "ramboot-agent: "+format+"\n", args...) }
	var sup *initproc.Supervisor
	if !o.dryRun {
		// First of all: handle signals (Go's default for SIGTERM, SIGHUP,
		// ... is to exit, and PID 1 exiting panics the kernel) and reap.
		sup = &initproc.Supervisor{Console: stdout, Logger: log, OnShutdown: func(action string) {
			// Tell the daemon why it is about to get SIGTERM.
			p := filepath.Join(o.root, daemon.ShutdownMarker)
			_ = os.MkdirAll(filepath.Dir(p), 0o755)
			_ = os.WriteFile(p, []byte(action+"\n"), 0o644)
		}}
		go func() { _ = sup.Run(context.Background()) }()
	}
	a := &nodeagent.Agent{Root: o.root, Release: o.release, Console: stdout, Logger: log, DryRun: o.dryRun}
	rec, bootErr := a.Boot(ctx) // Boot printed each failure
	cfg, cfgErr := overlay.ReadConfig(os.DirFS(o.root))

	next, why := nodeagent.FindInit(o.root)
	if o.dryRun {
		if next != "" {
			say("would hand PID 1 to %s (%s)", next, nodeagent.InitName(o.root, next))
		} else {
			say("would stay PID 1 (%v) and run the agent daemon", why)
		}
		return bootErr
	}
	if link, err := nodeagent.LinkCommand(o.root, agentPath); err != nil {
		log.Warn("make ramboot-agent a command", "err", err)
	} else if link != "" {
		log.Debug("ramboot-agent linked", "path", link)
	}
	if next != "" {
		name := nodeagent.InitName(o.root, next)
		rec.Init = name
		if name == "systemd" {
			if err := nodeagent.InstallService(o.root, agentPath); err != nil {
				say("%v: the agent daemon will not run", err)
			} else {
				say("agent daemon installed as a systemd service (/%s)", nodeagent.ServicePath)
			}
		} else if err := startDetached(o.root); err != nil {
			say("start the agent daemon: %v", err)
		} else {
			say("agent daemon started; %s will not restart it", name)
		}
		rec.Boot.HandoverSeconds = nodeagent.Uptime()
		if err := bootrec.Write(o.root, rec); err != nil {
			say("boot record failed: %v", err)
		}
		say("handing PID 1 to %s (%s)", next, name)
		err := initproc.Exec(next)
		why = err
		say("%v", err)
	}
	// Stay PID 1: reap, run the daemon, and offer a console shell.
	rec.Init = "ramboot-agent"
	rec.Boot.HandoverSeconds = nodeagent.Uptime()
	rec.Warnings = append(rec.Warnings, fmt.Sprintf("no init to hand over to (%v): the agent stays PID 1", why))
	if err := bootrec.Write(o.root, rec); err != nil {
		say("boot record failed: %v", err)
	}
	say("no init to hand over to (%v): staying PID 1, running the agent daemon", why)
	go sup.Keep(context.Background(), initproc.Service{
		Name: "agent daemon", Path: agentPath, Args: []string{agentPath, "daemon"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	})
	switch {
	case cfgErr == nil && cfg.ConsoleShell:
		shell, err := findShell(o.root)
		if err != nil {
			say("no console shell: %v", err)
			break
		}
		say("root shell on the console (%s; boot.console_shell)", shell)
		// A terminal becomes the shell's controlling terminal (job
		// control, ^C); a console that is no terminal cannot.
		_, terr := unix.IoctlGetTermios(0, unix.TCGETS)
		go sup.Keep(context.Background(), initproc.Service{
			Name: "console shell", Path: shell, Args: []string{"-sh"},
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=vt100"},
			Sys: &syscall.SysProcAttr{Setsid: true, Setctty: terr == nil, Ctty: 0},
		})
	case cfgErr == nil:
		say("no console shell (boot.console_shell is off)")
	}
	select {} // the supervisor reaps and shuts down; PID 1 never returns
}

// findShell returns the image's shell for the console.
func findShell(root string) (string, error) {
	for _, sh := range []string{"/bin/sh", "/bin/bash", "/usr/bin/sh"} {
		if fi, err := os.Stat(filepath.Join(root, sh)); err == nil && fi.Mode().Perm()&0o111 != 0 {
			return sh, nil
		}
	}
	return "", errors.New("the image has no /bin/sh")
}

// startDetached starts the daemon in a session of its own before PID 1 is
// handed to an init that is not systemd: it stays a child of PID 1, which
// that init reaps.
func startDetached(root string) error {
	devnull, err := os.OpenFile(filepath.Join(root, "dev/null"), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	_, err = syscall.ForkExec(agentPath, []string{agentPath, "daemon"}, &syscall.ProcAttr{
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Files: []uintptr{devnull.Fd(), 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	return err
}
