package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// relationshipService serves mandate.v1.RelationshipService over the core.
type relationshipService struct {
	pb.UnimplementedRelationshipServiceServer
	s *Server
}

func (r *relationshipService) WriteRelationships(ctx context.Context, req *pb.WriteRelationshipsRequest) (*pb.WriteRelationshipsResponse, error) {
	updates := req.GetUpdates()
	if len(updates) == 0 {
		return nil, invalid("updates", "at least one update is required")
	}
	pre, err := preconditionsFromProto(req.GetOptionalPreconditions())
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
	out, err := r.s.core.Write(ctx, op.WriteRequest{Preconditions: pre, Mutations: muts})
	if err != nil {
		return nil, err
	}
	return &pb.WriteRelationshipsResponse{WrittenAt: r.s.token(out.Revision)}, nil
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
	if err := r.s.checkFilterNames(ctx, "filter", filter); err != nil {
		return nil, err
	}
	pre, err := preconditionsFromProto(req.GetOptionalPreconditions())
	if err != nil {
		return nil, err
	}
	max := r.s.lim.MaxDeleteLimit
	limit := int(req.GetOptionalLimit())
	if limit == 0 {
		limit = max
	}
	out, err := r.s.core.DeleteMatching(ctx, op.DeleteRequest{Filter: op.Filter{Filter: filter}, Preconditions: pre, Limit: limit})
	if errors.Is(err, store.ErrLimitExceeded) {
		return nil, status.Errorf(codes.FailedPrecondition, "more than %d relationships match the filter; nothing was deleted (raise optional_limit up to %d, or narrow the filter): %v", limit, max, err)
	}
	if err != nil {
		return nil, err
	}
	return &pb.DeleteRelationshipsResponse{DeletedAt: r.s.token(out.Revision), DeletedCount: uint64(out.Deleted)}, nil
}

// resumeRead parses a read or export request's cursor: the consistency to
// read at and the key to resume after (nil: from the start).
func (s *Server) resumeRead(c *pb.Cursor, consistency *pb.Consistency, reqHash uint64) (op.Consistency, *rel.Key, error) {
	cons, after, err := s.resume(c, consistency, reqHash)
	if err != nil || after == "" {
		return cons, nil, err
	}
	key, err := parseKey(after)
	return cons, key, err
}

// parseKey reads the key a read cursor resumes after.
func parseKey(text string) (*rel.Key, error) {
	r, err := rel.Parse(text)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "optional_cursor is malformed: %v", err)
	}
	k := r.Key()
	return &k, nil
}

func (r *relationshipService) ReadRelationships(req *pb.ReadRelationshipsRequest, stream pb.RelationshipService_ReadRelationshipsServer) error {
	ctx := stream.Context()
	filter, err := filterFromProto("filter", req.GetFilter())
	if err != nil {
		return err
	}
	if err := r.s.checkFilterNames(ctx, "filter", filter); err != nil {
		return err
	}
	hash := requestHash(req, func(r *pb.ReadRelationshipsRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	cons, after, err := r.s.resumeRead(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	page, err := r.s.core.Read(ctx, op.ReadRequest{Filter: op.Filter{Filter: filter}, Consistency: cons, After: after, Limit: int(req.GetOptionalLimit())})
	if err != nil {
		return err
	}
	token := r.s.token(page.Revision)
	return r.s.sendReadPage(page, hash, func(err error) error { return err }, func(rl rel.Relationship, cursor string) error {
		prl, err := relationshipToProto(rl)
		if err != nil {
			return err
		}
		return stream.Send(&pb.ReadRelationshipsResponse{ReadAt: token, Relationship: prl, AfterResultCursor: &pb.Cursor{Token: cursor}})
	})
}

// sendReadPage streams a page of a read, each relationship with the cursor
// that resumes after it; fail maps a store error in the API's terms.
func (s *Server) sendReadPage(page op.ReadResult, hash uint64, fail func(error) error, send func(r rel.Relationship, cursor string) error) error {
	for rl, err := range page.Relationships {
		if err != nil {
			return fail(err)
		}
		if err := send(rl, s.cursorAfter(page.Revision, hash, rl.Key().String())); err != nil {
			return err
		}
	}
	return nil
}

// sendExport streams an export's batches, converted by conv, each with the
// cursor that resumes after it; fail maps a store error in the API's terms.
func sendExport[M any](s *Server, exp op.ExportResult, hash uint64, fail func(error) error, conv func(rel.Relationship) (M, error), send func(batch []M, cursor string) error) error {
	for batch, err := range exp.Batches {
		if err != nil {
			return fail(err)
		}
		out := make([]M, len(batch))
		for i, rl := range batch {
			if out[i], err = conv(rl); err != nil {
				return err
			}
		}
		if err := send(out, s.cursorAfter(exp.Revision, hash, batch[len(batch)-1].Key().String())); err != nil {
			return err
		}
	}
	return nil
}

func (r *relationshipService) Watch(req *pb.WatchRequest, stream pb.RelationshipService_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var filters []rel.Filter
	for i, f := range req.GetOptionalFilters() {
		field := fmt.Sprintf("optional_filters[%d]", i)
		rf, err := filterFromProto(field, f)
		if err != nil {
			return err
		}
		if err := r.s.checkFilterNames(ctx, field, rf); err != nil {
			return err
		}
		filters = append(filters, rf)
	}
	wreq := op.WatchRequest{Field: "optional_start_cursor"}
	if t := req.GetOptionalStartCursor(); t != nil {
		rev, err := r.s.inst.decodeToken("optional_start_cursor", t.GetToken())
		if err != nil {
			return err
		}
		wreq.After = &rev
	}
	w, err := r.s.core.Watch(ctx, wreq)
	if err != nil {
		return err
	}
	r.s.endOnShutdown(ctx, cancel)
	for ch, err := range w.Changes {
		if err != nil {
			return err
		}
		var updates []*pb.RelationshipUpdate
		for _, u := range ch.Updates {
			if !matchesAny(filters, u.Rel) {
				continue
			}
			prl, err := relationshipToProto(u.Rel)
			if err != nil {
				return err
			}
			updates = append(updates, &pb.RelationshipUpdate{Operation: opToProto(u.Op), Relationship: prl})
		}
		if len(updates) == 0 && ch.Schema == nil {
			continue
		}
		// A large revision goes out in pieces under the clients' message
		// limit; continues marks all but the last.
		token, schema := r.s.token(ch.Revision), ch.Schema != nil
		for part, last := range sizedChunks(updates, (*pb.RelationshipUpdate).SizeVT, watchMessageBytes) {
			if err := stream.Send(&pb.WatchResponse{Updates: part, ChangesThrough: token, SchemaUpdated: schema, Continues: !last}); err != nil {
				return err
			}
			schema = false
		}
	}
	if err := r.s.shutdownWatchError(); err != nil {
		return err
	}
	return stream.Context().Err()
}

// endOnShutdown cancels a watch when the server shuts down, so that
// graceful stop need not wait for clients to hang up.
func (s *Server) endOnShutdown(ctx context.Context, cancel context.CancelFunc) {
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
}

// shutdownWatchError is a watch's answer when shutdown ended it.
func (s *Server) shutdownWatchError() error {
	select {
	case <-s.stopping:
		return status.Error(codes.Unavailable, "the server is shutting down; resume the watch from the last changes_through token")
	default:
	}
	return nil
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
	loaded, max := 0, r.s.lim.MaxBulkBatch
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
			// committed says what an error leaves behind: earlier batches
			// stay.
			committed := fmt.Sprintf("; %d relationships from %d earlier batches were committed", loaded, batch)
			rels := req.GetRelationships()
			if len(rels) > max {
				yield(nil, invalid(fmt.Sprintf("batch %d: relationships", batch), "%d relationships, at most %d per message (--max-bulk-relationships-batch)%s", len(rels), max, committed))
				return
			}
			muts := make([]store.Mutation, len(rels))
			for i, pr := range rels {
				rl, err := relationshipFromProto(fmt.Sprintf("batch %d: relationships[%d]", batch, i), pr)
				if err != nil {
					st := status.Convert(err)
					yield(nil, status.Error(st.Code(), st.Message()+committed))
					return
				}
				muts[i] = store.Mutation{Op: store.Create, Rel: rl}
			}
			if !yield(muts, nil) {
				return
			}
			loaded += len(muts)
		}
	}
	out, err := r.s.core.Import(ctx, op.ImportRequest{Batches: iter.Seq2[[]store.Mutation, error](batches)})
	if err != nil {
		return err
	}
	return stream.SendAndClose(&pb.ImportRelationshipsResponse{NumLoaded: uint64(out.Loaded), WrittenAt: r.s.token(out.Revision)})
}

func (r *relationshipService) ExportRelationships(req *pb.ExportRelationshipsRequest, stream pb.RelationshipService_ExportRelationshipsServer) error {
	ctx := stream.Context()
	filter, err := filterFromProto("optional_filter", req.GetOptionalFilter())
	if err != nil {
		return err
	}
	if err := r.s.checkFilterNames(ctx, "optional_filter", filter); err != nil {
		return err
	}
	hash := requestHash(req, func(r *pb.ExportRelationshipsRequest) {
		r.OptionalCursor, r.OptionalBatchSize, r.Consistency = nil, 0, nil
	})
	cons, after, err := r.s.resumeRead(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	exp, err := r.s.core.Export(ctx, op.ExportRequest{Filter: op.Filter{Filter: filter}, Consistency: cons, After: after, BatchSize: int(req.GetOptionalBatchSize())})
	if err != nil {
		return err
	}
	token := r.s.token(exp.Revision)
	return sendExport(r.s, exp, hash, func(err error) error { return err }, relationshipToProto, func(batch []*pb.Relationship, cursor string) error {
		return stream.Send(&pb.ExportRelationshipsResponse{Relationships: batch, ExportedAt: token, AfterResultCursor: &pb.Cursor{Token: cursor}})
	})
}
