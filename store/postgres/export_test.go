package postgres

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/mandate-authz/mandate/store"
)

// HoldCommitter keeps the committer busy until the returned release is
// called, so that writes sent meanwhile queue up for the next group; each
// later group's size is passed to onGroup. Call it before any write.
func (s *Store) HoldCommitter(t testing.TB, onGroup func(size int)) (release func()) {
	t.Helper()
	s.onGroup = onGroup
	held, running := make(chan struct{}), make(chan struct{})
	var once sync.Once
	op := &writeOp{ctx: context.Background(), size: 1, done: make(chan error, 1),
		// A group may run its writes again (a refused statement, a
		// moved head): only the first run holds.
		run: func(context.Context, *group, store.Revision) error {
			once.Do(func() { close(running) })
			<-held
			return errHeld
		}}
	s.writes <- op
	// Once it runs, its group is gathered: later writes wait for the next.
	<-running
	return func() {
		close(held)
		if err := <-op.done; !errors.Is(err, errHeld) {
			t.Errorf("the holding write ended with %v", err)
		}
	}
}

var errHeld = errors.New("held the committer")
