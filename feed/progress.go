package feed

import (
	"context"
	"fmt"
	"sync"

	"github.com/mandate-authz/mandate/store"
)

// Progress is the revision a record set has applied through, for readers
// that must wait until the set has caught up with the revision they answer
// at (and fail closed when it does not). The zero value is at revision
// zero. Safe for concurrent use.
type Progress struct {
	mu      sync.Mutex
	applied store.Revision
	wake    chan struct{}
}

// Advance moves the applied revision to rev (never back) and wakes waiters.
func (p *Progress) Advance(rev store.Revision) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if rev <= p.applied {
		return
	}
	p.applied = rev
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}

// Revision is the revision applied through.
func (p *Progress) Revision() store.Revision {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
}

// WaitFor waits until rev is applied, or ctx ends (an error naming both
// revisions).
func (p *Progress) WaitFor(ctx context.Context, rev store.Revision) error {
	for {
		p.mu.Lock()
		applied := p.applied
		if p.wake == nil {
			p.wake = make(chan struct{})
		}
		wake := p.wake
		p.mu.Unlock()
		if applied >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("applied through revision %d, waiting for %d: %w", applied, rev, ctx.Err())
		case <-wake:
		}
	}
}
