package main

import (
	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/config"
)

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
			// Run validates the configuration, naming every bad key.
			d := &provisioner.Daemon{Config: cfg, Logger: newLogger(g.stderr, levelVar(cfg.LogLevel))}
			return d.Run(cmd.Context())
		},
	}
	c.Flags().StringVarP(&iface, "interface", "i", "", "provisioning interface; its first IPv4 address is the head's address")
	c.Flags().StringVarP(&cfgPath, "config", "c", "", "YAML configuration file over the embedded default")
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return c
}
