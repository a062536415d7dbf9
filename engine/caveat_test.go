package engine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const caveatCacheSchema = `caveat scope(action string, resource_type string, allowed list<string>, allowed_type string) {
	action in allowed && resource_type == allowed_type
}
caveat by_id(resource_id string, prefix string) { resource_id.startsWith(prefix) }
caveat level(level int, min int) { level >= min }

definition user {}
definition agent {
	relation acts_for: user with scope | user with by_id
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

// TestCaveatOutcomesAreCachedSafely drives the caveat caches (converted
// contexts per edge and request, outcomes fixed by the relationship and the
// engine-supplied parameters) through everything they must tell apart:
// actions and resource types, more resource IDs than an edge keeps, request
// contexts, a relationship that sets every parameter, and a schema change
// that redefines the caveat while older revisions are still read. Each
// check runs three times in a row and interleaved with the others.
func TestCaveatOutcomesAreCachedSafely(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	if _, err := st.WriteSchema(ctx, caveatCacheSchema); err != nil {
		t.Fatal(err)
	}
	// Following from the start keeps every later revision readable.
	e := engine.New()
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = feed.Follow(fctx, e, st, nil) }()
	if err := e.WaitForRevision(ctx, 1); err != nil {
		t.Fatal(err)
	}
	lines := []string{
		`agent:a#acts_for@user:u[scope:{"allowed":["view"],"allowed_type":"doc"}]`,
		`agent:b#acts_for@user:u[by_id:{"prefix":"pub"}]`,
		`doc:v#viewer@user:v[level:{"min":3}]`,
		`doc:w#viewer@user:w[level:{"min":3,"level":5}]`,
		`folder:f#viewer@user:u`,
		`folder:f#viewer@agent:*`,
	}
	for i := 0; i < 20; i++ {
		lines = append(lines, fmt.Sprintf("doc:pub%d#viewer@user:u", i), fmt.Sprintf("doc:priv%d#viewer@user:u", i),
			fmt.Sprintf("doc:pub%d#viewer@agent:*", i), fmt.Sprintf("doc:priv%d#viewer@agent:*", i))
	}
	var muts []store.Mutation
	for _, r := range mustParse(t, lines...) {
		muts = append(muts, store.Mutation{Op: store.Create, Rel: r})
	}
	before, err := st.Write(ctx, nil, muts)
	if err != nil {
		t.Fatal(err)
	}
	// The redefinition flips which resource type the scope caveat allows.
	after, err := st.WriteSchema(ctx, `caveat scope(action string, resource_type string, allowed list<string>, allowed_type string) {
	action in allowed && resource_type != allowed_type
}`+caveatCacheSchema[len(`caveat scope(action string, resource_type string, allowed list<string>, allowed_type string) {
	action in allowed && resource_type == allowed_type
}`):])
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WaitForRevision(ctx, after); err != nil {
		t.Fatal(err)
	}

	type check struct {
		resource, permission, subject string
		context                       map[string]any
		rev                           store.Revision
		want                          engine.Decision
	}
	checks := []check{
		{"doc:pub1", "view", "agent:a", nil, before, engine.Allowed},
		{"doc:pub1", "edit", "agent:a", nil, before, engine.Denied},
		{"folder:f", "view", "agent:a", nil, before, engine.Denied},
		{"doc:pub1", "view", "agent:a", nil, after, engine.Denied},
		{"folder:f", "view", "agent:a", nil, after, engine.Allowed},
		{"doc:v", "view", "user:v", map[string]any{"level": 2}, after, engine.Denied},
		{"doc:v", "view", "user:v", map[string]any{"level": 5}, after, engine.Allowed},
		{"doc:v", "view", "user:v", nil, after, engine.Conditional},
		{"doc:w", "view", "user:w", map[string]any{"level": 1}, after, engine.Allowed},
		{"doc:w", "view", "user:w", nil, after, engine.Allowed},
	}
	for i := 0; i < 20; i++ {
		checks = append(checks,
			check{fmt.Sprintf("doc:pub%d", i), "view", "agent:b", nil, after, engine.Allowed},
			check{fmt.Sprintf("doc:priv%d", i), "view", "agent:b", nil, after, engine.Denied})
	}
	run := func(round int, c check) error {
		req := engine.CheckRequest{Resource: mustObject(t, c.resource), Permission: c.permission,
			Subject: subject(t, c.subject), Context: c.context, Revision: c.rev}
		res, err := e.Check(ctx, req)
		if err != nil {
			return fmt.Errorf("%+v: %w", c, err)
		}
		if res.Decision != c.want {
			return fmt.Errorf("round %d: %s#%s@%s context %v at revision %d: got %v, want %v", round, c.resource, c.permission, c.subject, c.context, c.rev, res.Decision, c.want)
		}
		return nil
	}
	for round := 0; round < 3; round++ {
		for _, c := range checks {
			for range 3 {
				if err := run(round, c); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// Concurrent checks race to publish cache entries; run with -race.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range checks {
				if err := run(3+g, checks[(i*(g+3))%len(checks)]); err != nil {
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

func mustObject(t *testing.T, s string) rel.Object {
	t.Helper()
	sub, err := rel.ParseSubject(s)
	if err != nil {
		t.Fatal(err)
	}
	return sub.Object()
}
