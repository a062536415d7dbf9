package engine_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// TestSuperseded follows the count of history-only versions through
// updates, deletes, rewrites within one revision and compaction.
func TestSuperseded(t *testing.T) {
	ctx := context.Background()
	e, err := engine.Load(ctx, docSchema, mustParse(t, "doc:a#owner@user:alice", "doc:b#owner@user:bob"))
	if err != nil {
		t.Fatal(err)
	}
	touch := func(line string) store.Update { return store.Update{Op: store.Touch, Rel: mustParse(t, line)[0]} }
	del := func(line string) store.Update { return store.Update{Op: store.Delete, Rel: mustParse(t, line)[0]} }
	steps := []struct {
		name    string
		updates []store.Update
		forget  store.Revision // ForgetBefore this revision after applying, when set
		want    int
	}{
		{name: "loaded", want: 0},
		{name: "new relationship supersedes nothing", updates: []store.Update{touch("doc:c#owner@user:carol")}, want: 0},
		{name: "touch supersedes the live version", updates: []store.Update{touch("doc:a#owner@user:alice")}, want: 1},
		{name: "delete supersedes", updates: []store.Update{del("doc:b#owner@user:bob")}, want: 2},
		{name: "delete of nothing", updates: []store.Update{del("doc:z#owner@user:zed")}, want: 2},
		{name: "rewrite within one revision counts once", updates: []store.Update{touch("doc:a#owner@user:alice"), touch("doc:a#owner@user:alice")}, want: 3},
		{name: "compaction releases what it drops", forget: 5, want: 1},
		{name: "compaction to head releases all", forget: 7, want: 0},
	}
	rev := e.Head()
	for _, s := range steps {
		if len(s.updates) > 0 {
			rev++
			if err := e.Apply(store.Change{Revision: rev, Updates: s.updates}); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
		}
		if s.forget != 0 {
			e.ForgetBefore(s.forget)
		}
		if got := e.Superseded(); got != s.want {
			t.Errorf("%s (revision %d): Superseded() = %d, want %d", s.name, rev, got, s.want)
		}
	}
}

// BenchmarkApplySupersede measures Apply of one-update changes that each
// supersede a version, the path Superseded's count is kept on; with
// ForgetBefore every 1,000 changes, as retention does.
func BenchmarkApplySupersede(b *testing.B) {
	ctx := context.Background()
	e, err := engine.Load(ctx, docSchema, nil)
	if err != nil {
		b.Fatal(err)
	}
	rels := make([]store.Update, 1000)
	for i := range rels {
		r, err := rel.Parse(fmt.Sprintf("doc:d%d#viewer@user:u%d", i/10, i%10))
		if err != nil {
			b.Fatal(err)
		}
		rels[i] = store.Update{Op: store.Touch, Rel: r}
	}
	rev := e.Head()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rev++
		if err := e.Apply(store.Change{Revision: rev, Updates: rels[i%len(rels) : i%len(rels)+1]}); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			e.ForgetBefore(rev)
		}
	}
}
