package server

import (
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
)

// Consistency follows SpiceDB's meanings; the core resolves it (see
// op.Consistency). mandate.v1 refuses tokens of other stores outright.

// token returns the revision token for rev.
func (s *Server) token(rev store.Revision) *pb.RevisionToken {
	return &pb.RevisionToken{Token: s.inst.encodeToken(rev)}
}

// consistencyFromProto parses a mandate.v1 consistency requirement.
func (s *Server) consistencyFromProto(c *pb.Consistency) (op.Consistency, error) {
	switch r := c.GetRequirement().(type) {
	case *pb.Consistency_AtLeastAsFresh:
		return s.tokenConsistency(op.AtLeastAsFresh, "consistency.at_least_as_fresh", r.AtLeastAsFresh)
	case *pb.Consistency_AtExactSnapshot:
		return s.tokenConsistency(op.AtExactSnapshot, "consistency.at_exact_snapshot", r.AtExactSnapshot)
	case *pb.Consistency_FullyConsistent:
		if r.FullyConsistent {
			return op.Consistency{Mode: op.FullyConsistent}, nil
		}
	}
	return op.Consistency{}, nil
}

func (s *Server) tokenConsistency(mode op.Mode, field string, t *pb.RevisionToken) (op.Consistency, error) {
	rev, err := s.inst.decodeToken(field, t.GetToken())
	if err != nil {
		return op.Consistency{}, err
	}
	return op.Consistency{Mode: mode, Revision: rev, Field: field}, nil
}

// resume parses a paged request's cursor (the page's exact revision and
// the last key or ID returned) or, without one, its consistency.
func (s *Server) resume(c *pb.Cursor, consistency *pb.Consistency, reqHash uint64) (op.Consistency, string, error) {
	if c == nil {
		cons, err := s.consistencyFromProto(consistency)
		return cons, "", err
	}
	return s.resumeCursor(c.GetToken(), reqHash)
}

// resumeCursor decodes a cursor of either API.
func (s *Server) resumeCursor(token string, reqHash uint64) (op.Consistency, string, error) {
	cur, err := s.inst.decodeCursor("optional_cursor", token, reqHash)
	if err != nil {
		return op.Consistency{}, "", err
	}
	return op.Consistency{Mode: op.AtExactSnapshot, Revision: cur.rev, Field: "optional_cursor"}, cur.after, nil
}

// cursorAfter encodes the cursor resuming after key or ID after.
func (s *Server) cursorAfter(rev store.Revision, reqHash uint64, after string) string {
	return s.inst.encodeCursor(cursor{rev: rev, req: reqHash, after: after})
}
