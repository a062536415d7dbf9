// Package feed feeds an engine from a store: a snapshot of the store's head
// through Engine.LoadSnapshot, then the store's change stream through
// Engine.Apply. The same stream keeps record sets current (RecordSet,
// Records): server state built from store records, such as capability
// token revocations. The engine reads no store itself; this package is where
// the two meet. It does no retrying: the server's follower
// (server/follow.go) wraps LoadSnapshot and ApplyChanges in the loop that
// resumes, backs off and reloads, and tests, benchmarks and embeddings that
// need none of that call Follow.
package feed

import (
	"context"
	"fmt"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// ApplyError is an error applying a change the store delivered; the
// store's stream itself was fine, but resuming it would fail the same way.
type ApplyError struct{ Err error }

func (e *ApplyError) Error() string { return "applying a change from the store: " + e.Err.Error() }
func (e *ApplyError) Unwrap() error { return e.Err }

// LoadSnapshot loads st's state at head into eng, unless eng is at or past
// head already. progress, when non-nil, is called as relationships load
// with the number loaded so far.
func LoadSnapshot(ctx context.Context, eng *engine.Engine, st store.Store, head store.Revision, progress func(loaded int)) error {
	if head <= eng.Head() {
		return nil
	}
	text, _, err := st.ReadSchema(ctx, head)
	if err != nil {
		return fmt.Errorf("reading the schema at revision %d: %w", head, err)
	}
	snap := engine.Snapshot{Revision: head, Schema: text, Relationships: st.Read(ctx, head, rel.Filter{}, nil)}
	return eng.LoadSnapshot(ctx, snap, progress)
}

// ApplyChanges applies st's changes after eng's head to eng until ctx is
// done (returning ctx's error) or something fails: the stream (its error,
// wrapped), or applying a change (an *ApplyError).
func ApplyChanges(ctx context.Context, eng *engine.Engine, st store.Store) error {
	return ApplyChangesWith(ctx, eng, st, nil)
}

// ApplyChangesWith is ApplyChanges that also feeds every change to recs
// (nil: none), before the engine, so that what a record set holds (a
// revocation) is in effect no later than the engine's revision. recs must
// have been loaded (Records.Load) after eng's head.
func ApplyChangesWith(ctx context.Context, eng *engine.Engine, st store.Store, recs *Records) error {
	for ch, err := range st.Watch(ctx, eng.Head()) {
		if err != nil {
			return fmt.Errorf("following the store's changes after revision %d: %w", eng.Head(), err)
		}
		if recs != nil {
			if err := recs.Apply(ctx, ch); err != nil {
				return fmt.Errorf("following the store's records at revision %d: %w", ch.Revision, err)
			}
		}
		if err := eng.Apply(ch); err != nil {
			return &ApplyError{err}
		}
	}
	return ctx.Err()
}

// Follow loads a snapshot of st's head into eng, then applies st's changes
// until ctx is done or something fails, with no retries.
func Follow(ctx context.Context, eng *engine.Engine, st store.Store, progress func(loaded int)) error {
	head, err := st.Head(ctx)
	if err != nil {
		return fmt.Errorf("reading the store's head revision: %w", err)
	}
	if err := LoadSnapshot(ctx, eng, st, head, progress); err != nil {
		return err
	}
	return ApplyChanges(ctx, eng, st)
}
