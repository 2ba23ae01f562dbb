package ra_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/pxe/ra"
)

// Advertise "no default router here" on the provisioning bridge until
// interrupted, so iPXE stops waiting for IPv6 router discovery.
func ExampleServer() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	srv := &ra.Server{
		Interface: "pxebr0",
		Logger:    slog.Default(),
		Metrics:   ra.NewMetrics(prometheus.DefaultRegisterer),
	}
	if err := srv.ListenAndServe(ctx); err != nil {
		slog.Error("router advertisements", "err", err)
	}
}
