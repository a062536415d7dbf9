package server

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

type relationshipService struct {
	pb.UnimplementedRelationshipServiceServer
	s *Server
}

func (r *relationshipService) WriteRelationships(ctx context.Context, req *pb.WriteRelationshipsRequest) (*pb.WriteRelationshipsResponse, error) {
	updates := req.GetUpdates()
	if len(updates) == 0 {
		return nil, invalid("updates", "at least one update is required")
	}
	if max := r.s.lim.MaxWriteUpdates; len(updates) > max {
		return nil, invalid("updates", "%d updates, at most %d per call (--write-relationships-max-updates-per-call)", len(updates), max)
	}
	pre, err := preconditionsFromProto(req.GetOptionalPreconditions(), r.s.lim.MaxPreconditions)
	if err != nil {
		return nil, err
	}
	muts := make([]store.Mutation, len(updates))
	for i, u := range updates {
		field := fmt.Sprintf("updates[%d]", i)
		op, err := opFromProto(field+".operation", u.GetOperation())
		if err != nil {
			return nil, err
		}
		rl, err := relationshipFromProto(field+".relationship", u.GetRelationship())
		if err != nil {
			return nil, err
		}
		muts[i] = store.Mutation{Op: op, Rel: rl}
	}
	rev, err := r.s.st.Write(ctx, pre, muts)
	if err != nil {
		return nil, err
	}
	return &pb.WriteRelationshipsResponse{WrittenAt: r.s.token(rev)}, nil
}

func (r *relationshipService) DeleteRelationships(ctx context.Context, req *pb.DeleteRelationshipsRequest) (*pb.DeleteRelationshipsResponse, error) {
	if req.GetFilter() == nil {
		return nil, invalid("filter", "required")
	}
	filter, err := filterFromProto("filter", req.GetFilter())
	if err != nil {
		return nil, err
	}
	if filter.ResourceType == "" {
		return nil, invalid("filter.resource_type", "required, so that a delete cannot remove everything by accident")
	}
	pre, err := preconditionsFromProto(req.GetOptionalPreconditions(), r.s.lim.MaxPreconditions)
	if err != nil {
		return nil, err
	}
	max := r.s.lim.MaxDeleteLimit
	limit := int(req.GetOptionalLimit())
	if limit == 0 {
		limit = max
	}
	if limit > max {
		return nil, invalid("optional_limit", "%d is over the server's maximum of %d (--max-delete-relationships-limit)", limit, max)
	}
	rev, n, err := r.s.st.DeleteMatching(ctx, pre, filter, limit)
	if errors.Is(err, store.ErrLimitExceeded) {
		return nil, status.Errorf(codes.FailedPrecondition, "more than %d relationships match the filter; nothing was deleted (raise optional_limit up to %d, or narrow the filter): %v", limit, max, err)
	}
	if err != nil {
		return nil, err
	}
	return &pb.DeleteRelationshipsResponse{DeletedAt: r.s.token(rev), DeletedCount: uint64(n)}, nil
}

// resumeRead decodes a read or export cursor: the revision to read at and the
// last key already returned.
func (s *Server) resumeRead(ctx context.Context, c *pb.Cursor, consistency *pb.Consistency, reqHash uint64) (store.Revision, string, error) {
	if c == nil {
		rev, err := s.storeRevision(ctx, consistency)
		return rev, "", err
	}
	cur, err := s.inst.decodeCursor("optional_cursor", c.GetToken(), reqHash)
	if err != nil {
		return 0, "", err
	}
	return cur.rev, cur.after, nil
}

func (r *relationshipService) ReadRelationships(req *pb.ReadRelationshipsRequest, stream pb.RelationshipService_ReadRelationshipsServer) error {
	ctx := stream.Context()
	filter, err := filterFromProto("filter", req.GetFilter())
	if err != nil {
		return err
	}
	if err := checkLimit("optional_limit", req.GetOptionalLimit(), r.s.lim.MaxReadLimit, "--max-read-relationships-limit"); err != nil {
		return err
	}
	hash := requestHash(req, func(r *pb.ReadRelationshipsRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	rev, after, err := r.s.resumeRead(ctx, req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	token := r.s.token(rev)
	sent := uint32(0)
	limit := req.GetOptionalLimit()
	// The store yields relationships in the order of their text keys, so a
	// cursor holding the last key resumes exactly after it.
	for rl, err := range r.s.st.Read(ctx, rev, filter, nil) {
		if err != nil {
			return err
		}
		key := rl.Key().String()
		if after != "" && key <= after {
			continue
		}
		if limit > 0 && sent >= limit {
			break
		}
		prl, err := relationshipToProto(rl)
		if err != nil {
			return err
		}
		err = stream.Send(&pb.ReadRelationshipsResponse{
			ReadAt:            token,
			Relationship:      prl,
			AfterResultCursor: &pb.Cursor{Token: r.s.inst.encodeCursor(cursor{rev: rev, req: hash, after: key})},
		})
		if err != nil {
			return err
		}
		sent++
	}
	return nil
}

func (r *relationshipService) Watch(req *pb.WatchRequest, stream pb.RelationshipService_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var filters []rel.Filter
	for i, f := range req.GetOptionalFilters() {
		rf, err := filterFromProto(fmt.Sprintf("optional_filters[%d]", i), f)
		if err != nil {
			return err
		}
		filters = append(filters, rf)
	}
	var after store.Revision
	var err error
	if t := req.GetOptionalStartCursor(); t != nil {
		after, err = r.s.decodeRevision(ctx, "optional_start_cursor", t)
	} else {
		after, err = r.s.st.Head(ctx)
	}
	if err != nil {
		return err
	}
	// Shutdown ends watches so that graceful stop need not wait for clients
	// to hang up.
	go func() {
		select {
		case <-r.s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	for ch, err := range r.s.st.Watch(ctx, after) {
		if err != nil {
			return err
		}
		out := &pb.WatchResponse{ChangesThrough: r.s.token(ch.Revision), SchemaUpdated: ch.Schema != nil}
		for _, u := range ch.Updates {
			if !matchesAny(filters, u.Rel) {
				continue
			}
			prl, err := relationshipToProto(u.Rel)
			if err != nil {
				return err
			}
			out.Updates = append(out.Updates, &pb.RelationshipUpdate{Operation: opToProto(u.Op), Relationship: prl})
		}
		if len(out.Updates) == 0 && !out.SchemaUpdated {
			continue
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
	select {
	case <-r.s.stopping:
		return status.Error(codes.Unavailable, "the server is shutting down; resume the watch from the last changes_through token")
	default:
	}
	return stream.Context().Err()
}

func matchesAny(filters []rel.Filter, r rel.Relationship) bool {
	if len(filters) == 0 {
		return true
	}
	for _, f := range filters {
		if f.Matches(r) {
			return true
		}
	}
	return false
}

func (r *relationshipService) ImportRelationships(stream pb.RelationshipService_ImportRelationshipsServer) error {
	ctx := stream.Context()
	var loaded uint64
	var last store.Revision
	for batch := 0; ; batch++ {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		// committed says what an error leaves behind: earlier batches stay.
		committed := fmt.Sprintf("; %d relationships from %d earlier batches were committed", loaded, batch)
		rels := req.GetRelationships()
		if max := r.s.lim.MaxBulkBatch; len(rels) > max {
			return invalid(fmt.Sprintf("batch %d: relationships", batch), "%d relationships, at most %d per message (--max-bulk-relationships-batch)%s", len(rels), max, committed)
		}
		if len(rels) == 0 {
			continue
		}
		muts := make([]store.Mutation, len(rels))
		for i, pr := range rels {
			rl, err := relationshipFromProto(fmt.Sprintf("batch %d: relationships[%d]", batch, i), pr)
			if err != nil {
				st := status.Convert(err)
				return status.Error(st.Code(), st.Message()+committed)
			}
			muts[i] = store.Mutation{Op: store.Create, Rel: rl}
		}
		rev, err := r.s.st.Write(ctx, nil, muts)
		if err != nil {
			return status.Errorf(codeOf(err), "batch %d: %v%s", batch, err, committed)
		}
		loaded += uint64(len(rels))
		last = rev
	}
	if last == 0 {
		head, err := r.s.st.Head(ctx)
		if err != nil {
			return err
		}
		last = head
	}
	return stream.SendAndClose(&pb.ImportRelationshipsResponse{NumLoaded: loaded, WrittenAt: r.s.token(last)})
}

func (r *relationshipService) ExportRelationships(req *pb.ExportRelationshipsRequest, stream pb.RelationshipService_ExportRelationshipsServer) error {
	ctx := stream.Context()
	filter, err := filterFromProto("optional_filter", req.GetOptionalFilter())
	if err != nil {
		return err
	}
	max := r.s.lim.MaxBulkBatch
	size := int(req.GetOptionalBatchSize())
	if size == 0 {
		size = max
	}
	if size > max {
		return invalid("optional_batch_size", "%d is over the server's maximum of %d (--max-bulk-relationships-batch)", size, max)
	}
	hash := requestHash(req, func(r *pb.ExportRelationshipsRequest) {
		r.OptionalCursor, r.OptionalBatchSize, r.Consistency = nil, 0, nil
	})
	rev, after, err := r.s.resumeRead(ctx, req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	token := r.s.token(rev)
	batch := make([]*pb.Relationship, 0, size)
	lastKey := ""
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&pb.ExportRelationshipsResponse{
			Relationships:     batch,
			ExportedAt:        token,
			AfterResultCursor: &pb.Cursor{Token: r.s.inst.encodeCursor(cursor{rev: rev, req: hash, after: lastKey})},
		})
		batch = make([]*pb.Relationship, 0, size)
		return err
	}
	for rl, err := range r.s.st.Read(ctx, rev, filter, nil) {
		if err != nil {
			return err
		}
		key := rl.Key().String()
		if after != "" && key <= after {
			continue
		}
		prl, err := relationshipToProto(rl)
		if err != nil {
			return err
		}
		batch = append(batch, prl)
		lastKey = key
		if len(batch) == size {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
