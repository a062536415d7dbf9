package engine_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/engine/difftest"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

var contextualCases = flag.Int("engine.contextualcases", 100, "random cases TestContextualEqualsWritten compares")

// splitContextual takes a random part of rels as contextual relationships,
// some of them moved to IDs no stored relationship names, and some also
// left stored: it returns what is stored, what is contextual, and what an
// engine where the contextual ones were written holds.
func splitContextual(r *rand.Rand, rels []rel.Relationship, maxContextual int, valid func(rel.Relationship) bool) (stored, contextual, written []rel.Relationship) {
	seen := map[rel.Key]bool{}
	for _, rl := range rels {
		if len(contextual) < maxContextual && r.IntN(4) == 0 {
			if r.IntN(3) == 0 {
				// A relationship only the request names, on an object no
				// stored relationship names.
				if r.IntN(2) == 0 {
					rl.Resource.ID = "ctx" + rl.Resource.ID
				} else if !rl.Subject.IsWildcard() {
					rl.Subject.ID = "ctx" + rl.Subject.ID
				}
			} else if r.IntN(3) == 0 {
				// Stored, and contextual without its caveat or expiration
				// when the schema allows that: the request's replaces it.
				stored = append(stored, rl)
				if v := rl; valid != nil && (v.Caveat != nil || !v.Expiration.IsZero()) {
					v.Caveat, v.Expiration = nil, time.Time{}
					if valid(v) {
						rl = v
					}
				}
			}
			if !seen[rl.Key()] {
				seen[rl.Key()] = true
				contextual = append(contextual, rl)
			}
			continue
		}
		stored = append(stored, rl)
	}
	byKey := map[rel.Key]bool{}
	for _, rl := range contextual {
		byKey[rl.Key()] = true
	}
	for _, rl := range stored {
		if !byKey[rl.Key()] {
			written = append(written, rl)
		}
	}
	written = append(written, contextual...)
	return stored, contextual, written
}

// sameAnswer says how a request with contextual relationships answered
// differently from the same request where they were written, or "".
func sameAnswer[T any](got T, gerr error, want T, werr error) string {
	if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
		return fmt.Sprintf("contextual error %v, written error %v", gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Sprintf("contextual %+v, written %+v", got, want)
	}
	return ""
}

// TestContextualEqualsWritten is the differential property of contextual
// relationships: on the differential generator's random schemas and
// relationships (caveats, expiration, wildcards, usersets, intersections,
// exclusions, arrows, all(), self, cycles), a Check, CheckBulk,
// LookupResources or LookupSubjects carrying a random part of the
// relationships as contextual, on an engine holding the rest, answers
// exactly what the same request without them answers on an engine where
// they were written. Some contextual relationships name objects no stored
// relationship does; some repeat a stored one.
func TestContextualEqualsWritten(t *testing.T) {
	ctx := context.Background()
	cfg := difftest.DefaultConfig()
	cfg.SelfRate = 0.5
	contexts := []map[string]any{nil,
		{"a": 1, "b": 2, "s": "x", "flag": true, "tags": []any{"x"}, "nums": []any{1}},
		{"a": 3, "b": 0, "flag": false}}
	n := *contextualCases
	if testing.Short() {
		n = min(n, 30)
	}
	compared := 0
	for seed := int64(1); seed <= int64(n); seed++ {
		c := difftest.Generate(seed, cfg)
		r := rand.New(rand.NewPCG(uint64(seed), 11))
		sch, err := schema.Compile(ctx, c.SchemaText())
		if err != nil {
			continue // a case the schema compiler refuses
		}
		valid := func(rl rel.Relationship) bool { return sch.ValidateRelationship(rl) == nil }
		stored, contextual, written := splitContextual(r, c.Rels, 12, valid)
		depth := []int{engine.DefaultMaxDepth, 5}[seed%2]
		clock := engine.WithClock(func() time.Time { return time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC) })
		base, err := engine.Load(ctx, c.SchemaText(), stored, engine.WithMaxDepth(depth), clock)
		if err != nil {
			continue // a case the schema compiler refuses
		}
		want, err := engine.Load(ctx, c.SchemaText(), written, engine.WithMaxDepth(depth), clock)
		if err != nil {
			t.Fatalf("seed %d: written relationships refused: %v", seed, err)
		}
		fail := func(format string, args ...any) {
			t.Helper()
			var b strings.Builder
			for _, rl := range contextual {
				b.WriteString(rl.String() + "\n")
			}
			t.Fatalf("seed %d: %s\nschema:\n%s\nstored:\n%s\ncontextual:\n%s", seed, fmt.Sprintf(format, args...), c.SchemaText(), relText(stored), b.String())
		}
		subjects := walkSubjects(c)
		for _, rl := range contextual {
			subjects = append(subjects, rl.Subject)
		}
		for _, d := range c.Schema.Defs {
			objects := walkObjects(c, d.Name)
			for _, rl := range contextual {
				if rl.Resource.Type == d.Name {
					objects = append(objects, rl.Resource)
				}
			}
			for _, name := range d.Names() {
				var bulk []engine.CheckRequest
				for _, obj := range objects {
					for _, sub := range subjects {
						cx := contexts[r.IntN(len(contexts))]
						req := engine.CheckRequest{Resource: obj, Permission: name, Subject: sub, Context: cx, Explain: true}
						w, werr := want.Check(ctx, req)
						bulk = append(bulk, req)
						req.Contextual = contextual
						g, gerr := base.Check(ctx, req)
						compared++
						if msg := sameAnswer(g, gerr, w, werr); msg != "" {
							fail("check %s#%s@%s %v: %s", obj, name, sub, cx, msg)
						}
					}
				}
				ws, werrs := want.CheckBulk(ctx, bulk)
				for i := range bulk {
					bulk[i].Contextual = contextual
				}
				gs, gerrs := base.CheckBulk(ctx, bulk)
				for i := range bulk {
					if msg := sameAnswer(gs[i], gerrs[i], ws[i], werrs[i]); msg != "" {
						fail("bulk item %d %s#%s@%s: %s", i, bulk[i].Resource, name, bulk[i].Subject, msg)
					}
				}
				for _, sub := range subjects {
					cx := contexts[r.IntN(len(contexts))]
					req := engine.LookupResourcesRequest{ResourceType: d.Name, Permission: name, Subject: sub, Context: cx}
					w, _, werr := want.LookupResources(ctx, req)
					req.Contextual = contextual
					g, _, gerr := base.LookupResources(ctx, req)
					compared++
					if msg := sameAnswer(g, gerr, w, werr); msg != "" {
						fail("lookup resources %s#%s@%s %v: %s", d.Name, name, sub, cx, msg)
					}
					gs, _, gserr := base.LookupResourcesByScan(ctx, req)
					if werr == nil && gserr == nil && !reflect.DeepEqual(gs, w) {
						fail("lookup resources by scan %s#%s@%s %v: contextual %v, written %v", d.Name, name, sub, cx, renderLookup(gs), renderLookup(w))
					}
				}
				for _, obj := range objects {
					for _, st := range walkSubjectTypes(c) {
						cx := contexts[r.IntN(len(contexts))]
						req := engine.LookupSubjectsRequest{Resource: obj, Permission: name, SubjectType: st.Type, SubjectRelation: st.Relation, Context: cx}
						w, _, werr := want.LookupSubjects(ctx, req)
						req.Contextual = contextual
						g, _, gerr := base.LookupSubjects(ctx, req)
						compared++
						if msg := sameAnswer(g, gerr, w, werr); msg != "" {
							fail("lookup subjects %s#%s@%s %v: %s", obj, name, st, cx, msg)
						}
					}
				}
			}
		}
	}
	t.Logf("%d requests compared in %d cases", compared, n)
}

func relText(rels []rel.Relationship) string {
	var b strings.Builder
	for _, r := range rels {
		b.WriteString(r.String() + "\n")
	}
	return b.String()
}

// TestContextualEqualsWrittenAgents is the same property on the
// benchmarks' workload, whose agents act through 2-link delegation chains:
// contextual acts_for links and grants explain themselves exactly as
// written ones.
func TestContextualEqualsWrittenAgents(t *testing.T) {
	ctx := context.Background()
	s := benchShape{users: 60, groups: 8, folders: 40, docs: 300, agents: 40}
	w := newBenchWorkload(s)
	for seed := uint64(1); seed <= 6; seed++ {
		r := rand.New(rand.NewPCG(seed, 13))
		stored, contextual, written := splitContextual(r, w.rels, 40, nil)
		base, err := engine.Load(ctx, benchSchema, stored)
		if err != nil {
			t.Fatal(err)
		}
		want, err := engine.Load(ctx, benchSchema, written)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range append(w.checks[:100:100], w.agents[:40]...) {
			c.Explain = true
			wr, werr := want.Check(ctx, c)
			c.Contextual = contextual
			gr, gerr := base.Check(ctx, c)
			if msg := sameAnswer(gr, gerr, wr, werr); msg != "" {
				t.Fatalf("seed %d check %d %s#%s@%s: %s", seed, i, c.Resource, c.Permission, c.Subject, msg)
			}
			lreq := engine.LookupResourcesRequest{ResourceType: "document", Permission: "view", Subject: c.Subject, OnBehalfOf: c.OnBehalfOf}
			wl, _, werr := want.LookupResources(ctx, lreq)
			lreq.Contextual = contextual
			gl, _, gerr := base.LookupResources(ctx, lreq)
			if msg := sameAnswer(gl, gerr, wl, werr); msg != "" {
				t.Fatalf("seed %d lookup resources %d for %s: %s", seed, i, c.Subject, msg)
			}
			for _, typ := range []string{"user", "agent"} {
				sreq := engine.LookupSubjectsRequest{Resource: c.Resource, Permission: "view", SubjectType: typ}
				wl, _, werr := want.LookupSubjects(ctx, sreq)
				sreq.Contextual = contextual
				gl, _, gerr := base.LookupSubjects(ctx, sreq)
				if msg := sameAnswer(gl, gerr, wl, werr); msg != "" {
					t.Fatalf("seed %d lookup subjects %s of %s: %s", seed, typ, c.Resource, msg)
				}
			}
		}
	}
}

const contextualSchema = `
use expiration
caveat on_task(task string, want string) { task == want }
definition user {}
definition group {
	relation member: user
}
definition doc {
	relation viewer: user | group#member | user with on_task | user with expiration
	relation banned: user
	permission view = viewer - banned
}`

// TestContextualLeavesNothing: a request's contextual relationships hold
// for it alone. The next request without them answers as before (in
// Check, CheckBulk and lookups, where the memo shares subproblems between
// items), the engine's revision does not move, and nothing else sees them.
func TestContextualLeavesNothing(t *testing.T) {
	ctx := context.Background()
	e, err := engine.Load(ctx, contextualSchema, []rel.Relationship{
		mustRel("doc:d1#viewer@group:g#member"),
		mustRel("group:g#member@user:ann"),
	})
	if err != nil {
		t.Fatal(err)
	}
	head := e.Head()
	bob := rel.Subject{Type: "user", ID: "bob"}
	contextual := []rel.Relationship{mustRel("group:g#member@user:bob"), mustRel("doc:new#viewer@user:bob")}
	check := func(res string, extra []rel.Relationship) engine.Decision {
		t.Helper()
		r, err := e.Check(ctx, engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: res}, Permission: "view", Subject: bob, Contextual: extra})
		if err != nil {
			t.Fatal(err)
		}
		return r.Decision
	}
	bulk := func(extra []rel.Relationship) []engine.Decision {
		t.Helper()
		var reqs []engine.CheckRequest
		for _, id := range []string{"d1", "new", "d1", "new"} {
			reqs = append(reqs, engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: id}, Permission: "view", Subject: bob, Contextual: extra})
		}
		rs, errs := e.CheckBulk(ctx, reqs)
		var out []engine.Decision
		for i := range rs {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			out = append(out, rs[i].Decision)
		}
		return out
	}
	lookup := func(extra []rel.Relationship) []string {
		t.Helper()
		rs, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: bob, Contextual: extra})
		if err != nil {
			t.Fatal(err)
		}
		return renderLookup(rs)
	}
	subjects := func(extra []rel.Relationship) []string {
		t.Helper()
		rs, _, err := e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: rel.Object{Type: "doc", ID: "d1"}, Permission: "view", SubjectType: "user", Contextual: extra})
		if err != nil {
			t.Fatal(err)
		}
		return renderLookup(rs)
	}
	for round := range 3 {
		if got := check("d1", contextual); got != engine.Allowed {
			t.Fatalf("round %d: contextual membership: %v, want allowed", round, got)
		}
		if got := check("new", contextual); got != engine.Allowed {
			t.Fatalf("round %d: contextual grant on an unseen doc: %v, want allowed", round, got)
		}
		if got := check("d1", nil); got != engine.Denied {
			t.Fatalf("round %d: the next check without them: %v, want denied", round, got)
		}
		if got := bulk(contextual); !slices.Equal(got, []engine.Decision{engine.Allowed, engine.Allowed, engine.Allowed, engine.Allowed}) {
			t.Fatalf("round %d: bulk with them: %v", round, got)
		}
		if got := bulk(nil); !slices.Equal(got, []engine.Decision{engine.Denied, engine.Denied, engine.Denied, engine.Denied}) {
			t.Fatalf("round %d: bulk without them: %v", round, got)
		}
		if got := lookup(contextual); !slices.Equal(got, []string{"d1:allowed", "new:allowed"}) {
			t.Fatalf("round %d: lookup with them: %v", round, got)
		}
		if got := lookup(nil); len(got) != 0 {
			t.Fatalf("round %d: lookup without them: %v", round, got)
		}
		if got := subjects(contextual); !slices.Equal(got, []string{"ann:allowed", "bob:allowed"}) {
			t.Fatalf("round %d: subjects with them: %v", round, got)
		}
		if got := subjects(nil); !slices.Equal(got, []string{"ann:allowed"}) {
			t.Fatalf("round %d: subjects without them: %v", round, got)
		}
	}
	if e.Head() != head {
		t.Fatalf("head moved from %d to %d", head, e.Head())
	}
	// A mixed bulk: only the items that carry them see them.
	rs, errs := e.CheckBulk(ctx, []engine.CheckRequest{
		{Resource: rel.Object{Type: "doc", ID: "d1"}, Permission: "view", Subject: bob, Contextual: contextual},
		{Resource: rel.Object{Type: "doc", ID: "d1"}, Permission: "view", Subject: bob},
	})
	if errs[0] != nil || errs[1] != nil || rs[0].Decision != engine.Allowed || rs[1].Decision != engine.Denied {
		t.Fatalf("mixed bulk: %v %v, %v %v; want allowed, denied", rs[0].Decision, errs[0], rs[1].Decision, errs[1])
	}
}

// TestContextualValidated: contextual relationships are validated as a
// write is, and a refused one fails the request (never a silent allow or
// deny); a contextual relationship replaces a stored one with the same key,
// caveat and expiration included, as a write would.
func TestContextualValidated(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	e, err := engine.Load(ctx, contextualSchema, []rel.Relationship{
		mustRel(`doc:d1#viewer@user:cat[on_task:{"want":"t1"}]`),
		mustRel("doc:d1#viewer@user:dan"),
	}, engine.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	req := func(sub string, cx map[string]any, extra ...string) engine.CheckRequest {
		var rels []rel.Relationship
		for _, s := range extra {
			rels = append(rels, mustRel(s))
		}
		return engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "d1"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: sub}, Context: cx, Contextual: rels}
	}
	refused := []struct {
		name string
		req  engine.CheckRequest
		want string
	}{
		{"undefined type", req("bob", nil, "folder:f#viewer@user:bob"), `resource type "folder" is not defined`},
		{"undefined relation", req("bob", nil, "doc:d1#owner@user:bob"), `relation "owner" is not defined on "doc"`},
		{"a permission", req("bob", nil, "doc:d1#view@user:bob"), "is a permission"},
		{"subject type not allowed", req("bob", nil, "group:g#member@group:h#member"), "not allowed on group#member"},
		{"undefined caveat", req("bob", nil, `doc:d1#viewer@user:bob[nope]`), "not allowed on doc#viewer"},
		{"expiration not allowed", req("bob", nil, "doc:d1#banned@user:bob[expiration:2030-01-01T00:00:00Z]"), "not allowed on doc#banned"},
		{"duplicate", req("bob", nil, "doc:d1#viewer@user:bob", "doc:d1#viewer@user:bob"), "is also contextual relationship 0"},
	}
	for _, tc := range refused {
		_, err := e.Check(ctx, tc.req)
		if !errors.Is(err, engine.ErrInvalidContextual) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalidContextual naming %q", tc.name, err, tc.want)
		}
		_, _, err = e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: tc.req.Subject, Contextual: tc.req.Contextual})
		if !errors.Is(err, engine.ErrInvalidContextual) {
			t.Errorf("%s: lookup resources: %v, want ErrInvalidContextual", tc.name, err)
		}
	}
	tooMany := make([]rel.Relationship, engine.MaxContextualRelationships+1)
	for i := range tooMany {
		tooMany[i] = mustRel(fmt.Sprintf("group:g#member@user:u%d", i))
	}
	if _, err := e.Check(ctx, engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "d1"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "u1"}, Contextual: tooMany}); !errors.Is(err, engine.ErrInvalidContextual) {
		t.Errorf("over the engine's maximum: %v", err)
	}

	decide := []struct {
		name string
		req  engine.CheckRequest
		want engine.Decision
	}{
		{"stored caveat, no context", req("cat", nil), engine.Conditional},
		{"contextual replaces the caveated one", req("cat", nil, "doc:d1#viewer@user:cat"), engine.Allowed},
		{"stored uncaveated", req("dan", nil), engine.Allowed},
		{"contextual caveat replaces the stored one", req("dan", nil, `doc:d1#viewer@user:dan[on_task:{"want":"t2"}]`), engine.Conditional},
		{"contextual expired replaces the stored one", req("dan", nil, "doc:d1#viewer@user:dan[expiration:2026-12-03T11:00:00Z]"), engine.Denied},
		{"contextual caveat, its context", req("bob", map[string]any{"task": "t2"}, `doc:d1#viewer@user:bob[on_task:{"want":"t2"}]`), engine.Allowed},
		{"contextual caveat, other context", req("bob", map[string]any{"task": "t1"}, `doc:d1#viewer@user:bob[on_task:{"want":"t2"}]`), engine.Denied},
		{"contextual caveat, missing context", req("bob", nil, `doc:d1#viewer@user:bob[on_task:{"want":"t2"}]`), engine.Conditional},
		{"contextual expired", req("bob", nil, "doc:d1#viewer@user:bob[expiration:2026-12-03T11:00:00Z]"), engine.Denied},
		{"contextual not yet expired", req("bob", nil, "doc:d1#viewer@user:bob[expiration:2026-12-03T13:00:00Z]"), engine.Allowed},
		{"contextual exclusion", req("bob", nil, "doc:d1#viewer@user:bob", "doc:d1#banned@user:bob"), engine.Denied},
	}
	for _, tc := range decide {
		res, err := e.Check(ctx, tc.req)
		if err != nil || res.Decision != tc.want {
			t.Errorf("%s: %v %v, want %v", tc.name, res.Decision, err, tc.want)
		}
	}
	if res, err := e.Check(ctx, req("cat", nil)); err != nil || res.Decision != engine.Conditional {
		t.Errorf("the stored caveated relationship after the requests: %v %v, want conditional", res.Decision, err)
	}
}

func mustRel(s string) rel.Relationship {
	r, err := rel.Parse(s)
	if err != nil {
		panic(err)
	}
	return r
}

// BenchmarkCheckContextual measures BenchmarkCheck's checks each carrying
// n contextual relationships (group memberships of the checked user): the
// cost of building the overlay and reading through it, against
// BenchmarkCheck in the same run.
func BenchmarkCheckContextual(b *testing.B) {
	e, w := loadBench(b, flagShape())
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			reqs := make([]engine.CheckRequest, len(w.checks))
			for i, c := range w.checks {
				for j := range n {
					c.Contextual = append(c.Contextual, rel.Relationship{
						Resource: rel.Object{Type: "group", ID: fmt.Sprintf("g%d", (i+j)%s0(w.shape.groups))},
						Relation: "member", Subject: c.Subject})
				}
				reqs[i] = c
			}
			runChecks(b, e, reqs)
		})
	}
}

func s0(n int) int { return max(n, 1) }
