package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
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
		followed <- e.Follow(fctx, st, func(loaded int) { progress = append(progress, loaded) })
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
		t.Errorf("Follow returned %v", err)
	}
	if len(progress) == 0 || progress[len(progress)-1] != n {
		t.Errorf("progress reports %v, want them to end at %d", progress, n)
	}
}
