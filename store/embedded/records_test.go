package embedded_test

import (
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/storetest"
)

func TestRecordsConformance(t *testing.T) {
	storetest.RunRecords(t, func(t *testing.T) storetest.RecordingStore {
		s, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// Records survive a restart, and their changes are still watchable.
func TestRecordsDurable(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := s.WriteRecords(ctx, []store.RecordMutation{{Op: store.Create, Record: store.Record{Kind: "k", ID: "a", Data: []byte("v")}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, head, err := s.ReadRecords(ctx, "k")
	if err != nil || head != rev || len(recs) != 1 || string(recs[0].Data) != "v" || recs[0].Revision != rev {
		t.Fatalf("after reopening: %+v at %d, %v; want k/a=v at revision %d", recs, head, err, rev)
	}
	for ch, err := range s.Watch(ctx, 0) {
		if err != nil {
			t.Fatal(err)
		}
		if ch.Revision != rev || len(ch.Records) != 1 || ch.Records[0].Record.ID != "a" {
			t.Fatalf("watched %+v, want the record write at %d", ch, rev)
		}
		break
	}
}
