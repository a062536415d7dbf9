package postgres_test

import (
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
	"github.com/mandate-authz/mandate/store/storetest"
)

func TestRecordsConformance(t *testing.T) {
	storetest.RunRecords(t, func(t *testing.T) storetest.RecordingStore {
		return openAt(t, pgtest.URL(t), postgres.Options{})
	})
}

// Garbage collection drops the record changes of the revisions it drops,
// and keeps the records themselves.
func TestRecordChangesCollected(t *testing.T) {
	s := openAt(t, pgtest.URL(t), postgres.Options{})
	ctx := t.Context()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := s.WriteRecords(ctx, []store.RecordMutation{{Op: store.Touch, Record: store.Record{Kind: "k", ID: id, Data: []byte(id)}}}); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		var n int
		if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM mandate_record_changes").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 3 {
		t.Fatalf("%d record changes after 3 writes", n)
	}
	if err := s.ForgetBefore(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d record changes after forgetting revisions before 3, want 1 (revision 3's)", n)
	}
	recs, _, err := s.ReadRecords(ctx, "k")
	if err != nil || len(recs) != 3 {
		t.Fatalf("records after garbage collection: %v, %v; want all 3", recs, err)
	}
}
