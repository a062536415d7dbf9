package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

type permissionService struct {
	pb.UnimplementedPermissionServiceServer
	s *Server
}

// checkFromProto parses the parts of a check; prefix names the message for
// errors ("" or "items[3].").
func checkFromProto(prefix string, resource *pb.ObjectReference, permission string, subject *pb.SubjectReference, ctx *structpb.Struct, onBehalfOf *pb.ObjectReference) (engine.CheckRequest, error) {
	res, err := objectFromProto(prefix+"resource", resource)
	if err != nil {
		return engine.CheckRequest{}, err
	}
	if permission == "" {
		return engine.CheckRequest{}, invalid(prefix+"permission", "required")
	}
	sub, err := subjectFromProto(prefix+"subject", subject)
	if err != nil {
		return engine.CheckRequest{}, err
	}
	req := engine.CheckRequest{Resource: res, Permission: permission, Subject: sub, Context: contextFromProto(ctx)}
	if onBehalfOf != nil {
		obo, err := objectFromProto(prefix+"on_behalf_of", onBehalfOf)
		if err != nil {
			return engine.CheckRequest{}, err
		}
		req.OnBehalfOf = &obo
	}
	return req, nil
}

func (p *permissionService) Check(ctx context.Context, req *pb.CheckRequest) (*pb.CheckResponse, error) {
	creq, err := checkFromProto("", req.GetResource(), req.GetPermission(), req.GetSubject(), req.GetContext(), req.GetOnBehalfOf())
	if err != nil {
		return nil, err
	}
	if creq.Revision, err = p.s.engineRevision(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	creq.Explain = req.GetExplain()
	res, err := p.s.eng.Check(ctx, creq)
	if err != nil {
		return nil, err
	}
	p.s.metrics.decision(res.Decision)
	return &pb.CheckResponse{
		CheckedAt:         p.s.token(res.Revision),
		Decision:          decisionToProto(res.Decision),
		MissingParameters: res.Missing,
		Delegation:        delegationToProto(res.Delegation),
	}, nil
}

func (p *permissionService) CheckBulk(ctx context.Context, req *pb.CheckBulkRequest) (*pb.CheckBulkResponse, error) {
	items := req.GetItems()
	if len(items) == 0 {
		return nil, invalid("items", "at least one check is required")
	}
	if max := p.s.lim.MaxCheckBulkItems; len(items) > max {
		return nil, invalid("items", "%d checks, at most %d per CheckBulk (--max-check-bulk-items)", len(items), max)
	}
	rev, err := p.s.engineRevision(ctx, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	if rev == 0 {
		// Pin the revision so every item and the response token agree.
		rev = p.s.eng.Head()
	}
	// The response's messages are allocated in three slices rather than
	// three objects per item: at 100 items a call, allocation and the
	// garbage collector's scanning were a large share of CheckBulk's cost.
	pairs := make([]*pb.CheckBulkPair, len(items))
	pairStore := make([]pb.CheckBulkPair, len(items))
	reqs := make([]engine.CheckRequest, 0, len(items))
	at := make([]int, 0, len(items))
	for i, it := range items {
		pairs[i] = &pairStore[i]
		pairs[i].Request = it
		// Field names are built only for an item that fails: building the
		// "items[i]." prefix for every item was a measurable cost per check.
		creq, err := checkFromProto("", it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), it.GetOnBehalfOf())
		if err != nil {
			_, err = checkFromProto(fmt.Sprintf("items[%d].", i), it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), it.GetOnBehalfOf())
			pairs[i].Response = itemError(err)
			continue
		}
		creq.Revision = rev
		creq.Explain = req.GetExplain()
		reqs = append(reqs, creq)
		at = append(at, i)
	}
	if len(reqs) > 0 {
		results, errs := p.s.eng.CheckBulk(ctx, reqs)
		itemStore := make([]pb.CheckBulkItemResult, len(reqs))
		oneofStore := make([]pb.CheckBulkPair_Item, len(reqs))
		for j, i := range at {
			if errs[j] != nil {
				pairs[i].Response = itemError(fmt.Errorf("items[%d]: %w", i, errs[j]))
				continue
			}
			res := results[j]
			p.s.metrics.decision(res.Decision)
			item := &itemStore[j]
			item.Decision = decisionToProto(res.Decision)
			item.MissingParameters = res.Missing
			item.Delegation = delegationToProto(res.Delegation)
			oneofStore[j].Item = item
			pairs[i].Response = &oneofStore[j]
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &pb.CheckBulkResponse{CheckedAt: p.s.token(rev), Pairs: pairs}, nil
}

func itemError(err error) *pb.CheckBulkPair_Error {
	st := status.Convert(toStatus(err))
	return &pb.CheckBulkPair_Error{Error: &pb.ItemError{Code: int32(st.Code()), Message: st.Message()}}
}

// checkLimit validates a lookup or read limit against the server's maximum.
func checkLimit(field string, limit uint32, max int, flag string) error {
	if int64(limit) > int64(max) {
		return invalid(field, "%d is over the server's maximum of %d (%s)", limit, max, flag)
	}
	return nil
}

// resumeLookup decodes a lookup cursor, returning the revision to answer at
// (the cursor's, so that every page sees the same data) and the last ID
// already returned.
func (s *Server) resumeLookup(ctx context.Context, c *pb.Cursor, consistency *pb.Consistency, reqHash uint64) (store.Revision, string, error) {
	if c == nil {
		rev, err := s.engineRevision(ctx, consistency)
		return rev, "", err
	}
	cur, err := s.inst.decodeCursor("optional_cursor", c.GetToken(), reqHash)
	if err != nil {
		return 0, "", err
	}
	if err := s.waitFor(ctx, cur.rev); err != nil {
		return 0, "", err
	}
	return cur.rev, cur.after, nil
}

// sendLookupPage streams a page of lookup results, each with the cursor that
// resumes after it. The engine has already started after the request's
// cursor and stopped at its limit, evaluating only what the page needs.
func (s *Server) sendLookupPage(results []engine.LookupResult, rev store.Revision, hash uint64, send func(r engine.LookupResult, token *pb.RevisionToken, next *pb.Cursor) error) error {
	token := s.token(rev)
	for _, r := range results {
		if err := send(r, token, &pb.Cursor{Token: s.inst.encodeCursor(cursor{rev: rev, req: hash, after: r.ID})}); err != nil {
			return err
		}
	}
	return nil
}

func (p *permissionService) LookupResources(req *pb.LookupResourcesRequest, stream pb.PermissionService_LookupResourcesServer) error {
	ctx := stream.Context()
	if req.GetResourceObjectType() == "" {
		return invalid("resource_object_type", "required")
	}
	if err := rel.ValidateObject(rel.Object{Type: req.GetResourceObjectType(), ID: "x"}); err != nil {
		return invalid("resource_object_type", "%v", err)
	}
	creq, err := checkFromProto("", &pb.ObjectReference{ObjectType: req.GetResourceObjectType(), ObjectId: "x"}, req.GetPermission(), req.GetSubject(), req.GetContext(), req.GetOnBehalfOf())
	if err != nil {
		return err
	}
	if err := checkLimit("optional_limit", req.GetOptionalLimit(), p.s.lim.MaxLookupLimit, "--max-lookup-limit"); err != nil {
		return err
	}
	hash := requestHash(req, func(r *pb.LookupResourcesRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	rev, after, err := p.s.resumeLookup(ctx, req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	results, rev, err := p.s.eng.LookupResources(ctx, engine.LookupResourcesRequest{
		ResourceType: req.GetResourceObjectType(),
		Permission:   creq.Permission,
		Subject:      creq.Subject,
		Context:      creq.Context,
		OnBehalfOf:   creq.OnBehalfOf,
		Revision:     rev,
		After:        after,
		Limit:        int(req.GetOptionalLimit()),
	})
	if err != nil {
		return err
	}
	return p.s.sendLookupPage(results, rev, hash, func(r engine.LookupResult, token *pb.RevisionToken, next *pb.Cursor) error {
		return stream.Send(&pb.LookupResourcesResponse{
			LookedUpAt:        token,
			ResourceObjectId:  r.ID,
			Decision:          decisionToProto(r.Decision),
			MissingParameters: r.Missing,
			AfterResultCursor: next,
		})
	})
}

func (p *permissionService) LookupSubjects(req *pb.LookupSubjectsRequest, stream pb.PermissionService_LookupSubjectsServer) error {
	ctx := stream.Context()
	res, err := objectFromProto("resource", req.GetResource())
	if err != nil {
		return err
	}
	if req.GetPermission() == "" {
		return invalid("permission", "required")
	}
	if req.GetSubjectObjectType() == "" {
		return invalid("subject_object_type", "required")
	}
	probe := rel.Subject{Type: req.GetSubjectObjectType(), ID: "x", Relation: req.GetOptionalSubjectRelation()}
	if probe.Relation == "..." {
		probe.Relation = ""
	}
	if err := rel.ValidateSubject(probe); err != nil {
		return invalid("subject_object_type", "%v", err)
	}
	if err := checkLimit("optional_limit", req.GetOptionalLimit(), p.s.lim.MaxLookupLimit, "--max-lookup-limit"); err != nil {
		return err
	}
	hash := requestHash(req, func(r *pb.LookupSubjectsRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	rev, after, err := p.s.resumeLookup(ctx, req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	results, rev, err := p.s.eng.LookupSubjects(ctx, engine.LookupSubjectsRequest{
		Resource:        res,
		Permission:      req.GetPermission(),
		SubjectType:     probe.Type,
		SubjectRelation: probe.Relation,
		Context:         contextFromProto(req.GetContext()),
		Revision:        rev,
		After:           after,
		Limit:           int(req.GetOptionalLimit()),
	})
	if err != nil {
		return err
	}
	return p.s.sendLookupPage(results, rev, hash, func(r engine.LookupResult, token *pb.RevisionToken, next *pb.Cursor) error {
		out := &pb.LookupSubjectsResponse{
			LookedUpAt:        token,
			SubjectObjectId:   r.ID,
			Decision:          decisionToProto(r.Decision),
			MissingParameters: r.Missing,
			AfterResultCursor: next,
		}
		for _, x := range r.Excluded {
			out.ExcludedSubjects = append(out.ExcludedSubjects, &pb.ExcludedSubject{
				SubjectObjectId:   x.ID,
				Decision:          decisionToProto(x.Decision),
				MissingParameters: x.Missing,
			})
		}
		return stream.Send(out)
	})
}

func (p *permissionService) Expand(ctx context.Context, req *pb.ExpandRequest) (*pb.ExpandResponse, error) {
	res, err := objectFromProto("resource", req.GetResource())
	if err != nil {
		return nil, err
	}
	if req.GetPermission() == "" {
		return nil, invalid("permission", "required")
	}
	rev, err := p.s.engineRevision(ctx, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	if rev == 0 {
		// Expand reports no revision; pin one so the token is exact.
		rev = p.s.eng.Head()
	}
	tree, err := p.s.eng.Expand(ctx, res, req.GetPermission(), rev, req.GetRecursive())
	if err != nil {
		return nil, err
	}
	out, err := expandToProto(tree)
	if err != nil {
		return nil, err
	}
	return &pb.ExpandResponse{ExpandedAt: p.s.token(rev), Tree: out}, nil
}
