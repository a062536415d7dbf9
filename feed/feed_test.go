package feed_test

import (
	"context"
	"errors"
	"iter"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const schema = "definition user {}\n\ndefinition doc {\n\trelation viewer: user\n\tpermission view = viewer\n}\n"

func viewer(doc, user string) store.Mutation {
	return store.Mutation{Op: store.Touch, Rel: rel.Relationship{
		Resource: rel.Object{Type: "doc", ID: doc}, Relation: "viewer", Subject: rel.Subject{Type: "user", ID: user},
	}}
}

func allowed(t *testing.T, e *engine.Engine, doc, user string) bool {
	t.Helper()
	res, err := e.Check(t.Context(), engine.CheckRequest{
		Resource: rel.Object{Type: "doc", ID: doc}, Permission: "view", Subject: rel.Subject{Type: "user", ID: user},
	})
	if err != nil {
		t.Fatalf("check doc:%s user:%s: %v", doc, user, err)
	}
	return res.Decision == engine.Allowed
}

// TestFollow loads what the store holds, then applies what it is given
// later, and returns ctx's error when stopped.
func TestFollow(t *testing.T) {
	ctx := t.Context()
	st := memory.New()
	if _, err := st.WriteSchema(ctx, schema); err != nil {
		t.Fatal(err)
	}
	first, err := st.Write(ctx, nil, []store.Mutation{viewer("1", "ann")})
	if err != nil {
		t.Fatal(err)
	}
	e := engine.New()
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var loaded []int
	go func() { done <- feed.Follow(fctx, e, st, func(n int) { loaded = append(loaded, n) }) }()
	if err := e.WaitForRevision(ctx, first); err != nil {
		t.Fatal(err)
	}
	rev, err := st.Write(ctx, nil, []store.Mutation{viewer("2", "bob")})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WaitForRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if !allowed(t, e, "1", "ann") || !allowed(t, e, "2", "bob") || allowed(t, e, "2", "ann") {
		t.Fatal("the engine does not hold exactly the store's two relationships")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow returned %v, want context.Canceled", err)
	}
	if len(loaded) == 0 || loaded[len(loaded)-1] != 1 {
		t.Fatalf("progress reports %v, want them to end at 1 (the snapshot)", loaded)
	}
}

// badChange is a store whose change stream delivers a schema the engine
// cannot compile.
type badChange struct{ store.Store }

func (b badChange) Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error] {
	return func(yield func(store.Change, error) bool) {
		text := "definition {"
		yield(store.Change{Revision: after + 1, Schema: &text}, nil)
	}
}

// TestApplyChangesReportsApplyErrors: a change the engine refuses is an
// *ApplyError (the server reloads a snapshot on it), a stream error is not.
func TestApplyChangesReportsApplyErrors(t *testing.T) {
	ctx := t.Context()
	st := memory.New()
	e := engine.New()
	var ae *feed.ApplyError
	if err := feed.ApplyChanges(ctx, e, badChange{st}); !errors.As(err, &ae) {
		t.Fatalf("ApplyChanges over an uncompilable schema change returned %v, want an *ApplyError", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	err := feed.ApplyChanges(ctx, e, st)
	if !errors.Is(err, memory.ErrClosed) || errors.As(err, &ae) {
		t.Fatalf("ApplyChanges over a closed store returned %v, want the store's error and no *ApplyError", err)
	}
}
