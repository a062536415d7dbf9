package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

func testReadFilters(t *testing.T, newStore func(t *testing.T) store.Store) {
	live := []string{
		"doc:1#owner@user:ann",
		"doc:1#viewer@user:bob",
		"doc:1#viewer@group:eng#member",
		"doc:10#viewer@user:ann",
		"doc:2#viewer@user:*",
		"doc:3#viewer@user:cat" + future,
		`doc:3#reviewer@user:ann[on_day:{"allowed":["mon"]}]`,
		"folder:f#viewer@user:ann",
		"group:eng#member@user:ann",
		"group:eng#member@group:ops#member",
	}
	h := openWithSchema(t, newStore, append(live, "doc:2#viewer@user:ann"+past, "doc:4#viewer@user:old"+past)...)
	cases := []struct {
		name   string
		filter rel.Filter
		want   []string
	}{
		{"everything", rel.Filter{}, live},
		{"resource type", rel.Filter{ResourceType: "group"}, []string{"group:eng#member@user:ann", "group:eng#member@group:ops#member"}},
		{"resource IDs", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"10", "1"}}, []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob", "doc:1#viewer@group:eng#member", "doc:10#viewer@user:ann"}},
		{"resource ID with only expired", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"4"}}, nil},
		{"resource ID leaving out the expired", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"2"}}, []string{"doc:2#viewer@user:*"}},
		{"resource IDs without a type", rel.Filter{ResourceIDs: []string{"f"}}, []string{"folder:f#viewer@user:ann"}},
		{"relation", rel.Filter{ResourceType: "doc", Relation: "viewer"}, []string{"doc:1#viewer@user:bob", "doc:1#viewer@group:eng#member", "doc:10#viewer@user:ann", "doc:2#viewer@user:*", "doc:3#viewer@user:cat" + future}},
		{"relation across types", rel.Filter{Relation: "viewer", SubjectID: "ann"}, []string{"doc:10#viewer@user:ann", "folder:f#viewer@user:ann"}},
		{"subject type", rel.Filter{SubjectType: "group"}, []string{"doc:1#viewer@group:eng#member", "group:eng#member@group:ops#member"}},
		{"subject", rel.Filter{SubjectType: "user", SubjectID: "ann"}, []string{"doc:1#owner@user:ann", "doc:10#viewer@user:ann", `doc:3#reviewer@user:ann[on_day:{"allowed":["mon"]}]`, "folder:f#viewer@user:ann", "group:eng#member@user:ann"}},
		{"wildcard subject", rel.Filter{SubjectID: "*"}, []string{"doc:2#viewer@user:*"}},
		{"subject relation", rel.Filter{SubjectRelation: ptr("member")}, []string{"doc:1#viewer@group:eng#member", "group:eng#member@group:ops#member"}},
		{"no subject relation", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1"}, SubjectRelation: ptr("")}, []string{"doc:1#owner@user:ann", "doc:1#viewer@user:bob"}},
		{"everything at once", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1", "2"}, Relation: "viewer", SubjectType: "user", SubjectID: "bob", SubjectRelation: ptr("")}, []string{"doc:1#viewer@user:bob"}},
		{"no match", rel.Filter{ResourceType: "doc", ResourceIDs: []string{"99"}}, nil},
		{"type not in the schema", rel.Filter{ResourceType: "team"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := h.in(t)
			h.expectAt(h.head(), c.filter, c.want...)
		})
	}

	t.Run("stopping early releases the store", func(t *testing.T) {
		for _, err := range h.s.Read(h.ctx, h.head(), rel.Filter{}, nil) {
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			break
		}
		done := make(chan error, 1)
		go func() {
			_, err := h.s.Write(h.ctx, nil, touch("doc:20#owner@user:ann"))
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Write after an abandoned Read: %v", err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("Write blocked for %v after an abandoned Read", waitLimit)
		}
	})
}

// testReadWhileWriting checks that a Read is a snapshot even when the
// caller writes while iterating, and that iterating does not block writers.
func testReadWhileWriting(t *testing.T, newStore func(t *testing.T) store.Store) {
	initial := []string{"doc:1#owner@user:ann", "doc:2#owner@user:bob", "doc:3#owner@user:cat"}
	h := openWithSchema(t, newStore, initial...)
	rev := h.head()
	var got []rel.Relationship
	for r, err := range h.s.Read(h.ctx, rev, rel.Filter{}, nil) {
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if len(got) == 0 {
			h.write(nil, batch(touch("doc:25#owner@user:new"), del("doc:3#owner@user:cat"))...)
		}
		got = append(got, r)
	}
	if g, w := texts(got), canonical(t, initial); !slices.Equal(g, w) {
		t.Fatalf("Read at %d while writing yielded %q, want %q", rev, g, w)
	}
	h.expectState("doc:1#owner@user:ann", "doc:2#owner@user:bob", "doc:25#owner@user:new")
}

func testSnapshotReads(t *testing.T, newStore func(t *testing.T) store.Store) {
	const (
		a    = "doc:1#viewer@user:ann"
		aCav = `doc:1#viewer@user:ann[min_level:{"required":3}]`
		b    = "doc:2#viewer@user:bob"
		c    = "doc:3#owner@user:cat"
	)
	h := open(t, newStore)
	r1 := h.writeSchema(baseSchema)
	r2 := h.write(nil, touch(a, b)...)
	r3 := h.write(nil, batch(touch(aCav), del(b), create(c))...)
	r4 := h.writeSchema(baseSchema + "\ndefinition team {}\n")
	r5, _, err := h.s.DeleteMatching(h.ctx, nil, rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1"}}, 0)
	if err != nil {
		t.Fatalf("DeleteMatching: %v", err)
	}
	cases := []struct {
		rev    store.Revision
		filter rel.Filter
		want   []string
	}{
		{0, rel.Filter{}, nil},
		{r1, rel.Filter{}, nil},
		{r2, rel.Filter{}, []string{a, b}},
		{r2, rel.Filter{SubjectID: "bob"}, []string{b}},
		{r3, rel.Filter{}, []string{aCav, c}},
		{r3, rel.Filter{SubjectID: "bob"}, nil},
		{r4, rel.Filter{}, []string{aCav, c}},
		{r5, rel.Filter{}, []string{c}},
		{r5, rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1"}}, nil},
	}
	for _, tc := range cases {
		h.expectAt(tc.rev, tc.filter, tc.want...)
	}
	if err := h.readErr(r5+1, rel.Filter{}); !errors.Is(err, store.ErrFutureRevision) {
		t.Fatalf("Read(head+1): error %v, want ErrFutureRevision", err)
	}
}
