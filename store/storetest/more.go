package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// forget releases history before rev when the store can do so on demand
// (store.HistoryReleaser), reporting whether it can.
func (h *harness) forget(rev store.Revision) bool {
	h.t.Helper()
	r, ok := h.s.(store.HistoryReleaser)
	if !ok {
		return false
	}
	if err := r.ForgetBefore(h.ctx, rev); err != nil {
		h.t.Fatalf("ForgetBefore(%d): %v", rev, err)
	}
	return true
}

// watchErr returns the first item of Watch(after), which must be an error.
func (h *harness) watchErr(after store.Revision) error {
	h.t.Helper()
	w := startWatch(h, after)
	defer w.stop()
	ch, err := w.nextItem(h.t)
	if err == nil {
		h.t.Fatalf("Watch(%d) yielded %s, want an error", after, formatChange(ch))
	}
	return err
}

// testRevisionGone releases history and checks that exactly the released
// revisions become unreadable and unwatchable, and that what is retained
// reads and watches as before.
func testRevisionGone(t *testing.T, newStore func(t *testing.T) store.Store) {
	const (
		a       = "doc:1#viewer@user:ann"
		b       = "doc:2#viewer@user:bob"
		c       = "doc:3#viewer@user:cat"
		d       = "doc:4#viewer@user:dan"
		schema2 = baseSchema + "\ndefinition team {}\n"
	)
	h := open(t, newStore)
	r1 := h.writeSchema(baseSchema)
	r2 := h.write(nil, touch(a, b, "doc:5#viewer@user:old"+past)...)
	r3 := h.write(nil, del(a)...)
	r4 := h.write(nil, touch(c)...)
	r5 := h.writeSchema(schema2)
	r6 := h.write(nil, touch(d)...)
	if !h.forget(r3) {
		t.Skip("the store cannot release history on demand (no ForgetBefore method)")
	}
	for _, rev := range []store.Revision{0, r1, r2} {
		if err := h.readErr(rev, rel.Filter{}); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Read(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", rev, r3, err)
		}
		if _, _, err := h.s.ReadSchema(h.ctx, rev); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("ReadSchema(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", rev, r3, err)
		}
		if err := h.watchErr(rev); !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Watch(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", rev, r3, err)
		}
	}
	h.expectAt(r3, rel.Filter{}, b)
	h.expectAt(r4, rel.Filter{}, b, c)
	h.expectAt(r6, rel.Filter{}, b, c, d)
	for _, c := range []struct {
		rev, wantAt store.Revision
		want        string
	}{{r3, r1, baseSchema}, {r4, r1, baseSchema}, {r5, r5, schema2}} {
		if text, at, err := h.s.ReadSchema(h.ctx, c.rev); err != nil || text != c.want || at != c.wantAt {
			t.Fatalf("ReadSchema(%d) after ForgetBefore(%d) = %d bytes written at %d, %v; want the schema written at %d", c.rev, r3, len(text), at, err, c.wantAt)
		}
	}
	w := startWatch(h, r3)
	expectChange(t, w.next(t), expectedChange{rev: r4, updates: []string{"TOUCH " + c}})
	expectChange(t, w.next(t), expectedChange{rev: r5, schema: schema2})
	expectChange(t, w.next(t), expectedChange{rev: r6, updates: []string{"TOUCH " + d}})
	w.expectQuiet(t)
	w.stop()

	// Forgetting never moves backwards and never passes the head.
	h.forget(r2)
	h.expectAt(r3, rel.Filter{}, b)
	h.forget(r6 + 10)
	if got := h.head(); got != r6 {
		t.Fatalf("Head = %d after ForgetBefore past the head, want %d", got, r6)
	}
	h.expectAt(r6, rel.Filter{}, b, c, d)
	if err := h.readErr(r5, rel.Filter{}); !errors.Is(err, store.ErrRevisionGone) {
		t.Fatalf("Read(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", r5, r6+10, err)
	}
	// The store goes on: a write after the head is readable and watchable.
	w = startWatch(h, r6)
	defer w.stop()
	r7 := h.write(nil, del(b)...)
	expectChange(t, w.next(t), expectedChange{rev: r7, updates: []string{"DELETE " + b}})
	h.expectAt(r7, rel.Filter{}, c, d)
}

// testLargeWrite writes batches far larger than any page or batch size a
// store may use internally, and checks reads (in key order), old
// revisions and the change stream see them whole.
func testLargeWrite(t *testing.T, newStore func(t *testing.T) store.Store) {
	const n = 12_000 // above 10,000: more than one page or poll of a SQL store
	h := openWithSchema(t, newStore)
	start := h.head()
	// Built directly rather than parsed: parsing is the slow part here.
	viewer := func(i, subject int) rel.Relationship {
		return rel.Relationship{
			Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%d", i)},
			Relation: "viewer",
			Subject:  rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", subject)},
		}
	}
	caveated := func(r rel.Relationship, required int) rel.Relationship {
		r.Caveat = &rel.Caveat{Name: "min_level", Context: map[string]any{"required": float64(required)}}
		return r
	}
	expires := mustParse("doc:1#viewer@user:ann" + future).Expiration
	// again touches the first 2000 with another caveat; removed deletes
	// the next 2000.
	var muts, again, removed []store.Mutation
	var want1, want2 []rel.Relationship
	for i := range n {
		r := viewer(i, i%97)
		switch i % 3 {
		case 1:
			r.Expiration = expires
		case 2:
			r = caveated(r, i%5)
		}
		muts = append(muts, store.Mutation{Op: store.Create, Rel: r})
		want1 = append(want1, r)
		switch {
		case i < 2000:
			changed := caveated(viewer(i, i%97), 7)
			again = append(again, store.Mutation{Op: store.Touch, Rel: changed})
			want2 = append(want2, changed)
		case i < 4000:
			removed = append(removed, store.Mutation{Op: store.Delete, Rel: r})
		default:
			want2 = append(want2, r)
		}
	}
	r1 := h.write(nil, muts...)
	r2 := h.write(nil, slices.Concat(again, removed)...)
	expect := func(rev store.Revision, f rel.Filter, want []rel.Relationship) {
		t.Helper()
		want = slices.Clone(want)
		slices.SortFunc(want, func(a, b rel.Relationship) int { return strings.Compare(a.Key().String(), b.Key().String()) })
		if got, w := texts(h.read(rev, f)), texts(want); !slices.Equal(got, w) {
			t.Fatalf("Read(%d, %+v): %d relationships, want %d (or they differ)", rev, f, len(got), len(w))
		}
	}
	expect(r1, rel.Filter{}, want1)
	expect(r2, rel.Filter{}, want2)
	expect(r2, rel.Filter{ResourceType: "doc", ResourceIDs: []string{"d1999", "d2000", "d4000"}}, []rel.Relationship{want2[1999], want2[2000]})

	w := startWatch(h, start)
	defer w.stop()
	ch := w.next(t)
	if ch.Revision != r1 || len(ch.Updates) != n {
		t.Fatalf("first change after the large write: revision %d with %d updates, want %d with %d", ch.Revision, len(ch.Updates), r1, n)
	}
	ch = w.next(t)
	if ch.Revision != r2 || len(ch.Updates) != 4000 {
		t.Fatalf("second change: revision %d with %d updates, want %d with 4000", ch.Revision, len(ch.Updates), r2)
	}
	ops := map[store.Op]int{}
	for _, u := range ch.Updates {
		ops[u.Op]++
	}
	if ops[store.Touch] != 2000 || ops[store.Delete] != 2000 {
		t.Fatalf("second change: %d touches and %d deletes, want 2000 of each", ops[store.Touch], ops[store.Delete])
	}
}

// keyOrderSchema has names for which ordering by the key's parts one by
// one differs from ordering by its text: a type that is a prefix of
// another ("doc" and "doc2" sort "doc2:" first; "doc/xyz:" before "doc:")
// and a relation that is a prefix of another ("viewer2@" before "viewer@").
const keyOrderSchema = `definition user {}

definition group {
	relation member: user
	relation member2: user
}

definition doc {
	relation viewer: user | group#member | group#member2
	relation viewer2: user
}

definition doc2 {
	relation viewer: user
}

definition doc/xyz {
	relation viewer: user
}
`

func testKeyOrder(t *testing.T, newStore func(t *testing.T) store.Store) {
	rels := []string{
		"doc:1#viewer@user:ann",
		"doc:1#viewer@user:ann1",
		"doc:1#viewer@user:ann+",
		"doc:1#viewer@group:eng#member",
		"doc:1#viewer@group:eng#member2",
		"doc:1#viewer@group:eng-x#member",
		"doc:1#viewer2@user:ann",
		"doc:10#viewer@user:ann",
		"doc:1-2#viewer@user:ann",
		"doc:1_2#viewer@user:ann",
		"doc:A#viewer@user:ann",
		"doc2:1#viewer@user:ann",
		"doc/xyz:1#viewer@user:ann",
		"group:eng#member@user:ann",
		"group:eng#member2@user:ann",
	}
	h := open(t, newStore)
	h.writeSchema(keyOrderSchema)
	h.write(nil, touch(rels...)...)
	only := func(pred func(string) bool) []string {
		var out []string
		for _, r := range rels {
			if pred(r) {
				out = append(out, r)
			}
		}
		return out
	}
	cases := []struct {
		name   string
		filter rel.Filter
		want   []string
	}{
		{"everything", rel.Filter{}, rels},
		{"a type that prefixes others", rel.Filter{ResourceType: "doc"}, only(func(s string) bool { return strings.HasPrefix(s, "doc:") })},
		{"an ID that prefixes others", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1"}}, only(func(s string) bool { return strings.HasPrefix(s, "doc:1#") })},
		{"a relation that prefixes another", rel.Filter{ResourceType: "doc", Relation: "viewer"}, only(func(s string) bool { return strings.HasPrefix(s, "doc:") && strings.Contains(s, "#viewer@") })},
		{"a subject ID that prefixes others", rel.Filter{SubjectType: "user", SubjectID: "ann"}, only(func(s string) bool { return strings.HasSuffix(s, "@user:ann") })},
		{"a subject relation that prefixes another", rel.Filter{SubjectRelation: ptr("member")}, only(func(s string) bool { return strings.HasSuffix(s, "#member") })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.in(t).expectAt(h.head(), c.filter, c.want...)
		})
	}
}

// testConcurrentConflicts races writers that cannot all succeed: exactly
// one may win each race, and the losers fail cleanly.
func testConcurrentConflicts(t *testing.T, newStore func(t *testing.T) store.Store) {
	const racers = 8
	h := openWithSchema(t, newStore)
	race := func(write func(i int) error) (wins int, errs []error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range racers {
			wg.Go(func() {
				err := write(i)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins++
				} else {
					errs = append(errs, err)
				}
			})
		}
		wg.Wait()
		return wins, errs
	}

	// Different keys, guarded by a precondition: a lock acquired once.
	lock := rel.Filter{ResourceType: "doc", ResourceIDs: []string{"lock"}}
	wins, errs := race(func(i int) error {
		_, err := h.s.Write(h.ctx, []store.Precondition{{Filter: lock}}, create(fmt.Sprintf("doc:lock#owner@user:u%d", i)))
		return err
	})
	if wins != 1 {
		t.Fatalf("%d writers took the lock guarded by a precondition; want exactly 1 (errors: %v)", wins, errs)
	}
	for _, err := range errs {
		if !errors.Is(err, store.ErrPreconditionFailed) {
			t.Fatalf("a writer losing the precondition race: %v, want ErrPreconditionFailed", err)
		}
	}
	if got := h.read(h.head(), lock); len(got) != 1 {
		t.Fatalf("after the precondition race: %q, want one holder", texts(got))
	}

	// The same key created by everyone.
	wins, errs = race(func(int) error {
		_, err := h.s.Write(h.ctx, nil, create("doc:same#owner@user:ann"))
		return err
	})
	if wins != 1 {
		t.Fatalf("%d writers created the same relationship; want exactly 1 (errors: %v)", wins, errs)
	}
	for _, err := range errs {
		if !errors.Is(err, store.ErrAlreadyExists) {
			t.Fatalf("a writer losing the CREATE race: %v, want ErrAlreadyExists", err)
		}
	}

	// DeleteMatching racing a CREATE of what it deletes leaves either
	// nothing (the delete came second) or exactly the creation.
	for i := range 5 {
		key := fmt.Sprintf("doc:race%d#owner@user:ann", i)
		var wg sync.WaitGroup
		var createErr, deleteErr error
		wg.Go(func() { _, createErr = h.s.Write(h.ctx, nil, create(key)) })
		wg.Go(func() {
			_, _, deleteErr = h.s.DeleteMatching(h.ctx, nil, rel.Filter{ResourceType: "doc", ResourceIDs: []string{fmt.Sprintf("race%d", i)}}, 0)
		})
		wg.Wait()
		if createErr != nil || deleteErr != nil {
			t.Fatalf("CREATE racing DeleteMatching: %v, %v", createErr, deleteErr)
		}
		if n := len(h.read(h.head(), rel.Filter{ResourceType: "doc", ResourceIDs: []string{fmt.Sprintf("race%d", i)}})); n > 1 {
			t.Fatalf("CREATE racing DeleteMatching left %d relationships", n)
		}
	}
}

// testReadsAgreeWithWatch replays the change stream from revision 0 and
// checks that, at every revision, Read yields exactly the replayed state
// and Watch from there yields exactly the rest of the stream: a follower
// may start from any snapshot and never miss or repeat a change.
func testReadsAgreeWithWatch(t *testing.T, newStore func(t *testing.T) store.Store) {
	h := open(t, newStore)
	h.writeSchema(baseSchema)
	h.write(nil, create("doc:1#viewer@user:ann", "doc:2#viewer@user:bob", `doc:3#viewer@user:cat[min_level:{"required":1}]`)...)
	h.write(nil, batch(touch(`doc:1#viewer@user:ann[min_level:{"required":2}]`), del("doc:2#viewer@user:bob"))...)
	h.write(nil) // an empty write is a change too
	h.write(nil, touch("doc:2#viewer@user:bob", "group:eng#member@user:ann", "doc:9#viewer@group:eng#member")...)
	if _, _, err := h.s.DeleteMatching(h.ctx, nil, rel.Filter{SubjectID: "ann"}, 0); err != nil {
		t.Fatalf("DeleteMatching: %v", err)
	}
	h.writeSchema(baseSchema + "\ndefinition team {}\n")
	h.write(nil, batch(del("doc:3#viewer@user:cat"), touch("doc:3#viewer@user:dan"+future))...)
	head := h.head()

	collect := func(after store.Revision) []store.Change {
		w := startWatch(h, after)
		defer w.stop()
		var out []store.Change
		for len(out) == 0 || out[len(out)-1].Revision < head {
			if after == head {
				break
			}
			out = append(out, w.next(t))
		}
		w.expectQuiet(t)
		return out
	}
	all := collect(0)
	state := map[rel.Key]string{}
	replayed := func() []string {
		out := make([]string, 0, len(state))
		for _, text := range state {
			out = append(out, text)
		}
		return out
	}
	check := func(rev store.Revision, rest []store.Change) {
		h.expectAt(rev, rel.Filter{}, replayed()...)
		got := collect(rev)
		if len(got) != len(rest) {
			t.Fatalf("Watch(%d) yielded %d changes, the stream from 0 has %d after it", rev, len(got), len(rest))
		}
		for i := range got {
			if a, b := canonicalChange(got[i]), canonicalChange(rest[i]); a != b {
				t.Fatalf("Watch(%d) change %d:\n got  %s\n want %s", rev, i, a, b)
			}
		}
	}
	check(0, all)
	for i, ch := range all {
		for _, u := range ch.Updates {
			if u.Op == store.Delete {
				delete(state, u.Rel.Key())
			} else {
				state[u.Rel.Key()] = u.Rel.String()
			}
		}
		check(ch.Revision, all[i+1:])
	}
}

// canonicalChange renders a change with its updates sorted.
func canonicalChange(ch store.Change) string {
	ups := make([]string, len(ch.Updates))
	for i, u := range ch.Updates {
		ups[i] = u.Op.String() + " " + u.Rel.String()
	}
	sort.Strings(ups)
	schema := "-"
	if ch.Schema != nil {
		schema = fmt.Sprintf("%d bytes", len(*ch.Schema))
	}
	return fmt.Sprintf("revision %d schema %s updates %q", ch.Revision, schema, ups)
}
