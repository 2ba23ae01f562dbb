package state

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ramboot/ramboot/provisioner/inventory"
	"github.com/ramboot/ramboot/provisioner/store"
	"github.com/ramboot/ramboot/provisioner/store/etcdtest"
)

// TestExportImportBoltToEtcd: a single-head site (bbolt) moved to etcd
// through an export stream keeps its whole inventory, profiles, status,
// boot histories and secrets: a node whose token was minted on the old
// head authenticates on the new one. The import is larger than one etcd
// transaction, so it goes in chunks; a head watching meanwhile sees all
// of it or nothing. A truncated or edited stream changes nothing; an
// import into a store that holds state is refused.
func TestExportImportBoltToEtcd(t *testing.T) {
	src, err := Open(filepath.Join(t.TempDir(), "ramboot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const n = 300
	if _, err := src.ChangeInventory(false, func(inv *inventory.Inventory) error {
		inv.Profiles["gpu"] = &Profile{Name: "gpu", Settings: inventory.Settings{Image: "rocky9-gpu"}}
		return rack(n)(inv)
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := src.Record("r00007", ev(StepDHCPOffer), true); err != nil {
			t.Fatal(err)
		}
	}
	nonce, err := src.NewBootNonce("r00007", ev(StepScript))
	if err != nil {
		t.Fatal(err)
	}
	tok := NewToken()
	if err := src.ConsumeNonce("r00007", nonce, tok, ev(StepOverlay)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sum, err := src.Export(context.Background(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Nodes != n || sum.Profiles != 1 || sum.Boots != 2 || sum.Bytes != int64(buf.Len()) {
		t.Fatalf("export summary %+v, want %d nodes, 1 profile, 2 earlier boots, %d bytes", sum, n, buf.Len())
	}
	stream := buf.Bytes()

	c := etcdtest.Start(t, etcdtest.Options{Members: 1})
	watcher := openShared(t, c.Endpoints(), "/m/")
	st, err := store.OpenEtcd(context.Background(), store.EtcdOptions{Endpoints: c.Endpoints(), Prefix: "/m/"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	// Damaged streams: refused whole, nothing written.
	edited := bytes.Replace(stream, []byte(`"rocky9-gpu"`), []byte(`"rocky9-gpX"`), 1)
	for name, bad := range map[string][]byte{
		"truncated":          stream[:len(stream)/2],
		"without trailer":    stream[:bytes.LastIndex(stream[:len(stream)-1], []byte("\n"))+1],
		"edited":             edited,
		"not an export":      []byte("{\"hello\":1}\n"),
		"empty":              nil,
		"data after the end": append(bytes.Clone(stream), []byte("{}\n")...),
	} {
		if _, err := Import(context.Background(), st, bytes.NewReader(bad)); err == nil {
			t.Fatalf("%s stream imported", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
		if kvs, _, _ := st.List(context.Background(), ""); len(kvs) != 0 {
			t.Fatalf("%s stream left %d keys", name, len(kvs))
		}
	}

	// A head watching while the import goes in chunks: all or nothing.
	seen := map[int]bool{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			seen[len(watcher.Inventory().Nodes)] = true
		}
	}()
	isum, err := Import(context.Background(), st, bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if isum.Keys != sum.Keys || isum.Nodes != n {
		t.Fatalf("import summary %+v, export %+v", isum, sum)
	}
	within(t, 5*time.Second, "the watching head sees the import", func() bool { return len(watcher.Inventory().Nodes) == n })
	close(stop)
	<-done
	for k := range seen {
		if k != 0 && k != n {
			t.Fatalf("a head served a partial import of %d nodes", k)
		}
	}

	dst := openShared(t, c.Endpoints(), "/m/")
	if !reflect.DeepEqual(src.List(), dst.List()) {
		t.Fatal("nodes and status differ after the round trip")
	}
	if !reflect.DeepEqual(src.Profiles(), dst.Profiles()) {
		t.Fatal("profiles differ after the round trip")
	}
	sb, _ := src.Boots("r00007")
	db, _ := dst.Boots("r00007")
	if len(sb) != 3 || !reflect.DeepEqual(sb, db) {
		t.Fatalf("boot histories differ: %d and %d boots", len(sb), len(db))
	}
	if _, err := dst.Authenticate("r00007", tok, netip.MustParseAddr("10.1.0.7")); err != nil {
		t.Fatalf("a token minted on the bbolt head, used on the etcd head: %v", err)
	}
	if kvs, _, _ := st.List(context.Background(), keyJournal); len(kvs) != 0 {
		t.Fatalf("journal left: %d keys", len(kvs))
	}

	// Exported again from etcd: the same keys and values.
	var again bytes.Buffer
	if _, err := dst.Export(context.Background(), &again); err != nil {
		t.Fatal(err)
	}
	body := func(b []byte) string { // without header and trailer
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return strings.Join(lines[1:len(lines)-1], "\n")
	}
	if body(again.Bytes()) != body(stream) {
		t.Fatal("etcd's export differs from bbolt's")
	}

	// A second import into a store that holds state: refused.
	if _, err := Import(context.Background(), st, bytes.NewReader(stream)); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("import into a store holding state: %v, want ErrNotEmpty", err)
	}
}
