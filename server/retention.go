package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
)

// DefaultRevisionRetention is how long a superseded revision stays readable
// (at_exact_snapshot, cursors, Watch from its token) unless configured.
const DefaultRevisionRetention = time.Hour

// Revision retention works like SpiceDB's GC window: a revision stays
// readable for at least the window after a later revision superseded it,
// and is released (in the engine, and in the store when it can release
// history) at most one release interval later. The head revision is never
// released, however old.
//
// The server needs to know when each revision was superseded. Rather than
// a timestamp per revision, it samples the engine's head on every tick: the
// sample (t, h) says that by time t every revision below h was superseded,
// so once t is a window old, history below h can go. That costs a handful
// of samples, needs nothing from the store or the engine but their head,
// and sees writes made through other servers sharing the store.

// retention holds the samples and decides what to release.
type retention struct {
	window   time.Duration
	interval time.Duration

	mu sync.Mutex
	// samples ascend in time and revision; consecutive ones differ in
	// revision, since a repeated head says nothing new.
	samples []revisionSample
	// released is the revision history was last released before.
	released store.Revision
}

type revisionSample struct {
	at  time.Time
	rev store.Revision
}

// newRetention validates the window (0 takes the default) and derives the
// release interval: a tenth of the window, between 10ms and a minute, so
// that history is released no later than a tenth past the window (at most
// a minute) and a large index is not compacted too often.
func newRetention(window time.Duration) (*retention, error) {
	switch {
	case window < 0:
		return nil, fmt.Errorf("revision retention %v: expected a positive duration (--revision-retention)", window)
	case window == 0:
		window = DefaultRevisionRetention
	}
	return &retention{window: window, interval: min(max(window/10, 10*time.Millisecond), time.Minute)}, nil
}

// observe records that head was the latest revision at now and returns the
// revision before which history may now be released, with ok false when
// that has not advanced since the last release.
func (r *retention) observe(now time.Time, head store.Revision) (before store.Revision, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.samples); n == 0 || head > r.samples[n-1].rev {
		r.samples = append(r.samples, revisionSample{at: now, rev: head})
	}
	cutoff := now.Add(-r.window)
	// The latest sample taken a window ago or earlier.
	i := sort.Search(len(r.samples), func(i int) bool { return r.samples[i].at.After(cutoff) }) - 1
	if i < 0 {
		return 0, false
	}
	before = r.samples[i].rev
	// Older samples can no longer be the latest one a window ago.
	r.samples = append(r.samples[:0], r.samples[i:]...)
	if before <= r.released {
		return 0, false
	}
	r.released = before
	return before, true
}

// releaseHistory samples the engine's head every interval and releases
// history older than the retention window until ctx is done.
func (s *Server) releaseHistory(ctx context.Context) {
	t := time.NewTicker(s.retention.interval)
	defer t.Stop()
	for {
		if before, ok := s.retention.observe(time.Now(), s.eng.Head()); ok {
			s.forgetBefore(ctx, before)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// forgetBefore releases the engine's history, and the store's when it can,
// before rev.
func (s *Server) forgetBefore(ctx context.Context, rev store.Revision) {
	start := time.Now()
	s.eng.ForgetBefore(rev)
	if st, ok := s.st.(store.HistoryReleaser); ok {
		if err := st.ForgetBefore(ctx, rev); err != nil && ctx.Err() == nil {
			// The next release retries; reads of that history keep working
			// meanwhile, so a warning is enough.
			s.log.Warn("releasing the store's history failed", "before", uint64(rev), "error", err)
		}
	}
	s.log.Debug("released revision history", "before", uint64(rev), "retention", s.retention.window.String(), "duration", time.Since(start))
}

// explainGone turns an error about released history into a
// FailedPrecondition that names the retention window, so that the caller
// learns why an old token stopped working and what to do instead.
func (s *Server) explainGone(err error) error {
	if err == nil || (!errors.Is(err, engine.ErrRevisionGone) && !errors.Is(err, store.ErrRevisionGone)) {
		return err
	}
	return status.Errorf(codes.FailedPrecondition,
		"%v: revisions stay readable for %s (--revision-retention) after a later write supersedes them; "+
			"use a more recent revision token, at_least_as_fresh or fully_consistent consistency, or restart a watch from a recent token",
		err, s.retention.window)
}

// historyFullStatus words a write refused for history as RESOURCE_EXHAUSTED
// with a google.rpc.RetryInfo (REST: 429 with Retry-After), for both APIs:
// the write may succeed once retention releases history, unlike a request
// over a size limit.
func historyFullStatus(e *op.HistoryFullError) error {
	st := status.Newf(codes.ResourceExhausted, "%v (--max-history-versions; history is kept for --revision-retention)", e)
	if with, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)}); err == nil {
		st = with
	}
	return st.Err()
}

// retentionUnary and retentionStream apply explainGone to every call; they
// run inside the main interceptors, which see the explained error.
func (s *Server) retentionUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, s.explainGone(err)
	}
	return resp, nil
}

func (s *Server) retentionStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return s.explainGone(handler(srv, ss))
}
