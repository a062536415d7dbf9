package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

const internSchema = `caveat level(level int, min int) { level >= min }
caveat scope(action string, resource_type string, allowed list<string>, allowed_type string) {
	action in allowed && resource_type == allowed_type
}

definition user {}
definition agent {
	relation acts_for: user with scope
}
definition doc {
	relation viewer: user | user with level | agent:*
	permission view = viewer
	permission edit = viewer
}
definition folder {
	relation viewer: user | agent:*
	permission view = viewer
}
`

// applied returns an engine with internSchema at revision 1 and each batch
// of updates at the next revision. Apply does not validate, so contexts of
// any Go type reach the index.
func applied(t *testing.T, batches ...[]store.Update) *engine.Engine {
	t.Helper()
	e := engine.New()
	text := internSchema
	if err := e.Apply(store.Change{Revision: 1, Schema: &text}); err != nil {
		t.Fatal(err)
	}
	for i, b := range batches {
		if err := e.Apply(store.Change{Revision: store.Revision(i + 2), Updates: b}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func caveated(resource, sub, caveat string, ctx map[string]any) rel.Relationship {
	r, err := rel.Parse(resource + "#viewer@" + sub)
	if err != nil {
		panic(err)
	}
	r.Caveat = &rel.Caveat{Name: caveat, Context: ctx}
	return r
}

func touches(rels ...rel.Relationship) []store.Update {
	out := make([]store.Update, len(rels))
	for i, r := range rels {
		out[i] = store.Update{Op: store.Touch, Rel: r}
	}
	return out
}

// TestCaveatInterningKey writes two caveated relationships and counts the
// caveats the index interns: one when the two must share, two when they
// differ in anything an evaluation could tell apart (down to the Go type of
// a number), none for a context holding a type the key does not encode.
func TestCaveatInterningKey(t *testing.T) {
	cases := []struct {
		name       string
		caveatB    string
		a, b       map[string]any
		wantShared int
	}{
		{name: "equal", a: map[string]any{"min": 3}, b: map[string]any{"min": 3}, wantShared: 1},
		{name: "map order does not matter", a: map[string]any{"min": 3, "level": 5}, b: map[string]any{"level": 5, "min": 3}, wantShared: 1},
		{name: "nested equal", a: map[string]any{"m": map[string]any{"x": []any{"a", 1.5, nil, true}}}, b: map[string]any{"m": map[string]any{"x": []any{"a", 1.5, nil, true}}}, wantShared: 1},
		{name: "nil and empty context", a: nil, b: map[string]any{}, wantShared: 1},
		{name: "other caveat name", caveatB: "scope", a: map[string]any{"min": 3}, b: map[string]any{"min": 3}, wantShared: 2},
		{name: "other value", a: map[string]any{"min": 3}, b: map[string]any{"min": 4}, wantShared: 2},
		{name: "int and float64", a: map[string]any{"min": 3}, b: map[string]any{"min": 3.0}, wantShared: 2},
		{name: "int and int64", a: map[string]any{"min": 3}, b: map[string]any{"min": int64(3)}, wantShared: 2},
		{name: "number and string", a: map[string]any{"min": 3.0}, b: map[string]any{"min": "3"}, wantShared: 2},
		{name: "zero and negative zero", a: map[string]any{"min": 0.0}, b: map[string]any{"min": math.Copysign(0, -1)}, wantShared: 2},
		{name: "false and nil", a: map[string]any{"x": false}, b: map[string]any{"x": nil}, wantShared: 2},
		{name: "split strings", a: map[string]any{"allowed": []any{"view"}}, b: map[string]any{"allowed": []any{"vi", "ew"}}, wantShared: 2},
		{name: "string boundary", a: map[string]any{"allowed": []any{"a", "sb"}}, b: map[string]any{"allowed": []any{"as", "b"}}, wantShared: 2},
		{name: "list order", a: map[string]any{"allowed": []any{"view", "edit"}}, b: map[string]any{"allowed": []any{"edit", "view"}}, wantShared: 2},
		{name: "key and value boundary", a: map[string]any{"ab": "c"}, b: map[string]any{"a": "bc"}, wantShared: 2},
		{name: "list and map", a: map[string]any{"x": []any{}}, b: map[string]any{"x": map[string]any{}}, wantShared: 2},
		{name: "missing key", a: map[string]any{"min": 3}, b: map[string]any{"min": 3, "level": nil}, wantShared: 2},
		{name: "type the key does not encode", a: map[string]any{"min": int32(3)}, b: map[string]any{"min": int32(3)}, wantShared: 0},
		{name: "nested type the key does not encode", a: map[string]any{"l": []string{"view"}}, b: map[string]any{"l": []any{"view"}}, wantShared: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nameB := "level"
			if c.caveatB != "" {
				nameB = c.caveatB
			}
			e := applied(t, touches(caveated("doc:a", "user:u", "level", c.a), caveated("doc:b", "user:u", nameB, c.b)))
			if got := e.InternedCaveats(); got != c.wantShared {
				t.Errorf("InternedCaveats() = %d, want %d", got, c.wantShared)
			}
		})
	}
}

// TestSharedCaveatsAnswerAsUnshared checks every caveated edge of an index
// where many edges share each context against an engine that holds that
// edge alone (where nothing is shared), with request contexts and
// engine-supplied parameters that the shared memo's decided outcomes must
// keep apart. Checks run edge by edge, so that one edge's outcomes are
// cached before its siblings and the edges of other contexts are checked,
// then again concurrently (run with -race).
func TestSharedCaveatsAnswerAsUnshared(t *testing.T) {
	ctx := context.Background()
	levels := []map[string]any{
		{"min": 3}, {"min": 3.0}, {"min": 4}, {"min": "3"}, {"min": 3.5},
		{"min": 3, "level": 5}, {"min": 3, "level": 1}, nil,
	}
	scopes := []map[string]any{
		{"allowed": []any{"view"}, "allowed_type": "doc"},
		{"allowed": []any{"vi", "ew"}, "allowed_type": "doc"},
		{"allowed": []any{"view", "edit"}, "allowed_type": "doc"},
		{"allowed": []any{"view"}, "allowed_type": "folder"},
		{"allowed": []any{"edit"}, "allowed_type": "doc"},
		{"allowed": []any{"view"}},
	}
	const copies = 3
	base := mustParse(t, "doc:x#viewer@user:u", "doc:x#viewer@agent:*", "folder:f#viewer@user:u", "folder:f#viewer@agent:*")
	type probe struct {
		edge rel.Relationship
		reqs []engine.CheckRequest
	}
	var probes []probe
	all := append([]rel.Relationship(nil), base...)
	for k := 0; k < copies; k++ {
		for j, c := range levels {
			r := caveated(fmt.Sprintf("doc:l%d_%d", j, k), "user:u", "level", c)
			p := probe{edge: r}
			for _, level := range []any{nil, 2, 3, 5} {
				req := engine.CheckRequest{Resource: r.Resource, Permission: "view", Subject: subject(t, "user:u")}
				if level != nil {
					req.Context = map[string]any{"level": level}
				}
				p.reqs = append(p.reqs, req)
			}
			probes, all = append(probes, p), append(all, r)
		}
		for j, c := range scopes {
			r := caveated(fmt.Sprintf("agent:s%d_%d", j, k), "user:u", "scope", c)
			r.Relation = "acts_for"
			p := probe{edge: r}
			for _, q := range []struct{ resource, permission string }{{"doc:x", "view"}, {"doc:x", "edit"}, {"folder:f", "view"}} {
				p.reqs = append(p.reqs, engine.CheckRequest{Resource: mustObject(t, q.resource), Permission: q.permission, Subject: rel.Subject{Type: "agent", ID: r.Resource.ID}})
			}
			probes, all = append(probes, p), append(all, r)
		}
	}
	shared := applied(t, touches(all...))
	if got, want := shared.InternedCaveats(), len(levels)+len(scopes); got != want {
		t.Fatalf("InternedCaveats() = %d, want %d: the test would share nothing", got, want)
	}
	type answer struct {
		decision engine.Decision
		failed   bool
	}
	ask := func(e *engine.Engine, req engine.CheckRequest) answer {
		res, err := e.Check(ctx, req)
		if err != nil && !errors.Is(err, engine.ErrInvalidContext) {
			t.Errorf("check %+v: %v", req, err)
		}
		return answer{decision: res.Decision, failed: err != nil}
	}
	want := map[string]answer{}
	key := func(i, q int) string { return fmt.Sprint(i, "/", q) }
	for i, p := range probes {
		alone := applied(t, touches(append(append([]rel.Relationship(nil), base...), p.edge)...))
		for q, req := range p.reqs {
			want[key(i, q)] = ask(alone, req)
		}
	}
	// The contexts tell answers apart: the test compares something.
	for _, c := range []struct {
		probe, req int
		want       engine.Decision
	}{
		{probe: 0, req: 2, want: engine.Allowed},                   // min 3, level 3
		{probe: 2, req: 2, want: engine.Denied},                    // min 4, level 3
		{probe: len(levels), req: 0, want: engine.Allowed},         // scope ["view"] on doc
		{probe: len(levels) + 1, req: 0, want: engine.Denied},      // scope ["vi", "ew"]
		{probe: len(levels) + 3, req: 2, want: engine.Allowed},     // scope ["view"] on folder
		{probe: len(levels) + 3, req: 0, want: engine.Denied},      // ... not on doc
		{probe: len(levels) + 2, req: 1, want: engine.Allowed},     // scope ["view", "edit"], edit
		{probe: len(levels) + 5, req: 0, want: engine.Conditional}, // no allowed_type
	} {
		if got := want[key(c.probe, c.req)]; got.decision != c.want || got.failed {
			t.Fatalf("probe %d request %d alone: %+v, want %v", c.probe, c.req, got, c.want)
		}
	}
	compare := func(i, q int) error {
		if got := ask(shared, probes[i].reqs[q]); got != want[key(i, q)] {
			return fmt.Errorf("%s, request %+v: shared %+v, alone %+v", probes[i].edge, probes[i].reqs[q], got, want[key(i, q)])
		}
		return nil
	}
	for round := 0; round < 2; round++ {
		for i, p := range probes {
			for q := range p.reqs {
				if err := compare(i, q); err != nil {
					t.Error(err)
				}
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < len(probes)*4; n++ {
				i := (n*(g+3) + g) % len(probes)
				if err := compare(i, n%len(probes[i].reqs)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestInternedCaveatsAreReleased follows the interned caveats through
// writes, rewrites, superseding versions, deletes and compaction: a caveat
// is kept while any retained version names it and forgotten with the last,
// so that a stream of distinct contexts does not accumulate. A contextual
// relationship's caveat is never interned.
func TestInternedCaveatsAreReleased(t *testing.T) {
	ctx := context.Background()
	e := applied(t)
	min := func(n int) map[string]any { return map[string]any{"min": n} }
	del := func(r rel.Relationship) store.Update { return store.Update{Op: store.Delete, Rel: r} }
	a3, b3, c3 := caveated("doc:a", "user:u", "level", min(3)), caveated("doc:b", "user:u", "level", min(3)), caveated("doc:c", "user:u", "level", min(3))
	a4, a5 := caveated("doc:a", "user:u", "level", min(4)), caveated("doc:a", "user:u", "level", min(5))
	var stream []store.Update
	for i := 0; i < 100; i++ {
		stream = append(stream, touches(caveated(fmt.Sprintf("doc:s%d", i), "user:u", "level", min(100+i)))...)
	}
	var unstream []store.Update
	for _, u := range stream {
		unstream = append(unstream, del(u.Rel))
	}
	steps := []struct {
		name    string
		updates []store.Update
		forget  bool // ForgetBefore the head after applying
		want    int
	}{
		{name: "three edges, one context", updates: touches(a3, b3, c3), want: 1},
		{name: "rewrite within one revision", updates: touches(a4, a5), want: 2},
		{name: "superseded version keeps its context", updates: touches(a3), want: 2},
		{name: "compaction drops min 5", forget: true, want: 1},
		{name: "a stream of distinct contexts", updates: stream, want: 101},
		{name: "deleted, still retained", updates: unstream, want: 101},
		{name: "deleted and compacted", forget: true, want: 1},
		{name: "last edges deleted", updates: []store.Update{del(a3), del(b3), del(c3)}, forget: true, want: 0},
	}
	rev := e.Head()
	for _, s := range steps {
		if len(s.updates) > 0 {
			rev++
			if err := e.Apply(store.Change{Revision: rev, Updates: s.updates}); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		if s.forget {
			e.ForgetBefore(rev)
		}
		if got := e.InternedCaveats(); got != s.want {
			t.Errorf("%s (revision %d): InternedCaveats() = %d, want %d", s.name, rev, got, s.want)
		}
	}
	res, err := e.Check(ctx, engine.CheckRequest{Resource: mustObject(t, "doc:z"), Permission: "view", Subject: subject(t, "user:u"),
		Context: map[string]any{"level": 9}, Contextual: []rel.Relationship{caveated("doc:z", "user:u", "level", min(7))}})
	if err != nil || res.Decision != engine.Allowed {
		t.Fatalf("contextual check: %+v, %v; want allowed", res, err)
	}
	if got := e.InternedCaveats(); got != 0 {
		t.Errorf("after a contextual check: InternedCaveats() = %d, want 0", got)
	}
}
