package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

func testWriteValidation(t *testing.T, newStore func(t *testing.T) store.Store) {
	owner := func(resType, resID, subjType, subjID, subjRel string) rel.Relationship {
		return rel.Relationship{
			Resource: rel.Object{Type: resType, ID: resID},
			Relation: "owner",
			Subject:  rel.Subject{Type: subjType, ID: subjID, Relation: subjRel},
		}
	}
	m := func(op store.Op, r rel.Relationship) []store.Mutation { return []store.Mutation{{Op: op, Rel: r}} }
	cases := []struct {
		name string
		bad  []store.Mutation
	}{
		{"unknown resource type", touch("nope:1#owner@user:ann")},
		{"unknown relation", touch("doc:1#nope@user:ann")},
		{"writing to a permission", touch("doc:1#view@user:ann")},
		{"unknown subject type", touch("doc:1#owner@robot:r1")},
		{"disallowed subject type", touch("doc:1#parent@user:ann")},
		{"disallowed userset", touch("doc:1#owner@group:eng#member")},
		{"undefined subject relation", touch("doc:1#viewer@group:eng#nope")},
		{"disallowed wildcard", touch("doc:1#owner@user:*")},
		{"caveat where none is allowed", touch("doc:1#owner@user:ann[min_level]")},
		{"required caveat missing", touch("doc:1#editor@user:ann" + future)},
		{"wrong caveat", touch("doc:1#reviewer@user:ann[min_level]")},
		{"undefined caveat", touch("doc:1#viewer@user:ann[nope]")},
		{"caveat context of the wrong type", touch(`doc:1#viewer@user:ann[min_level:{"level":"high"}]`)},
		{"caveat context list of the wrong type", touch(`doc:1#reviewer@user:ann[on_day:{"allowed":"mon"}]`)},
		{"caveat context with an unknown parameter", touch(`doc:1#viewer@user:ann[min_level:{"bogus":1}]`)},
		{"expiration where not allowed", touch("doc:1#owner@user:ann" + future)},
		{"expiration missing where required", touch(`doc:1#editor@user:ann[min_level:{"required":1}]`)},
		{"create validated too", create("doc:1#view@user:ann")},
		{"delete of a permission", del("doc:1#view@user:ann")},
		{"delete of an unknown type", del("nope:1#owner@user:ann")},
		{"resource ID with a space", m(store.Touch, owner("doc", "a b", "user", "ann", ""))},
		{"empty resource ID", m(store.Touch, owner("doc", "", "user", "ann", ""))},
		{"wildcard resource ID", m(store.Touch, owner("doc", "*", "user", "ann", ""))},
		{"subject ID with a bad character", m(store.Touch, owner("doc", "1", "user", "ann!", ""))},
		{"empty subject ID", m(store.Touch, owner("doc", "1", "user", "", ""))},
		{"upper-case type", m(store.Touch, owner("Doc", "1", "user", "ann", ""))},
		{"wildcard with a relation", m(store.Touch, owner("doc", "1", "user", "*", "member"))},
		{"bad ID in a delete", m(store.Delete, owner("doc", "a b", "user", "ann", ""))},
		{"unknown operation", m(store.Op(99), owner("doc", "1", "user", "ann", ""))},
		{"same key twice", batch(touch("doc:2#owner@user:bob"), create("doc:2#owner@user:bob"))},
		{"same key touched and deleted", batch(touch(`doc:2#viewer@user:bob[min_level]`), del("doc:2#viewer@user:bob"))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := openWithSchema(t, newStore, "doc:1#viewer@user:zed")
			head, state := h.head(), h.state()
			// Valid mutations around the bad one must not be applied either.
			muts := batch(touch("doc:9#owner@user:ok"), c.bad, del("doc:1#viewer@user:zed"))
			_, err := h.s.Write(h.ctx, nil, muts)
			h.failsWith("Write("+describe(c.bad)+")", err, store.ErrInvalidRelationship, head, state)
		})
	}
}

func testTooManyMutations(t *testing.T, newStore func(t *testing.T) store.Store) {
	h := openWithSchema(t, newStore)
	muts := make([]store.Mutation, store.MaxMutationsPerWrite+1)
	m := store.Mutation{Op: store.Delete, Rel: mustParse("doc:1#owner@user:ann")}
	for i := range muts {
		muts[i] = m
	}
	_, err := h.s.Write(h.ctx, nil, muts)
	h.failsWith("Write of too many mutations", err, store.ErrTooManyMutations, h.head(), []string{})
}

// mutationCase is a write applied to a store holding setup (touched first).
type mutationCase struct {
	name    string
	setup   []string
	pre     []store.Precondition
	muts    []store.Mutation
	wantErr error
	// want is the live state afterwards when the write succeeds; a failed
	// write must leave the setup state.
	want []string
}

func runMutationCases(t *testing.T, newStore func(t *testing.T) store.Store, cases []mutationCase) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := openWithSchema(t, newStore, c.setup...)
			head, state := h.head(), h.state()
			rev, err := h.s.Write(h.ctx, c.pre, c.muts)
			if c.wantErr != nil {
				h.failsWith("Write("+describe(c.muts)+")", err, c.wantErr, head, state)
				return
			}
			if err != nil {
				t.Fatalf("Write(%s): %v", describe(c.muts), err)
			}
			h.checkAdvanced("Write", head, rev)
			h.expectState(c.want...)
			// The revision before the write still reads as it was.
			h.expectAt(head, rel.Filter{}, state...)
		})
	}
}

func testCreateTouchDelete(t *testing.T, newStore func(t *testing.T) store.Store) {
	const (
		ann     = "doc:1#viewer@user:ann"
		annCav1 = `doc:1#viewer@user:ann[min_level:{"required":1}]`
		annCav2 = `doc:1#viewer@user:ann[min_level:{"required":2}]`
		bob     = "doc:1#owner@user:bob"
		cat     = "doc:2#viewer@user:cat"
	)
	runMutationCases(t, newStore, []mutationCase{
		{name: "create new", muts: create(ann), want: []string{ann}},
		{name: "create existing", setup: []string{ann}, muts: create(ann), wantErr: store.ErrAlreadyExists},
		{name: "create existing with another caveat", setup: []string{annCav1}, muts: create(ann), wantErr: store.ErrAlreadyExists},
		{name: "create existing with an expiration", setup: []string{ann + future}, muts: create(ann), wantErr: store.ErrAlreadyExists},
		{name: "create over expired", setup: []string{ann + past}, muts: create(annCav1), want: []string{annCav1}},
		{name: "create already expired", muts: create(ann + past), want: []string{}},
		{name: "touch new", muts: touch(ann), want: []string{ann}},
		{name: "touch same", setup: []string{ann}, muts: touch(ann), want: []string{ann}},
		{name: "touch replaces caveat context", setup: []string{annCav1}, muts: touch(annCav2), want: []string{annCav2}},
		{name: "touch removes caveat", setup: []string{annCav1}, muts: touch(ann), want: []string{ann}},
		{name: "touch adds caveat", setup: []string{ann}, muts: touch(annCav1), want: []string{annCav1}},
		{name: "touch adds expiration", setup: []string{ann}, muts: touch(ann + future), want: []string{ann + future}},
		{name: "touch removes expiration", setup: []string{ann + future}, muts: touch(ann), want: []string{ann}},
		{name: "touch over expired", setup: []string{ann + past}, muts: touch(ann), want: []string{ann}},
		{name: "delete existing", setup: []string{ann, bob}, muts: del(ann), want: []string{bob}},
		{name: "delete absent", setup: []string{bob}, muts: del(ann), want: []string{bob}},
		{name: "delete ignores the mutation's caveat", setup: []string{annCav1}, muts: del(ann), want: []string{}},
		{name: "delete ignores the mutation's expiration", setup: []string{ann}, muts: del(ann + future), want: []string{}},
		{name: "delete expired", setup: []string{ann + past}, muts: del(ann), want: []string{}},
		{
			name:  "mixed batch",
			setup: []string{ann, bob},
			muts:  batch(create(cat), touch(annCav2), del(bob)),
			want:  []string{annCav2, cat},
		},
		{
			name: "usersets and wildcards",
			muts: touch("doc:1#viewer@user:*", "doc:1#viewer@group:eng#member", "group:eng#member@group:ops#member"),
			want: []string{"doc:1#viewer@user:*", "doc:1#viewer@group:eng#member", "group:eng#member@group:ops#member"},
		},
		{name: "empty write", setup: []string{ann}, want: []string{ann}},
	})
}

func testPreconditions(t *testing.T, newStore func(t *testing.T) store.Store) {
	const (
		ann = "doc:1#viewer@user:ann"
		bob = "doc:2#viewer@group:eng#member"
		old = "doc:3#viewer@user:old" + past
		add = "doc:9#owner@user:new"
	)
	setup := []string{ann, bob, old}
	live := []string{ann, bob}
	exist := func(f rel.Filter) store.Precondition { return store.Precondition{MustExist: true, Filter: f} }
	absent := func(f rel.Filter) store.Precondition { return store.Precondition{Filter: f} }
	var (
		annFilter = rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1"}, Relation: "viewer", SubjectType: "user", SubjectID: "ann"}
		noneMatch = rel.Filter{ResourceType: "doc", ResourceIDs: []string{"7", "8"}}
		oldFilter = rel.Filter{ResourceType: "doc", ResourceIDs: []string{"3"}}
	)
	runMutationCases(t, newStore, []mutationCase{
		{name: "must exist and does", setup: setup, pre: []store.Precondition{exist(annFilter)}, muts: touch(add), want: append(live, add)},
		{name: "must exist and does not", setup: setup, pre: []store.Precondition{exist(noneMatch)}, muts: touch(add), wantErr: store.ErrPreconditionFailed},
		{name: "must not exist and does not", setup: setup, pre: []store.Precondition{absent(noneMatch)}, muts: touch(add), want: append(live, add)},
		{name: "must not exist and does", setup: setup, pre: []store.Precondition{absent(annFilter)}, muts: touch(add), wantErr: store.ErrPreconditionFailed},
		{name: "expired does not exist", setup: setup, pre: []store.Precondition{exist(oldFilter)}, muts: touch(add), wantErr: store.ErrPreconditionFailed},
		{name: "expired is absent", setup: setup, pre: []store.Precondition{absent(oldFilter)}, muts: touch(add), want: append(live, add)},
		{name: "empty filter on a non-empty store", setup: setup, pre: []store.Precondition{exist(rel.Filter{})}, muts: touch(add), want: append(live, add)},
		{name: "empty filter on an empty store", pre: []store.Precondition{exist(rel.Filter{})}, muts: touch(add), wantErr: store.ErrPreconditionFailed},
		{name: "all must hold", setup: setup, pre: []store.Precondition{exist(annFilter), exist(noneMatch)}, muts: touch(add), wantErr: store.ErrPreconditionFailed},
		{name: "several hold", setup: setup, pre: []store.Precondition{exist(annFilter), absent(noneMatch), absent(oldFilter)}, muts: touch(add), want: append(live, add)},
		{
			name: "subject relation filter", setup: setup,
			pre:  []store.Precondition{exist(rel.Filter{SubjectType: "group", SubjectRelation: ptr("member")})},
			muts: touch(add), want: append(live, add),
		},
		{
			name: "subject relation filter for no relation", setup: setup,
			pre:  []store.Precondition{absent(rel.Filter{SubjectType: "group", SubjectRelation: ptr("")})},
			muts: touch(add), want: append(live, add),
		},
		{
			name: "subject ID filter", setup: setup,
			pre:  []store.Precondition{exist(rel.Filter{SubjectID: "nobody"})},
			muts: touch(add), wantErr: store.ErrPreconditionFailed,
		},
		{
			name: "evaluated before the write: must not exist, then created", setup: setup,
			pre:  []store.Precondition{absent(rel.Filter{ResourceType: "doc", ResourceIDs: []string{"9"}})},
			muts: create(add), want: append(live, add),
		},
		{
			name: "evaluated before the write: must exist, then deleted", setup: setup,
			pre:  []store.Precondition{exist(annFilter)},
			muts: del(ann), want: []string{bob},
		},
		{name: "only preconditions", setup: setup, pre: []store.Precondition{exist(annFilter)}, want: live},
	})
}

func testAtomicity(t *testing.T, newStore func(t *testing.T) store.Store) {
	const (
		a = "doc:1#owner@user:a"
		b = "doc:2#owner@user:b"
		x = "doc:3#owner@user:x"
	)
	h := openWithSchema(t, newStore, a, b)
	head, state := h.head(), h.state()
	failing := []struct {
		name    string
		pre     []store.Precondition
		muts    []store.Mutation
		wantErr error
	}{
		{"conflicting create last", nil, batch(touch(x), del(a), create(b)), store.ErrAlreadyExists},
		{"conflicting create first", nil, batch(create(a), touch(x), del(b)), store.ErrAlreadyExists},
		{"invalid relationship in the middle", nil, batch(touch(x), touch("doc:4#view@user:y"), del(a)), store.ErrInvalidRelationship},
		{"failed precondition", []store.Precondition{{Filter: rel.Filter{ResourceType: "doc"}}}, batch(touch(x), del(a)), store.ErrPreconditionFailed},
	}
	for _, c := range failing {
		_, err := h.s.Write(h.ctx, c.pre, c.muts)
		h.failsWith(c.name, err, c.wantErr, head, state)
	}
	_, _, err := h.s.DeleteMatching(h.ctx, []store.Precondition{{MustExist: true, Filter: rel.Filter{SubjectID: "nobody"}}}, rel.Filter{}, 0)
	h.failsWith("DeleteMatching with a failed precondition", err, store.ErrPreconditionFailed, head, state)
	_, _, err = h.s.DeleteMatching(h.ctx, nil, rel.Filter{ResourceType: "doc"}, 1)
	h.failsWith("DeleteMatching over its limit", err, store.ErrLimitExceeded, head, state)

	// Nothing of the failed writes reaches the change stream: the next
	// change after head is the next successful write, and only it.
	rev := h.write(nil, touch(x)...)
	w := startWatch(h, head)
	defer w.stop()
	got := w.next(t)
	if got.Revision != rev || len(got.Updates) != 1 || got.Schema != nil {
		t.Fatalf("first change after the failed writes: %s; want revision %d touching %s only", formatChange(got), rev, x)
	}
	expectUpdates(t, got, "TOUCH "+x)
	h.expectState(a, b, x)
}

func testDeleteMatching(t *testing.T, newStore func(t *testing.T) store.Store) {
	setup := []string{
		"doc:1#owner@user:ann",
		"doc:1#viewer@user:bob",
		"doc:2#viewer@user:ann",
		"doc:2#viewer@group:eng#member",
		"doc:3#viewer@user:ann" + past,
		"folder:f#viewer@user:ann",
		"group:eng#member@user:ann",
	}
	docs := rel.Filter{ResourceType: "doc"}
	cases := []struct {
		name        string
		pre         []store.Precondition
		filter      rel.Filter
		limit       int
		wantErr     error
		wantDeleted []string
	}{
		{name: "by resource type", filter: docs, wantDeleted: []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob", "doc:2#viewer@user:ann", "doc:2#viewer@group:eng#member"}},
		{name: "by resource IDs", filter: rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1", "9"}}, wantDeleted: []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob"}},
		{name: "by relation", filter: rel.Filter{ResourceType: "doc", Relation: "owner"}, wantDeleted: []string{"doc:1#owner@user:ann"}},
		{name: "by subject across types", filter: rel.Filter{SubjectType: "user", SubjectID: "ann"}, wantDeleted: []string{"doc:1#owner@user:ann", "doc:2#viewer@user:ann", "folder:f#viewer@user:ann", "group:eng#member@user:ann"}},
		{name: "by subject relation", filter: rel.Filter{SubjectRelation: ptr("member")}, wantDeleted: []string{"doc:2#viewer@group:eng#member"}},
		{name: "by no subject relation", filter: rel.Filter{ResourceType: "doc", Relation: "viewer", SubjectRelation: ptr("")}, wantDeleted: []string{"doc:1#viewer@user:bob", "doc:2#viewer@user:ann"}},
		{name: "everything", filter: rel.Filter{}, wantDeleted: []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob", "doc:2#viewer@user:ann", "doc:2#viewer@group:eng#member", "folder:f#viewer@user:ann", "group:eng#member@user:ann"}},
		{name: "limit equal to matches", filter: docs, limit: 4, wantDeleted: []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob", "doc:2#viewer@user:ann", "doc:2#viewer@group:eng#member"}},
		{name: "limit above matches", filter: docs, limit: 100, wantDeleted: []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob", "doc:2#viewer@user:ann", "doc:2#viewer@group:eng#member"}},
		{name: "limit exceeded", filter: docs, limit: 3, wantErr: store.ErrLimitExceeded},
		{name: "limit one exceeded", filter: rel.Filter{SubjectID: "ann"}, limit: 1, wantErr: store.ErrLimitExceeded},
		{name: "no match", filter: rel.Filter{ResourceType: "doc", ResourceIDs: []string{"9"}}, wantDeleted: []string{}},
		{name: "only expired matches", filter: rel.Filter{ResourceType: "doc", ResourceIDs: []string{"3"}}, limit: 1, wantDeleted: []string{}},
		{name: "expired matches not counted", filter: rel.Filter{ResourceType: "doc", ResourceIDs: []string{"2", "3"}, SubjectID: "ann"}, limit: 1, wantDeleted: []string{"doc:2#viewer@user:ann"}},
		{
			name: "precondition holds", filter: rel.Filter{ResourceType: "folder"},
			pre:         []store.Precondition{{MustExist: true, Filter: rel.Filter{ResourceType: "group"}}},
			wantDeleted: []string{"folder:f#viewer@user:ann"},
		},
		{
			name: "precondition fails", filter: rel.Filter{ResourceType: "folder"},
			pre:     []store.Precondition{{Filter: rel.Filter{ResourceType: "group"}}},
			wantErr: store.ErrPreconditionFailed,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := openWithSchema(t, newStore, setup...)
			head, state := h.head(), h.state()
			rev, n, err := h.s.DeleteMatching(h.ctx, c.pre, c.filter, c.limit)
			if c.wantErr != nil {
				h.failsWith("DeleteMatching", err, c.wantErr, head, state)
				return
			}
			if err != nil {
				t.Fatalf("DeleteMatching(%+v, %d): %v", c.filter, c.limit, err)
			}
			h.checkAdvanced("DeleteMatching", head, rev)
			if n != len(c.wantDeleted) {
				t.Fatalf("DeleteMatching(%+v, %d) deleted %d, want %d", c.filter, c.limit, n, len(c.wantDeleted))
			}
			deleted := canonical(t, c.wantDeleted)
			var remaining []string
			for _, s := range state {
				if !slices.Contains(deleted, s) {
					remaining = append(remaining, s)
				}
			}
			h.expectState(remaining...)
			h.expectAt(head, rel.Filter{}, state...)

			// The change names every deleted relationship; it may also
			// name expired ones that the filter matched.
			w := startWatch(h, head)
			defer w.stop()
			ch := w.next(t)
			if ch.Revision != rev {
				t.Fatalf("change after DeleteMatching has revision %d, want %d", ch.Revision, rev)
			}
			var live []string
			for _, u := range ch.Updates {
				if u.Op != store.Delete || !c.filter.Matches(u.Rel) {
					t.Fatalf("DeleteMatching(%+v) change has update %s %s", c.filter, u.Op, u.Rel)
				}
				if !u.Rel.ExpiredAt(time.Now()) {
					live = append(live, u.Rel.String())
				}
			}
			if got := canonical(t, live); !slices.Equal(got, deleted) {
				t.Fatalf("DeleteMatching change deletes %q, want %q", got, deleted)
			}
		})
	}
}
