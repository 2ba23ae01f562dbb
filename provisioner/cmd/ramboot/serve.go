package main

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/internal/sdnotify"
)

// flagOr returns the flag's value when it was given, else def.
func flagOr(cmd *cobra.Command, name, v, def string) string {
	if cmd.Flags().Changed(name) {
		return v
	}
	return def
}

func serveCmd(g *globals) *cobra.Command {
	var iface, cfgPath, logLevel string
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the head daemon: DHCP, TFTP, HTTP boot, router advertisements and the admin API",
		Long: `serve runs the head node's daemon on the provisioning interface until it is
interrupted. With only --interface it runs on the embedded default
configuration (see docs/config.md); --config overrides it key by key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("interface") {
				cfg.Interface = iface
			}
			if cmd.Flags().Changed("state-dir") || cfgPath == "" {
				cfg.StateDir = g.stateDir
			}
			if cmd.Flags().Changed("log-level") {
				cfg.LogLevel = logLevel
			}
			// Run checks everything first and reports every problem at once.
			level := levelVar(cfg.LogLevel)
			log := newLogger(g.stderr, level)
			// Offline commands (image rm, gc) find an etcd inventory by it.
			if err := provisioner.RecordBackend(cfg, cfgPath); err != nil {
				log.Warn("record the state backend in the state directory", "err", err)
			}
			d := &provisioner.Daemon{Config: cfg, Logger: log, Level: level}
			d.Ready = func(h provisioner.Head) {
				if _, err := sdnotify.Send(sdnotify.Ready, "STATUS=serving "+cfg.Interface+" ("+h.BaseURL+")"); err != nil {
					log.Warn("tell systemd the daemon is ready", "err", err)
				}
			}
			// SIGHUP: read the file again and apply what can be applied
			// without dropping boots in flight.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
					}
					_, _ = sdnotify.Send(sdnotify.Reloading)
					nc, err := config.Load(cfgPath)
					if err == nil {
						nc.LogLevel = flagOr(cmd, "log-level", logLevel, nc.LogLevel)
						var restart []string
						restart, err = d.Reload(nc)
						if len(restart) > 0 {
							log.Warn("changed keys need a restart to take effect; the running values stay", "keys", strings.Join(restart, " "))
						}
					}
					if err != nil {
						log.Error("configuration not reloaded", "err", err)
					}
					_, _ = sdnotify.Send(sdnotify.Ready)
				}
			}()
			err = d.Run(ctx)
			_, _ = sdnotify.Send(sdnotify.Stopping)
			return err
		},
	}
	c.Flags().StringVarP(&iface, "interface", "i", "", "provisioning interface; its first IPv4 address is the head's address")
	c.Flags().StringVarP(&cfgPath, "config", "c", "", "YAML configuration file over the embedded default")
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return c
}
