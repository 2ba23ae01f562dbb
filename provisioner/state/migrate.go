package state

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/ramboot/ramboot/provisioner/store"
)

// legacyRecord is a node as the first layout stored it, under
// "nodes/NAME": inventory entry, status and secrets in one record; the
// store moved the layout's buckets to "nodes/NAME" and "boots/NAME\x00ID"
// (ID 8 bytes, big-endian).
type legacyRecord struct {
	Node *Node `json:"node"`
	statusRecord
}

// migrate rewrites records of the first layout into the current one, in
// one transaction: the node's inventory entry at nodes/NAME, its status at
// status/NAME, its earlier boots at boots/NAME/ID.
func migrate(st store.Store) error {
	ctx := context.Background()
	nodes, _, err := st.List(ctx, keyNodes)
	if err != nil {
		return err
	}
	var ops []store.Op
	for _, kv := range nodes {
		var lr legacyRecord
		if json.Unmarshal(kv.Value, &lr) != nil || lr.Node == nil {
			continue
		}
		name := strings.TrimPrefix(kv.Key, keyNodes)
		if lr.Status.ID == 0 && lr.Status.Boots > 0 {
			lr.Status.ID = lr.Status.Boots // written before boots had ids
		}
		lr.Node.Upgrade()
		nb, err := json.Marshal(lr.Node)
		if err != nil {
			return err
		}
		sb, err := json.Marshal(lr.statusRecord)
		if err != nil {
			return err
		}
		ops = append(ops, store.Put(kv.Key, nb), store.Put(statusKey(name), sb))
	}
	boots, _, err := st.List(ctx, keyBoots)
	if err != nil {
		return err
	}
	for _, kv := range boots {
		rest := strings.TrimPrefix(kv.Key, keyBoots)
		i := strings.IndexByte(rest, 0)
		if i < 0 || len(rest) != i+9 {
			continue
		}
		id := int(binary.BigEndian.Uint64([]byte(rest[i+1:])))
		ops = append(ops, store.Delete(kv.Key), store.Put(bootKey(rest[:i], id), kv.Value))
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := st.Txn(ctx, nil, ops); err != nil {
		return fmt.Errorf("rewrite the first layout's records: %w", err)
	}
	return nil
}

// decodeStatus decodes the status stored for node name.
func decodeStatus(name string, v []byte, s *statusRecord) error {
	if err := json.Unmarshal(v, s); err != nil {
		return fmt.Errorf("decode status of node %q: %w", name, err)
	}
	if s.Status.ID == 0 && s.Status.Boots > 0 {
		s.Status.ID = s.Status.Boots
	}
	if s.Status.State == "" {
		s.Status.State = StateNew
	}
	return nil
}
