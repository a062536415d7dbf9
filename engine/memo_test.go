package engine_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

var memoCases = flag.Int("memo.cases", 40, "random cases TestSharedEvaluationMatchesUnaryChecks runs")

// memoSchema has what makes shared subproblems delicate: cycles through
// usersets and arrows, exclusion and intersection over them, `.all()`,
// caveats and wildcards.
const memoSchema = `
caveat flag(on bool) {
  on
}

definition user {}

definition group {
  relation member: user | group#member | user with flag | group#member with flag
  relation banned: user | group#member
  permission allowed = member - banned
}

definition folder {
  relation parent: folder | folder with flag
  relation viewer: user | user:* | group#member | group#allowed
  relation blocked: group#member
  permission view = (viewer + parent->view) - blocked
  permission every = parent.all(view)
}

definition doc {
  relation folder: folder
  relation owner: user
  permission edit = owner
  permission view = edit + folder->view
  permission strict = view & folder->every
}
`

// memoCase is a random data set over memoSchema, dense in cycles.
func memoCase(seed uint64) []rel.Relationship {
	r := rand.New(rand.NewPCG(seed, 99))
	seen := map[rel.Key]bool{}
	var out []rel.Relationship
	add := func(s string) {
		x, err := rel.Parse(s)
		if err != nil {
			panic(err)
		}
		if !seen[x.Key()] {
			seen[x.Key()] = true
			out = append(out, x)
		}
	}
	caveat := func() string {
		switch r.IntN(6) {
		case 0:
			return `[flag]`
		case 1:
			return `[flag:{"on":false}]`
		}
		return ""
	}
	const groups, folders, docs, users = 6, 6, 5, 5
	for i := 0; i < 14; i++ {
		g := r.IntN(groups)
		switch r.IntN(4) {
		case 0:
			add(fmt.Sprintf("group:g%d#member@group:g%d#member%s", g, r.IntN(groups), caveat()))
		case 1:
			add(fmt.Sprintf("group:g%d#banned@user:u%d", g, r.IntN(users)))
		case 2:
			add(fmt.Sprintf("group:g%d#member@user:u%d%s", g, r.IntN(users), caveat()))
		default:
			add(fmt.Sprintf("group:g%d#member@user:u%d", g, r.IntN(users)))
		}
	}
	for i := 0; i < 12; i++ {
		f := r.IntN(folders)
		switch r.IntN(4) {
		case 0:
			add(fmt.Sprintf("folder:f%d#parent@folder:f%d%s", f, r.IntN(folders), caveat()))
		case 1:
			add(fmt.Sprintf("folder:f%d#viewer@group:g%d#member", f, r.IntN(groups)))
		case 2:
			add(fmt.Sprintf("folder:f%d#viewer@group:g%d#allowed", f, r.IntN(groups)))
		default:
			if r.IntN(3) == 0 {
				add(fmt.Sprintf("folder:f%d#blocked@group:g%d#member", f, r.IntN(groups)))
			} else if r.IntN(5) == 0 {
				add(fmt.Sprintf("folder:f%d#viewer@user:*", f))
			} else {
				add(fmt.Sprintf("folder:f%d#viewer@user:u%d", f, r.IntN(users)))
			}
		}
	}
	for d := 0; d < docs; d++ {
		add(fmt.Sprintf("doc:d%d#folder@folder:f%d", d, r.IntN(folders)))
		if r.IntN(2) == 0 {
			add(fmt.Sprintf("doc:d%d#folder@folder:f%d", d, r.IntN(folders)))
		}
		if r.IntN(3) == 0 {
			add(fmt.Sprintf("doc:d%d#owner@user:u%d", d, r.IntN(users)))
		}
	}
	return out
}

// TestSharedEvaluationMatchesUnaryChecks checks that CheckBulk and the
// lookups, which share solved subproblems between items, answer exactly as
// unary checks do, including through cycles, exclusions, caveats and the
// depth limit.
func TestSharedEvaluationMatchesUnaryChecks(t *testing.T) {
	ctx := context.Background()
	contexts := []map[string]any{nil, {"on": true}, {"on": false}}
	subjects := []rel.Subject{{Type: "user", ID: "*"}, {Type: "user", ID: "nobody"}}
	for u := 0; u < 5; u++ {
		subjects = append(subjects, rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", u)})
	}
	for g := 0; g < 3; g++ {
		subjects = append(subjects, rel.Subject{Type: "group", ID: fmt.Sprintf("g%d", g), Relation: "member"})
	}
	type answer struct {
		d       engine.Decision
		missing []string
		err     string
	}
	toAnswer := func(res engine.CheckResult, err error) answer {
		if err != nil {
			return answer{err: err.Error()}
		}
		return answer{d: res.Decision, missing: res.Missing}
	}
	for i := 0; i < *memoCases; i++ {
		seed := uint64(i + 1)
		rels := memoCase(seed)
		// A small depth limit makes some answers errors, which memoized
		// subproblems must not hide.
		depth := []int{engine.DefaultMaxDepth, 4, 7}[i%3]
		e, err := engine.Load(ctx, memoSchema, rels, engine.WithMaxDepth(depth))
		if err != nil {
			t.Fatalf("case %d: %v", seed, err)
		}
		var reqs []engine.CheckRequest
		for _, perm := range []string{"view", "strict"} {
			for d := 0; d < 5; d++ {
				for _, s := range subjects {
					for _, cx := range contexts {
						reqs = append(reqs, engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%d", d)}, Permission: perm, Subject: s, Context: cx})
					}
				}
			}
		}
		for f := 0; f < 6; f++ {
			for _, s := range subjects {
				reqs = append(reqs, engine.CheckRequest{Resource: rel.Object{Type: "folder", ID: fmt.Sprintf("f%d", f)}, Permission: "every", Subject: s, Context: contexts[f%3]})
			}
		}
		want := make([]answer, len(reqs))
		for j, req := range reqs {
			want[j] = toAnswer(e.Check(ctx, req))
		}
		// In request order, and shuffled so that subproblems are solved
		// first from other paths.
		order := rand.New(rand.NewPCG(seed, 5)).Perm(len(reqs))
		shuffled := make([]engine.CheckRequest, len(reqs))
		for j, k := range order {
			shuffled[j] = reqs[k]
		}
		for name, batch := range map[string][]engine.CheckRequest{"ordered": reqs, "shuffled": shuffled} {
			results, errs := e.CheckBulk(ctx, batch)
			for j := range batch {
				k := j
				if name == "shuffled" {
					k = order[j]
				}
				if got := toAnswer(results[j], errs[j]); got.d != want[k].d || got.err != want[k].err || !slices.Equal(got.missing, want[k].missing) {
					t.Fatalf("case %d (depth %d) %s bulk item %v: got %+v, unary check says %+v\nrelationships: %v", seed, depth, name, batch[j], got, want[k], rels)
				}
			}
		}
		// LookupResources shares subproblems between candidates too: its
		// answer for a subject is what checking each document says.
		type query struct {
			perm string
			sub  rel.Subject
			ctx  string
		}
		expected := map[query][]string{}
		failing := map[query]bool{}
		for j, req := range reqs {
			if req.Resource.Type != "doc" {
				continue
			}
			q := query{req.Permission, req.Subject, fmt.Sprint(req.Context)}
			if want[j].err != "" {
				failing[q] = true
			}
			if want[j].d != engine.Denied {
				expected[q] = append(expected[q], req.Resource.ID+":"+want[j].d.String())
			}
		}
		for _, req := range reqs {
			q := query{req.Permission, req.Subject, fmt.Sprint(req.Context)}
			if req.Resource.Type != "doc" || req.Resource.ID != "d0" {
				continue
			}
			found, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: req.Permission, Subject: req.Subject, Context: req.Context})
			if failing[q] && err != nil {
				// A candidate's check failed, as a check of it does. (The
				// walk may also never reach the documents whose checks
				// fail: then it answers, as for the others, below.)
				continue
			}
			if err != nil {
				t.Fatalf("case %d (depth %d): LookupResources %+v: %v", seed, depth, q, err)
			}
			var got []string
			for _, f := range found {
				got = append(got, f.ID+":"+f.Decision.String())
			}
			if !slices.Equal(got, expected[q]) {
				t.Fatalf("case %d (depth %d): LookupResources %+v = %v, checks say %v\nrelationships: %v", seed, depth, q, got, expected[q], rels)
			}
		}
	}
}

// TestCheckBulkItemsAreIsolated checks that items sharing a subject but not
// a caveat context or a revision do not share answers.
func TestCheckBulkItemsAreIsolated(t *testing.T) {
	ctx := context.Background()
	e, err := engine.Load(ctx, memoSchema, mustParse(t,
		"doc:a#folder@folder:f",
		"doc:b#folder@folder:f",
		"folder:f#viewer@group:g#member",
		`group:g#member@user:u[flag]`,
	))
	if err != nil {
		t.Fatal(err)
	}
	u := rel.Subject{Type: "user", ID: "u"}
	results, errs := e.CheckBulk(ctx, []engine.CheckRequest{
		{Resource: rel.Object{Type: "doc", ID: "a"}, Permission: "view", Subject: u, Context: map[string]any{"on": true}},
		{Resource: rel.Object{Type: "doc", ID: "b"}, Permission: "view", Subject: u, Context: map[string]any{"on": false}},
		{Resource: rel.Object{Type: "doc", ID: "b"}, Permission: "view", Subject: u},
		{Resource: rel.Object{Type: "doc", ID: "a"}, Permission: "view", Subject: u, Context: map[string]any{"on": true}},
		{Resource: rel.Object{Type: "doc", ID: "a"}, Permission: "view", Subject: u, Revision: 1},
	})
	want := []engine.Decision{engine.Allowed, engine.Denied, engine.Conditional, engine.Allowed, engine.Denied}
	for i, w := range want {
		if errs[i] != nil || results[i].Decision != w {
			t.Errorf("item %d: got %v %v, want %v", i, results[i].Decision, errs[i], w)
		}
	}
	if !slices.Equal(results[2].Missing, []string{"on"}) {
		t.Errorf("item 2 misses %v, want [on]", results[2].Missing)
	}
}

func TestCheckBulkReportsEachItemsRevisionError(t *testing.T) {
	e := loadDocs(t)
	_, errs := e.CheckBulk(context.Background(), []engine.CheckRequest{
		{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "ann"}, Revision: 99},
		{Resource: rel.Object{Type: "doc", ID: "readme"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "ann"}},
	})
	if !errors.Is(errs[0], engine.ErrRevisionAhead) || errs[1] != nil {
		t.Fatalf("errors %v", errs)
	}
}
