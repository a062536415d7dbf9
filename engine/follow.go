package engine

import (
	"context"
	"fmt"
	"iter"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// snapshotBatch is how many relationships a snapshot load applies between
// progress reports.
const snapshotBatch = 50_000

// Snapshot is a store's state at one revision, as LoadSnapshot takes it:
// the engine reads no store itself, so its caller (the server's follower)
// decides where a snapshot comes from and how failures are retried.
type Snapshot struct {
	// Revision is the revision the snapshot was taken at.
	Revision store.Revision
	// Schema is the schema text in force at Revision, "" for none.
	Schema string
	// Relationships yields every live relationship at Revision, each key
	// once; the first error ends the load.
	Relationships iter.Seq2[rel.Relationship, error]
}

// LoadSnapshot replaces the engine's state with snap when snap is ahead of
// the engine's head; otherwise it reads nothing and returns nil. The new
// index is built off to the side, streaming snap.Relationships, and then
// published at once: no reader ever sees a half-loaded revision, and the
// relationships are never held in memory twice. History before
// snap.Revision is not loaded, so answers at earlier revisions fail with
// ErrRevisionGone; later changes come through Apply. progress, when
// non-nil, is called as the load goes with the number of relationships
// loaded so far, and once at the end.
func (e *Engine) LoadSnapshot(ctx context.Context, snap Snapshot, progress func(loaded int)) error {
	if snap.Revision <= e.Head() {
		return nil
	}
	idx := newIndex()
	if snap.Schema != "" {
		sch, err := schema.Compile(ctx, snap.Schema)
		if err != nil {
			return fmt.Errorf("loading the schema of revision %d: %w", snap.Revision, err)
		}
		p, err := compilePlan(idx, sch)
		if err != nil {
			return fmt.Errorf("loading the schema of revision %d: %w", snap.Revision, err)
		}
		idx.setSchema(snap.Revision, p)
	}
	idx.reserve(snap.Revision)
	loaded := 0
	for r, err := range snap.Relationships {
		if err != nil {
			return fmt.Errorf("loading snapshot at revision %d: %w", snap.Revision, err)
		}
		idx.touch(snap.Revision, r)
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
	idx.head, idx.oldest = snap.Revision, snap.Revision
	e.mu.Lock()
	published := snap.Revision > e.idx.head
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
