package provisioner

import (
	"context"
	"log/slog"
	"time"

	"github.com/ramboot/ramboot/provisioner/state"
)

// watchHeartbeats marks nodes down whose agent daemon has not been heard
// from for downAfter (counted from since, the head's start, for nodes not
// heard from since), checking a few times per timeout, until ctx ends.
func watchHeartbeats(ctx context.Context, db *state.DB, downAfter time.Duration, since time.Time, log *slog.Logger) error {
	t := time.NewTicker(min(max(downAfter/8, 100*time.Millisecond), 5*time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			down, err := db.MarkDown(now, since, downAfter)
			for _, name := range down {
				log.Warn("node down: no heartbeat", "node", name, "dur", downAfter)
			}
			if err != nil {
				log.Error("mark nodes down", "err", err)
			}
		}
	}
}
