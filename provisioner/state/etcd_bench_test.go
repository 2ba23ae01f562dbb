package state

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/store"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// benchDBs returns a database on bbolt and one on a one-member etcd on
// loopback, both on the same disk.
func benchDBs(b *testing.B) map[string]func() *DB {
	return map[string]func() *DB{
		"bolt": func() *DB {
			db, err := Open(filepath.Join(b.TempDir(), "s.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			return db
		},
		"etcd": func() *DB {
			c := etcdtest.Start(b, etcdtest.Options{Members: 1})
			st, err := store.OpenEtcd(context.Background(), store.EtcdOptions{Endpoints: c.Endpoints(), Prefix: "/bench/"})
			if err != nil {
				b.Fatal(err)
			}
			db, err := OpenStore(st, Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			return db
		},
	}
}

// BenchmarkApply10k: one inventory change adding 10,000 nodes, then one
// removing them: one bbolt transaction each, or on etcd a journal and
// about 240 chunks of 126 operations (three per node) under the fence.
func BenchmarkApply10k(b *testing.B) {
	for _, name := range []string{"bolt", "etcd"} {
		b.Run(name, func(b *testing.B) {
			db := benchDBs(b)[name]()
			b.ResetTimer()
			for range b.N {
				if _, err := db.ChangeInventory(false, rack(10000)); err != nil {
					b.Fatal(err)
				}
				if _, err := db.ChangeInventory(false, func(inv *inventory.Inventory) error { clear(inv.Nodes); return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBootEvents: a wave of boot events, one for each of 1,000
// nodes, posted at once and flushed by the batched status writer.
func BenchmarkBootEvents(b *testing.B) {
	for _, name := range []string{"bolt", "etcd"} {
		b.Run(name, func(b *testing.B) {
			db := benchDBs(b)[name]()
			if _, err := db.ChangeInventory(false, rack(1000)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				for n := range 1000 {
					db.Post(fmt.Sprintf("r%05d", n), Event{Step: StepKernel, Detail: fmt.Sprint(i)}, false)
				}
				db.Flush()
			}
			b.ReportMetric(float64(1000*b.N)/time.Since(start).Seconds(), "events/s")
			if s := db.WriterStats(); s.Lost > 0 {
				b.Fatalf("%d events lost", s.Lost)
			}
		})
	}
}
