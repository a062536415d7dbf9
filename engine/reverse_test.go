package engine

import (
	"context"
	"testing"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// TestReverseAdjacencyFollowsVersions checks the invariant the walk relies
// on: a subject has one reverse edge per relationship of which some version
// is retained, whatever the number of versions, and none once compaction
// drops every version.
func TestReverseAdjacencyFollowsVersions(t *testing.T) {
	ctx := context.Background()
	const sch = "definition user {}\ndefinition doc {\n  relation viewer: user\n  relation owner: user\n}"
	parse := func(s string) rel.Relationship {
		r, err := rel.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	e, err := Load(ctx, sch, []rel.Relationship{parse("doc:a#viewer@user:ann"), parse("doc:b#owner@user:ann")})
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		st := e.idx.typeSyms["user"]
		id, _ := e.idx.types[st].lookup("ann")
		return len(e.idx.reverseOf(st, id))
	}
	if n := count(); n != 2 {
		t.Fatalf("after load: %d reverse edges, want 2", n)
	}
	// Rewrites and a delete add versions, not reverse edges.
	for rev, u := range []store.Update{
		{Op: store.Touch, Rel: parse("doc:a#viewer@user:ann")},
		{Op: store.Delete, Rel: parse("doc:b#owner@user:ann")},
		{Op: store.Touch, Rel: parse("doc:a#viewer@user:ann")},
	} {
		if err := e.Apply(store.Change{Revision: store.Revision(3 + rev), Updates: []store.Update{u}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(); n != 2 {
		t.Fatalf("after rewrites: %d reverse edges, want 2", n)
	}
	e.ForgetBefore(e.Head())
	if n := count(); n != 1 {
		t.Fatalf("after compaction: %d reverse edges, want 1 (doc:b's owner is gone)", n)
	}
	if err := e.Apply(store.Change{Revision: e.Head() + 1, Updates: []store.Update{{Op: store.Touch, Rel: parse("doc:b#owner@user:ann")}}}); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("written again: %d reverse edges, want 2", n)
	}
}
