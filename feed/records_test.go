package feed_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
)

// fakeReader answers ReadRecords from fixed records, each kind at its own
// revision, as a store under writes does.
type fakeReader struct {
	recs map[string][]store.Record
	at   map[string]store.Revision
	err  error
}

func (f *fakeReader) ReadRecords(_ context.Context, kind string) ([]store.Record, store.Revision, error) {
	return f.recs[kind], f.at[kind], f.err
}

// testSet keeps kinds "a" and "b" as id -> data; a record whose data is
// "bad" makes Load or Apply fail.
type testSet struct {
	data  map[string]string
	rev   store.Revision
	loads int
}

func (s *testSet) Kinds() []string { return []string{"a", "b"} }

func (s *testSet) Load(recs []store.Record, rev store.Revision) error {
	data := map[string]string{}
	for _, r := range recs {
		if string(r.Data) == "bad" {
			return errors.New("bad record " + r.ID)
		}
		data[r.Kind+"/"+r.ID] = string(r.Data)
	}
	s.data, s.rev = data, rev
	s.loads++
	return nil
}

func (s *testSet) Apply(ch store.Change) error {
	for _, u := range ch.Records {
		if string(u.Record.Data) == "bad" {
			return errors.New("bad record " + u.Record.ID)
		}
		if u.Record.Kind != "a" && u.Record.Kind != "b" {
			return errors.New("given a record of kind " + u.Record.Kind)
		}
		if u.Op == store.Delete {
			delete(s.data, u.Record.Kind+"/"+u.Record.ID)
		} else {
			s.data[u.Record.Kind+"/"+u.Record.ID] = string(u.Record.Data)
		}
	}
	s.rev = ch.Revision
	return nil
}

func rec(kind, id, data string, rev store.Revision) store.Record {
	return store.Record{Kind: kind, ID: id, Data: []byte(data), Revision: rev}
}

func touchAt(rev store.Revision, recs ...store.Record) store.Change {
	ch := store.Change{Revision: rev}
	for _, r := range recs {
		ch.Records = append(ch.Records, store.RecordUpdate{Op: store.Touch, Record: r})
	}
	return ch
}

func wantData(t *testing.T, s *testSet, rev store.Revision, want map[string]string) {
	t.Helper()
	if s.rev != rev || !maps.Equal(s.data, want) {
		t.Fatalf("set at revision %d holds %v; want revision %d holding %v", s.rev, s.data, rev, want)
	}
}

func TestRecordsFeedSets(t *testing.T) {
	ctx := t.Context()
	cases := []struct {
		name    string
		reader  *fakeReader
		changes []store.Change
		// loadedEarly: the set is loaded by Records.Load itself.
		loadedEarly bool
		wantRev     store.Revision
		want        map[string]string
	}{{
		name: "kinds read at one revision load at once; later changes apply, narrowed to the set's kinds",
		reader: &fakeReader{recs: map[string][]store.Record{"a": {rec("a", "1", "x", 3)}},
			at: map[string]store.Revision{"a": 5, "b": 5}},
		changes: []store.Change{
			touchAt(4, rec("a", "1", "stale", 4)), // at or before the read: skipped
			touchAt(6, rec("b", "2", "y", 6), rec("other", "3", "z", 6)),
			{Revision: 7}, // relationships only: the revision still advances
		},
		loadedEarly: true,
		wantRev:     7, want: map[string]string{"a/1": "x", "b/2": "y"},
	}, {
		name: "kinds read at different revisions load when the stream reaches the later one, brought forward",
		reader: &fakeReader{recs: map[string][]store.Record{"a": {rec("a", "1", "old", 3)}, "b": {rec("b", "2", "y", 6)}},
			at: map[string]store.Revision{"a": 5, "b": 7}},
		changes: []store.Change{
			touchAt(6, rec("a", "1", "new", 6), rec("b", "2", "seen-already", 6)),
			{Revision: 7, Records: []store.RecordUpdate{{Op: store.Delete, Record: rec("a", "9", "", 7)}}},
			touchAt(8, rec("b", "3", "w", 8)),
		},
		wantRev: 8, want: map[string]string{"a/1": "new", "b/2": "y", "b/3": "w"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			set := &testSet{}
			recs := feed.NewRecords(c.reader, []feed.RecordSet{set}, func(_ feed.RecordSet, err error) { t.Errorf("set failed: %v", err) })
			if err := recs.Load(ctx); err != nil {
				t.Fatal(err)
			}
			if got := set.loads == 1; got != c.loadedEarly {
				t.Fatalf("after Load, loaded = %v, want %v", got, c.loadedEarly)
			}
			for _, ch := range c.changes {
				if err := recs.Apply(ctx, ch); err != nil {
					t.Fatal(err)
				}
			}
			if set.loads != 1 {
				t.Errorf("loaded %d times, want once", set.loads)
			}
			wantData(t, set, c.wantRev, c.want)
		})
	}
}

// A set whose Apply fails is fed nothing more (its revision stops, so
// whatever waits on it fails closed) until a change touches its kinds;
// then it is read again, at the store's head.
func TestRecordsFailedSetIsReadAgain(t *testing.T) {
	ctx := t.Context()
	reader := &fakeReader{at: map[string]store.Revision{"a": 2, "b": 2}}
	set := &testSet{}
	var failures []error
	recs := feed.NewRecords(reader, []feed.RecordSet{set}, func(_ feed.RecordSet, err error) { failures = append(failures, err) })
	if err := recs.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []store.Change{touchAt(3, rec("a", "1", "bad", 3)), {Revision: 4}, touchAt(5, rec("other", "1", "x", 5))} {
		if err := recs.Apply(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	if len(failures) != 1 || set.rev != 2 {
		t.Fatalf("after a bad record: %d failures (%v), set at revision %d; want 1 failure, the set at 2", len(failures), failures, set.rev)
	}
	// The bad record is replaced: the set is read again at the head.
	reader.recs = map[string][]store.Record{"a": {rec("a", "1", "good", 6)}}
	reader.at = map[string]store.Revision{"a": 6, "b": 6}
	for _, ch := range []store.Change{touchAt(6, rec("a", "1", "good", 6)), touchAt(7, rec("b", "2", "y", 7))} {
		if err := recs.Apply(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	wantData(t, set, 7, map[string]string{"a/1": "good", "b/2": "y"})

	// A store that cannot be read is the follower's error, not the set's.
	reader.err = errors.New("connection refused")
	if err := recs.Load(ctx); err == nil || !errors.Is(err, reader.err) {
		t.Fatalf("Load with the store down = %v, want its error", err)
	}
	if got := slices.Collect(maps.Keys(set.data)); len(got) != 2 {
		t.Fatalf("a failed read changed the set: %v", set.data)
	}
}
