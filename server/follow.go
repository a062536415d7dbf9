package server

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/store"
)

// Following the store: this is the one loop that keeps the engine (which
// reads no store itself) fed. It loads a snapshot of the store's head at
// first (feed.LoadSnapshot), then applies the store's change stream
// (feed.ApplyChanges). When the stream fails (the database
// goes away, a network partition) the server does not stop. It turns not
// ready (health NOT_SERVING, /readyz 503), logs the error, and retries with
// capped, jittered exponential backoff. When the store answers again it
// resumes the stream from the engine's head, so nothing applied is loaded
// twice, and turns ready once the engine has caught up with the store's
// head. If the store no longer retains the changes after the engine's head
// (collected while this server was cut off), or a change cannot be applied,
// the engine reloads a snapshot of the store instead.
//
// The same loop keeps every registered record set current (feed.RecordSet:
// the capability token revocations, and any set registered with
// Config.RecordSets or RegisterRecordSet): each (re)start of following
// reads the sets' kinds afresh, and every change of the stream is applied
// to the sets before the engine. A set whose Load or Apply fails is fed
// nothing until it is read again (at the next restart, or when a change
// touches its kinds), so what depends on it fails closed.
//
// Meanwhile reads keep their consistency promises (see consistency.go) and
// writes fail with Unavailable (see storeUnreachable in errors.go).

// DefaultMaxRevisionWait bounds how long a read waits for the engine to
// apply the revision its consistency asks for, unless configured.
const DefaultMaxRevisionWait = 5 * time.Second

// The retry delay after a failure to follow the store doubles from
// followRetryMin up to followRetryMax, and starts over once following
// succeeded again.
const (
	followRetryMin = 100 * time.Millisecond
	followRetryMax = 5 * time.Second
)

// maxRevisionWait validates Config.MaxRevisionWait (0 takes the default).
func maxRevisionWait(d time.Duration) (time.Duration, error) {
	switch {
	case d < 0:
		return 0, fmt.Errorf("max revision wait %v: expected a positive duration (--max-revision-wait)", d)
	case d == 0:
		return DefaultMaxRevisionWait, nil
	}
	return d, nil
}

// follow keeps the engine and the record sets following the store until
// ctx is done. It never gives up: every failure is logged and retried,
// with a delay that starts over after an attempt that made progress.
func (s *Server) follow(ctx context.Context) {
	delay := followRetryMin
	reload := false
	for {
		// Load a snapshot at first (an engine at revision 0 has loaded
		// nothing), and when resuming cannot work.
		from := s.eng.Head()
		caughtUp, err := s.followOnce(ctx, reload || from == 0)
		if ctx.Err() != nil {
			return
		}
		s.setServing(false)
		if err == nil {
			err = errors.New("the store's change stream ended")
		}
		var ae *feed.ApplyError
		needReload := errors.Is(err, store.ErrRevisionGone) || errors.As(err, &ae)
		if caughtUp {
			reload = needReload
		} else {
			// A reload that has not got through yet is still needed.
			reload = reload || needReload
		}
		if caughtUp || s.eng.Head() > from {
			delay = followRetryMin
		}
		wait := jitter(delay)
		s.log.Error("cannot follow the store; not ready until it can", "error", err,
			"engine_revision", uint64(s.eng.Head()), "retry_in", wait.String(), "reload_snapshot", reload)
		if !sleep(ctx, wait) {
			return
		}
		delay = min(delay*2, followRetryMax)
	}
}

// jitter spreads retries of many servers over [d/2, d].
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// sleep waits d, or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// followOnce follows the store until that fails or ctx is done: it loads
// a snapshot first when resync is set, then resumes the change stream from
// the engine's head. It turns the server ready once the engine has applied
// the store's head as of the start, and reports whether it got that far.
func (s *Server) followOnce(ctx context.Context, resync bool) (caughtUp bool, err error) {
	head, err := s.st.Head(ctx)
	if err != nil {
		return false, fmt.Errorf("reading the store's head revision: %w", err)
	}
	actx, cancel := context.WithCancel(ctx)
	var ready atomic.Bool
	readyDone := make(chan struct{})
	go func() {
		defer close(readyDone)
		if s.eng.WaitForRevision(actx, head) != nil {
			return
		}
		ready.Store(true)
		s.setServing(true)
		s.log.Info("ready", "revision", uint64(head))
	}()
	// The server must not turn ready after this attempt has failed.
	defer func() {
		cancel()
		<-readyDone
		caughtUp = ready.Load()
	}()

	if resync {
		if s.eng.Head() > 0 {
			s.log.Warn("reloading a snapshot of the store", "engine_revision", uint64(s.eng.Head()), "store_revision", uint64(head))
		}
		err := feed.LoadSnapshot(actx, s.eng, s.st, head, func(n int) {
			s.log.Info("loading relationships", "loaded", n)
		})
		if err != nil {
			return false, err
		}
	}
	// The record sets are read afresh on every attempt: they are small,
	// and a stopped stream may have missed anything.
	if err := s.records.Load(actx); err != nil {
		return false, err
	}
	// Resume from the engine's head: nothing applied is loaded twice, and
	// the engine keeps its history.
	return false, feed.ApplyChangesWith(actx, s.eng, s.st, s.records)
}

// RegisterRecordSet adds a record set for the follower to keep current
// (see feed.RecordSet), like Config.RecordSets. It must be called before
// Run; the store must keep records.
func (s *Server) RegisterRecordSet(rs feed.RecordSet) error {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if s.running {
		return errors.New("server: RegisterRecordSet after Run")
	}
	if _, ok := s.st.(store.RecordStore); !ok {
		return errors.New("server: record sets need a store that keeps records")
	}
	s.recordSets = append(s.recordSets, rs)
	return nil
}

// startRecords fixes the record sets the follower feeds, as Run starts.
func (s *Server) startRecords() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	s.running = true
	rs, _ := s.st.(store.RecordStore)
	s.records = feed.NewRecords(rs, s.recordSets, func(set feed.RecordSet, err error) {
		s.log.Error("a record set failed; what depends on it fails closed until it is read again",
			"kinds", set.Kinds(), "error", err)
	})
}
