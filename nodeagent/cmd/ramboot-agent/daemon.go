package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/ramboot/ramboot/images/overlay"
	"github.com/ramboot/ramboot/nodeagent/daemon"
	"github.com/ramboot/ramboot/nodeagent/headapi"
	"github.com/ramboot/ramboot/nodeagent/localapi"
	"github.com/ramboot/ramboot/nodeagent/workload"
)

// daemonRoutes are the local API routes of the agent's other parts that
// need nothing of the daemon; the workload (containers, jobs) is added in
// daemonCmd.
var daemonRoutes = []daemon.Registrar{}

func daemonCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d := &daemon.Daemon{Version: versionString(), Console: stdout}
	var (
		level                         slog.Level
		source                        string
		wcfg                          workload.Config
		cache, scratch, memory, tmpfs string
		runtimes                      string
	)
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.StringVar(&d.Root, "root", "/", "the node's root `directory`")
	fs.StringVar(&d.Socket, "socket", localapi.DefaultSocket, "the local API's unix `socket`")
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log `level`: debug, info, warn, error")
	fs.StringVar(&source, "source-addr", "", "local `address` requests to the head leave from (default: the kernel's choice)")
	fs.StringVar(&wcfg.StateDir, "state-dir", workload.DefaultStateDir, "the workload's state `directory` (RAM)")
	fs.StringVar(&cache, "cache-size", "", "image cache cap (default: a quarter of the RAM)")
	fs.StringVar(&scratch, "scratch-size", "", "each job's scratch tmpfs (default: half the job's memory, else 1G)")
	fs.StringVar(&memory, "memory", "", "containers' default memory limit (default 1G)")
	fs.StringVar(&tmpfs, "tmpfs-size", "", "containers' default writable layer (default 256M)")
	fs.BoolVar(&wcfg.AllowRoot, "allow-root", false, "let containers run as root")
	fs.StringVar(&runtimes, "runtimes", "crun,runc", "OCI runtimes to try, in order")
	if done, err := parseFlags(fs, args, stderr); done || err != nil {
		return err
	}
	for _, p := range []struct {
		s string
		v *int64
	}{{cache, &wcfg.CacheBytes}, {scratch, &wcfg.ScratchBytes}, {memory, &wcfg.Memory}, {tmpfs, &wcfg.Tmpfs}} {
		var err error
		if *p.v, err = parseSize(p.s); err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
	}
	wcfg.Runtimes = strings.Split(runtimes, ",")
	if source != "" {
		a, err := netip.ParseAddr(source)
		if err != nil {
			return fmt.Errorf("daemon: --source-addr %q: not an IP address", source)
		}
		d.SourceAddr = a
	}
	if d.Root != "/" {
		// A node's root mounted elsewhere (tests, a chroot): the
		// kernel's host name is not that node's to change.
		d.SetHostname = func(string) error { return nil }
	}
	// Under systemd stderr is the journal, which adds its own time stamps.
	d.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	// One client of the head for the daemon and its workload.
	cfg, err := overlay.ReadConfig(os.DirFS(d.Root))
	if err != nil {
		return err
	}
	d.Head = headapi.NewClient(cfg, "ramboot-agent/"+d.Version, d.SourceAddr)
	wcfg.Head, wcfg.Connected, wcfg.Logger = d.Head, d.Connected, d.Logger.With("svc", "workload")
	w, err := workload.New(ctx, wcfg)
	if err != nil {
		return err
	}
	defer w.Close()
	d.Routes = append(append([]daemon.Registrar{}, daemonRoutes...), daemon.RegistrarFunc(w.Routes))
	d.Summary = w.Summary
	return d.Run(ctx)
}
