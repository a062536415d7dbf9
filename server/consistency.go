package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store"
)

// Consistency follows SpiceDB's meanings. For reads answered by the engine:
//
//   - minimize_latency (or none): whatever revision the engine has applied;
//   - at_least_as_fresh(t): wait until the engine has applied t, then answer
//     at its head (>= t), so a check after a revoking write never sees the
//     revoked access;
//   - at_exact_snapshot(t): wait for t, then answer exactly at t;
//   - fully_consistent: wait for the store's current head, then answer.
//
// Reads answered by the store (ReadRelationships, export, ReadSchema) read
// at the store's head, or exactly at t for at_exact_snapshot.
//
// Waiting for the engine, and reading the store's head to do so, is bounded
// by Config.MaxRevisionWait (--max-revision-wait): past it the read fails
// with Unavailable naming the revision it waited for. So while the store
// is unreachable (see follow.go), minimize_latency reads still answer from
// the engine's index as it was when the store went away; at_least_as_fresh
// and at_exact_snapshot answer if the engine has applied the token and
// otherwise wait, then fail; fully_consistent fails, since it needs the
// store's head. No read is ever answered from a state older than its token.

// token returns the revision token for rev.
func (s *Server) token(rev store.Revision) *pb.RevisionToken {
	return &pb.RevisionToken{Token: s.inst.encodeToken(rev)}
}

// decodeRevision parses a token and checks it is not ahead of the store.
// When the store cannot be reached to tell, the token is taken as it is:
// an engine read then waits for the engine to apply it, bounded, and a
// store read fails on the store.
func (s *Server) decodeRevision(ctx context.Context, field string, t *pb.RevisionToken) (store.Revision, error) {
	rev, err := s.inst.decodeToken(field, t.GetToken())
	if err != nil {
		return 0, err
	}
	if rev <= s.eng.Head() {
		return rev, nil
	}
	head, err := s.storeHead(ctx)
	if status.Code(err) == codes.Unavailable {
		return rev, nil
	}
	if err != nil {
		return 0, err
	}
	if rev > head {
		return 0, status.Errorf(codes.InvalidArgument, "%s: the token names revision %d but the store is at %d; it was not issued by this store", field, rev, head)
	}
	return rev, nil
}

// engineRevision applies a consistency requirement for an engine read and
// returns the revision to pass to the engine (0: its head; a token names
// exactly its revision, zero included: engine.Exact).
func (s *Server) engineRevision(ctx context.Context, c *pb.Consistency) (store.Revision, error) {
	// One bound for reading the store's head and waiting for the engine.
	ctx, cancel := s.boundRevisionWait(ctx)
	defer cancel()
	switch r := c.GetRequirement().(type) {
	case *pb.Consistency_AtLeastAsFresh:
		rev, err := s.decodeRevision(ctx, "consistency.at_least_as_fresh", r.AtLeastAsFresh)
		if err != nil {
			return 0, err
		}
		return 0, s.waitFor(ctx, rev)
	case *pb.Consistency_AtExactSnapshot:
		rev, err := s.decodeRevision(ctx, "consistency.at_exact_snapshot", r.AtExactSnapshot)
		if err != nil {
			return 0, err
		}
		return engine.Exact(rev), s.waitFor(ctx, rev)
	case *pb.Consistency_FullyConsistent:
		if !r.FullyConsistent {
			return 0, nil
		}
		head, err := s.storeHead(ctx)
		if err != nil {
			return 0, status.Errorf(codeOf(err), "consistency.fully_consistent: %s", status.Convert(err).Message())
		}
		return 0, s.waitFor(ctx, head)
	}
	return 0, nil
}

// waitFor blocks until the engine has applied rev, for at most the
// revision wait; then it fails with Unavailable naming rev.
func (s *Server) waitFor(ctx context.Context, rev store.Revision) error {
	if rev <= s.eng.Head() {
		return nil
	}
	wctx, cancel := s.boundRevisionWait(ctx)
	defer cancel()
	if err := s.eng.WaitForRevision(wctx, rev); err != nil {
		if errors.Is(context.Cause(wctx), errRevisionWaitOver) {
			return status.Errorf(codes.Unavailable, "revision %d is not applied here yet (this server's index is at %d) after waiting %v (--max-revision-wait): it is catching up with the store or cannot reach it; retry",
				rev, s.eng.Head(), s.cfg.MaxRevisionWait)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return status.FromContextError(err).Err()
		}
		return err
	}
	return nil
}

// errRevisionWaitOver is the cause of a context that the revision wait
// ended, as opposed to the caller's deadline or cancellation.
var errRevisionWaitOver = errors.New("revision wait over")

// boundRevisionWait limits ctx to the revision wait. Nested bounds share
// the cause, so the outermost one bounds the whole.
func (s *Server) boundRevisionWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, s.cfg.MaxRevisionWait, errRevisionWaitOver)
}

// storeHead reads the store's head within the revision wait. A store that
// cannot be reached, or does not answer in time, is Unavailable.
func (s *Server) storeHead(ctx context.Context) (store.Revision, error) {
	hctx, cancel := s.boundRevisionWait(ctx)
	defer cancel()
	head, err := s.st.Head(hctx)
	switch {
	case err == nil:
		return head, nil
	case errors.Is(context.Cause(hctx), errRevisionWaitOver):
		return 0, status.Errorf(codes.Unavailable, "the store did not report its head revision within %v (--max-revision-wait): %v", s.cfg.MaxRevisionWait, err)
	case codeOf(err) == codes.Unavailable:
		return 0, status.Errorf(codes.Unavailable, "the store is unreachable: %v", err)
	}
	return 0, err
}

// storeRevision applies a consistency requirement for a store read.
func (s *Server) storeRevision(ctx context.Context, c *pb.Consistency) (store.Revision, error) {
	switch r := c.GetRequirement().(type) {
	case *pb.Consistency_AtExactSnapshot:
		return s.decodeRevision(ctx, "consistency.at_exact_snapshot", r.AtExactSnapshot)
	case *pb.Consistency_AtLeastAsFresh:
		if _, err := s.decodeRevision(ctx, "consistency.at_least_as_fresh", r.AtLeastAsFresh); err != nil {
			return 0, err
		}
	}
	return s.storeHead(ctx)
}
