package engine_test

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
)

// TestRevisionsBeyond32Bits applies changes at revisions past what an edge
// holds as a distance from the index's base (2^32 - 2), with and without
// retained history within reach, and checks every answer at every
// revision: the same as at small revisions where history is retained, and
// ErrRevisionGone (never a different answer) where it was forgotten to make
// room.
func TestRevisionsBeyond32Bits(t *testing.T) {
	ctx := context.Background()
	const big = store.Revision(1) << 32
	e := engine.New()
	text := internSchema
	if err := e.Apply(store.Change{Revision: 1, Schema: &text}); err != nil {
		t.Fatal(err)
	}
	touch := func(line string) store.Update { return store.Update{Op: store.Touch, Rel: mustParse(t, line)[0]} }
	del := func(line string) store.Update { return store.Update{Op: store.Delete, Rel: mustParse(t, line)[0]} }
	// gone stands for ErrRevisionGone among the decisions.
	const gone = engine.Decision(math.MaxUint8)
	type expect struct {
		rev  store.Revision
		doc  string
		want engine.Decision
	}
	steps := []struct {
		name    string
		rev     store.Revision
		updates []store.Update
		forget  store.Revision // ForgetBefore this revision first, when set
		expects []expect
	}{
		{name: "small revisions", rev: 2, updates: []store.Update{touch("doc:a#viewer@user:u"), touch("doc:b#viewer@user:u")},
			expects: []expect{{1, "doc:a", engine.Denied}, {2, "doc:a", engine.Allowed}, {2, "doc:b", engine.Allowed}}},
		{name: "out of reach of all history: the oldest is forgotten", rev: big + 5, updates: []store.Update{del("doc:a#viewer@user:u"), touch("doc:c#viewer@user:u")},
			expects: []expect{{2, "doc:a", gone}, {6, "doc:b", gone}, {7, "doc:a", engine.Allowed}, {7, "doc:b", engine.Allowed}, {7, "doc:c", engine.Denied},
				{big + 4, "doc:a", engine.Allowed}, {big + 5, "doc:a", engine.Denied}, {big + 5, "doc:b", engine.Allowed}, {big + 5, "doc:c", engine.Allowed}}},
		{name: "recreated", rev: big + 6, updates: []store.Update{touch("doc:a#viewer@user:u")},
			expects: []expect{{big + 4, "doc:a", engine.Allowed}, {big + 5, "doc:a", engine.Denied}, {big + 6, "doc:a", engine.Allowed}}},
		{name: "out of reach of the base, history kept", forget: big + 5, rev: big + 10, updates: []store.Update{del("doc:b#viewer@user:u")},
			expects: []expect{{big + 4, "doc:a", gone}, {big + 5, "doc:a", engine.Denied}, {big + 5, "doc:b", engine.Allowed}, {big + 5, "doc:c", engine.Allowed},
				{big + 6, "doc:a", engine.Allowed}, {big + 9, "doc:b", engine.Allowed}, {big + 10, "doc:b", engine.Denied}, {big + 10, "doc:c", engine.Allowed}}},
		{name: "near the top of the revisions", rev: math.MaxUint64 - 2, updates: []store.Update{touch("doc:b#viewer@user:u")},
			expects: []expect{{big + 10, "doc:b", gone}, {math.MaxUint64 - 3, "doc:b", engine.Denied}, {math.MaxUint64 - 3, "doc:a", engine.Allowed},
				{math.MaxUint64 - 2, "doc:b", engine.Allowed}, {math.MaxUint64 - 2, "doc:c", engine.Allowed}}},
	}
	for _, s := range steps {
		if s.forget != 0 {
			e.ForgetBefore(s.forget)
		}
		if err := e.Apply(store.Change{Revision: s.rev, Updates: s.updates}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		for _, x := range s.expects {
			res, err := e.Check(ctx, engine.CheckRequest{Resource: mustObject(t, x.doc), Permission: "view", Subject: subject(t, "user:u"), Revision: x.rev})
			switch {
			case x.want == gone:
				if !errors.Is(err, engine.ErrRevisionGone) {
					t.Errorf("%s: %s at %d: %+v, %v; want ErrRevisionGone", s.name, x.doc, x.rev, res, err)
				}
			case err != nil || res.Decision != x.want:
				t.Errorf("%s: %s at %d: %+v, %v; want %v", s.name, x.doc, x.rev, res, err, x.want)
			}
		}
	}
}
