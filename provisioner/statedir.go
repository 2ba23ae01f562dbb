package provisioner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ramboot/ramboot/provisioner/config"
	"github.com/ramboot/ramboot/provisioner/state"
	"github.com/ramboot/ramboot/provisioner/store"
)

// BackupFile is the daemon's rolling backup of the database, in the state
// directory: the last good copy, verified before it replaced the previous
// one.
const BackupFile = "ramboot.db.bak"

// RecoveryHint says how to recover from a damaged database in the state
// directory dir: which backup exists and the commands to use.
func RecoveryHint(dir string) string {
	db, bak := filepath.Join(dir, DBFile), filepath.Join(dir, BackupFile)
	hint := "to recover, nothing was changed; either:\n"
	if fi, err := os.Stat(bak); err == nil {
		hint += fmt.Sprintf("  - restore the daemon's last good copy, %s (written %s): ramboot state restore %s --state-dir %s\n",
			bak, fi.ModTime().Local().Format(time.DateTime), bak, dir)
	}
	hint += fmt.Sprintf("  - restore a backup of your own (ramboot state backup FILE made it): ramboot state restore FILE --state-dir %s\n", dir)
	hint += fmt.Sprintf("  - or move %s away to start with an empty inventory; `ramboot state check FILE` checks any copy", db)
	return hint
}

// OpenState opens the database of state directory dir, creating both if
// they do not exist. A damaged database is an error with RecoveryHint.
// When it creates a new database while a rolling backup of an earlier one
// is there, it keeps that backup under a dated name, so that the first
// backup of the new database does not replace it.
func OpenState(dir string, o state.Options, log *slog.Logger) (*state.DB, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	path, bak := filepath.Join(dir, DBFile), filepath.Join(dir, BackupFile)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(bak); err == nil {
			kept := bak + "." + time.Now().UTC().Format("20060102T150405Z")
			if err := os.Rename(bak, kept); err != nil {
				return nil, fmt.Errorf("keep the backup of the earlier database: %w", err)
			}
			log.Warn("no state database: starting with an empty inventory; the backup of the earlier one is kept", "path", kept)
		}
	}
	db, err := state.OpenWith(path, o)
	var de *state.DamageError
	if errors.As(err, &de) {
		de.Hint = RecoveryHint(dir)
	}
	return db, err
}

// OpenConfiguredState opens the state cfg names: the state directory's
// database (state.backend bolt, see OpenState) or the etcd cluster of
// state.etcd (state.backend etcd), where several heads share it.
func OpenConfiguredState(ctx context.Context, cfg config.Config, o state.Options, log *slog.Logger) (*state.DB, error) {
	if cfg.State.Backend != "etcd" {
		return OpenState(cfg.StateDir, o, log)
	}
	st, err := OpenEtcdStore(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	db, err := state.OpenStore(st, o)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("state in etcd %s (prefix %s): %w", strings.Join(cfg.State.Etcd.Endpoints, ","), cfg.State.Etcd.Prefix, err)
	}
	log.Info("state in etcd", "endpoints", strings.Join(cfg.State.Etcd.Endpoints, ","), "prefix", cfg.State.Etcd.Prefix, "rev", st.Rev())
	return db, nil
}

// OpenEtcdStore connects to the etcd cluster of cfg's state.etcd keys.
func OpenEtcdStore(ctx context.Context, cfg config.Config, log *slog.Logger) (*store.Etcd, error) {
	e := cfg.State.Etcd
	o := store.EtcdOptions{
		Endpoints: e.Endpoints, Prefix: e.Prefix, CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile,
		Username: e.Username, DialTimeout: time.Duration(e.DialTimeout), RequestTimeout: time.Duration(e.RequestTimeout),
		MaxTxnOps: e.MaxTxnOps, Logger: log.With("svc", "etcd"),
	}
	if e.PasswordFile != "" {
		b, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("%sstate.etcd.password_file: %w", cfg.Line("state.etcd.password_file"), err)
		}
		pw, _, _ := strings.Cut(string(b), "\n")
		o.Password = strings.TrimRight(pw, "\r")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(e.DialTimeout)+time.Duration(e.RequestTimeout))
	defer cancel()
	return store.OpenEtcd(ctx, o)
}

// stateMetrics are the state directory's Prometheus metrics.
type stateMetrics struct {
	backups   *prometheus.CounterVec
	lastGood  prometheus.Gauge
	stalled   prometheus.Counter
	writeFail prometheus.CounterFunc
}

// writerCollector exports the status writer's counters at scrape time.
type writerCollector struct {
	db                                 *state.DB
	batches, changes, dropped, lost, q *prometheus.Desc
}

func newWriterCollector(db *state.DB) *writerCollector {
	return &writerCollector{
		db:      db,
		batches: prometheus.NewDesc("ramboot_state_writer_batches_total", "Transactions the status writer committed (each one fsync for a group of changes).", nil, nil),
		changes: prometheus.NewDesc("ramboot_state_writer_changes_total", "Status changes (boot events, nonces, tokens, reports) the status writer committed.", nil, nil),
		dropped: prometheus.NewDesc("ramboot_state_events_dropped_total", "Boot events refused because too many were waiting for the status writer.", nil, nil),
		lost:    prometheus.NewDesc("ramboot_state_events_lost_total", "Boot events whose group failed to commit (a full disk).", nil, nil),
		q:       prometheus.NewDesc("ramboot_state_writer_queued", "Status changes waiting for the status writer.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *writerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.batches, c.changes, c.dropped, c.lost, c.q} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *writerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.db.WriterStats()
	ch <- prometheus.MustNewConstMetric(c.batches, prometheus.CounterValue, float64(s.Batches))
	ch <- prometheus.MustNewConstMetric(c.changes, prometheus.CounterValue, float64(s.Changes))
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.Dropped))
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(s.Lost))
	ch <- prometheus.MustNewConstMetric(c.q, prometheus.GaugeValue, float64(s.Queued))
}

func newStateMetrics(reg prometheus.Registerer, db *state.DB) *stateMetrics {
	m := &stateMetrics{
		backups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ramboot_state_backups_total",
			Help: "Rolling backups of the state database written (ok) or failed (error).",
		}, []string{"result"}),
		lastGood: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ramboot_state_backup_timestamp_seconds",
			Help: "When the last rolling backup of the state database was written.",
		}),
		stalled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ramboot_boots_stalled_total",
			Help: "Boots marked stalled: no progress for boot.stall_timeout.",
		}),
		writeFail: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ramboot_state_write_failures_total",
			Help: "Writes to the state database that did not commit (a full disk): nothing changed.",
		}, func() float64 { return float64(db.CommitFailures()) }),
	}
	m.backups.WithLabelValues("ok")
	m.backups.WithLabelValues("error")
	reg.MustRegister(m.backups, m.lastGood, m.stalled, m.writeFail, newWriterCollector(db))
	if db.Path() == "" { // a shared store (etcd): its heads, and its retries
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ramboot_heads",
			Help: "Heads registered in the shared state store (etcd), this one included: fewer than the heads you run means one is down.",
		}, func() float64 { return float64(len(db.Heads())) }))
		if r, ok := db.Store().(interface{ Retries() int64 }); ok {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "ramboot_state_etcd_retries_total",
				Help: "etcd transactions sent again after they got no answer (a member lost, a leader changing).",
			}, func() float64 { return float64(r.Retries()) }))
		}
	}
	return m
}

// backups keeps the rolling backup of the database: written at start and
// every interval when the database changed. A failed backup is logged and
// counted, and the previous one stays.
type backups struct {
	db       *state.DB
	path     string
	interval time.Duration
	log      *slog.Logger
	m        *stateMetrics
	last     int // transaction of the last backup written
}

// once writes a backup if the database changed since the last one.
func (b *backups) once() {
	if b.db.Path() == "" {
		return // a shared store (etcd): no file (docs/scale-out.md)
	}
	tx := b.db.TxID()
	if tx == b.last {
		return
	}
	sum, err := b.db.Backup(b.path)
	if err != nil {
		b.m.backups.WithLabelValues("error").Inc()
		b.log.Warn("rolling backup of the state database failed; the previous one stays", "path", b.path, "err", err)
		return
	}
	b.last = tx
	b.m.backups.WithLabelValues("ok").Inc()
	b.m.lastGood.SetToCurrentTime()
	b.log.Debug("rolling backup of the state database written", "path", b.path, "bytes", sum.Bytes, "nodes", sum.Nodes)
}

// run refreshes the backup every interval until ctx ends.
func (b *backups) run(ctx context.Context) error {
	if b.db.Path() == "" {
		return nil
	}
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			b.once()
		}
	}
}

// watchStalls marks boots stalled that made no progress for timeout and
// have no download under way, checking a few times per timeout.
func watchStalls(ctx context.Context, db *state.DB, timeout time.Duration, busy func(state.Node) bool, log *slog.Logger, m *stateMetrics) error {
	tick := min(max(timeout/4, time.Second), 30*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		marked, err := db.MarkStalled(timeout, busy)
		for _, name := range marked {
			m.stalled.Inc()
			log.Warn("boot stalled: no progress", "node", name, "dur", timeout)
		}
		if err != nil {
			log.Warn("mark stalled boots", "err", err)
		}
	}
}

// StateSummary describes a state database file that verified: its node
// and boot counts, size and last transaction.
type StateSummary = state.Summary

// VerifyState checks the state database file at path without changing it
// (`ramboot state check`); see state.Verify.
func VerifyState(path string) (StateSummary, error) { return state.Verify(path) }

// BackupStateFile writes a verified copy of the database file src to dst
// without a daemon (`ramboot state backup` when none runs).
func BackupStateFile(src, dst string) (StateSummary, error) { return state.BackupFile(src, dst) }

// RestoreState replaces the database at path with a verified copy of from,
// keeping the file it replaces (`ramboot state restore`); see
// state.Restore.
func RestoreState(from, path string) (StateSummary, string, error) { return state.Restore(from, path) }

// WriteStateFileAtomic writes a database file to path through a verified
// temporary file; see state.WriteFileAtomic.
func WriteStateFileAtomic(path string, fill func(io.Writer) error) (StateSummary, error) {
	return state.WriteFileAtomic(path, fill)
}
