package server

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// token returns the revision token for rev.
func (s *Server) token(rev store.Revision) *pb.RevisionToken {
	return &pb.RevisionToken{Token: s.inst.encodeToken(rev)}
}

// decodeRevision parses a token and checks it is not ahead of the store.
func (s *Server) decodeRevision(ctx context.Context, field string, t *pb.RevisionToken) (store.Revision, error) {
	rev, err := s.inst.decodeToken(field, t.GetToken())
	if err != nil {
		return 0, err
	}
	if rev <= s.eng.Head() {
		return rev, nil
	}
	head, err := s.st.Head(ctx)
	if err != nil {
		return 0, err
	}
	if rev > head {
		return 0, status.Errorf(codes.InvalidArgument, "%s: the token names revision %d but the store is at %d; it was not issued by this store", field, rev, head)
	}
	return rev, nil
}

// engineRevision applies a consistency requirement for an engine read and
// returns the revision to pass to the engine (0: its head).
func (s *Server) engineRevision(ctx context.Context, c *pb.Consistency) (store.Revision, error) {
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
		return rev, s.waitFor(ctx, rev)
	case *pb.Consistency_FullyConsistent:
		if !r.FullyConsistent {
			return 0, nil
		}
		head, err := s.st.Head(ctx)
		if err != nil {
			return 0, err
		}
		return 0, s.waitFor(ctx, head)
	}
	return 0, nil
}

// waitFor blocks until the engine has applied rev.
func (s *Server) waitFor(ctx context.Context, rev store.Revision) error {
	if rev <= s.eng.Head() {
		return nil
	}
	if err := s.eng.WaitForRevision(ctx, rev); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return status.FromContextError(err).Err()
		}
		return err
	}
	return nil
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
	return s.st.Head(ctx)
}
