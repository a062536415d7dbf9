package validation

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
)

// liar is a real engine whose lookups are altered after the fact, to show
// that each kind of disagreement is caught.
type liar struct {
	*engine.Engine
	lr func(engine.LookupResourcesRequest, []engine.LookupResult) []engine.LookupResult
	ls func(engine.LookupSubjectsRequest, []engine.LookupResult) []engine.LookupResult
}

func (l liar) LookupResources(ctx context.Context, req engine.LookupResourcesRequest) ([]engine.LookupResult, store.Revision, error) {
	res, rev, err := l.Engine.LookupResources(ctx, req)
	if err == nil && l.lr != nil {
		res = l.lr(req, res)
	}
	return res, rev, err
}

func (l liar) LookupSubjects(ctx context.Context, req engine.LookupSubjectsRequest) ([]engine.LookupResult, store.Revision, error) {
	res, rev, err := l.Engine.LookupSubjects(ctx, req)
	if err == nil && l.ls != nil {
		res = l.ls(req, res)
	}
	return res, rev, err
}

const consistencyFile = `schema: |-
  caveat only_one(x int) {
    x == 1
  }
  definition user {}
  definition doc {
    relation viewer: user | user:* | user with only_one
    relation banned: user
    permission view = viewer - banned
  }
relationships: |-
  doc:1#viewer@user:ann
  doc:1#viewer@user:cat[only_one]
  doc:2#viewer@user:*
  doc:2#banned@user:bob
assertions:
  assertTrue:
    - doc:1#view@user:ann
    - 'doc:1#view@user:cat with {"x": 1}'
`

func loadConsistencyFile(t *testing.T) (*engine.Engine, *Document) {
	t.Helper()
	doc := mustParseFile(t, consistencyFile).Documents[0]
	eng, err := engine.Load(context.Background(), doc.Schema, doc.Relationships)
	if err != nil {
		t.Fatal(err)
	}
	return eng, doc
}

func isView(resourceType, perm string) bool { return resourceType == "doc" && perm == "view" }

func TestCheckConsistency(t *testing.T) {
	tests := []struct {
		name string
		lr   func(engine.LookupResourcesRequest, []engine.LookupResult) []engine.LookupResult
		ls   func(engine.LookupSubjectsRequest, []engine.LookupResult) []engine.LookupResult
		want []string
	}{
		{name: "honest engine"},
		{
			name: "LookupResources misses a resource",
			lr: func(req engine.LookupResourcesRequest, res []engine.LookupResult) []engine.LookupResult {
				if isView(req.ResourceType, req.Permission) && req.Subject.ID == "ann" {
					return slices.DeleteFunc(res, func(r engine.LookupResult) bool { return r.ID == "1" })
				}
				return res
			},
			want: []string{"consistency doc:1#view@user:ann: expected LookupResources to agree with Check (allowed), got LookupResources does not list doc:1"},
		},
		{
			name: "LookupResources gives the wrong decision",
			lr: func(req engine.LookupResourcesRequest, res []engine.LookupResult) []engine.LookupResult {
				for i := range res {
					if isView(req.ResourceType, req.Permission) && req.Subject.ID == "cat" && res[i].ID == "1" && req.Context == nil {
						res[i] = engine.LookupResult{ID: "1", Decision: engine.Allowed}
					}
				}
				return res
			},
			want: []string{"consistency doc:1#view@user:cat: expected LookupResources to agree with Check (conditional (missing context: x)), got LookupResources lists doc:1 as allowed"},
		},
		{
			name: "LookupResources invents a resource",
			lr: func(req engine.LookupResourcesRequest, res []engine.LookupResult) []engine.LookupResult {
				if isView(req.ResourceType, req.Permission) && req.Subject.ID == "bob" {
					return append(res, engine.LookupResult{ID: "2", Decision: engine.Allowed}, engine.LookupResult{ID: "9", Decision: engine.Allowed})
				}
				return res
			},
			want: []string{
				"consistency doc:2#view@user:bob: expected LookupResources to agree with Check (denied), got LookupResources lists doc:2 as allowed",
				"consistency doc:9#view@user:bob: expected LookupResources to agree with Check (denied), got LookupResources lists doc:9 as allowed",
			},
		},
		{
			name: "LookupSubjects forgets an exclusion",
			ls: func(req engine.LookupSubjectsRequest, res []engine.LookupResult) []engine.LookupResult {
				for i := range res {
					if req.Resource.ID == "2" && req.Permission == "view" && res[i].ID == "*" {
						res[i].Excluded = nil
					}
				}
				return res
			},
			want: []string{"consistency doc:2#view@user:bob: expected LookupSubjects to agree with Check (denied), got LookupSubjects gives allowed (via * (allowed), not excluded)"},
		},
		{
			name: "LookupSubjects drops a concrete subject",
			ls: func(req engine.LookupSubjectsRequest, res []engine.LookupResult) []engine.LookupResult {
				if req.Resource.ID == "1" && req.Permission == "viewer" {
					return slices.DeleteFunc(res, func(r engine.LookupResult) bool { return r.ID == "cat" })
				}
				return res
			},
			want: []string{"consistency doc:1#viewer@user:cat: expected LookupSubjects to agree with Check (conditional (missing context: x)), got LookupSubjects gives denied (not listed, no wildcard)"},
		},
		{
			name: "LookupSubjects conditionally excludes an unknown subject",
			ls: func(req engine.LookupSubjectsRequest, res []engine.LookupResult) []engine.LookupResult {
				for i := range res {
					if req.Resource.ID == "2" && req.Permission == "view" && res[i].ID == "*" {
						res[i].Excluded = append(res[i].Excluded, engine.LookupResult{ID: "zed", Decision: engine.Conditional})
					}
				}
				return res
			},
			want: []string{"consistency doc:2#view@user:zed: expected LookupSubjects to agree with Check (allowed), got LookupSubjects gives conditional (via * (allowed), conditionally excluded)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng, doc := loadConsistencyFile(t)
			ev := liar{Engine: eng, lr: tt.lr, ls: tt.ls}
			r := CheckConsistency(context.Background(), ev, doc.Relationships)
			var got []string
			for _, f := range r.Failures {
				got = append(got, f.String())
			}
			var want []string
			for _, w := range tt.want {
				want = append(want, ": "+w)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("failures:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
			}
			if r.Comparisons == 0 {
				t.Error("compared nothing")
			}
		})
	}
}

func TestCheckConsistencyLimitsPermissions(t *testing.T) {
	eng, doc := loadConsistencyFile(t)
	all := CheckConsistency(context.Background(), eng, doc.Relationships)
	some := CheckConsistency(context.Background(), eng, doc.Relationships, "view")
	if some.Comparisons == 0 || some.Comparisons >= all.Comparisons {
		t.Errorf("comparisons: %d for view only, %d for all", some.Comparisons, all.Comparisons)
	}
}

func TestAssertionLookupsUseContext(t *testing.T) {
	eng, doc := loadConsistencyFile(t)
	ev := liar{Engine: eng, lr: func(req engine.LookupResourcesRequest, res []engine.LookupResult) []engine.LookupResult {
		if req.Context != nil {
			return nil // ignores the context's effect entirely
		}
		return res
	}}
	r := RunDocument(context.Background(), ev, doc, Options{Consistency: true})
	var got []string
	for _, f := range r.Failures {
		if strings.HasPrefix(f.What, "consistency LookupResources for") {
			got = append(got, f.String())
		}
	}
	want := []string{`:19: consistency LookupResources for assertTrue doc:1#view@user:cat with {"x": 1}: expected LookupResources with {"x":1} to agree with Check (allowed), got not listed`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("failures:\n got %q\nwant %q", got, want)
	}
}
