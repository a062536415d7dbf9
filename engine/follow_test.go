package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// TestFollowPublishesSnapshotAtOnce loads a store while a reader polls: the
// reader sees either nothing or the whole snapshot, never a revision with
// part of its relationships.
func TestFollowPublishesSnapshotAtOnce(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	if _, err := st.WriteSchema(ctx, docSchema); err != nil {
		t.Fatal(err)
	}
	const n = 20_000
	var muts []store.Mutation
	for i := 0; i < n; i++ {
		muts = append(muts, store.Mutation{Op: store.Touch, Rel: rel.Relationship{
			Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%05d", i)}, Relation: "owner", Subject: rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", i%100)},
		}})
	}
	if _, err := st.Write(ctx, nil, muts[:n/2]); err != nil {
		t.Fatal(err)
	}
	head, err := st.Write(ctx, nil, muts[n/2:])
	if err != nil {
		t.Fatal(err)
	}
	first, last := muts[0].Rel, muts[n-1].Rel
	checkOf := func(r rel.Relationship, rev store.Revision) engine.CheckRequest {
		return engine.CheckRequest{Resource: r.Resource, Permission: "view", Subject: r.Subject, Revision: rev}
	}

	e := engine.New()
	fctx, cancel := context.WithCancel(ctx)
	var progress []int
	followed := make(chan error, 1)
	go func() {
		followed <- feed.Follow(fctx, e, st, func(loaded int) { progress = append(progress, loaded) })
	}()

	var wg sync.WaitGroup
	wg.Add(1)
	var problem error
	go func() {
		defer wg.Done()
		for {
			h := e.Head()
			if h == 0 {
				time.Sleep(50 * time.Microsecond)
				continue
			}
			if h != head {
				problem = fmt.Errorf("head %d, want 0 or the store's %d", h, head)
				return
			}
			for _, r := range []rel.Relationship{first, last} {
				res, err := e.Check(ctx, checkOf(r, h))
				if err != nil || res.Decision != engine.Allowed {
					problem = fmt.Errorf("at revision %d, %s: %v %v", h, r, res.Decision, err)
				}
			}
			return
		}
	}()
	wg.Wait()
	if problem != nil {
		t.Fatal(problem)
	}
	if err := e.WaitForRevision(ctx, head); err != nil {
		t.Fatal(err)
	}
	// History before the snapshot was never loaded.
	if _, err := e.Check(ctx, checkOf(first, head-1)); !errors.Is(err, engine.ErrRevisionGone) {
		t.Errorf("check before the snapshot: got %v, want ErrRevisionGone", err)
	}
	// Later changes stream in after the snapshot.
	rev, err := st.Write(ctx, nil, []store.Mutation{{Op: store.Delete, Rel: last}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WaitForRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if res, err := e.Check(ctx, checkOf(last, 0)); err != nil || res.Decision != engine.Denied {
		t.Errorf("after delete: %v %v", res.Decision, err)
	}
	cancel()
	if err := <-followed; !errors.Is(err, context.Canceled) {
		t.Errorf("following returned %v", err)
	}
	if len(progress) == 0 || progress[len(progress)-1] != n {
		t.Errorf("progress reports %v, want them to end at %d", progress, n)
	}
}

// TestLoadSnapshot pins the loader's contract over a plain iterator: a load
// that fails part way publishes nothing, a snapshot not ahead of the
// engine is not read at all, and a later snapshot replaces the state.
func TestLoadSnapshot(t *testing.T) {
	ctx := context.Background()
	ann := rel.Relationship{Resource: rel.Object{Type: "doc", ID: "1"}, Relation: "owner", Subject: rel.Subject{Type: "user", ID: "ann"}}
	bob := rel.Relationship{Resource: rel.Object{Type: "doc", ID: "2"}, Relation: "owner", Subject: rel.Subject{Type: "user", ID: "bob"}}
	of := func(rels ...rel.Relationship) func(func(rel.Relationship, error) bool) {
		return func(yield func(rel.Relationship, error) bool) {
			for _, r := range rels {
				if !yield(r, nil) {
					return
				}
			}
		}
	}
	allowed := func(e *engine.Engine, r rel.Relationship) bool {
		t.Helper()
		res, err := e.Check(ctx, engine.CheckRequest{Resource: r.Resource, Permission: "view", Subject: r.Subject})
		if err != nil {
			t.Fatalf("check %s: %v", r, err)
		}
		return res.Decision == engine.Allowed
	}

	e := engine.New()
	broken := errors.New("connection lost")
	failing := func(yield func(rel.Relationship, error) bool) {
		if yield(ann, nil) {
			yield(rel.Relationship{}, broken)
		}
	}
	if err := e.LoadSnapshot(ctx, engine.Snapshot{Revision: 5, Schema: docSchema, Relationships: failing}, nil); !errors.Is(err, broken) {
		t.Fatalf("a failing load returned %v, want it to wrap %v", err, broken)
	}
	if h := e.Head(); h != 0 {
		t.Fatalf("a failed load published revision %d", h)
	}

	if err := e.LoadSnapshot(ctx, engine.Snapshot{Revision: 5, Schema: docSchema, Relationships: of(ann)}, nil); err != nil {
		t.Fatal(err)
	}
	if e.Head() != 5 || !allowed(e, ann) || allowed(e, bob) {
		t.Fatalf("after loading revision 5 with ann: head %d, ann %v, bob %v", e.Head(), allowed(e, ann), allowed(e, bob))
	}

	read := false
	spy := func(yield func(rel.Relationship, error) bool) { read = true }
	if err := e.LoadSnapshot(ctx, engine.Snapshot{Revision: 5, Schema: docSchema, Relationships: spy}, nil); err != nil || read {
		t.Fatalf("a snapshot at the engine's head: error %v, read %v; want it ignored unread", err, read)
	}

	if err := e.LoadSnapshot(ctx, engine.Snapshot{Revision: 9, Schema: docSchema, Relationships: of(bob)}, nil); err != nil {
		t.Fatal(err)
	}
	if e.Head() != 9 || allowed(e, ann) || !allowed(e, bob) {
		t.Fatalf("after loading revision 9 with bob: head %d, ann %v, bob %v", e.Head(), allowed(e, ann), allowed(e, bob))
	}
}
