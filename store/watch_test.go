package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
)

// feed is a ChangeFeed over a slice of revisions whose wake-ups the test
// controls.
type feed struct {
	mu    sync.Mutex
	head  store.Revision
	err   error
	wake  chan struct{}
	reads int
}

func newFeed() *feed { return &feed{wake: make(chan struct{})} }

func (f *feed) commit() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.head++
	close(f.wake)
	f.wake = make(chan struct{})
}

// commitQuietly commits without waking anyone, as another process's commit.
func (f *feed) commitQuietly() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.head++
}

func (f *feed) changes(_ context.Context, after store.Revision) ([]store.Change, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.err != nil {
		return nil, f.err
	}
	var out []store.Change
	// Pages of at most two, so the loop must come back for more.
	for rev := after + 1; rev <= f.head && len(out) < 2; rev++ {
		out = append(out, store.Change{Revision: rev})
	}
	return out, nil
}

func (f *feed) readCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func (f *feed) wakeChan() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wake
}

// collect runs a watch in the background, sending what it yields.
func collect(ctx context.Context, w store.ChangeFeed, after store.Revision) (<-chan store.Revision, <-chan error) {
	revs, errs := make(chan store.Revision, 100), make(chan error, 1)
	go func() {
		defer close(revs)
		for ch, err := range w.Watch(ctx, after) {
			if err != nil {
				errs <- err
				return
			}
			revs <- ch.Revision
		}
		errs <- nil
	}()
	return revs, errs
}

func expectRevs(t *testing.T, revs <-chan store.Revision, want ...store.Revision) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-revs:
			if got != w {
				t.Fatalf("watch yielded revision %d, want %d", got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch did not yield revision %d", w)
		}
	}
}

func TestChangeFeedWatch(t *testing.T) {
	t.Run("pages, then waits for a commit", func(t *testing.T) {
		f := newFeed()
		for range 5 {
			f.commit()
		}
		ctx, cancel := context.WithCancel(t.Context())
		revs, errs := collect(ctx, store.ChangeFeed{Changes: f.changes, Wake: f.wakeChan}, 1)
		expectRevs(t, revs, 2, 3, 4, 5)
		f.commit()
		expectRevs(t, revs, 6)
		cancel()
		if err := <-errs; err != nil {
			t.Fatalf("a cancelled watch ended with %v, want no error", err)
		}
	})
	t.Run("polls for commits nobody announces", func(t *testing.T) {
		f := newFeed()
		revs, _ := collect(t.Context(), store.ChangeFeed{Changes: f.changes, Wake: f.wakeChan, PollInterval: time.Millisecond}, 0)
		f.commitQuietly()
		expectRevs(t, revs, 1)
	})
	t.Run("without polling, an unannounced commit waits for the next wake-up", func(t *testing.T) {
		f := newFeed()
		revs, _ := collect(t.Context(), store.ChangeFeed{Changes: f.changes, Wake: f.wakeChan}, 0)
		// Once the watcher has read (and found nothing), only a wake-up
		// makes it read again.
		for f.readCount() == 0 {
			time.Sleep(time.Millisecond)
		}
		f.commitQuietly()
		select {
		case rev := <-revs:
			t.Fatalf("watch yielded revision %d without a wake-up or a poll", rev)
		case <-time.After(50 * time.Millisecond):
		}
		f.commit()
		expectRevs(t, revs, 1, 2)
	})
	t.Run("a failed read ends the watch with the error", func(t *testing.T) {
		f := newFeed()
		f.err = store.ErrRevisionGone
		_, errs := collect(t.Context(), store.ChangeFeed{Changes: f.changes, Wake: f.wakeChan}, 0)
		if err := <-errs; !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("watch ended with %v, want ErrRevisionGone", err)
		}
	})
	t.Run("a read failing because ctx is done ends quietly", func(t *testing.T) {
		f := newFeed()
		ctx, cancel := context.WithCancel(t.Context())
		f.err = context.Canceled
		cancel()
		_, errs := collect(ctx, store.ChangeFeed{Changes: f.changes, Wake: f.wakeChan}, 0)
		if err := <-errs; err != nil {
			t.Fatalf("watch ended with %v, want no error", err)
		}
	})
}
