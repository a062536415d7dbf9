package storetest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

func testExpiration(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Run("past and future", func(t *testing.T) {
		h := openWithSchema(t, newStore)
		rev := h.write(nil, touch("doc:1#viewer@user:old"+past, "doc:1#viewer@user:new"+future)...)
		h.expectAt(rev, rel.Filter{}, "doc:1#viewer@user:new"+future)
		got := h.read(rev, rel.Filter{SubjectID: "new"})
		want := mustParse("doc:1#viewer@user:new" + future)
		if len(got) != 1 || !got[0].Expiration.Equal(want.Expiration) {
			t.Fatalf("expiration read back as %v, want %v", got, want.Expiration)
		}
	})
	t.Run("expires while stored", func(t *testing.T) {
		h := openWithSchema(t, newStore)
		const lifetime = 2 * time.Second
		expires := time.Now().Add(lifetime).Truncate(time.Millisecond).UTC()
		r := mustParse("doc:1#viewer@user:brief")
		r.Expiration = expires
		rev := h.write(nil, store.Mutation{Op: store.Touch, Rel: r})
		got := h.read(rev, rel.Filter{})
		if time.Now().After(expires) {
			t.Fatalf("the test machine took over %v to write and read one relationship", lifetime)
		}
		if len(got) != 1 || !got[0].Equal(r) {
			t.Fatalf("before it expires, Read yields %q, want %s", texts(got), r)
		}
		time.Sleep(time.Until(expires) + 50*time.Millisecond)

		// Gone from reads at every revision, from preconditions and from
		// CREATE conflicts, without any write.
		h.expectAt(rev, rel.Filter{})
		h.expectState()
		head := h.head()
		_, err := h.s.Write(h.ctx, []store.Precondition{{MustExist: true, Filter: rel.Filter{SubjectID: "brief"}}}, nil)
		h.failsWith("Write requiring the expired relationship", err, store.ErrPreconditionFailed, head, []string{})
		h.write(nil, create("doc:1#viewer@user:brief")...)
		h.expectState("doc:1#viewer@user:brief")
	})
}

func testCaveatRoundTrip(t *testing.T, newStore func(t *testing.T) store.Store) {
	rels := []string{
		`doc:1#viewer@user:ann[min_level:{"required":3}]`,
		`doc:1#viewer@user:bob[min_level]`,
		`doc:1#reviewer@user:cat[on_day:{"allowed":["mon","tue"],"day":"mon"}]`,
		`doc:1#editor@user:dan[min_level:{"level":2,"required":1}]` + future,
	}
	h := openWithSchema(t, newStore)
	w := startWatch(h, h.head())
	defer w.stop()
	muts := create(rels...)
	// An empty context map means no context, like a caveat written bare.
	muts[1].Rel.Caveat.Context = map[string]any{}
	rev := h.write(nil, muts...)
	got := h.read(rev, rel.Filter{})
	ch := w.next(t)
	if len(got) != len(rels) || len(ch.Updates) != len(rels) {
		t.Fatalf("wrote %d caveated relationships, read %d, watched %d", len(rels), len(got), len(ch.Updates))
	}
	for _, text := range rels {
		want := mustParse(text)
		i := slices.IndexFunc(got, func(r rel.Relationship) bool { return r.Key() == want.Key() })
		if i >= 0 && got[i].Caveat != nil && len(got[i].Caveat.Context) == 0 {
			got[i].Caveat.Context = nil // empty or nil: both mean none
		}
		if i < 0 || !got[i].Equal(want) {
			t.Fatalf("Read lost caveat detail: got %q, want %s", texts(got), want)
		}
		j := slices.IndexFunc(ch.Updates, func(u store.Update) bool { return u.Rel.Key() == want.Key() })
		if j >= 0 && ch.Updates[j].Rel.Caveat != nil && len(ch.Updates[j].Rel.Caveat.Context) == 0 {
			ch.Updates[j].Rel.Caveat.Context = nil
		}
		if j < 0 || !ch.Updates[j].Rel.Equal(want) {
			t.Fatalf("Watch lost caveat detail: got %s, want %s", formatChange(ch), want)
		}
	}
}

// testIsolation checks that callers cannot change stored state through the
// values they pass in or get back.
func testIsolation(t *testing.T, newStore func(t *testing.T) store.Store) {
	h := openWithSchema(t, newStore)
	const original = `doc:1#reviewer@user:cat[on_day:{"allowed":["mon","tue"],"day":"mon"}]`
	r := mustParse(original)
	w := startWatch(h, h.head())
	defer w.stop()
	rev := h.write(nil, store.Mutation{Op: store.Touch, Rel: r})
	scribble := func(r rel.Relationship) {
		r.Caveat.Context["day"] = "sun"
		r.Caveat.Context["extra"] = true
		if list, ok := r.Caveat.Context["allowed"].([]any); ok && len(list) > 0 {
			list[0] = "sat"
		}
		r.Caveat.Name = "changed"
	}
	scribble(r)
	h.expectAt(rev, rel.Filter{}, original)

	got := h.read(rev, rel.Filter{})
	scribble(got[0])
	h.expectAt(rev, rel.Filter{}, original)

	ch := w.next(t)
	scribble(ch.Updates[0].Rel)
	w.stop()
	again := startWatch(h, rev-1)
	defer again.stop()
	expectUpdates(t, again.next(t), "TOUCH "+original)
	h.expectAt(rev, rel.Filter{}, original)
}

// testConcurrentWriters runs writers, a snapshot reader and a watcher at
// once: revisions are distinct and increasing per writer, nothing is lost,
// every snapshot is consistent and the watcher sees each write once, in order.
func testConcurrentWriters(t *testing.T, newStore func(t *testing.T) store.Store) {
	const writers, perWriter = 8, 50
	h := openWithSchema(t, newStore)
	start := h.head()
	w := startWatch(h, start)
	defer w.stop()

	written := make([][]store.Revision, writers)
	relAt := sync.Map{} // store.Revision -> relationship text
	errs := make(chan error, writers+1)
	type sample struct {
		rev   store.Revision
		count int
	}
	var samples []sample
	stopReader := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stopReader:
				return
			default:
			}
			rev, err := h.s.Head(h.ctx)
			if err != nil {
				errs <- fmt.Errorf("head: %w", err)
				return
			}
			n := 0
			for _, err := range h.s.Read(h.ctx, rev, rel.Filter{}, nil) {
				if err != nil {
					errs <- fmt.Errorf("Read(%d): %w", rev, err)
					return
				}
				n++
			}
			samples = append(samples, sample{rev, n})
		}
	}()

	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range perWriter {
				text := fmt.Sprintf("doc:w%d-%d#owner@user:u%d", g, i, g)
				rev, err := h.s.Write(h.ctx, nil, touch(text))
				if err != nil {
					errs <- fmt.Errorf("writer %d, write %d: %w", g, i, err)
					return
				}
				written[g] = append(written[g], rev)
				relAt.Store(rev, text)
			}
		})
	}
	wg.Wait()
	close(stopReader)
	<-readerDone
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var all []store.Revision
	for g, revs := range written {
		for i := 1; i < len(revs); i++ {
			if revs[i] <= revs[i-1] {
				t.Fatalf("writer %d got revision %d after %d", g, revs[i], revs[i-1])
			}
		}
		all = append(all, revs...)
	}
	slices.Sort(all)
	if n := len(slices.Compact(slices.Clone(all))); n != writers*perWriter {
		t.Fatalf("%d writes got %d distinct revisions", writers*perWriter, n)
	}
	if all[0] <= start {
		t.Fatalf("a write got revision %d, not after the starting head %d", all[0], start)
	}
	if head := h.head(); head != all[len(all)-1] {
		t.Fatalf("Head = %d after the writers, want the last revision written, %d", head, all[len(all)-1])
	}
	if got := len(h.read(h.head(), rel.Filter{})); got != writers*perWriter {
		t.Fatalf("%d relationships stored after %d writes", got, writers*perWriter)
	}
	// Each snapshot holds exactly the writes at or before its revision.
	for _, s := range samples {
		want, _ := slices.BinarySearch(all, s.rev+1)
		if s.count != want {
			t.Fatalf("Read at revision %d during the writes yielded %d relationships, want %d", s.rev, s.count, want)
		}
	}
	for _, rev := range all {
		ch := w.next(t)
		text, _ := relAt.Load(rev)
		expectChange(t, ch, expectedChange{rev: rev, updates: []string{"TOUCH " + text.(string)}})
	}
	w.expectQuiet(t)
}
