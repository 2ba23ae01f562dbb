package initproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultGrace is how long Supervisor waits, by default, for processes to
// exit after SIGTERM at shutdown before it sends SIGKILL.
const DefaultGrace = 5 * time.Second

// Shutdown signals and what the Supervisor does for them. They follow
// busybox init, so busybox's reboot, halt and poweroff commands work in an
// image where the agent stays PID 1; SIGINT is what the kernel sends for
// Ctrl-Alt-Del once the supervisor has turned off the immediate reboot.
var shutdowns = map[os.Signal]struct {
	cmd    int
	verb   string
	action string
}{
	unix.SIGTERM: {unix.LINUX_REBOOT_CMD_RESTART, "rebooting", "reboot"},
	unix.SIGINT:  {unix.LINUX_REBOOT_CMD_RESTART, "rebooting", "reboot"},
	unix.SIGUSR1: {unix.LINUX_REBOOT_CMD_HALT, "halting", "halt"},
	unix.SIGUSR2: {unix.LINUX_REBOOT_CMD_POWER_OFF, "powering off", "poweroff"},
}

// ignored are signals whose Go default (exit) would kill PID 1 and so
// panic the kernel; the supervisor logs and ignores them.
var ignored = []os.Signal{unix.SIGHUP, unix.SIGQUIT, unix.SIGPIPE, unix.SIGPWR}

// Supervisor is PID 1's steady state: it reaps every child that exits and
// turns shutdown signals into an orderly shutdown. Signals: SIGTERM and
// SIGINT reboot, SIGUSR1 halts, SIGUSR2 powers off; SIGHUP, SIGQUIT,
// SIGPIPE and SIGPWR are ignored. A shutdown sends SIGTERM to every other
// process, waits up to Grace while reaping, sends SIGKILL, syncs and calls
// reboot(2). The zero value is ready to use.
//
// Reaping takes the status of every child of this process, so the process
// must not wait for its own children any other way (os/exec's Wait would
// fail with ECHILD): it starts them with [Supervisor.Start], which hands
// each child's status to its caller. Processes that need os/exec, such as
// the agent daemon, run as a separate process: their children are theirs,
// and PID 1 only ever reaps them once they are orphans.
type Supervisor struct {
	// Console receives one line per shutdown ("ramboot-agent: SIGUSR2:
	// powering off"). Nil discards.
	Console io.Writer
	// Logger receives a Debug record per reaped child and errors. Nil
	// discards.
	Logger *slog.Logger
	// Grace is the wait between SIGTERM and SIGKILL at shutdown. Zero
	// means DefaultGrace.
	Grace time.Duration
	// Subreaper makes the process a child subreaper
	// (PR_SET_CHILD_SUBREAPER) when it is not PID 1, so that orphans of
	// its descendants are reparented to it and reaped.
	Subreaper bool
	// Reboot performs the final reboot(2) command. Nil means unix.Reboot;
	// as PID 1 of the initial namespace it does not return.
	Reboot func(cmd int) error
	// OnShutdown, if set, is called with the action ("reboot", "halt",
	// "poweroff") when a shutdown starts, before any process is signalled,
	// so that the agent daemon can tell the head why it goes.
	OnShutdown func(action string)

	mu       sync.Mutex // held while forking and while reaping
	children map[int]chan<- unix.WaitStatus
	stopping bool // a shutdown started: Keep restarts nothing
}

// Run reaps children and handles signals until ctx ends, then stops
// handling signals and returns nil. As PID 1 it first turns off the
// kernel's immediate reboot on Ctrl-Alt-Del, so that the key sends SIGINT.
// Only processes that are not PID 1 send SIGTERM and SIGKILL to every
// process at shutdown; others skip that part.
func (s *Supervisor) Run(ctx context.Context) error {
	log := s.logger()
	ch := make(chan os.Signal, 8)
	sigs := append([]os.Signal{unix.SIGCHLD}, ignored...)
	for sig := range shutdowns {
		sigs = append(sigs, sig)
	}
	signal.Notify(ch, sigs...)
	defer signal.Stop(ch)
	if os.Getpid() == 1 {
		// In a PID namespace other than the first this is EINVAL; harmless.
		unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	} else if s.Subreaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Error("become child subreaper", "err", err)
		}
	}
	s.reap()
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-ch:
			switch {
			case sig == unix.SIGCHLD:
				s.reap()
			case shutdowns[sig].verb != "":
				s.shutdown(sig)
			default:
				log.Info("signal ignored", "signal", sig)
			}
		}
	}
}

func (s *Supervisor) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// reap collects every exited child without blocking, hands the status of
// each child started with Start to its channel, and reports whether the
// process has no children left.
func (s *Supervisor) reap() (none bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return true
		case err != nil || pid <= 0:
			return false
		}
		if ch, ok := s.children[pid]; ok {
			delete(s.children, pid)
			ch <- ws
			close(ch)
			continue
		}
		s.logger().Debug("orphan reaped", "pid", pid, "status", ws.ExitStatus(), "signal", ws.Signal())
	}
}

// shutdown ends every other process and reboots with the command for sig.
func (s *Supervisor) shutdown(sig os.Signal) {
	what := shutdowns[sig]
	console := s.Console
	if console == nil {
		console = io.Discard
	}
	fmt.Fprintf(console, "ramboot-agent: %s: %s\n", unix.SignalName(sig.(unix.Signal)), what.verb)
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	if s.OnShutdown != nil {
		s.OnShutdown(what.action)
	}
	if os.Getpid() == 1 {
		grace := orDefault(s.Grace, DefaultGrace)
		unix.Kill(-1, unix.SIGTERM)
		deadline := time.Now().Add(grace)
		for !s.reap() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		unix.Kill(-1, unix.SIGKILL)
		deadline = time.Now().Add(time.Second)
		for !s.reap() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	unix.Sync()
	reboot := s.Reboot
	if reboot == nil {
		reboot = unix.Reboot
	}
	if err := reboot(what.cmd); err != nil {
		s.logger().Error("reboot failed", "err", err)
		fmt.Fprintf(console, "ramboot-agent: %s failed: %v\n", what.verb, err)
	}
}
