package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

// costlySchema's caveat is cubic in its list: over 400 elements it took 40 s
// before evaluation had a cost bound.
const costlySchema = `
caveat costly(l list<int>) {
  l.all(x, l.all(y, l.all(z, x + y + z >= 0)))
}

definition user {}

definition doc {
  relation viewer: user | user with costly
  relation banned: user | user with costly
  relation costly_viewer: user with costly
  permission view = viewer - banned
  permission both = viewer & costly_viewer
  permission either = viewer + costly_viewer
}
`

func intList(n int) []any {
	l := make([]any, n)
	for i := range l {
		l[i] = float64(i)
	}
	return l
}

func listJSON(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprint(i)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// TestCaveatCostBound: a caveat over its cost limit answers promptly with an
// error, never an allow, whether the cost comes from the request's context
// or the relationship's, and also where false would allow (an exclusion).
func TestCaveatCostBound(t *testing.T) {
	e, err := engine.Load(context.Background(), costlySchema, mustParse(t,
		"doc:req#viewer@user:ann[costly]",
		// A 250-element context stored on the relationship made every
		// check of the resource take 18 s.
		"doc:stored#viewer@user:ann[costly:{\"l\":"+listJSON(250)+"}]",
		"doc:excl#viewer@user:ann",
		"doc:excl#banned@user:ann[costly:{\"l\":"+listJSON(250)+"}]",
		"doc:inter#viewer@user:ann",
		"doc:inter#costly_viewer@user:ann[costly:{\"l\":"+listJSON(250)+"}]",
		"doc:union#costly_viewer@user:ann[costly:{\"l\":"+listJSON(250)+"}]",
	))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, resource, perm string
		ctx                  map[string]any
	}{
		{"request context", "doc:req", "view", map[string]any{"l": intList(400)}},
		{"stored context", "doc:stored", "view", nil},
		{"exclusion", "doc:excl", "view", nil},
		{"intersection", "doc:inter", "both", nil},
		{"union", "doc:union", "either", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := e.Check(context.Background(), engine.CheckRequest{
				Resource: mustObject(t, tt.resource), Permission: tt.perm, Subject: subject(t, "user:ann"), Context: tt.ctx})
			if !errors.Is(err, schema.ErrCaveatCost) || !errors.Is(err, engine.ErrInvalidContext) {
				t.Fatalf("got %+v, %v; want an error wrapping %v", res, err, schema.ErrCaveatCost)
			}
			if res.Decision == engine.Allowed {
				t.Fatal("a caveat over its cost limit allowed")
			}
			// CheckBulk and lookups take the same path.
			results, errs := e.CheckBulk(context.Background(), []engine.CheckRequest{{
				Resource: mustObject(t, tt.resource), Permission: tt.perm, Subject: subject(t, "user:ann"), Context: tt.ctx}})
			if !errors.Is(errs[0], schema.ErrCaveatCost) || results[0].Decision == engine.Allowed {
				t.Fatalf("CheckBulk: %+v, %v", results[0], errs[0])
			}
		})
	}
	// Within its budget the same caveat still decides.
	res, err := e.Check(context.Background(), engine.CheckRequest{
		Resource: mustObject(t, "doc:req"), Permission: "view", Subject: subject(t, "user:ann"), Context: map[string]any{"l": intList(10)}})
	if err != nil || res.Decision != engine.Allowed {
		t.Fatalf("small list: %+v, %v", res, err)
	}
}

// TestCaveatContextSizeBound: a request context over the engine's bound is
// refused before evaluation; the bound is configurable.
func TestCaveatContextSizeBound(t *testing.T) {
	rels := mustParse(t, "doc:req#viewer@user:ann[costly]")
	big := map[string]any{"l": intList(2000)} // about 9 KB as JSON
	for _, tt := range []struct {
		name    string
		opts    []engine.Option
		wantErr bool
	}{
		{"default 4 KB", nil, true},
		{"raised", []engine.Option{engine.WithMaxCaveatContextBytes(16 << 10)}, false},
		{"unbounded", []engine.Option{engine.WithMaxCaveatContextBytes(0)}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, err := engine.Load(context.Background(), costlySchema, rels, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			// The list is too long for the cubic caveat's budget too, so
			// only the error's kind tells the bounds apart.
			_, err = e.Check(context.Background(), engine.CheckRequest{
				Resource: mustObject(t, "doc:req"), Permission: "view", Subject: subject(t, "user:ann"), Context: big})
			tooLarge := err != nil && strings.Contains(err.Error(), "over the maximum of 4096")
			if tooLarge != tt.wantErr {
				t.Fatalf("got %v; want a size error: %v", err, tt.wantErr)
			}
			if !errors.Is(err, engine.ErrInvalidContext) {
				t.Fatalf("got %v, want %v", err, engine.ErrInvalidContext)
			}
		})
	}
}

// TestCaveatHonoursDeadline: a check whose context has ended stops.
func TestCaveatHonoursDeadline(t *testing.T) {
	e, err := engine.Load(context.Background(), costlySchema, mustParse(t, "doc:req#viewer@user:ann[costly]"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = e.Check(ctx, engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "req"}, Permission: "view", Subject: subject(t, "user:ann"), Context: map[string]any{"l": intList(10)}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want %v", err, context.Canceled)
	}
}

// TestCaveatCostOverrunIsRemembered: a relationship whose own context makes
// its caveat overrun fails every check, the memoized ones too.
func TestCaveatCostOverrunIsRemembered(t *testing.T) {
	e, err := engine.Load(context.Background(), costlySchema, mustParse(t,
		"doc:stored#viewer@user:ann[costly:{\"l\":"+listJSON(250)+"}]"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		res, err := e.Check(context.Background(), engine.CheckRequest{
			Resource: mustObject(t, "doc:stored"), Permission: "view", Subject: subject(t, "user:ann")})
		if !errors.Is(err, schema.ErrCaveatCost) || res.Decision == engine.Allowed {
			t.Fatalf("check %d: %+v, %v", i, res, err)
		}
	}
}

// BenchmarkCheckCostlyStoredCaveat: what a check meeting a relationship
// whose caveat overruns costs once the overrun is remembered (18 s before
// caveats had a cost bound).
func BenchmarkCheckCostlyStoredCaveat(b *testing.B) {
	rels, err := rel.Parse("doc:stored#viewer@user:ann[costly:{\"l\":" + listJSON(250) + "}]")
	if err != nil {
		b.Fatal(err)
	}
	e, err := engine.Load(context.Background(), costlySchema, []rel.Relationship{rels})
	if err != nil {
		b.Fatal(err)
	}
	req := engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "stored"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "ann"}}
	for b.Loop() {
		if _, err := e.Check(context.Background(), req); !errors.Is(err, schema.ErrCaveatCost) {
			b.Fatal(err)
		}
	}
}
