package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

func renderLookup(rs []engine.LookupResult) []string {
	var out []string
	for _, r := range rs {
		s := r.ID + ":" + r.Decision.String()
		for _, x := range r.Excluded {
			s += " -" + x.ID + ":" + x.Decision.String()
		}
		out = append(out, s)
	}
	return out
}

// TestLookupPages checks that paging with After and Limit yields exactly the
// full lookup, page by page, for every page size.
func TestLookupPages(t *testing.T) {
	ctx := context.Background()
	lines := []string{
		"folder:public#viewer@user:*",
		"folder:public#banned@user:eve",
		"folder:public#banned@user:zed",
		"doc:d00#viewer@user:eve[ip_allowed]",
	}
	for i := 0; i < 12; i++ {
		lines = append(lines, fmt.Sprintf("doc:d%02d#folder@folder:public", i))
		lines = append(lines, fmt.Sprintf("doc:d%02d#owner@user:u%02d", i, i))
		// Subjects the wildcard covers are listed only when named.
		lines = append(lines, fmt.Sprintf("doc:d00#viewer@user:v%02d", i))
	}
	e, err := engine.Load(ctx, docSchema, mustParse(t, lines...))
	if err != nil {
		t.Fatal(err)
	}
	resources := func(after string, limit int) ([]engine.LookupResult, error) {
		res, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: rel.Subject{Type: "user", ID: "u00"}, After: after, Limit: limit})
		return res, err
	}
	subjects := func(after string, limit int) ([]engine.LookupResult, error) {
		res, _, err := e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: rel.Object{Type: "doc", ID: "d00"}, Permission: "view", SubjectType: "user", After: after, Limit: limit})
		return res, err
	}
	for name, lookup := range map[string]func(string, int) ([]engine.LookupResult, error){"resources": resources, "subjects": subjects} {
		full, err := lookup("", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(full) < 5 {
			t.Fatalf("%s: too few results to page: %v", name, renderLookup(full))
		}
		for limit := 1; limit <= len(full)+1; limit++ {
			var paged []engine.LookupResult
			after := ""
			for {
				page, err := lookup(after, limit)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > limit {
					t.Fatalf("%s: limit %d returned %d results", name, limit, len(page))
				}
				paged = append(paged, page...)
				if len(page) < limit {
					break
				}
				after = page[len(page)-1].ID
			}
			if got, want := renderLookup(paged), renderLookup(full); !slices.Equal(got, want) {
				t.Fatalf("%s: pages of %d: got %v want %v", name, limit, got, want)
			}
		}
	}
	// The wildcard comes first and excludes zed and, conditionally, eve,
	// whose own grant needs context.
	full, _ := subjects("", 0)
	if got := renderLookup(full[:2]); !slices.Equal(got, []string{"*:allowed -eve:conditional -zed:allowed", "eve:conditional"}) {
		t.Fatalf("first results %v", got)
	}
}

// TestLookupResumeSkipsEarlierCandidates checks that a resumed lookup
// evaluates neither the candidates before its cursor nor those after a full
// page: here evaluating them fails.
func TestLookupResumeSkipsEarlierCandidates(t *testing.T) {
	ctx := context.Background()
	// doc:a and doc:z sit under a folder chain deeper than the depth limit
	// allows, at whose top user b views; doc:b's owner answers before any
	// folder is visited.
	lines := []string{"doc:a#folder@folder:f0", "doc:z#folder@folder:f0", "doc:b#owner@user:b", "doc:b#folder@folder:f0", "doc:z#owner@user:c", "folder:f10#viewer@user:b"}
	for i := 0; i < 10; i++ {
		lines = append(lines, fmt.Sprintf("folder:f%d#parent@folder:f%d", i, i+1))
	}
	e, err := engine.Load(ctx, docSchema, mustParse(t, lines...), engine.WithMaxDepth(6))
	if err != nil {
		t.Fatal(err)
	}
	b := rel.Subject{Type: "user", ID: "b"}
	if _, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: b}); !errors.Is(err, engine.ErrMaxDepth) {
		t.Fatalf("full LookupResources: got %v, want ErrMaxDepth from doc:a", err)
	}
	res, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: b, After: "a", Limit: 1})
	if err != nil || !slices.Equal(renderLookup(res), []string{"b:allowed"}) {
		t.Fatalf("resumed LookupResources: %v %v", renderLookup(res), err)
	}

	// On doc:b, users a and c are denied only after the deep folder chain;
	// user b owns it.
	docB := rel.Object{Type: "doc", ID: "b"}
	if _, _, err := e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: docB, Permission: "view", SubjectType: "user"}); !errors.Is(err, engine.ErrMaxDepth) {
		t.Fatalf("full LookupSubjects: got %v, want ErrMaxDepth", err)
	}
	res, _, err = e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: docB, Permission: "view", SubjectType: "user", After: "a", Limit: 1})
	if err != nil || !slices.Equal(renderLookup(res), []string{"b:allowed"}) {
		t.Fatalf("resumed LookupSubjects: %v %v", renderLookup(res), err)
	}
}

// TestLookupSubjectsNamesLikeSpiceDB checks which subjects LookupSubjects
// names next to a wildcard: those a relationship names on a granting path,
// never those only the wildcard covers (bob is a known user everywhere).
func TestLookupSubjectsNamesLikeSpiceDB(t *testing.T) {
	ctx := context.Background()
	const sch = `definition user {}
definition doc {
	relation viewer: user | user:*
	relation editor: user | user:*
	relation banned: user
	permission view = viewer
	permission both = viewer & editor
	permission blocked = editor - banned
	permission open = viewer - blocked
}`
	e, err := engine.Load(ctx, sch, mustParse(t,
		"doc:1#viewer@user:*", "doc:1#viewer@user:ann",
		"doc:2#viewer@user:*", "doc:2#editor@user:ann",
		"doc:3#viewer@user:*", "doc:3#editor@user:*", "doc:3#banned@user:sam",
		"doc:9#viewer@user:bob",
	))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		doc, perm string
		want      []string
	}{
		{"1", "view", []string{"*:allowed", "ann:allowed"}},
		// The wildcard of one side keeps the named subjects of the other.
		{"2", "both", []string{"ann:allowed"}},
		// {*} - {* - sam} = {sam}.
		{"3", "open", []string{"sam:allowed"}},
		{"3", "blocked", []string{"*:allowed -sam:allowed"}},
	} {
		res, _, err := e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: rel.Object{Type: "doc", ID: tt.doc}, Permission: tt.perm, SubjectType: "user"})
		if err != nil {
			t.Fatal(err)
		}
		if got := renderLookup(res); !slices.Equal(got, tt.want) {
			t.Errorf("doc:%s#%s: got %v, want %v", tt.doc, tt.perm, got, tt.want)
		}
	}
}

// TestLookupSubjectsNamedPartDecidesBesideWildcard is issue 18's finding: a
// subject named only under a caveat keeps the caveat's decision even where
// an unconditional wildcard also covers it, as SpiceDB reports it.
func TestLookupSubjectsNamedPartDecidesBesideWildcard(t *testing.T) {
	ctx := context.Background()
	const sch = `caveat is_ok(ok bool) { ok }
definition user {}
definition doc {
	relation viewer: user | user:* | user with is_ok
	permission view = viewer
}`
	e, err := engine.Load(ctx, sch, mustParse(t, "doc:pub#viewer@user:*", "doc:pub#viewer@user:cat[is_ok]", "doc:pub#viewer@user:dog"))
	if err != nil {
		t.Fatal(err)
	}
	res, _, err := e.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: rel.Object{Type: "doc", ID: "pub"}, Permission: "view", SubjectType: "user"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := renderLookup(res), []string{"*:allowed", "cat:conditional", "dog:allowed"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if cat := res[1]; !slices.Equal(cat.Missing, []string{"ok"}) {
		t.Fatalf("cat's missing parameters: %v, want [ok]", cat.Missing)
	}
	// The check itself is allowed: the wildcard covers cat.
	got, err := e.Check(ctx, engine.CheckRequest{Resource: rel.Object{Type: "doc", ID: "pub"}, Permission: "view", Subject: rel.Subject{Type: "user", ID: "cat"}})
	if err != nil || got.Decision != engine.Allowed {
		t.Fatalf("check: %v %v, want allowed", got.Decision, err)
	}
}

// TestStreamLookupResources checks that a streamed lookup delivers exactly
// LookupResources' results, in ID order and in growing batches, at one
// revision; that the engine's lock is released while a batch is sent (a
// write from inside send would deadlock otherwise, and it does not change
// the stream's answer); that a send error ends the stream; and that a
// stream whose revision is forgotten meanwhile fails with ErrRevisionGone.
func TestStreamLookupResources(t *testing.T) {
	ctx := context.Background()
	var lines []string
	for i := 0; i < 300; i++ {
		lines = append(lines, fmt.Sprintf("doc:d%03d#folder@folder:f%d", i, i%3))
	}
	lines = append(lines, "folder:f0#viewer@user:ann", "folder:f2#parent@folder:f0", "doc:d001#owner@user:ann")
	e, err := engine.Load(ctx, docSchema, mustParse(t, lines...))
	if err != nil {
		t.Fatal(err)
	}
	ann := rel.Subject{Type: "user", ID: "ann"}
	req := engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: ann}
	want, rev, err := e.LookupResources(ctx, req)
	if err != nil || len(want) != 201 {
		t.Fatalf("LookupResources: %d results, %v; want 201", len(want), err)
	}

	var got []engine.LookupResult
	var sizes []int
	writes := 0
	err = e.StreamLookupResources(ctx, req, func(at store.Revision, batch []engine.LookupResult) error {
		if at != rev {
			t.Errorf("batch at revision %d, want %d", at, rev)
		}
		sizes = append(sizes, len(batch))
		got = append(got, batch...)
		// Revoke ann's folder grant from inside send: the stream keeps
		// answering at its revision.
		writes++
		return e.Apply(store.Change{Revision: rev + store.Revision(writes), Updates: []store.Update{
			{Op: store.Delete, Rel: mustParse(t, "folder:f0#viewer@user:ann")[0]},
		}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(renderLookup(got), renderLookup(want)) {
		t.Fatalf("streamed %v, want %v", renderLookup(got), renderLookup(want))
	}
	if len(sizes) < 3 || sizes[0] >= sizes[1] || sizes[1] >= sizes[2] {
		t.Fatalf("batch sizes %v, want growing batches", sizes)
	}
	if now, _, _ := e.LookupResources(ctx, req); !slices.Equal(renderLookup(now), []string{"d001:allowed"}) {
		t.Fatalf("after the revoke: %v", renderLookup(now))
	}

	// A paged stream stops at its limit, after its cursor.
	got = got[:0]
	paged := req
	paged.Revision, paged.After, paged.Limit = rev, want[10].ID, 30
	if err := e.StreamLookupResources(ctx, paged, func(_ store.Revision, batch []engine.LookupResult) error {
		got = append(got, batch...)
		return nil
	}); err != nil || !slices.Equal(renderLookup(got), renderLookup(want[11:41])) {
		t.Fatalf("paged stream: %v, %v; want %v", renderLookup(got), err, renderLookup(want[11:41]))
	}

	stop := errors.New("receiver gone")
	calls := 0
	err = e.StreamLookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: ann, Revision: rev}, func(store.Revision, []engine.LookupResult) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("send error: got %v after %d calls, want %v after 1", err, calls, stop)
	}

	err = e.StreamLookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: ann, Revision: rev}, func(store.Revision, []engine.LookupResult) error {
		e.ForgetBefore(e.Head())
		return nil
	})
	if !errors.Is(err, engine.ErrRevisionGone) {
		t.Fatalf("forgotten revision: got %v, want ErrRevisionGone", err)
	}
}

// TestLookupAcrossRevisionsAndCompaction checks the reverse adjacency the
// walk starts from through deletes, compaction and rewrites: a lookup at a
// revision sees exactly that revision's relationships, before and after
// the engine forgets older ones.
func TestLookupAcrossRevisionsAndCompaction(t *testing.T) {
	ctx := context.Background()
	e, err := engine.Load(ctx, docSchema, mustParse(t, "doc:a#owner@user:ann", "doc:b#folder@folder:f", "folder:f#viewer@user:ann"))
	if err != nil {
		t.Fatal(err)
	}
	ann := rel.Subject{Type: "user", ID: "ann"}
	lookup := func(rev store.Revision) []string {
		t.Helper()
		res, _, err := e.LookupResources(ctx, engine.LookupResourcesRequest{ResourceType: "doc", Permission: "view", Subject: ann, Revision: rev})
		if err != nil {
			t.Fatalf("lookup at %d: %v", rev, err)
		}
		return renderLookup(res)
	}
	apply := func(rev store.Revision, op store.Op, line string) {
		t.Helper()
		if err := e.Apply(store.Change{Revision: rev, Updates: []store.Update{{Op: op, Rel: mustParse(t, line)[0]}}}); err != nil {
			t.Fatal(err)
		}
	}
	apply(3, store.Delete, "folder:f#viewer@user:ann")
	apply(4, store.Delete, "doc:a#owner@user:ann")
	for rev, want := range map[store.Revision][]string{2: {"a:allowed", "b:allowed"}, 3: {"a:allowed"}, 4: nil} {
		if got := lookup(rev); !slices.Equal(got, want) {
			t.Errorf("at %d: %v, want %v", rev, got, want)
		}
	}
	// Compaction drops the deleted relationships entirely; writing them
	// again makes them found again.
	e.ForgetBefore(4)
	if got := lookup(4); got != nil {
		t.Errorf("after compaction: %v", got)
	}
	apply(5, store.Touch, "folder:f#viewer@user:ann")
	apply(6, store.Touch, "doc:a#owner@user:ann")
	if got, want := lookup(6), []string{"a:allowed", "b:allowed"}; !slices.Equal(got, want) {
		t.Errorf("rewritten: %v, want %v", got, want)
	}
	if got, want := lookup(5), []string{"b:allowed"}; !slices.Equal(got, want) {
		t.Errorf("at 5: %v, want %v", got, want)
	}
}
