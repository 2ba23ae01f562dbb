package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/provisioner/api"
)

// Host adds another host to the lab link: a network namespace of its own
// (named after the lab's, with suffix name) whose eth0 is a veth pair
// plugged into the lab bridge, with address addr (CIDR, e.g.
// "10.77.0.2/24"). The lab kills what is left in it and deletes it on
// Close. name must be short: the bridge side of the veth is "rb"+name.
func (l *Lab) Host(ctx context.Context, name, addr string) (string, error) {
	ns := l.ns + "-" + name
	if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return "", err
	}
	l.extraNS = append(l.extraNS, ns)
	for _, args := range [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", l.ns, "link", "add", "rb" + name, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", l.ns, "link", "set", "rb" + name, "master", l.bridge, "up"},
		{"-n", ns, "addr", "add", addr, "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return "", err
		}
	}
	return ns, nil
}

// Head is one more `ramboot serve` on the lab link, in a namespace of its
// own with its own state directory: for several heads serving one
// cluster from etcd.
type Head struct {
	Name  string // the host's name, e.g. "h1"
	NS    string // its network namespace
	IP    string // its address on the lab link
	State string // its state directory
	Log   string // its log file
	l     *Lab
	proc  *Proc
}

// StartHead starts `ramboot serve --config CONFIG` on a new host name at
// ip (on the lab's subnet, /24), its interface eth0, and waits until its
// admin API answers. config is the configuration file's text (the
// state backend, typically etcd).
func (l *Lab) StartHead(ctx context.Context, name, ip, config string) (*Head, error) {
	ns, err := l.Host(ctx, name, ip+"/24")
	if err != nil {
		return nil, err
	}
	h := &Head{Name: name, NS: ns, IP: ip, State: filepath.Join(l.work, "state-"+name), Log: filepath.Join(l.work, "ramboot-serve-"+name+".log"), l: l}
	cfg, err := l.WriteConfig("ramboot-"+name+".yaml", config)
	if err != nil {
		return nil, err
	}
	if h.proc, err = l.serveIn(ctx, ns, "eth0", h.State, h.Log, "--config", cfg); err != nil {
		return nil, err
	}
	return h, nil
}

// PID returns the head's process id.
func (h *Head) PID() int { return h.proc.PID() }

// CLI runs the ramboot CLI against this head.
func (h *Head) CLI(ctx context.Context, args ...string) ([]byte, error) {
	return h.l.cliAt(ctx, h.State, args...)
}

// Node returns this head's `ramboot node show NAME -o json`.
func (h *Head) Node(ctx context.Context, name string) (api.NodeStatus, error) {
	return h.l.nodeAt(ctx, h.State, name)
}

// WaitBooted is Lab.WaitBooted asking this head.
func (h *Head) WaitBooted(ctx context.Context, name string, vm *VM, timeout time.Duration) (api.NodeStatus, error) {
	return h.l.waitBooted(ctx, h.State, name, vm, timeout)
}

// BuildImage is Lab.BuildImage into this head's store.
func (h *Head) BuildImage(ctx context.Context, name string, buildArgs ...string) (images.Digest, error) {
	return h.l.buildImage(ctx, h.State, name, 0, buildArgs...)
}

// Kill kills the head with SIGKILL, as a crash would, and waits until it
// has been reaped.
func (h *Head) Kill() error {
	p := h.proc
	if p.Exited() {
		return errors.New("ramboot serve on " + h.Name + " is not running")
	}
	if err := syscall.Kill(p.PID(), syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill head %s: %w", h.Name, err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("head %s (pid %d) still running 10s after SIGKILL", h.Name, p.PID())
	}
	h.l.logf("head %s (pid %d) killed with SIGKILL", h.Name, p.PID())
	return nil
}

// ReadLog returns the head's log so far.
func (h *Head) ReadLog() []byte {
	b, _ := os.ReadFile(h.Log)
	return b
}

// Stop ends the head (SIGTERM, then SIGKILL after 5 s); it does nothing
// if the head has already exited.
func (h *Head) Stop() { h.proc.stop(5 * time.Second) }
