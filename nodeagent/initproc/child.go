package initproc

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Child is a process started by Supervisor.Start.
type Child struct {
	// Pid is the child's process id.
	Pid  int
	done <-chan unix.WaitStatus
}

// Done returns a channel that receives the child's wait status once the
// supervisor has reaped it, and is then closed.
func (c *Child) Done() <-chan unix.WaitStatus { return c.done }

// Start starts the program at path as syscall.ForkExec does and registers
// the child, so that the reaper hands its wait status to Child.Done
// instead of discarding it. The fork and the registration happen under the
// reaper's lock, so a child that exits at once is not missed. Run must be
// running for the status to arrive.
func (s *Supervisor) Start(path string, argv []string, attr *syscall.ProcAttr) (*Child, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	ch := make(chan unix.WaitStatus, 1)
	if s.children == nil {
		s.children = map[int]chan<- unix.WaitStatus{}
	}
	s.children[pid] = ch
	return &Child{Pid: pid, done: ch}, nil
}

// Defaults of the Service restart waits.
const (
	DefaultRestartMin = time.Second
	DefaultRestartMax = 30 * time.Second
)

// Service is a program the supervisor keeps running (see Keep).
type Service struct {
	// Name names the service in console lines and logs.
	Name string
	// Path is the program to run.
	Path string
	// Args is its argument vector, Args[0] being the program's name.
	Args []string
	// Env is its environment; nil means the supervisor's.
	Env []string
	// Files are its descriptors 0, 1, 2...; nil means the supervisor's
	// standard input, output and error.
	Files []uintptr
	// Sys holds further process attributes (session, controlling
	// terminal); nil means none.
	Sys *syscall.SysProcAttr
	// RestartMin is the wait before a restart; it doubles after every run
	// shorter than a minute, up to RestartMax. Zero means
	// DefaultRestartMin.
	RestartMin time.Duration
	// RestartMax caps the wait. Zero means DefaultRestartMax.
	RestartMax time.Duration
}

// Keep starts svc and restarts it whenever it exits, until ctx ends or a
// shutdown starts. Each exit is logged on the console with its status.
// When ctx ends Keep sends the running process SIGTERM, waits up to Grace
// for it (then SIGKILL) and returns.
func (s *Supervisor) Keep(ctx context.Context, svc Service) {
	console := s.Console
	if console == nil {
		console = io.Discard
	}
	wait := orDefault(svc.RestartMin, DefaultRestartMin)
	maxWait := orDefault(svc.RestartMax, DefaultRestartMax)
	for {
		if s.isStopping() || ctx.Err() != nil {
			return
		}
		env := svc.Env
		if env == nil {
			env = os.Environ()
		}
		files := svc.Files
		if files == nil {
			files = []uintptr{0, 1, 2}
		}
		started := time.Now()
		c, err := s.Start(svc.Path, svc.Args, &syscall.ProcAttr{Env: env, Files: files, Sys: svc.Sys})
		if err != nil {
			fmt.Fprintf(console, "ramboot-agent: %s: %v\n", svc.Name, err)
		} else {
			s.logger().Info("service started", "service", svc.Name, "pid", c.Pid)
			select {
			case ws := <-c.Done():
				if s.isStopping() {
					return
				}
				fmt.Fprintf(console, "ramboot-agent: %s (pid %d) %s; restarting in %s\n", svc.Name, c.Pid, describe(ws), wait)
			case <-ctx.Done():
				s.stop(c)
				return
			}
		}
		if time.Since(started) > time.Minute {
			wait = orDefault(svc.RestartMin, DefaultRestartMin)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, maxWait)
	}
}

// stop ends a child: SIGTERM, then SIGKILL after Grace.
func (s *Supervisor) stop(c *Child) {
	_ = unix.Kill(c.Pid, unix.SIGTERM)
	select {
	case <-c.Done():
	case <-time.After(orDefault(s.Grace, DefaultGrace)):
		_ = unix.Kill(c.Pid, unix.SIGKILL)
		<-c.Done()
	}
}

func (s *Supervisor) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// describe says how a process ended.
func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return fmt.Sprintf("exited with status %d", ws.ExitStatus())
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
