package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/embedded"
	"github.com/mandate-authz/mandate/store/rel"
	"github.com/mandate-authz/mandate/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

const testSchema = `use expiration

caveat min_level(level int, required int) {
	level >= required
}

definition user {}

definition doc {
	relation owner: user
	relation viewer: user | user with min_level | user with expiration
}
`

// open opens dir and closes the store when the test ends (closing twice is
// harmless, so tests may close it earlier).
func open(t *testing.T, dir string, opts embedded.Options) *embedded.Store {
	t.Helper()
	s, err := embedded.Open(t.Context(), dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustWrite(t *testing.T, s store.Store, op store.Op, texts ...string) store.Revision {
	t.Helper()
	muts := make([]store.Mutation, len(texts))
	for i, text := range texts {
		r, err := rel.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		muts[i] = store.Mutation{Op: op, Rel: r}
	}
	rev, err := s.Write(t.Context(), nil, muts)
	if err != nil {
		t.Fatalf("Write(%v): %v", texts, err)
	}
	return rev
}

func readAll(t *testing.T, s store.Store, rev store.Revision, f rel.Filter) ([]string, error) {
	t.Helper()
	var out []string
	for r, err := range s.Read(t.Context(), rev, f, nil) {
		if err != nil {
			return out, err
		}
		out = append(out, r.String())
	}
	return out, nil
}

func mustRead(t *testing.T, s store.Store, rev store.Revision, f rel.Filter) []string {
	t.Helper()
	out, err := readAll(t, s, rev, f)
	if err != nil {
		t.Fatalf("Read(%d): %v", rev, err)
	}
	return out
}

// watchAll collects the changes after rev up to the head, then stops.
func watchAll(t *testing.T, s store.Store, after store.Revision) ([]store.Change, error) {
	t.Helper()
	head, err := s.Head(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out []store.Change
	if after >= head {
		return nil, nil
	}
	for ch, err := range s.Watch(ctx, after) {
		if err != nil {
			return out, err
		}
		out = append(out, ch)
		if ch.Revision >= head {
			break
		}
	}
	return out, nil
}

func formatChanges(changes []store.Change) string {
	var b strings.Builder
	for _, ch := range changes {
		fmt.Fprintf(&b, "[%d", ch.Revision)
		if ch.Schema != nil {
			fmt.Fprintf(&b, " schema %q", *ch.Schema)
		}
		for _, u := range ch.Updates {
			fmt.Fprintf(&b, " %s %s", u.Op, u.Rel)
		}
		b.WriteString("]")
	}
	return b.String()
}

// TestReopen checks that everything written survives closing and opening
// the data directory again: head, identity, every retained revision's
// relationships and schema, and the change stream.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, embedded.Options{})
	id := s.ID()
	if len(id) != 36 || strings.Count(id, "-") != 4 {
		t.Fatalf("ID() = %q, want a UUID", id)
	}
	r1, err := s.WriteSchema(t.Context(), testSchema)
	if err != nil {
		t.Fatal(err)
	}
	r2 := mustWrite(t, s, store.Touch,
		`doc:1#viewer@user:ann[min_level:{"required":2}]`,
		"doc:1#viewer@user:bob[expiration:2100-01-01T00:00:00.5Z]",
		"doc:2#owner@user:cat",
	)
	r3 := mustWrite(t, s, store.Delete, "doc:2#owner@user:cat")
	r4 := mustWrite(t, s, store.Touch, `doc:1#viewer@user:ann[min_level:{"required":3}]`)

	type snapshot struct {
		rels   []string
		schema string
		at     store.Revision
	}
	take := func(s store.Store) map[store.Revision]snapshot {
		out := map[store.Revision]snapshot{}
		for _, rev := range []store.Revision{0, r1, r2, r3, r4} {
			text, at, err := s.ReadSchema(t.Context(), rev)
			if err != nil {
				t.Fatalf("ReadSchema(%d): %v", rev, err)
			}
			out[rev] = snapshot{mustRead(t, s, rev, rel.Filter{}), text, at}
		}
		return out
	}
	before := take(s)
	changes, err := watchAll(t, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Head(t.Context()); !errors.Is(err, embedded.ErrClosed) {
		t.Fatalf("Head after Close: %v, want ErrClosed", err)
	}

	s = open(t, dir, embedded.Options{})
	if s.ID() != id {
		t.Fatalf("identity changed across reopen: %q, then %q", id, s.ID())
	}
	if head, err := s.Head(t.Context()); err != nil || head != r4 {
		t.Fatalf("Head after reopen = %d, %v; want %d", head, err, r4)
	}
	after := take(s)
	for rev, want := range before {
		if got := after[rev]; !slices.Equal(got.rels, want.rels) || got.schema != want.schema || got.at != want.at {
			t.Fatalf("revision %d after reopen:\n got  %+v\n want %+v", rev, got, want)
		}
	}
	if got := before[r2].rels; len(got) != 3 || !strings.Contains(strings.Join(got, " "), "2100-01-01T00:00:00.5Z") {
		t.Fatalf("revision %d lost detail: %q", r2, got)
	}
	again, err := watchAll(t, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := formatChanges(again), formatChanges(changes); got != want {
		t.Fatalf("change stream after reopen:\n got  %s\n want %s", got, want)
	}
	// Writing continues the sequence.
	if r5 := mustWrite(t, s, store.Touch, "doc:3#owner@user:dan"); r5 != r4+1 {
		t.Fatalf("first write after reopen got revision %d, want %d", r5, r4+1)
	}
	// And the schema survived as the one writes are validated against.
	if _, err := s.Write(t.Context(), nil, []store.Mutation{{Op: store.Touch, Rel: rel.Relationship{
		Resource: rel.Object{Type: "doc", ID: "9"}, Relation: "nope", Subject: rel.Subject{Type: "user", ID: "x"},
	}}}); !errors.Is(err, store.ErrInvalidRelationship) {
		t.Fatalf("invalid write after reopen: %v, want ErrInvalidRelationship", err)
	}
}

// TestDataDirectoryInUse checks that a second opener of the same data
// directory gets a clear error while the first holds it, and succeeds once
// it is released.
func TestDataDirectoryInUse(t *testing.T) {
	dir := t.TempDir()
	first := open(t, dir, embedded.Options{})
	start := time.Now()
	_, err := embedded.Open(t.Context(), dir, embedded.Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, embedded.ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	if want := "data directory " + dir + " is in use by another mandate process"; !strings.Contains(err.Error(), want) {
		t.Fatalf("second Open: %q does not say %q", err, want)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("second Open took %v to give up", waited)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second := open(t, dir, embedded.Options{})
	if second.ID() != first.ID() {
		t.Fatalf("identity changed: %q, then %q", first.ID(), second.ID())
	}
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	notBolt := t.TempDir()
	if err := os.WriteFile(filepath.Join(notBolt, embedded.FileName), []byte(strings.Repeat("not a database ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	future := t.TempDir()
	s := open(t, future, embedded.Options{})
	s.Close()
	db, err := bolt.Open(filepath.Join(future, embedded.FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte{0, 0, 0, 0, 0, 0, 0, 99})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	cases := []struct {
		name, dir, want string
	}{
		{"empty path", "", "data directory is empty"},
		{"path is a file", file, "creating data directory " + file},
		{"not a database", notBolt, "opening embedded store " + filepath.Join(notBolt, embedded.FileName)},
		{"newer format", future, "unsupported data format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := embedded.Open(t.Context(), c.dir, embedded.Options{LockTimeout: 100 * time.Millisecond})
			if err == nil {
				s.Close()
				t.Fatalf("Open(%q) succeeded", c.dir)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open(%q): %q does not mention %q", c.dir, err, c.want)
			}
		})
	}
}

// TestForgetBefore checks that released history is refused and that
// what remains, including after a reopen, reads exactly as before.
func TestForgetBefore(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, embedded.Options{GCInterval: -1})
	r1, err := s.WriteSchema(t.Context(), testSchema)
	if err != nil {
		t.Fatal(err)
	}
	r2 := mustWrite(t, s, store.Touch, "doc:1#owner@user:ann", "doc:2#owner@user:bob")
	r3 := mustWrite(t, s, store.Touch, "doc:1#owner@user:ann", "doc:3#owner@user:cat")
	r4 := mustWrite(t, s, store.Delete, "doc:2#owner@user:bob")
	r5, err := s.WriteSchema(t.Context(), testSchema+"\ndefinition team {}\n")
	if err != nil {
		t.Fatal(err)
	}
	r6 := mustWrite(t, s, store.Touch, "doc:4#owner@user:dan")
	atR4 := mustRead(t, s, r4, rel.Filter{})
	versions, _, _, _ := s.Counts()
	if versions != 5 { // ann twice, bob, cat, dan
		t.Fatalf("%d versions stored, want 5", versions)
	}

	if err := s.ForgetBefore(t.Context(), r4); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []store.Revision{0, r1, r2, r3} {
		if _, err := readAll(t, s, rev, rel.Filter{}); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Read(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", rev, r4, err)
		}
		if _, _, err := s.ReadSchema(t.Context(), rev); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("ReadSchema(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", rev, r4, err)
		}
		if _, err := watchAll(t, s, rev); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Watch(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", rev, r4, err)
		}
	}
	check := func(s *embedded.Store) {
		t.Helper()
		if got := mustRead(t, s, r4, rel.Filter{}); !slices.Equal(got, atR4) {
			t.Fatalf("Read(%d) after ForgetBefore: %q, want %q", r4, got, atR4)
		}
		if text, at, err := s.ReadSchema(t.Context(), r4); err != nil || text != testSchema || at != r1 {
			t.Fatalf("ReadSchema(%d) = %q, %d, %v; want the first schema, written at %d", r4, text, at, err, r1)
		}
		changes, err := watchAll(t, s, r4)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) != 2 || changes[0].Revision != r5 || changes[0].Schema == nil || changes[1].Revision != r6 {
			t.Fatalf("Watch(%d) after ForgetBefore: %s", r4, formatChanges(changes))
		}
		// ann's first version (ended at r3) and bob's (ended at r4) are gone;
		// ann, cat and dan remain. Changes after r4 and the schema in force
		// at r4 and later are kept.
		versions, changeN, schemas, _ := s.Counts()
		if versions != 3 || changeN != 2 || schemas != 2 {
			t.Fatalf("after ForgetBefore(%d): %d versions, %d changes, %d schemas; want 3, 2, 2", r4, versions, changeN, schemas)
		}
	}
	check(s)
	// Forgetting is idempotent, and never passes the head.
	if err := s.ForgetBefore(t.Context(), r2); err != nil {
		t.Fatal(err)
	}
	check(s)
	s.Close()
	check(open(t, dir, embedded.Options{GCInterval: -1}))
}

// TestGarbageCollection drives the GC window and expiration with a fake
// clock.
func TestGarbageCollection(t *testing.T) {
	var now atomic.Int64
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	now.Store(t0.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	advance := func(d time.Duration) { now.Add(int64(d)) }
	s := open(t, t.TempDir(), embedded.Options{GCInterval: -1, GCWindow: time.Hour, Now: clock})

	if _, err := s.WriteSchema(t.Context(), testSchema); err != nil {
		t.Fatal(err)
	}
	r2 := mustWrite(t, s, store.Touch, "doc:1#owner@user:ann", "doc:1#viewer@user:bob[expiration:2030-01-01T02:30:00Z]")
	advance(time.Hour)
	r3 := mustWrite(t, s, store.Touch, "doc:1#viewer@user:bob[expiration:2030-01-01T03:00:00Z]")
	advance(time.Hour)
	r4 := mustWrite(t, s, store.Delete, "doc:1#owner@user:ann")
	advance(time.Minute) // now 02:01; the window reaches back to 01:01

	stats, err := s.CollectGarbage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Revisions committed by 01:01 are r1, r2 and r3: history before r3 goes.
	if stats.Oldest != r3 || stats.Changes != 3 || stats.Versions != 1 || stats.Expired != 0 {
		t.Fatalf("first collection: %+v; want oldest %d, 3 changes, 1 version (bob's first), 0 expired", stats, r3)
	}
	if _, err := readAll(t, s, r2, rel.Filter{}); !errors.Is(err, store.ErrRevisionGone) {
		t.Fatalf("Read(%d): %v, want ErrRevisionGone", r2, err)
	}
	if got := mustRead(t, s, r3, rel.Filter{}); len(got) != 2 {
		t.Fatalf("Read(%d) = %q, want ann and bob", r3, got)
	}
	if _, _, _, expiry := s.Counts(); expiry != 1 {
		t.Fatalf("%d expiry entries, want 1 (bob's current version)", expiry)
	}

	advance(time.Hour) // 03:01: bob has expired; r4 (02:00) is over the window.
	stats, err = s.CollectGarbage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if stats.Oldest != r4 || stats.Changes != 1 || stats.Versions != 1 || stats.Expired != 1 {
		t.Fatalf("second collection: %+v; want oldest %d, 1 change, 1 version (ann), 1 expired (bob)", stats, r4)
	}
	if versions, changes, schemas, expiry := s.Counts(); versions != 0 || changes != 0 || schemas != 1 || expiry != 0 {
		t.Fatalf("after collecting everything: %d versions, %d changes, %d schemas, %d expiry entries; want 0, 0, 1, 0", versions, changes, schemas, expiry)
	}
	// The head stays readable and writable, with its schema.
	if text, _, err := s.ReadSchema(t.Context(), r4); err != nil || text != testSchema {
		t.Fatalf("ReadSchema(head) = %q, %v", text, err)
	}
	if got := mustRead(t, s, r4, rel.Filter{}); len(got) != 0 {
		t.Fatalf("Read(head) = %q, want nothing", got)
	}
	mustWrite(t, s, store.Create, "doc:1#viewer@user:bob")
}

// TestBackgroundGC checks the collector runs on its own.
func TestBackgroundGC(t *testing.T) {
	s := open(t, t.TempDir(), embedded.Options{GCInterval: 10 * time.Millisecond, GCWindow: time.Nanosecond})
	if _, err := s.WriteSchema(t.Context(), testSchema); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, s, store.Touch, "doc:1#owner@user:ann")
	rev := mustWrite(t, s, store.Touch, "doc:1#owner@user:bob")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := readAll(t, s, rev-1, rel.Filter{}); errors.Is(err, store.ErrRevisionGone) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("background garbage collection never released old history")
		}
	}
	if got := mustRead(t, s, rev, rel.Filter{}); len(got) != 2 {
		t.Fatalf("Read(head) after background GC = %q", got)
	}
}

// TestPagedReads reads more than one page, with selective filters, while
// writes and garbage collection run: every read is exactly its snapshot.
func TestPagedReads(t *testing.T) {
	s := open(t, t.TempDir(), embedded.Options{GCInterval: -1})
	if _, err := s.WriteSchema(t.Context(), testSchema); err != nil {
		t.Fatal(err)
	}
	const n = 5000
	var texts []string
	for i := range n {
		texts = append(texts, fmt.Sprintf("doc:%05d#owner@user:u%d", i, i%7))
	}
	rev := mustWrite(t, s, store.Touch, texts...)
	slices.Sort(texts)
	var ids []string
	for i := 0; i < n; i += 3 {
		ids = append(ids, fmt.Sprintf("%05d", i))
	}
	cases := []struct {
		name   string
		filter rel.Filter
		want   func(i int) bool
	}{
		{"everything", rel.Filter{}, func(int) bool { return true }},
		{"one subject in seven", rel.Filter{SubjectID: "u3"}, func(i int) bool { return i%7 == 3 }},
		{"a third of the IDs", rel.Filter{ResourceType: "doc", ResourceIDs: ids}, func(i int) bool { return i%3 == 0 }},
		{"no match", rel.Filter{SubjectID: "nobody"}, func(int) bool { return false }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var want []string
			for i := range n {
				if c.want(i) {
					want = append(want, fmt.Sprintf("doc:%05d#owner@user:u%d", i, i%7))
				}
			}
			// Writing (a new revision per page) while iterating must not
			// change what the iteration yields.
			var got []string
			for r, err := range s.Read(t.Context(), rev, c.filter, nil) {
				if err != nil {
					t.Fatal(err)
				}
				if len(got)%500 == 0 {
					mustWrite(t, s, store.Delete, r.String())
				}
				got = append(got, r.String())
			}
			if !slices.Equal(got, want) {
				t.Fatalf("Read(%d) yielded %d relationships, want %d", rev, len(got), len(want))
			}
		})
	}

	t.Run("history released mid-read", func(t *testing.T) {
		head, _ := s.Head(t.Context())
		var err error
		count := 0
		for _, err = range s.Read(t.Context(), rev, rel.Filter{}, nil) {
			if err != nil {
				break
			}
			if count++; count == 1 {
				if ferr := s.ForgetBefore(t.Context(), head); ferr != nil {
					t.Fatal(ferr)
				}
			}
		}
		if !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Read(%d) across ForgetBefore(%d) ended with %v after %d results; want ErrRevisionGone", rev, head, err, count)
		}
	})
}

// TestGroupedWritesFailIndependently runs many concurrent writes, some of
// which must fail, so that they share transactions: each failure leaves
// the others applied, each success is applied exactly once.
func TestGroupedWritesFailIndependently(t *testing.T) {
	s := open(t, t.TempDir(), embedded.Options{GCInterval: -1})
	if _, err := s.WriteSchema(t.Context(), testSchema); err != nil {
		t.Fatal(err)
	}
	const writers = 32
	var wg sync.WaitGroup
	var created atomic.Int32
	revs := make([]store.Revision, writers)
	errs := make([]error, writers)
	for g := range writers {
		wg.Go(func() {
			r, _ := rel.Parse("doc:contested#owner@user:ann")
			own, _ := rel.Parse(fmt.Sprintf("doc:w%d#owner@user:ann", g))
			if g%2 == 0 {
				// Everyone races to create the same relationship.
				revs[g], errs[g] = s.Write(t.Context(), nil, []store.Mutation{{Op: store.Create, Rel: r}, {Op: store.Touch, Rel: own}})
				if errs[g] == nil {
					created.Add(1)
				}
				return
			}
			pre := []store.Precondition{{MustExist: true, Filter: rel.Filter{SubjectID: "nobody"}}}
			if g%4 == 1 {
				pre = nil
			}
			revs[g], errs[g] = s.Write(t.Context(), pre, []store.Mutation{{Op: store.Touch, Rel: own}})
		})
	}
	wg.Wait()
	if created.Load() != 1 {
		t.Fatalf("%d writers created the same relationship, want exactly 1", created.Load())
	}
	var want []string
	seen := map[store.Revision]bool{}
	for g, err := range errs {
		switch {
		case g%2 == 0 && err != nil && !errors.Is(err, store.ErrAlreadyExists):
			t.Fatalf("writer %d: %v, want success or ErrAlreadyExists", g, err)
		case g%4 == 3 && !errors.Is(err, store.ErrPreconditionFailed):
			t.Fatalf("writer %d: %v, want ErrPreconditionFailed", g, err)
		case g%4 == 1 && err != nil:
			t.Fatalf("writer %d: %v", g, err)
		}
		if err == nil {
			if seen[revs[g]] {
				t.Fatalf("revision %d returned to two writers", revs[g])
			}
			seen[revs[g]] = true
			want = append(want, fmt.Sprintf("doc:w%d#owner@user:ann", g))
		}
	}
	want = append(want, "doc:contested#owner@user:ann")
	slices.Sort(want)
	head, _ := s.Head(t.Context())
	if int(head) != 1+len(seen) {
		t.Fatalf("head %d after %d successful writes and the schema", head, len(seen))
	}
	if got := mustRead(t, s, head, rel.Filter{}); !slices.Equal(got, want) {
		t.Fatalf("state after grouped writes:\n got  %q\n want %q", got, want)
	}
	changes, err := watchAll(t, s, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, ch := range changes {
		if ch.Revision != store.Revision(i+2) || !seen[ch.Revision] {
			t.Fatalf("change %d has revision %d: the stream must hold exactly the successful writes, in order", i, ch.Revision)
		}
	}
}

func TestCloseEndsWatches(t *testing.T) {
	s := open(t, t.TempDir(), embedded.Options{})
	done := make(chan error, 1)
	go func() {
		var last error
		for _, err := range s.Watch(context.Background(), 0) {
			last = err
		}
		done <- last
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, embedded.ErrClosed) {
			t.Fatalf("Watch ended with %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not end after Close")
	}
	if _, err := s.Write(t.Context(), nil, nil); !errors.Is(err, embedded.ErrClosed) {
		t.Fatalf("Write after Close: %v, want ErrClosed", err)
	}
}
