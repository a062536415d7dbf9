package server

import (
	"context"
	"errors"
	"fmt"
	"io"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// maxTransactionMetadataBytes is SpiceDB's bound on a write's transaction
// metadata. Mandate accepts the field for compatibility but does not keep it.
const maxTransactionMetadataBytes = 65000

func checkTransactionMetadata(req interface {
	GetOptionalTransactionMetadata() *structpb.Struct
}) error {
	m := req.GetOptionalTransactionMetadata()
	if m == nil {
		return nil
	}
	b, err := m.MarshalJSON()
	if err != nil {
		return invalid("optional_transaction_metadata", "%v", err)
	}
	if len(b) > maxTransactionMetadataBytes {
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TRANSACTION_METADATA_TOO_LARGE,
			"metadata size of %d is greater than maximum allowed of %d", len(b), maxTransactionMetadataBytes)
	}
	return nil
}

func (p *authzedPermissions) WriteRelationships(ctx context.Context, req *v1.WriteRelationshipsRequest) (*v1.WriteRelationshipsResponse, error) {
	if err := validateAuthzed(req); err != nil {
		return nil, err
	}
	if err := checkTransactionMetadata(req); err != nil {
		return nil, err
	}
	updates := req.GetUpdates()
	if max := p.s.lim.MaxWriteUpdates; len(updates) > max {
		return nil, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST,
			"too many updates (%d) for WriteRelationships call (maximum: %d, --write-relationships-max-updates-per-call); consider using ImportBulkRelationships API instead", len(updates), max)
	}
	var pre []store.Precondition
	if len(req.GetOptionalPreconditions()) > 0 {
		sch, err := p.s.headSchema(ctx)
		if err != nil {
			return nil, err
		}
		if pre, err = preconditionsFromV1(sch, req.GetOptionalPreconditions(), p.s.lim.MaxPreconditions); err != nil {
			return nil, err
		}
	}
	muts := make([]store.Mutation, len(updates))
	seen := make(map[rel.Key]int, len(updates))
	for i, u := range updates {
		field := fmt.Sprintf("updates[%d]", i)
		op, err := opFromV1(field+".operation", u.GetOperation())
		if err != nil {
			return nil, err
		}
		rl, err := relationshipFromV1(field+".relationship", u.GetRelationship())
		if err != nil {
			return nil, err
		}
		if j, dup := seen[rl.Key()]; dup {
			return nil, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_UPDATES_ON_SAME_RELATIONSHIP,
				"found more than one update with relationship `%s` in this request (updates[%d] and %s); a relationship can only be specified in an update once per overall WriteRelationships request", rl.Key(), j, field)
		}
		seen[rl.Key()] = i
		muts[i] = store.Mutation{Op: op, Rel: rl}
	}
	rev, err := p.s.st.Write(ctx, pre, muts)
	if err != nil {
		return nil, p.s.classifyWriteError(ctx, err, muts)
	}
	return &v1.WriteRelationshipsResponse{WrittenAt: p.s.zedToken(rev)}, nil
}

func (p *authzedPermissions) DeleteRelationships(ctx context.Context, req *v1.DeleteRelationshipsRequest) (*v1.DeleteRelationshipsResponse, error) {
	if err := validateAuthzed(req); err != nil {
		return nil, err
	}
	if err := checkTransactionMetadata(req); err != nil {
		return nil, err
	}
	if err := checkPreconditionCount(len(req.GetOptionalPreconditions()), p.s.lim.MaxPreconditions); err != nil {
		return nil, err
	}
	limit := int(req.GetOptionalLimit())
	if limit > p.s.lim.MaxDeleteLimit {
		return nil, limitError(req.GetOptionalLimit(), p.s.lim.MaxDeleteLimit, "--max-delete-relationships-limit")
	}
	sch, err := p.s.headSchema(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkFilter(sch, req.GetRelationshipFilter()); err != nil {
		return nil, err
	}
	pre, err := preconditionsFromV1(sch, req.GetOptionalPreconditions(), p.s.lim.MaxPreconditions)
	if err != nil {
		return nil, err
	}
	f, err := filterFromV1("relationship_filter", req.GetRelationshipFilter())
	if err != nil {
		return nil, err
	}
	if f.prefix != "" {
		// The store filters by whole IDs: resolve the prefix to the IDs
		// that now match it, and delete by those.
		ids, err := p.s.idsWithPrefix(ctx, f)
		if err != nil {
			return nil, err
		}
		if len(ids) == 0 {
			// Nothing matches; the preconditions still decide the answer.
			rev, err := p.s.st.Write(ctx, pre, nil)
			if err != nil {
				return nil, authzedStatus(err)
			}
			return &v1.DeleteRelationshipsResponse{DeletedAt: p.s.zedToken(rev), DeletionProgress: v1.DeleteRelationshipsResponse_DELETION_PROGRESS_COMPLETE}, nil
		}
		f.ResourceIDs, f.prefix = ids, ""
	}
	// optional_limit 0 deletes every match, as in SpiceDB.
	rev, n, err := p.s.st.DeleteMatching(ctx, pre, f.Filter, limit)
	progress := v1.DeleteRelationshipsResponse_DELETION_PROGRESS_COMPLETE
	switch {
	case errors.Is(err, store.ErrLimitExceeded) && req.GetOptionalAllowPartialDeletions():
		rev, n, err = p.s.deleteFirst(ctx, pre, f.Filter, limit)
		progress = v1.DeleteRelationshipsResponse_DELETION_PROGRESS_PARTIAL
	case errors.Is(err, store.ErrLimitExceeded):
		return nil, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_RELATIONSHIPS_FOR_TRANSACTIONAL_DELETE,
			"found more than %d relationships to be deleted and partial deletion was not requested; nothing was deleted", limit)
	case err == nil && limit > 0 && n == limit:
		// SpiceDB reports a deletion that reached the limit as partial,
		// even when nothing more matched.
		progress = v1.DeleteRelationshipsResponse_DELETION_PROGRESS_PARTIAL
	}
	if err != nil {
		return nil, authzedStatus(err)
	}
	return &v1.DeleteRelationshipsResponse{DeletedAt: p.s.zedToken(rev), DeletionProgress: progress, RelationshipsDeletedCount: uint64(n)}, nil
}

// idsWithPrefix lists the resource IDs at the store's head that match a
// filter with an ID prefix.
func (s *Server) idsWithPrefix(ctx context.Context, f v1Filter) ([]string, error) {
	head, err := s.st.Head(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	seen := map[string]bool{}
	for r, err := range s.st.Read(ctx, head, f.Filter, nil) {
		if err != nil {
			return nil, authzedStatus(err)
		}
		if f.matches(r) && !seen[r.Resource.ID] {
			seen[r.Resource.ID] = true
			ids = append(ids, r.Resource.ID)
		}
	}
	return ids, nil
}

// deleteFirst deletes the first limit relationships (in key order) matching
// filter, for a partial deletion: one write of their keys under the
// preconditions.
func (s *Server) deleteFirst(ctx context.Context, pre []store.Precondition, filter rel.Filter, limit int) (store.Revision, int, error) {
	head, err := s.st.Head(ctx)
	if err != nil {
		return 0, 0, err
	}
	muts := make([]store.Mutation, 0, limit)
	for r, err := range s.st.Read(ctx, head, filter, nil) {
		if err != nil {
			return 0, 0, err
		}
		muts = append(muts, store.Mutation{Op: store.Delete, Rel: r})
		if len(muts) == limit {
			break
		}
	}
	rev, err := s.st.Write(ctx, pre, muts)
	return rev, len(muts), err
}

func (p *authzedPermissions) ReadRelationships(req *v1.ReadRelationshipsRequest, stream v1.PermissionsService_ReadRelationshipsServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	if limit := req.GetOptionalLimit(); int64(limit) > int64(p.s.lim.MaxReadLimit) {
		return limitError(limit, p.s.lim.MaxReadLimit, "--max-read-relationships-limit")
	}
	hash := requestHash(req, func(r *v1.ReadRelationshipsRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	rev, after, err := p.s.resumeV1(ctx, req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	sch, err := p.s.schemaAt(ctx, rev)
	if err != nil {
		return err
	}
	if err := checkFilter(sch, req.GetRelationshipFilter()); err != nil {
		return err
	}
	f, err := filterFromV1("relationship_filter", req.GetRelationshipFilter())
	if err != nil {
		return err
	}
	token := p.s.zedToken(rev)
	sent := uint32(0)
	limit := req.GetOptionalLimit()
	// The store yields relationships in the order of their text keys, so a
	// cursor holding the last key resumes exactly after it.
	for rl, err := range p.s.st.Read(ctx, rev, f.Filter, nil) {
		if err != nil {
			return authzedStatus(err)
		}
		key := rl.Key().String()
		if (after != "" && key <= after) || !f.matches(rl) {
			continue
		}
		if limit > 0 && sent >= limit {
			break
		}
		out, err := relationshipToV1(rl)
		if err != nil {
			return err
		}
		err = stream.Send(&v1.ReadRelationshipsResponse{
			ReadAt:            token,
			Relationship:      out,
			AfterResultCursor: &v1.Cursor{Token: p.s.inst.encodeCursor(cursor{rev: rev, req: hash, after: key})},
		})
		if err != nil {
			return err
		}
		sent++
	}
	return nil
}

// resumeV1 decodes a read or export cursor: the revision to read at (the
// cursor's, so every page sees the same data) and the last key returned.
func (s *Server) resumeV1(ctx context.Context, c *v1.Cursor, consistency *v1.Consistency, hash uint64) (store.Revision, string, error) {
	if c == nil {
		rev, err := s.authzedStoreRevision(ctx, consistency)
		return rev, "", err
	}
	cur, err := s.inst.decodeCursor("optional_cursor", c.GetToken(), hash)
	if err != nil {
		return 0, "", err
	}
	return cur.rev, cur.after, nil
}

func (p *authzedPermissions) ImportBulkRelationships(stream v1.PermissionsService_ImportBulkRelationshipsServer) error {
	ctx := stream.Context()
	// SpiceDB loads a whole stream in one transaction; so does Mandate, up
	// to the store's bound on one write.
	var muts []store.Mutation
	for batch := 0; ; batch++ {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := validateAuthzed(req); err != nil {
			return status.Errorf(codes.InvalidArgument, "batch %d: %s", batch, status.Convert(err).Message())
		}
		rels := req.GetRelationships()
		if len(muts)+len(rels) > store.MaxMutationsPerWrite {
			return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST,
				"batch %d: more than %d relationships in one ImportBulkRelationships stream, which Mandate commits as one transaction; nothing was imported: split the import into several streams (zed: --batches-per-transaction)", batch, store.MaxMutationsPerWrite)
		}
		for i, pr := range rels {
			rl, err := relationshipFromV1(fmt.Sprintf("batch %d: relationships[%d]", batch, i), pr)
			if err != nil {
				return err
			}
			muts = append(muts, store.Mutation{Op: store.Create, Rel: rl})
		}
	}
	if len(muts) > 0 {
		if _, err := p.s.st.Write(ctx, nil, muts); err != nil {
			err = p.s.classifyWriteError(ctx, err, muts)
			return status.Errorf(status.Code(err), "importing %d relationships; nothing was imported: %s", len(muts), status.Convert(err).Message())
		}
	}
	return stream.SendAndClose(&v1.ImportBulkRelationshipsResponse{NumLoaded: uint64(len(muts))})
}

func (p *authzedPermissions) ExportBulkRelationships(req *v1.ExportBulkRelationshipsRequest, stream v1.PermissionsService_ExportBulkRelationshipsServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	max := p.s.lim.MaxBulkBatch
	size := int(req.GetOptionalLimit())
	if size > max {
		return limitError(req.GetOptionalLimit(), max, "--max-bulk-relationships-batch")
	}
	if size == 0 {
		size = max
	}
	f, err := filterFromV1("optional_relationship_filter", req.GetOptionalRelationshipFilter())
	if err != nil {
		return err
	}
	hash := requestHash(req, func(r *v1.ExportBulkRelationshipsRequest) {
		r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil
	})
	rev, after, err := p.s.resumeV1(ctx, req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	batch := make([]*v1.Relationship, 0, size)
	lastKey := ""
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&v1.ExportBulkRelationshipsResponse{
			Relationships:     batch,
			AfterResultCursor: &v1.Cursor{Token: p.s.inst.encodeCursor(cursor{rev: rev, req: hash, after: lastKey})},
		})
		batch = make([]*v1.Relationship, 0, size)
		return err
	}
	for rl, err := range p.s.st.Read(ctx, rev, f.Filter, nil) {
		if err != nil {
			return authzedStatus(err)
		}
		key := rl.Key().String()
		if (after != "" && key <= after) || !f.matches(rl) {
			continue
		}
		out, err := relationshipToV1(rl)
		if err != nil {
			return err
		}
		batch = append(batch, out)
		lastKey = key
		if len(batch) == size {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
