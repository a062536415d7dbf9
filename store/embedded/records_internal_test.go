package embedded

import (
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-authz/mandate/store"
)

// Record changes no watch can ask for again are dropped by the next record
// write; the records themselves stay.
func TestRecordChangesPruned(t *testing.T) {
	ctx := t.Context()
	s, err := Open(ctx, t.TempDir(), Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	write := func(id string) store.Revision {
		rev, err := s.WriteRecords(ctx, []store.RecordMutation{{Op: store.Touch, Record: store.Record{Kind: "k", ID: id}}})
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	write("a")
	write("b")
	r3 := write("c")
	if err := s.ForgetBefore(ctx, r3); err != nil {
		t.Fatal(err)
	}
	r4 := write("d")
	var kept []store.Revision
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRecordChanges).ForEach(func(k, _ []byte) error {
			kept = append(kept, store.Revision(binaryU64(k)))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if len(kept) != 1 || kept[0] != r4 {
		t.Fatalf("record changes kept at revisions %v, want only %d (revision %d is the oldest retained, so changes after it)", kept, r4, r3)
	}
	recs, _, err := s.ReadRecords(ctx, "k")
	if err != nil || len(recs) != 4 {
		t.Fatalf("records: %v, %v; want all 4", recs, err)
	}
}
