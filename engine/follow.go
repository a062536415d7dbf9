package engine

import (
	"context"
	"fmt"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// snapshotBatch is how many relationships a snapshot load applies between
// progress reports.
const snapshotBatch = 50_000

// Follow loads the store's state at its head into the engine and then
// applies every later change from the store's change stream until ctx is
// done. progress, when non-nil, is called as the snapshot loads with the
// number of relationships loaded so far. It returns ctx's error on
// cancellation, or the first store or apply error.
func (e *Engine) Follow(ctx context.Context, st store.Store, progress func(loaded int)) error {
	head, err := st.Head(ctx)
	if err != nil {
		return fmt.Errorf("reading store head: %w", err)
	}
	if head > e.Head() {
		if err := e.loadSnapshot(ctx, st, head, progress); err != nil {
			return err
		}
	}
	for ch, err := range st.Watch(ctx, e.Head()) {
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("following store changes: %w", err)
		}
		if err := e.Apply(ch); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// loadSnapshot loads the store's state at head into a new index built off
// to the side, streaming relationships straight from the store, and then
// publishes it at once: no reader ever sees a half-loaded revision, and the
// relationships are never held in memory twice. History before head is not
// loaded, so answers at earlier revisions fail with ErrRevisionGone.
func (e *Engine) loadSnapshot(ctx context.Context, st store.Store, head store.Revision, progress func(int)) error {
	text, _, err := st.ReadSchema(ctx, head)
	if err != nil {
		return fmt.Errorf("reading schema at revision %d: %w", head, err)
	}
	idx := newIndex()
	if text != "" {
		sch, err := schema.Compile(ctx, text)
		if err != nil {
			return fmt.Errorf("loading the schema of revision %d: %w", head, err)
		}
		p, err := compilePlan(idx, sch)
		if err != nil {
			return fmt.Errorf("loading the schema of revision %d: %w", head, err)
		}
		idx.setSchema(head, p)
	}
	loaded := 0
	for r, err := range st.Read(ctx, head, rel.Filter{}, nil) {
		if err != nil {
			return fmt.Errorf("loading snapshot at revision %d: %w", head, err)
		}
		idx.touch(head, r)
		loaded++
		if loaded%snapshotBatch == 0 {
			if progress != nil {
				progress(loaded)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	// Order the lookup candidates now rather than on the first lookup.
	for _, t := range idx.types[1:] {
		t.objects()
	}
	idx.head, idx.oldest = head, head
	e.mu.Lock()
	published := head > e.idx.head
	if published {
		e.idx = idx
	}
	e.mu.Unlock()
	if published {
		e.notifyApplied()
	}
	if progress != nil {
		progress(loaded)
	}
	return nil
}

// WaitForRevision blocks until the engine has applied rev or ctx is done.
func (e *Engine) WaitForRevision(ctx context.Context, rev store.Revision) error {
	for {
		e.waitMu.Lock()
		if e.Head() >= rev {
			e.waitMu.Unlock()
			return nil
		}
		if e.applied == nil {
			e.applied = make(chan struct{})
		}
		ch := e.applied
		e.waitMu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for revision %d (engine at %d): %w", rev, e.Head(), ctx.Err())
		}
	}
}

// notifyApplied wakes every WaitForRevision caller to re-check the head.
func (e *Engine) notifyApplied() {
	e.waitMu.Lock()
	defer e.waitMu.Unlock()
	if e.applied != nil {
		close(e.applied)
		e.applied = nil
	}
}
