package state

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/store"
)

// TestOpensEarlierStore: a store written by the version before the
// hand-written encoder and the xid of offers (commit 42da2b9: three
// nodes, one with three boots, two of them archived, a script served,
// times in UTC and in another zone, a detail encoding/json escapes; its
// keys dumped to testdata/store-42da2b9.json by that version) opens, reads
// as it was written, encodes back to the very bytes it was stored as, and
// takes new boot events: an offer with an xid after the script starts a
// boot, the same transaction again joins it, and offers recorded without
// an xid match none.
func TestOpensEarlierStore(t *testing.T) {
	raw, err := os.ReadFile("testdata/store-42da2b9.json")
	if err != nil {
		t.Fatal(err)
	}
	var kvs []struct{ Key, Value string }
	if err := json.Unmarshal(raw, &kvs); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.db")
	st, err := store.OpenBolt(path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ops []store.Op
	for _, kv := range kvs {
		ops = append(ops, store.Put(kv.Key, []byte(kv.Value)))
	}
	if _, err := st.Txn(context.Background(), nil, ops); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	db := open(t, path)
	for _, kv := range kvs {
		var b []byte
		switch {
		case strings.HasPrefix(kv.Key, keyStatus):
			var s statusRecord
			if err := decodeStatus(kv.Key, []byte(kv.Value), &s); err != nil {
				t.Fatal(err)
			}
			b, err = encodeStatus(&s)
		case strings.HasPrefix(kv.Key, keyBoots):
			var bt Boot
			if err := json.Unmarshal([]byte(kv.Value), &bt); err != nil {
				t.Fatal(err)
			}
			b, err = encodeBoot(&bt)
		default:
			continue
		}
		if err != nil || !bytes.Equal(b, []byte(kv.Value)) {
			t.Errorf("%s encodes (%v) as\n%s\nwas stored as\n%s", kv.Key, err, b, kv.Value)
		}
	}
	n1, err := db.Get("n1")
	if err != nil {
		t.Fatal(err)
	}
	boots, err := db.Boots("n1")
	if err != nil {
		t.Fatal(err)
	}
	if n1.Status.ID != 3 || n1.Status.Boots != 3 || len(n1.Status.Timeline) != 4 || len(boots) != 3 ||
		n1.Status.Timeline[2].Detail != "snponly.efi 1024 bytes in 3ms <&> é" || !n1.Status.reached(StepScript) {
		t.Fatalf("n1 read from the earlier store: boot %d of %d, timeline %v, %d boots kept", n1.Status.ID, n1.Status.Boots, n1.Status.Timeline, len(boots))
	}
	if _, off := n1.Status.Timeline[1].Time.Zone(); off != 2*3600 {
		t.Errorf("n1's ack time lost its zone: %v", n1.Status.Timeline[1].Time)
	}

	offer := func(name string, xid uint32) {
		t.Helper()
		if err := db.Record(name, Event{Step: StepDHCPOffer, Detail: "firmware", XID: xid}, true); err != nil {
			t.Fatal(err)
		}
	}
	offer("n1", 7)
	offer("n1", 7)
	offer("n2", 0x42)
	n1, _ = db.Get("n1")
	if n1.Status.ID != 4 || len(n1.Status.Timeline) != 2 || !strings.Contains(n1.Status.Timeline[1].Detail, "repeated request") {
		t.Errorf("n1 after two offers in one transaction: boot %d, timeline %v, want boot 4 of two offers", n1.Status.ID, n1.Status.Timeline)
	}
	if n2, _ := db.Get("n2"); n2.Status.ID != 2 {
		t.Errorf("n2 after a firmware offer of a new transaction: boot %d, want 2", n2.Status.ID)
	}
	if boots, _ := db.Boots("n1"); len(boots) != 4 || boots[1].ID != 3 || len(boots[1].Timeline) != 4 {
		t.Errorf("n1's boots after a new one: %+v", boots)
	}
	before := db.List()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	again := open(t, path)
	if after := again.List(); !reflect.DeepEqual(before, after) {
		t.Errorf("reopened:\nbefore %+v\nafter  %+v", before, after)
	}
}
