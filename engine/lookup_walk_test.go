package engine_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/engine/difftest"
	"github.com/mandate-authz/mandate/store/rel"
)

var walkCases = flag.Int("engine.walkcases", 300, "random cases TestLookupWalkMatchesScan compares")

// TestLookupWalkMatchesScan compares the lookups that walk the index (from
// the subject toward the resources, from the resource toward the subjects)
// with the lookups that check every object of the type, on the differential
// generator's random schemas and relationships (caveats, expiration,
// wildcards, usersets, intersections, exclusions, arrows, all(), self,
// cycles), for every resource type, permission and subject of each case,
// under several contexts, whole and paged. Where checking every object
// fails (a depth error on a resource the subject cannot reach), the walk
// may answer; then each of its results must be what Check says.
func TestLookupWalkMatchesScan(t *testing.T) {
	ctx := context.Background()
	cfg := difftest.DefaultConfig()
	cfg.SelfRate = 0.5
	contexts := []map[string]any{nil,
		{"a": 1, "b": 2, "s": "x", "flag": true, "tags": []any{"x"}, "nums": []any{1}},
		{"a": 3, "b": 0, "flag": false}}
	n := *walkCases
	if testing.Short() {
		n = min(n, 40)
	}
	compared := 0
	for seed := int64(1); seed <= int64(n); seed++ {
		c := difftest.Generate(seed, cfg)
		depth := []int{engine.DefaultMaxDepth, 5}[seed%2]
		e, err := engine.Load(ctx, c.SchemaText(), c.Rels, engine.WithMaxDepth(depth))
		if err != nil {
			continue // a case the schema compiler refuses
		}
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: %s\nschema:\n%s\nrelationships:\n%s", seed, fmt.Sprintf(format, args...), c.SchemaText(), c.RelationshipsText())
		}
		for _, d := range c.Schema.Defs {
			for _, name := range d.Names() {
				for _, sub := range walkSubjects(c) {
					cx := contexts[r.IntN(len(contexts))]
					req := engine.LookupResourcesRequest{ResourceType: d.Name, Permission: name, Subject: sub, Context: cx}
					want, _, werr := e.LookupResourcesByScan(ctx, req)
					got, _, gerr := e.LookupResources(ctx, req)
					compared++
					if msg := compareWalk(ctx, e, want, werr, got, gerr, func(id string) engine.CheckRequest {
						return engine.CheckRequest{Resource: rel.Object{Type: d.Name, ID: id}, Permission: name, Subject: sub, Context: cx}
					}); msg != "" {
						fail("lookup resources %s#%s@%s %v: %s", d.Name, name, sub, cx, msg)
					}
					if werr == nil && len(want) > 1 {
						req.After, req.Limit = want[r.IntN(len(want))].ID, 1+r.IntN(3)
						want, _, werr = e.LookupResourcesByScan(ctx, req)
						got, _, gerr = e.LookupResources(ctx, req)
						if werr != nil || gerr != nil || !slices.Equal(renderLookup(got), renderLookup(want)) {
							fail("lookup resources %s#%s@%s after %q limit %d: walk %v %v, scan %v %v", d.Name, name, sub, req.After, req.Limit, renderLookup(got), gerr, renderLookup(want), werr)
						}
					}
				}
				for _, obj := range walkObjects(c, d.Name) {
					for _, st := range walkSubjectTypes(c) {
						cx := contexts[r.IntN(len(contexts))]
						req := engine.LookupSubjectsRequest{Resource: obj, Permission: name, SubjectType: st.Type, SubjectRelation: st.Relation, Context: cx}
						want, _, werr := e.LookupSubjectsByScan(ctx, req)
						got, _, gerr := e.LookupSubjects(ctx, req)
						compared++
						if msg := compareWalk(ctx, e, want, werr, got, gerr, func(id string) engine.CheckRequest {
							return engine.CheckRequest{Resource: obj, Permission: name, Subject: rel.Subject{Type: st.Type, ID: id, Relation: st.Relation}, Context: cx}
						}); msg != "" {
							fail("lookup subjects %s#%s@%s %v: %s", obj, name, st, cx, msg)
						}
					}
				}
			}
		}
	}
	t.Logf("%d lookups compared in %d cases", compared, n)
}

// compareWalk says how a walking lookup's answer differs from the scanning
// one's, or "". When the scan fails, the walk may fail too or answer with
// results Check agrees with.
func compareWalk(ctx context.Context, e *engine.Engine, want []engine.LookupResult, werr error, got []engine.LookupResult, gerr error, check func(id string) engine.CheckRequest) string {
	switch {
	case werr == nil && gerr == nil:
		if !slices.Equal(renderLookup(got), renderLookup(want)) || !sameMissing(got, want) {
			return fmt.Sprintf("walk %v, scan %v", renderLookup(got), renderLookup(want))
		}
	case werr == nil:
		return fmt.Sprintf("walk fails (%v), scan %v", gerr, renderLookup(want))
	case gerr == nil:
		for _, r := range got {
			if r.ID == rel.Wildcard {
				continue
			}
			res, err := e.Check(ctx, check(r.ID))
			if err != nil || res.Decision == engine.Denied {
				return fmt.Sprintf("walk lists %s, check says %v %v (scan fails: %v)", r.ID, res.Decision, err, werr)
			}
		}
	}
	return ""
}

func sameMissing(a, b []engine.LookupResult) bool {
	for i := range a {
		if !slices.Equal(a[i].Missing, b[i].Missing) {
			return false
		}
	}
	return true
}

// walkSubjects lists the subjects lookups start from: every object of the
// pools, each type's wildcard, an ID no relationship names, and usersets.
func walkSubjects(c *difftest.Case) []rel.Subject {
	var out []rel.Subject
	for _, d := range c.Schema.Defs {
		out = append(out, rel.Subject{Type: d.Name, ID: "unseen"}, rel.Subject{Type: d.Name, ID: rel.Wildcard})
		for _, id := range c.Pools[d.Name] {
			out = append(out, rel.Subject{Type: d.Name, ID: id})
			for _, r := range d.Names() {
				if id == c.Pools[d.Name][0] {
					out = append(out, rel.Subject{Type: d.Name, ID: id, Relation: r})
				}
			}
		}
	}
	return out
}

// walkObjects lists the resources LookupSubjects expands: every object of
// the type and one no relationship names.
func walkObjects(c *difftest.Case, typ string) []rel.Object {
	out := []rel.Object{{Type: typ, ID: "unseen"}}
	for _, id := range c.Pools[typ] {
		out = append(out, rel.Object{Type: typ, ID: id})
	}
	return out
}

// walkSubjectTypes lists the subject types LookupSubjects asks for.
func walkSubjectTypes(c *difftest.Case) []rel.Subject {
	var out []rel.Subject
	for _, d := range c.Schema.Defs {
		out = append(out, rel.Subject{Type: d.Name})
		for _, r := range d.Names() {
			out = append(out, rel.Subject{Type: d.Name, Relation: r})
		}
	}
	return out
}

// TestLookupWalkMatchesScanOnBenchWorkload compares walking and scanning
// lookups on a small instance of the benchmarks' workload (nested groups,
// a folder tree, documents, agents through 2-link chains).
func TestLookupWalkMatchesScanOnBenchWorkload(t *testing.T) {
	ctx := context.Background()
	s := benchShape{users: 300, groups: 30, folders: 300, docs: 3_000, agents: 200}
	w := newBenchWorkload(s)
	e, err := engine.Load(ctx, benchSchema, w.rels)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range append(w.checks[:150:150], w.agents[:50]...) {
		req := engine.LookupResourcesRequest{ResourceType: "document", Permission: "view", Subject: c.Subject}
		want, _, werr := e.LookupResourcesByScan(ctx, req)
		got, _, gerr := e.LookupResources(ctx, req)
		if werr != nil || gerr != nil || !slices.Equal(renderLookup(got), renderLookup(want)) {
			t.Fatalf("lookup resources %d for %s: walk %d results (%v), scan %d (%v)", i, c.Subject, len(got), gerr, len(want), werr)
		}
		for _, typ := range []string{"user", "agent"} {
			sreq := engine.LookupSubjectsRequest{Resource: c.Resource, Permission: "view", SubjectType: typ}
			want, _, werr := e.LookupSubjectsByScan(ctx, sreq)
			got, _, gerr := e.LookupSubjects(ctx, sreq)
			if werr != nil || gerr != nil || !slices.Equal(renderLookup(got), renderLookup(want)) {
				t.Fatalf("lookup subjects %s of %s: walk %v (%v), scan %v (%v)", typ, c.Resource, renderLookup(got), gerr, renderLookup(want), werr)
			}
		}
	}
}
