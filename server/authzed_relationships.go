package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/op"
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
		// SpiceDB checks its limits before the schema; the core checks
		// them again for every API.
		return nil, authzedLimitStatus(&op.LimitError{Limit: op.LimitWriteUpdates, Got: len(updates), Max: max})
	}
	if n, max := len(req.GetOptionalPreconditions()), p.s.lim.MaxPreconditions; n > max {
		return nil, authzedLimitStatus(&op.LimitError{Limit: op.LimitPreconditions, Got: n, Max: max})
	}
	var pre []store.Precondition
	if len(req.GetOptionalPreconditions()) > 0 {
		sch, err := p.s.core.HeadSchema(ctx)
		if err != nil {
			return nil, authzedStatus(err)
		}
		if pre, err = preconditionsFromV1(sch, req.GetOptionalPreconditions()); err != nil {
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
	out, err := p.s.core.Write(ctx, op.WriteRequest{Preconditions: pre, Mutations: muts})
	if err != nil {
		return nil, p.s.classifyWriteError(ctx, err, muts)
	}
	return &v1.WriteRelationshipsResponse{WrittenAt: p.s.zedToken(out.Revision)}, nil
}

func (p *authzedPermissions) DeleteRelationships(ctx context.Context, req *v1.DeleteRelationshipsRequest) (*v1.DeleteRelationshipsResponse, error) {
	if err := validateAuthzed(req); err != nil {
		return nil, err
	}
	if err := checkTransactionMetadata(req); err != nil {
		return nil, err
	}
	if n, max := len(req.GetOptionalPreconditions()), p.s.lim.MaxPreconditions; n > max {
		// Before they are checked against the schema.
		return nil, authzedLimitStatus(&op.LimitError{Limit: op.LimitPreconditions, Got: n, Max: max})
	}
	limit := int(req.GetOptionalLimit())
	if max := p.s.lim.MaxDeleteLimit; limit > max {
		return nil, authzedLimitStatus(&op.LimitError{Limit: op.LimitDelete, Got: limit, Max: max})
	}
	sch, err := p.s.core.HeadSchema(ctx)
	if err != nil {
		return nil, authzedStatus(err)
	}
	if err := checkFilter(sch, req.GetRelationshipFilter()); err != nil {
		return nil, err
	}
	pre, err := preconditionsFromV1(sch, req.GetOptionalPreconditions())
	if err != nil {
		return nil, err
	}
	f, err := filterFromV1("relationship_filter", req.GetRelationshipFilter())
	if err != nil {
		return nil, err
	}
	// optional_limit 0 deletes every match, as in SpiceDB.
	out, err := p.s.core.DeleteMatching(ctx, op.DeleteRequest{Filter: f, Preconditions: pre, Limit: limit, AllowPartial: req.GetOptionalAllowPartialDeletions()})
	if errors.Is(err, store.ErrLimitExceeded) {
		return nil, authzedErrInfo(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_RELATIONSHIPS_FOR_TRANSACTIONAL_DELETE,
			deleteLimitMetadata(req.GetRelationshipFilter(), limit),
			"found more than %d relationships to be deleted and partial deletion was not requested; nothing was deleted", limit)
	}
	if err != nil {
		return nil, authzedStatus(err)
	}
	progress := v1.DeleteRelationshipsResponse_DELETION_PROGRESS_COMPLETE
	if out.Partial || (limit > 0 && out.Deleted == limit) {
		// SpiceDB reports a deletion that reached the limit as partial,
		// even when nothing more matched.
		progress = v1.DeleteRelationshipsResponse_DELETION_PROGRESS_PARTIAL
	}
	return &v1.DeleteRelationshipsResponse{DeletedAt: p.s.zedToken(out.Revision), DeletionProgress: progress, RelationshipsDeletedCount: uint64(out.Deleted)}, nil
}

// deleteLimitMetadata is the ErrorInfo metadata SpiceDB sends with a
// delete over its limit: the limit and the filter, keys present only for
// the filter's set fields.
func deleteLimitMetadata(f *v1.RelationshipFilter, limit int) map[string]string {
	md := map[string]string{"limit": strconv.Itoa(limit), "filter_resource_type": f.GetResourceType()}
	set := func(key, value string) {
		if value != "" {
			md[key] = value
		}
	}
	set("filter_resource_id", f.GetOptionalResourceId())
	set("filter_relation", f.GetOptionalRelation())
	if sf := f.GetOptionalSubjectFilter(); sf != nil {
		md["filter_subject_type"] = sf.GetSubjectType()
		set("filter_subject_id", sf.GetOptionalSubjectId())
		if r := sf.GetOptionalRelation(); r != nil {
			md["filter_subject_relation"] = r.GetRelation()
		}
	}
	return md
}

// resumeReadV1 parses a read or export request's cursor: the consistency
// to read at and the key to resume after (nil: from the start).
func (s *Server) resumeReadV1(c *v1.Cursor, consistency *v1.Consistency, reqHash uint64) (op.Consistency, *rel.Key, error) {
	cons, after, err := s.resumeV1(c, consistency, reqHash)
	if err != nil || after == "" {
		return cons, nil, err
	}
	key, err := parseKey(after)
	return cons, key, err
}

func (p *authzedPermissions) ReadRelationships(req *v1.ReadRelationshipsRequest, stream v1.PermissionsService_ReadRelationshipsServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	hash := requestHash(req, func(r *v1.ReadRelationshipsRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	cons, after, err := p.s.resumeReadV1(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	f, err := filterFromV1("relationship_filter", req.GetRelationshipFilter())
	if err != nil {
		return err
	}
	// SpiceDB checks the filter's names against the schema the read is
	// answered at.
	var sch *schema.Schema
	if cons.Mode == op.AtExactSnapshot {
		sch, err = p.s.core.Schema(ctx, cons.Revision)
	} else {
		sch, err = p.s.core.HeadSchema(ctx)
	}
	if err != nil {
		return authzedStatus(err)
	}
	if err := checkFilter(sch, req.GetRelationshipFilter()); err != nil {
		return err
	}
	page, err := p.s.core.Read(ctx, op.ReadRequest{Filter: f, Consistency: cons, After: after, Limit: int(req.GetOptionalLimit())})
	if err != nil {
		return authzedStatus(err)
	}
	token := p.s.zedToken(page.Revision)
	return p.s.sendReadPage(page, hash, authzedStatus, func(rl rel.Relationship, cursor string) error {
		out, err := relationshipToV1(rl)
		if err != nil {
			return err
		}
		return stream.Send(&v1.ReadRelationshipsResponse{ReadAt: token, Relationship: out, AfterResultCursor: &v1.Cursor{Token: cursor}})
	})
}

func (p *authzedPermissions) ImportBulkRelationships(stream v1.PermissionsService_ImportBulkRelationshipsServer) error {
	ctx := stream.Context()
	// SpiceDB loads a whole stream in one transaction; so does Mandate, up
	// to the store's bound on one write.
	var muts []store.Mutation
	received := 0
	batches := func(yield func([]store.Mutation, error) bool) {
		for batch := 0; ; batch++ {
			req, err := stream.Recv()
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if err := validateAuthzed(req); err != nil {
				yield(nil, status.Errorf(codes.InvalidArgument, "batch %d: %s", batch, status.Convert(err).Message()))
				return
			}
			rels := req.GetRelationships()
			if received+len(rels) > store.MaxMutationsPerWrite {
				yield(nil, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_UPDATES_IN_REQUEST,
					"batch %d: more than %d relationships in one ImportBulkRelationships stream, which Mandate commits as one transaction; nothing was imported: split the import into several streams (zed: --batches-per-transaction)", batch, store.MaxMutationsPerWrite))
				return
			}
			received += len(rels)
			b := make([]store.Mutation, len(rels))
			for i, pr := range rels {
				rl, err := relationshipFromV1(fmt.Sprintf("batch %d: relationships[%d]", batch, i), pr)
				if err != nil {
					yield(nil, err)
					return
				}
				b[i] = store.Mutation{Op: store.Create, Rel: rl}
			}
			muts = append(muts, b...)
			if !yield(b, nil) {
				return
			}
		}
	}
	out, err := p.s.core.Import(ctx, op.ImportRequest{Batches: batches, Atomic: true})
	var imp *op.ImportError
	if errors.As(err, &imp) {
		err = p.s.classifyWriteError(ctx, imp.Err, muts)
		return status.Errorf(status.Code(err), "importing %d relationships; nothing was imported: %s", len(muts), status.Convert(err).Message())
	}
	if err != nil {
		return authzedStatus(err)
	}
	return stream.SendAndClose(&v1.ImportBulkRelationshipsResponse{NumLoaded: uint64(out.Loaded)})
}

func (p *authzedPermissions) ExportBulkRelationships(req *v1.ExportBulkRelationshipsRequest, stream v1.PermissionsService_ExportBulkRelationshipsServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	f, err := filterFromV1("optional_relationship_filter", req.GetOptionalRelationshipFilter())
	if err != nil {
		return err
	}
	hash := requestHash(req, func(r *v1.ExportBulkRelationshipsRequest) {
		r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil
	})
	cons, after, err := p.s.resumeReadV1(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	exp, err := p.s.core.Export(ctx, op.ExportRequest{Filter: f, Consistency: cons, After: after, BatchSize: int(req.GetOptionalLimit())})
	if err != nil {
		return authzedStatus(err)
	}
	return sendExport(p.s, exp, hash, authzedStatus, relationshipToV1, func(batch []*v1.Relationship, cursor string) error {
		return stream.Send(&v1.ExportBulkRelationshipsResponse{Relationships: batch, AfterResultCursor: &v1.Cursor{Token: cursor}})
	})
}
