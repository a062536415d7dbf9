package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mandate-authz/mandate/store"
)

// RecordingStore is a store that also keeps records.
type RecordingStore interface {
	store.Store
	store.RecordStore
}

// RunRecords runs the conformance cases of store.RecordStore. newStore must
// return a new, empty store on every call; RunRecords closes each store
// when its subtest ends.
//
// Rules pinned down beyond the interface's documentation: records need no
// schema; every successful WriteRecords is one change in the stream, whose
// Records list the applied updates in mutation order (a Delete of an absent
// record applies nothing); a record read or streamed carries the revision
// that wrote it.
func RunRecords(t *testing.T, newStore func(t *testing.T) RecordingStore) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, h *recHarness)
	}{
		{"WriteRead", testRecordsWriteRead},
		{"CreateConflict", testRecordsCreateConflict},
		{"Validation", testRecordsValidation},
		{"Watch", testRecordsWatch},
		{"Isolation", testRecordsIsolation},
		{"Concurrent", testRecordsConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.run(t, &recHarness{harness: &harness{t: t, ctx: t.Context(), s: s}, rs: s})
		})
	}
}

type recHarness struct {
	*harness
	rs store.RecordStore
}

func rec(kind, id, data string) store.Record {
	return store.Record{Kind: kind, ID: id, Data: []byte(data)}
}

func (h *recHarness) writeRecords(muts ...store.RecordMutation) store.Revision {
	h.t.Helper()
	before := h.head()
	rev, err := h.rs.WriteRecords(h.ctx, muts)
	if err != nil {
		h.t.Fatalf("WriteRecords: %v", err)
	}
	h.checkAdvanced("WriteRecords", before, rev)
	return rev
}

// records reads kind and renders it as "id=data@rev" strings.
func (h *recHarness) records(kind string) ([]string, store.Revision) {
	h.t.Helper()
	recs, at, err := h.rs.ReadRecords(h.ctx, kind)
	if err != nil {
		h.t.Fatalf("ReadRecords(%s): %v", kind, err)
	}
	out := make([]string, len(recs))
	for i, r := range recs {
		if r.Kind != kind {
			h.t.Fatalf("ReadRecords(%s) returned a record of kind %s", kind, r.Kind)
		}
		out[i] = fmt.Sprintf("%s=%s@%d", r.ID, r.Data, r.Revision)
	}
	return out, at
}

func (h *recHarness) expectRecords(kind string, want ...string) {
	h.t.Helper()
	got, at := h.records(kind)
	if !slices.Equal(got, want) {
		h.t.Fatalf("records of %s = %q, want %q", kind, got, want)
	}
	if head := h.head(); at != head {
		h.t.Fatalf("ReadRecords reported revision %d, head is %d", at, head)
	}
}

func put(op store.Op, r store.Record) store.RecordMutation {
	return store.RecordMutation{Op: op, Record: r}
}

func testRecordsWriteRead(t *testing.T, h *recHarness) {
	h.expectRecords("a.kind")
	r1 := h.writeRecords(put(store.Create, rec("a.kind", "b", "1")), put(store.Touch, rec("a.kind", "a", "2")), put(store.Create, rec("other", "a", "x")))
	h.expectRecords("a.kind", fmt.Sprintf("a=2@%d", r1), fmt.Sprintf("b=1@%d", r1))
	h.expectRecords("other", fmt.Sprintf("a=x@%d", r1))
	// Records live beside relationships: a schema and relationship writes
	// move the head without touching them.
	h.writeSchema(baseSchema)
	h.write(nil, touch("doc:1#viewer@user:ann")...)
	r2 := h.writeRecords(put(store.Touch, rec("a.kind", "b", "3")), put(store.Delete, rec("a.kind", "a", "")))
	h.expectRecords("a.kind", fmt.Sprintf("b=3@%d", r2))
	// Deleting an absent record is a write that changes nothing.
	h.writeRecords(put(store.Delete, rec("a.kind", "zz", "")))
	h.expectRecords("a.kind", fmt.Sprintf("b=3@%d", r2))
	h.expectState("doc:1#viewer@user:ann")
	// Empty data is kept as empty.
	r3 := h.writeRecords(put(store.Touch, rec("empty", "e", "")))
	h.expectRecords("empty", fmt.Sprintf("e=@%d", r3))
}

func testRecordsCreateConflict(t *testing.T, h *recHarness) {
	r1 := h.writeRecords(put(store.Create, rec("k", "a", "1")))
	before := h.head()
	_, err := h.rs.WriteRecords(h.ctx, []store.RecordMutation{put(store.Touch, rec("k", "b", "2")), put(store.Create, rec("k", "a", "3"))})
	if !errors.Is(err, store.ErrRecordExists) {
		t.Fatalf("Create of an existing record: err = %v, want %v", err, store.ErrRecordExists)
	}
	if got := h.head(); got != before {
		t.Fatalf("a failed WriteRecords moved the head from %d to %d", before, got)
	}
	// Atomic: the Touch before the failing Create was not applied.
	h.expectRecords("k", fmt.Sprintf("a=1@%d", r1))
}

func testRecordsValidation(t *testing.T, h *recHarness) {
	big := strings.Repeat("x", store.MaxRecordDataLength+1)
	cases := []struct {
		name string
		muts []store.RecordMutation
		want error
	}{
		{"none", nil, store.ErrInvalidRecord},
		{"empty kind", []store.RecordMutation{put(store.Touch, rec("", "a", ""))}, store.ErrInvalidRecord},
		{"upper-case kind", []store.RecordMutation{put(store.Touch, rec("Kind", "a", ""))}, store.ErrInvalidRecord},
		{"empty id", []store.RecordMutation{put(store.Touch, rec("k", "", ""))}, store.ErrInvalidRecord},
		{"NUL in id", []store.RecordMutation{put(store.Touch, rec("k", "a\x00b", ""))}, store.ErrInvalidRecord},
		{"id too long", []store.RecordMutation{put(store.Touch, rec("k", strings.Repeat("i", store.MaxRecordIDLength+1), ""))}, store.ErrInvalidRecord},
		{"data too long", []store.RecordMutation{put(store.Touch, rec("k", "a", big))}, store.ErrInvalidRecord},
		{"unknown op", []store.RecordMutation{put(store.Op(9), rec("k", "a", ""))}, store.ErrInvalidRecord},
		{"twice in a write", []store.RecordMutation{put(store.Touch, rec("k", "a", "")), put(store.Delete, rec("k", "a", ""))}, store.ErrInvalidRecord},
		{"too many", slices.Repeat([]store.RecordMutation{put(store.Touch, rec("k", "a", ""))}, store.MaxRecordMutations+1), store.ErrTooManyMutations},
	}
	for _, tc := range cases {
		before := h.head()
		_, err := h.rs.WriteRecords(h.ctx, tc.muts)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if got := h.head(); got != before {
			t.Errorf("%s: a refused write moved the head from %d to %d", tc.name, before, got)
		}
	}
	h.expectRecords("k")
}

func testRecordsWatch(t *testing.T, h *recHarness) {
	w := startWatch(h.harness, 0)
	defer w.stop()
	r1 := h.writeRecords(put(store.Touch, rec("k", "a", "1")), put(store.Touch, rec("k", "b", "2")))
	rs := h.writeSchema(baseSchema)
	r2 := h.writeRecords(put(store.Delete, rec("k", "a", "")), put(store.Touch, rec("k", "b", "3")))
	r3 := h.writeRecords(put(store.Delete, rec("k", "missing", "")))
	want := []struct {
		rev     store.Revision
		records []string
	}{
		{r1, []string{fmt.Sprintf("TOUCH k/a=1@%d", r1), fmt.Sprintf("TOUCH k/b=2@%d", r1)}},
		{rs, nil},
		{r2, []string{fmt.Sprintf("DELETE k/a=1@%d", r1), fmt.Sprintf("TOUCH k/b=3@%d", r2)}},
		{r3, nil},
	}
	for _, wc := range want {
		ch := w.next(t)
		if ch.Revision != wc.rev {
			t.Fatalf("change at revision %d, want %d", ch.Revision, wc.rev)
		}
		var got []string
		for _, u := range ch.Records {
			got = append(got, fmt.Sprintf("%s %s/%s=%s@%d", u.Op, u.Record.Kind, u.Record.ID, u.Record.Data, u.Record.Revision))
		}
		slices.Sort(got)
		if !slices.Equal(got, wc.records) {
			t.Fatalf("records of revision %d = %q, want %q", ch.Revision, got, wc.records)
		}
		if len(ch.Updates) != 0 {
			t.Fatalf("revision %d carries %d relationship updates, want none", ch.Revision, len(ch.Updates))
		}
	}
	w.expectQuiet(t)
	// A watch started later replays the same record changes.
	w2 := startWatch(h.harness, r1-1)
	defer w2.stop()
	if ch := w2.next(t); ch.Revision != r1 || len(ch.Records) != 2 {
		t.Fatalf("replayed change %s with %d records, want revision %d with 2", formatChange(ch), len(ch.Records), r1)
	}
}

func testRecordsIsolation(t *testing.T, h *recHarness) {
	data := []byte("abc")
	h.writeRecords(put(store.Touch, store.Record{Kind: "k", ID: "a", Data: data}))
	data[0] = 'X'
	recs, _, err := h.rs.ReadRecords(h.ctx, "k")
	if err != nil || len(recs) != 1 || string(recs[0].Data) != "abc" {
		t.Fatalf("after changing the caller's slice: %v, %v", recs, err)
	}
	recs[0].Data[0] = 'Y'
	again, _, _ := h.rs.ReadRecords(h.ctx, "k")
	if string(again[0].Data) != "abc" {
		t.Fatalf("changing a returned record changed the store: %q", again[0].Data)
	}
}

func testRecordsConcurrent(t *testing.T, h *recHarness) {
	const writers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := h.rs.WriteRecords(h.ctx, []store.RecordMutation{put(store.Create, rec("k", fmt.Sprintf("%d-%d", w, i), "v"))}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent WriteRecords: %v", err)
	}
	got, _ := h.records("k")
	if len(got) != writers*each {
		t.Fatalf("%d records after %d concurrent creates", len(got), writers*each)
	}
	if h.head() != writers*each {
		t.Fatalf("head %d after %d writes to an empty store, want %d", h.head(), writers*each, writers*each)
	}
}
