package store

import (
	"context"
	"fmt"
	"iter"
	"time"
)

// ChangeFeed is how a store serves Watch through the one loop the stores
// share: the store says how to read a page of changes and how to learn of
// a commit, and the loop does the rest (resuming, waiting, stopping).
type ChangeFeed struct {
	// Changes returns the changes after rev in revision order, a bounded
	// page of them, or none when rev is the head. It fails with
	// ErrRevisionGone when they are no longer retained.
	Changes func(ctx context.Context, after Revision) ([]Change, error)
	// Wake returns a channel that is closed at the next commit (or when
	// the store closes). The loop takes it before each read of Changes,
	// so a commit landing after that read still wakes it.
	Wake func() <-chan struct{}
	// PollInterval, when positive, bounds each wait, for stores that
	// learn of some commits only by looking (another process's, or while
	// notifications are down).
	PollInterval time.Duration
}

// Watch yields every change after `after` in revision order, then waits
// for new ones until ctx is done, when it ends without an error. The first
// error from Changes ends it, wrapped.
func (f ChangeFeed) Watch(ctx context.Context, after Revision) iter.Seq2[Change, error] {
	return func(yield func(Change, error) bool) {
		next := after
		for {
			if ctx.Err() != nil {
				return
			}
			wake := f.Wake()
			changes, err := f.Changes(ctx, next)
			if err != nil {
				if ctx.Err() == nil {
					yield(Change{}, fmt.Errorf("watch: %w", err))
				}
				return
			}
			for _, ch := range changes {
				if ctx.Err() != nil {
					return
				}
				if !yield(ch, nil) {
					return
				}
				next = ch.Revision
			}
			if len(changes) > 0 {
				continue
			}
			var poll *time.Timer
			var polled <-chan time.Time
			if f.PollInterval > 0 {
				poll = time.NewTimer(f.PollInterval)
				polled = poll.C
			}
			select {
			case <-ctx.Done():
			case <-wake:
			case <-polled:
			}
			if poll != nil {
				poll.Stop()
			}
		}
	}
}
