package state

import (
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// Every status record the writer hands to memory without decoding it is
// decoded and compared in this package's tests (they panic on a
// difference): bbolt and etcd, one head and several.
func init() { verifyPrepared = true }

// TestPreparedMatchesDisk: boot events posted by the serving path reach
// memory without being decoded back from the store, and memory then
// equals what a head that decodes everything (the database opened again)
// reads: new boots, a history of one (an empty history), a full timeline,
// times with a monotonic reading in a non-UTC zone, a detail with invalid
// UTF-8, and a repeated offer.
func TestPreparedMatchesDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	db, err := OpenWith(path, Options{History: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"a", "b"} {
		if err := db.AddNode(node(n, fmt.Sprintf("52:54:00:00:00:%02x", i+1), fmt.Sprintf("10.0.0.%d", i+11))); err != nil {
			t.Fatal(err)
		}
	}
	zone := time.FixedZone("X", 3*3600+1800)
	for i := range 3 * MaxEvents {
		name := []string{"a", "b"}[i%2]
		switch {
		case i%50 == 0:
			db.Post(name, Event{Step: StepDHCPOffer, Detail: "firmware", XID: uint32(i/50 + 1)}, true) // time.Now(): monotonic, Local
		case i%7 == 0:
			db.Post(name, Event{Time: time.Now().In(zone), Step: StepDHCPOffer, Detail: "repeated \xff\xfe bytes", XID: uint32(i/50 + 1)}, true)
		default:
			db.Post(name, Event{Time: time.Now().In(zone), Step: StepTFTP, Detail: fmt.Sprintf("file %d", i)}, false)
		}
	}
	db.Flush()
	db.mu.Lock()
	taken := db.preparedTaken
	db.mu.Unlock()
	if taken == 0 {
		t.Fatal("no boot event reached memory without a decode")
	}
	before := db.List()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := OpenWith(path, Options{History: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	after := again.List()
	if !reflect.DeepEqual(before, after) {
		t.Errorf("memory differs from the store:\nmemory %+v\nstore  %+v", before, after)
	}
}
