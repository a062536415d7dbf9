package engine

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Engine evaluates checks and lookups over its index. It is safe for
// concurrent use: many readers, one Apply at a time.
type Engine struct {
	maxDepth        int
	maxChain        int
	maxContextBytes int
	now             func() time.Time

	// applyMu serializes Apply and schema changes, so that a schema's plan
	// can be built outside mu (see applySchema).
	applyMu sync.Mutex
	mu      sync.RWMutex
	idx     *index

	// checkers pools evaluation state between requests.
	checkers sync.Pool

	// waitMu guards applied, closed and replaced on every Apply so that
	// WaitForRevision callers wake up.
	waitMu  sync.Mutex
	applied chan struct{}
}

// Option configures an Engine.
type Option func(*Engine)

// WithMaxDepth bounds recursion through usersets and arrows.
func WithMaxDepth(n int) Option { return func(e *Engine) { e.maxDepth = n } }

// WithMaxChain bounds the acts_for links followed for an agent.
func WithMaxChain(n int) Option { return func(e *Engine) { e.maxChain = n } }

// WithMaxCaveatContextBytes bounds a request's caveat context, as JSON
// (default DefaultMaxCaveatContextBytes; zero or less: no bound). A check
// with a larger context fails with ErrInvalidContext.
func WithMaxCaveatContextBytes(n int) Option { return func(e *Engine) { e.maxContextBytes = n } }

// WithClock sets the clock used to decide expiration (tests).
func WithClock(now func() time.Time) Option { return func(e *Engine) { e.now = now } }

// New returns an empty engine at revision zero with no schema.
func New(opts ...Option) *Engine {
	e := &Engine{maxDepth: DefaultMaxDepth, maxChain: DefaultMaxChain, maxContextBytes: DefaultMaxCaveatContextBytes, now: time.Now}
	for _, o := range opts {
		o(e)
	}
	e.idx = newIndex()
	return e
}

// Load builds an engine from schema text and relationships, validating each
// relationship against the schema, all at revision 1 (schema) and 2
// (relationships). It serves validation files and tests.
func Load(ctx context.Context, schemaText string, rels []rel.Relationship, opts ...Option) (*Engine, error) {
	sch, err := schema.Compile(ctx, schemaText)
	if err != nil {
		return nil, err
	}
	updates := make([]store.Update, 0, len(rels))
	seen := make(map[rel.Key]bool, len(rels))
	for _, r := range rels {
		if err := sch.ValidateRelationship(r); err != nil {
			return nil, fmt.Errorf("relationship %s: %w", r, err)
		}
		if seen[r.Key()] {
			return nil, fmt.Errorf("relationship %s: written twice", r.Key())
		}
		seen[r.Key()] = true
		updates = append(updates, store.Update{Op: store.Touch, Rel: r})
	}
	e := New(opts...)
	e.applyMu.Lock()
	err = e.applySchema(1, sch)
	e.applyMu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := e.Apply(store.Change{Revision: 2, Updates: updates}); err != nil {
		return nil, err
	}
	return e, nil
}

// Head returns the latest revision applied.
func (e *Engine) Head() store.Revision {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.idx.head
}

// Schema returns the schema in force at rev (zero: head; Exact(rev): rev), or nil.
func (e *Engine) Schema(rev store.Revision) *schema.Schema {
	e.mu.RLock()
	defer e.mu.RUnlock()
	switch rev {
	case 0:
		rev = e.idx.head
	case EmptyRevision:
		return nil // revision zero has no schema
	}
	if p := e.idx.planAt(rev); p != nil {
		return p.sch
	}
	return nil
}

// Apply applies one change from the store's change stream. Changes must come
// in revision order; a change at or below the head is ignored, so replaying
// the stream is harmless.
func (e *Engine) Apply(ch store.Change) error {
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	defer e.notifyApplied()
	if ch.Schema != nil {
		sch, err := schema.Compile(context.Background(), *ch.Schema)
		if err != nil {
			return fmt.Errorf("applying revision %d: %w", ch.Revision, err)
		}
		if err := e.applySchema(ch.Revision, sch); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if ch.Revision <= e.idx.head && ch.Schema == nil {
		return nil
	}
	e.idx.reserve(ch.Revision)
	for _, u := range ch.Updates {
		switch u.Op {
		case store.Touch, store.Create:
			e.idx.touch(ch.Revision, u.Rel)
		case store.Delete:
			e.idx.remove(ch.Revision, u.Rel.Key())
		default:
			return fmt.Errorf("applying revision %d: unknown operation %v", ch.Revision, u.Op)
		}
	}
	if ch.Revision > e.idx.head {
		e.idx.head = ch.Revision
	}
	return nil
}

// applySchema compiles sch into a plan and puts it in force at rev. Only
// interning the schema's names into the index takes the write lock; the plan
// is compiled aside, so that checks go on meanwhile. Callers hold applyMu,
// so no other change lands between the two.
func (e *Engine) applySchema(rev store.Revision, sch *schema.Schema) error {
	e.mu.Lock()
	if rev < e.idx.head {
		head := e.idx.head
		e.mu.Unlock()
		return fmt.Errorf("schema at revision %d is older than head %d", rev, head)
	}
	p := internPlan(e.idx, sch)
	e.mu.Unlock()
	if err := p.compile(); err != nil {
		return fmt.Errorf("applying the schema of revision %d: %w", rev, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.idx.setSchema(rev, p)
	if rev > e.idx.head {
		e.idx.head = rev
	}
	return nil
}

// ForgetBefore releases history older than rev: answers at earlier
// revisions fail with ErrRevisionGone afterwards.
func (e *Engine) ForgetBefore(rev store.Revision) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.idx.compact(rev)
}

// Superseded returns how many relationship versions the engine keeps only
// for history: each update or delete supersedes one, and ForgetBefore
// releases those older than its revision. A server bounds its memory by
// this count (each costs about as much as a live relationship).
func (e *Engine) Superseded() int {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.idx.superseded
}

// EmptyRevision names revision zero, the empty store before any write, as
// the Revision of a request. A request's zero Revision is not revision zero
// but the latest revision applied (the zero value is what most callers
// want); a revision token, which may name revision zero (a server issues
// one for an empty store), is turned into a request's Revision by Exact.
const EmptyRevision store.Revision = math.MaxUint64

// Exact returns the request Revision that answers at exactly rev, zero
// included.
func Exact(rev store.Revision) store.Revision {
	if rev == 0 {
		return EmptyRevision
	}
	return rev
}

// resolveRevision picks the revision to answer at. Callers hold e.mu.
func (e *Engine) resolveRevision(rev store.Revision) (store.Revision, error) {
	switch rev {
	case 0:
		return e.idx.head, nil
	case EmptyRevision:
		rev = 0
	}
	if rev > e.idx.head {
		return 0, fmt.Errorf("%w: asked for %d, engine is at %d", ErrRevisionAhead, rev, e.idx.head)
	}
	if rev < e.idx.oldest {
		return 0, fmt.Errorf("%w: asked for %d, oldest retained is %d", ErrRevisionGone, rev, e.idx.oldest)
	}
	return rev, nil
}
