// Package storetest is the conformance suite every store.Store
// implementation runs. It pins down the contract documented on store.Store
// (revisions, schema history, validation, preconditions, atomicity,
// snapshot reads, the change stream, expiration, concurrency) so that the
// memory, embedded and SQL stores behave alike.
//
// Where store.Store leaves a choice open, the suite takes these rules:
//   - revision 0 is the empty store: reading it yields nothing;
//   - reading, reading the schema or watching past the head fails with
//     store.ErrFutureRevision;
//   - a CREATE mutation appears in the change stream as a Touch update, and
//     a Delete update carries the relationship as it was stored;
//   - every successful write, even one that changes nothing, is a change in
//     the stream, and the stream has no other changes;
//   - Watch ends when its context is done, yielding at most an error that
//     wraps the context's error;
//   - expired relationships count as absent everywhere (reads,
//     preconditions, CREATE conflicts, DeleteMatching counts, orphan checks);
//   - revision order is visibility order: once Head returns a revision, a
//     Read at it sees every write at or below it, even under concurrency;
//   - iterating a Read does not block writers, even from the same goroutine;
//   - a Read after a key yields exactly the suffix of the full Read at the
//     same revision that follows the key (rel.Key.Compare order), whether
//     or not the key is stored;
//   - stored values are isolated from the maps and lists callers pass in or
//     get back.
package storetest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Run runs the suite. newStore must return a new, empty store on every call;
// Run closes each store when its subtest ends.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		run  func(t *testing.T, newStore func(t *testing.T) store.Store)
	}{
		{"EmptyStore", testEmptyStore},
		{"SchemaHistory", testSchemaHistory},
		{"InvalidSchema", testInvalidSchema},
		{"SchemaOrphans", testSchemaOrphans},
		{"WriteValidation", testWriteValidation},
		{"TooManyMutations", testTooManyMutations},
		{"CreateTouchDelete", testCreateTouchDelete},
		{"Preconditions", testPreconditions},
		{"Atomicity", testAtomicity},
		{"DeleteMatching", testDeleteMatching},
		{"ReadFilters", testReadFilters},
		{"ReadWhileWriting", testReadWhileWriting},
		{"SnapshotReads", testSnapshotReads},
		{"Watch", testWatch},
		{"WatchErrors", testWatchErrors},
		{"WatchCancel", testWatchCancel},
		{"Expiration", testExpiration},
		{"CaveatRoundTrip", testCaveatRoundTrip},
		{"Isolation", testIsolation},
		{"ConcurrentWriters", testConcurrentWriters},
		{"RevisionGone", testRevisionGone},
		{"LargeWrite", testLargeWrite},
		{"KeyOrder", testKeyOrder},
		{"ReadCursor", testReadCursor},
		{"ReadCursorPages", testReadCursorPages},
		{"ConcurrentConflicts", testConcurrentConflicts},
		{"ReadsAgreeWithWatch", testReadsAgreeWithWatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newStore) })
	}
}

// baseSchema exercises every kind of allowed subject type.
const baseSchema = `use expiration

caveat min_level(level int, required int) {
	level >= required
}

caveat on_day(day string, allowed list<string>) {
	day in allowed
}

definition user {}

definition group {
	relation member: user | group#member
}

definition folder {
	relation viewer: user
}

definition doc {
	relation owner: user
	relation parent: folder
	relation viewer: user | user:* | group#member | user with min_level | user with expiration
	relation editor: user with min_level and expiration
	relation reviewer: user with on_day
	permission view = viewer + owner + editor + parent->viewer
}
`

// Expiration instants far from now either way, so results do not depend
// on timing.
const (
	past   = "[expiration:2000-01-01T00:00:00Z]"
	future = "[expiration:2100-01-01T00:00:00Z]"
)

// waitLimit bounds every wait for something asynchronous to happen.
const waitLimit = 10 * time.Second

// harness wraps a store under test with assertions.
type harness struct {
	t   *testing.T
	ctx context.Context
	s   store.Store
}

func open(t *testing.T, newStore func(t *testing.T) store.Store) *harness {
	t.Helper()
	s := newStore(t)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &harness{t: t, ctx: t.Context(), s: s}
}

// openWithSchema opens a store holding baseSchema and the given
// relationships (touched in one write).
func openWithSchema(t *testing.T, newStore func(t *testing.T) store.Store, rels ...string) *harness {
	t.Helper()
	h := open(t, newStore)
	h.writeSchema(baseSchema)
	if len(rels) > 0 {
		h.write(nil, touch(rels...)...)
	}
	return h
}

// in returns the harness reporting to a subtest.
func (h *harness) in(t *testing.T) *harness { return &harness{t: t, ctx: h.ctx, s: h.s} }

func (h *harness) head() store.Revision {
	h.t.Helper()
	rev, err := h.s.Head(h.ctx)
	if err != nil {
		h.t.Fatalf("Head: %v", err)
	}
	return rev
}

func (h *harness) writeSchema(text string) store.Revision {
	h.t.Helper()
	before := h.head()
	rev, err := h.s.WriteSchema(h.ctx, text)
	if err != nil {
		h.t.Fatalf("WriteSchema: %v", err)
	}
	h.checkAdvanced("WriteSchema", before, rev)
	return rev
}

// write applies a batch that must succeed and checks the revision moved.
func (h *harness) write(pre []store.Precondition, muts ...store.Mutation) store.Revision {
	h.t.Helper()
	before := h.head()
	rev, err := h.s.Write(h.ctx, pre, muts)
	if err != nil {
		h.t.Fatalf("Write(%s): %v", describe(muts), err)
	}
	h.checkAdvanced("Write", before, rev)
	return rev
}

// checkAdvanced asserts a successful write produced a new revision that is
// now the head.
func (h *harness) checkAdvanced(what string, before, rev store.Revision) {
	h.t.Helper()
	if rev <= before {
		h.t.Fatalf("%s returned revision %d, not after the previous head %d", what, rev, before)
	}
	if got := h.head(); got != rev {
		h.t.Fatalf("after %s at revision %d, Head = %d", what, rev, got)
	}
}

// failsWith asserts err wraps want and that the store did not move.
func (h *harness) failsWith(what string, err, want error, headBefore store.Revision, stateBefore []string) {
	h.t.Helper()
	if err == nil {
		h.t.Fatalf("%s succeeded, want error wrapping %q", what, want)
	}
	if !errors.Is(err, want) {
		h.t.Fatalf("%s: error %q does not wrap %q", what, err, want)
	}
	if got := h.head(); got != headBefore {
		h.t.Fatalf("%s failed but Head moved from %d to %d", what, headBefore, got)
	}
	if stateBefore != nil {
		h.expectState(stateBefore...)
	}
}

func (h *harness) read(rev store.Revision, f rel.Filter) []rel.Relationship {
	h.t.Helper()
	var out []rel.Relationship
	for r, err := range h.s.Read(h.ctx, rev, f, nil) {
		if err != nil {
			h.t.Fatalf("Read(%d, %+v): %v", rev, f, err)
		}
		out = append(out, r)
	}
	checkKeyOrder(h.t, out)
	return out
}

func (h *harness) readErr(rev store.Revision, f rel.Filter) error {
	h.t.Helper()
	for _, err := range h.s.Read(h.ctx, rev, f, nil) {
		if err != nil {
			return err
		}
	}
	return nil
}

// state lists the live relationships at head in text form.
func (h *harness) state() []string {
	h.t.Helper()
	return texts(h.read(h.head(), rel.Filter{}))
}

// expectState asserts the live relationships at head are exactly want.
func (h *harness) expectState(want ...string) {
	h.t.Helper()
	h.expectAt(h.head(), rel.Filter{}, want...)
}

// expectAt asserts Read(rev, f) yields exactly want, in key order.
func (h *harness) expectAt(rev store.Revision, f rel.Filter, want ...string) {
	h.t.Helper()
	got := texts(h.read(rev, f))
	if w := canonical(h.t, want); !slices.Equal(got, w) {
		h.t.Fatalf("Read(%d, %+v):\n got  %q\n want %q", rev, f, got, w)
	}
}

func checkKeyOrder(t *testing.T, rels []rel.Relationship) {
	t.Helper()
	for i := 1; i < len(rels); i++ {
		if a, b := rels[i-1].Key(), rels[i].Key(); a.Compare(b) >= 0 || a.String() >= b.String() {
			t.Fatalf("Read out of key order: %q before %q", a, b)
		}
	}
}

// parse reads a relationship in text form or fails the test.
func parse(t *testing.T, text string) rel.Relationship {
	t.Helper()
	r, err := rel.Parse(text)
	if err != nil {
		t.Fatalf("bad test relationship: %v", err)
	}
	return r
}

// mustParse is parse for table literals, where no *testing.T is at hand.
func mustParse(text string) rel.Relationship {
	r, err := rel.Parse(text)
	if err != nil {
		panic("storetest: bad test relationship: " + err.Error())
	}
	return r
}

func mutations(op store.Op, rels ...string) []store.Mutation {
	out := make([]store.Mutation, len(rels))
	for i, text := range rels {
		out[i] = store.Mutation{Op: op, Rel: mustParse(text)}
	}
	return out
}

func touch(rels ...string) []store.Mutation  { return mutations(store.Touch, rels...) }
func create(rels ...string) []store.Mutation { return mutations(store.Create, rels...) }
func del(rels ...string) []store.Mutation    { return mutations(store.Delete, rels...) }

func batch(parts ...[]store.Mutation) []store.Mutation { return slices.Concat(parts...) }

func describe(muts []store.Mutation) string {
	parts := make([]string, len(muts))
	for i, m := range muts {
		parts[i] = m.Op.String() + " " + m.Rel.String()
	}
	return strings.Join(parts, ", ")
}

func texts(rels []rel.Relationship) []string {
	out := make([]string, len(rels))
	for i, r := range rels {
		out[i] = r.String()
	}
	return out
}

// canonical puts relationship texts into the store's order and rendering.
func canonical(t *testing.T, want []string) []string {
	t.Helper()
	rels := make([]rel.Relationship, len(want))
	for i, text := range want {
		rels[i] = parse(t, text)
	}
	slices.SortFunc(rels, func(a, b rel.Relationship) int { return strings.Compare(a.Key().String(), b.Key().String()) })
	return texts(rels)
}

func ptr[T any](v T) *T { return &v }
