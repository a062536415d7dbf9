package op

import (
	"context"
	"errors"
	"fmt"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
)

// Mode is a read's consistency requirement, with SpiceDB's meanings.
type Mode uint8

const (
	// MinimizeLatency (the zero value) answers at whatever revision the
	// engine has applied; a store read answers at the store's head.
	MinimizeLatency Mode = iota
	// AtLeastAsFresh waits until the engine has applied Revision, then
	// answers at its head (>= Revision): a check after a revoking write
	// never sees the revoked access.
	AtLeastAsFresh
	// AtExactSnapshot waits for Revision, then answers exactly at it.
	AtExactSnapshot
	// FullyConsistent waits for the store's current head, then answers.
	FullyConsistent
)

// Consistency is the one consistency value every API parses into.
//
// Reads answered by the engine (checks, lookups, expand) follow Mode as
// documented on its values; reads answered by the store (relationships,
// export, schema) read at the store's head, or exactly at Revision for
// AtExactSnapshot. Waiting for the engine, and reading the store's head to
// do so, is bounded by Config.MaxRevisionWait: past it the read fails with
// ErrUnavailable naming the revision it waited for. So while the store is
// unreachable, MinimizeLatency reads still answer from the engine's index
// as it was; AtLeastAsFresh and AtExactSnapshot answer once the engine has
// the revision; FullyConsistent fails. No read is ever answered from a state
// older than its token.
type Consistency struct {
	Mode Mode
	// Revision is the token's revision for AtLeastAsFresh and
	// AtExactSnapshot.
	Revision store.Revision
	// Field names the request field the token came from, for errors.
	Field string
	// Foreign marks an AtLeastAsFresh token that is well formed but was
	// issued by a different store. SpiceDB's rule
	// (--mismatch-zed-token-behavior=full-consistency) reads it as
	// FullyConsistent; an API that refuses foreign tokens never sets it.
	Foreign bool
}

// errRevisionWaitOver is the cause of a context that the revision wait
// ended, as opposed to the caller's deadline or cancellation.
var errRevisionWaitOver = errors.New("revision wait over")

// boundRevisionWait limits ctx to the revision wait. Nested bounds share
// the cause, so the outermost one bounds the whole.
func (c *Core) boundRevisionWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, c.wait, errRevisionWaitOver)
}

// engineRevision applies a consistency requirement for an engine read and
// returns the revision to pass to the engine (0: its head).
func (c *Core) engineRevision(ctx context.Context, cons Consistency) (store.Revision, error) {
	// One bound for reading the store's head and waiting for the engine.
	ctx, cancel := c.boundRevisionWait(ctx)
	defer cancel()
	switch {
	case cons.Mode == FullyConsistent || (cons.Mode == AtLeastAsFresh && cons.Foreign):
		head, err := c.StoreHead(ctx)
		if err != nil {
			return 0, fmt.Errorf("consistency.fully_consistent: %w", err)
		}
		return 0, c.WaitFor(ctx, head)
	case cons.Mode == AtLeastAsFresh:
		if err := c.verifyToken(ctx, cons); err != nil {
			return 0, err
		}
		return 0, c.WaitFor(ctx, cons.Revision)
	case cons.Mode == AtExactSnapshot:
		if err := c.verifyToken(ctx, cons); err != nil {
			return 0, err
		}
		// A token names exactly its revision, zero included.
		return engine.Exact(cons.Revision), c.WaitFor(ctx, cons.Revision)
	case c.eng.Schema(0) == nil:
		// Nothing to answer from yet. A schema written a moment ago, here
		// or through another server, may not have reached this engine:
		// catch up with the store rather than answer that no schema has
		// been written. If the store cannot say, answer from the engine.
		if head, err := c.StoreHead(ctx); err == nil {
			return 0, c.WaitFor(ctx, head)
		}
	}
	return 0, nil
}

// pinnedRevision is engineRevision pinned to the engine's head when the
// requirement leaves the revision open, so that every item of an answer
// and its token agree.
func (c *Core) pinnedRevision(ctx context.Context, cons Consistency) (store.Revision, error) {
	rev, err := c.engineRevision(ctx, cons)
	if err == nil && rev == 0 {
		rev = c.eng.Head()
	}
	return rev, err
}

// storeRevision applies a consistency requirement for a store read.
func (c *Core) storeRevision(ctx context.Context, cons Consistency) (store.Revision, error) {
	switch cons.Mode {
	case AtExactSnapshot:
		return cons.Revision, c.verifyToken(ctx, cons)
	case AtLeastAsFresh:
		if !cons.Foreign {
			if err := c.verifyToken(ctx, cons); err != nil {
				return 0, err
			}
		}
	}
	return c.StoreHead(ctx)
}

// verifyToken checks that a token's revision is not ahead of the store.
// When the store cannot be reached to tell, the token is taken as it is: an
// engine read then waits for the engine to apply it, bounded, and a store
// read fails on the store.
func (c *Core) verifyToken(ctx context.Context, cons Consistency) error {
	if cons.Revision <= c.eng.Head() {
		return nil
	}
	head, err := c.StoreHead(ctx)
	if errors.Is(err, ErrUnavailable) {
		return nil
	}
	if err != nil {
		return err
	}
	if cons.Revision > head {
		return &TokenAheadError{Field: cons.Field, Revision: cons.Revision, Head: head}
	}
	return nil
}

// WaitFor blocks until the engine has applied rev, for at most the
// revision wait; then it fails with ErrUnavailable naming rev.
func (c *Core) WaitFor(ctx context.Context, rev store.Revision) error {
	if rev <= c.eng.Head() {
		return nil
	}
	wctx, cancel := c.boundRevisionWait(ctx)
	defer cancel()
	if err := c.eng.WaitForRevision(wctx, rev); err != nil {
		if errors.Is(context.Cause(wctx), errRevisionWaitOver) {
			return unavailable("revision %d is not applied here yet (this server's index is at %d) after waiting %v (--max-revision-wait): it is catching up with the store or cannot reach it; retry",
				rev, c.eng.Head(), c.wait)
		}
		return err
	}
	return nil
}

// StoreHead reads the store's head within the revision wait. A store that
// cannot be reached, or does not answer in time, is ErrUnavailable.
func (c *Core) StoreHead(ctx context.Context) (store.Revision, error) {
	hctx, cancel := c.boundRevisionWait(ctx)
	defer cancel()
	head, err := c.st.Head(hctx)
	switch {
	case err == nil:
		return head, nil
	case errors.Is(context.Cause(hctx), errRevisionWaitOver):
		return 0, unavailable("the store did not report its head revision within %v (--max-revision-wait): %v", c.wait, err)
	case storeUnreachable(err):
		return 0, unavailable("the store is unreachable: %v", err)
	}
	return 0, err
}
