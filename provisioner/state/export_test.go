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

	"github.com/ramboot/ramboot/provisioner/hostkeys"
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
	// The single head's host keys, in its state directory: two nodes had
	// their overlays, and a node no longer in the inventory left keys.
	srcKeys := &hostkeys.Dir{Path: filepath.Join(t.TempDir(), "ssh-host-keys")}
	keys, err := hostkeys.Ensure(context.Background(), srcKeys, []string{"r00007", "r00100", "gone"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sum, err := src.Export(context.Background(), &buf, ExportOptions{HostKeys: srcKeys})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Nodes != n || sum.Profiles != 1 || sum.Boots != 2 || sum.HostKeys != 2 || sum.Bytes != int64(buf.Len()) {
		t.Fatalf("export summary %+v, want %d nodes, 1 profile, 2 earlier boots, 2 nodes' host keys, %d bytes", sum, n, buf.Len())
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
		if _, err := Import(context.Background(), st, bytes.NewReader(bad), ImportOptions{}); err == nil {
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
	isum, err := Import(context.Background(), st, bytes.NewReader(stream), ImportOptions{})
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
	sameKeys := func(where string, ks hostkeys.Store, node string) {
		t.Helper()
		got, err := ks.Load(context.Background(), node)
		if err != nil {
			t.Fatalf("%s: host keys of %s: %v", where, node, err)
		}
		if len(got) != len(keys[node]) {
			t.Fatalf("%s: %d host keys of %s, want %d", where, len(got), node, len(keys[node]))
		}
		for i := range got {
			a, _ := got[i].PrivateFile()
			b, _ := keys[node][i].PrivateFile()
			if got[i].Type != keys[node][i].Type || !bytes.Equal(a, b) {
				t.Fatalf("%s: host key %s of %s differs from the old head's", where, got[i].Type, node)
			}
		}
	}
	for _, node := range []string{"r00007", "r00100"} {
		sameKeys("etcd", dst.SharedHostKeys(nil), node)
	}
	if _, err := dst.SharedHostKeys(nil).Load(context.Background(), "r00001"); err == nil {
		t.Fatal("a node without keys on the old head has keys after the move")
	}

	// Exported again from etcd: the same keys and values.
	var again bytes.Buffer
	if _, err := dst.Export(context.Background(), &again, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	body := func(b []byte) string { // without header and trailer
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return strings.Join(lines[1:len(lines)-1], "\n")
	}
	if body(again.Bytes()) != body(stream) {
		t.Fatal("etcd's export differs from bbolt's")
	}

	// Back to a single head: the keys go to its state directory.
	back, err := Open(filepath.Join(t.TempDir(), "ramboot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	backKeys := &hostkeys.Dir{Path: filepath.Join(t.TempDir(), "ssh-host-keys")}
	// Other keys already there for a node: refused, nothing imported.
	if _, err := hostkeys.Ensure(context.Background(), backKeys, []string{"r00100"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Import(context.Background(), back.Store(), bytes.NewReader(again.Bytes()), ImportOptions{HostKeys: backKeys}); err == nil || !strings.Contains(err.Error(), "r00100") {
		t.Fatalf("import over other host keys of a node: %v, want refused naming it", err)
	}
	if len(back.List()) != 0 {
		t.Fatal("a refused import left nodes")
	}
	if _, err := backKeys.Load(context.Background(), "r00007"); err == nil {
		t.Fatal("a refused import left host keys")
	}
	if err := backKeys.Delete(context.Background(), "r00100"); err != nil {
		t.Fatal(err)
	}
	bsum, err := Import(context.Background(), back.Store(), bytes.NewReader(again.Bytes()), ImportOptions{HostKeys: backKeys})
	if err != nil {
		t.Fatal(err)
	}
	if bsum.HostKeys != 2 {
		t.Fatalf("import summary %+v, want 2 nodes' host keys", bsum)
	}
	for _, node := range []string{"r00007", "r00100"} {
		sameKeys("bbolt", backKeys, node)
	}
	if kvs, _, _ := back.Store().List(context.Background(), keyHostKeys); len(kvs) != 0 {
		t.Fatalf("host keys written into the bbolt database (%d keys): a single head reads them from its directory", len(kvs))
	}

	// A second import into a store that holds state: refused.
	if _, err := Import(context.Background(), st, bytes.NewReader(stream), ImportOptions{}); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("import into a store holding state: %v, want ErrNotEmpty", err)
	}
}
