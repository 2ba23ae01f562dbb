package main

import (
	"context"
	"flag"
	"io"
	"log/slog"

	"github.com/ramboot/ramboot/nodeagent/daemon"
	"github.com/ramboot/ramboot/nodeagent/localapi"
)

// daemonRoutes are the local API routes of the agent's other parts
// (containers, scheduler hooks): each adds its Registrar here.
var daemonRoutes = []daemon.Registrar{}

func daemonCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	d := &daemon.Daemon{Routes: daemonRoutes, Version: versionString(), Console: stdout}
	var level slog.Level
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.StringVar(&d.Root, "root", "/", "the node's root `directory`")
	fs.StringVar(&d.Socket, "socket", localapi.DefaultSocket, "the local API's unix `socket`")
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log `level`: debug, info, warn, error")
	if done, err := parseFlags(fs, args, stderr); done || err != nil {
		return err
	}
	// Under systemd stderr is the journal, which adds its own time stamps.
	d.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return d.Run(ctx)
}
