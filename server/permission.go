package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// permissionService serves mandate.v1.PermissionService: conversion to and
// from the core's requests, and mandate.v1's error wording (toStatus).
type permissionService struct {
	pb.UnimplementedPermissionServiceServer
	s *Server
}

// checkFromProto parses the parts of a check; prefix names the message for
// errors ("" or "items[3].").
func checkFromProto(prefix string, resource *pb.ObjectReference, permission string, subject *pb.SubjectReference, ctx *structpb.Struct, onBehalfOf *pb.ObjectReference) (op.CheckRequest, error) {
	res, err := objectFromProto(prefix+"resource", resource)
	if err != nil {
		return op.CheckRequest{}, err
	}
	if permission == "" {
		return op.CheckRequest{}, invalid(prefix+"permission", "required")
	}
	sub, err := subjectFromProto(prefix+"subject", subject)
	if err != nil {
		return op.CheckRequest{}, err
	}
	req := op.CheckRequest{Resource: res, Permission: permission, Subject: sub, Context: contextFromProto(ctx)}
	if onBehalfOf != nil {
		obo, err := objectFromProto(prefix+"on_behalf_of", onBehalfOf)
		if err != nil {
			return op.CheckRequest{}, err
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
	if creq.Consistency, err = p.s.consistencyFromProto(req.GetConsistency()); err != nil {
		return nil, err
	}
	creq.Explain = req.GetExplain()
	creq.CapabilityToken = req.GetCapabilityToken()
	creq.ApprovalID = req.GetApprovalId()
	if creq.Contextual, err = contextualFromProto(req.GetContextualRelationships()); err != nil {
		return nil, err
	}
	res, err := p.s.core.Check(ctx, creq)
	if err != nil {
		return nil, err
	}
	resp := &pb.CheckResponse{
		CheckedAt:         p.s.token(res.Revision),
		Decision:          checkDecisionToProto(res),
		MissingParameters: res.Missing,
		Delegation:        delegationToProto(res.Delegation),
		Token:             tokenExplanationToProto(res.Token),
		Approval:          approvalContextToProto(res.Approval),
	}
	if creq.Explain {
		// The request's own messages, as it sent them.
		resp.ContextualRelationships = req.GetContextualRelationships()
	}
	return resp, nil
}

// contextualFromProto parses a request's contextual relationships; the
// core validates them against the schema.
func contextualFromProto(rs []*pb.Relationship) ([]rel.Relationship, error) {
	if len(rs) == 0 {
		return nil, nil
	}
	out := make([]rel.Relationship, len(rs))
	for i, r := range rs {
		var err error
		if out[i], err = relationshipFromProto(fmt.Sprintf("contextual_relationships[%d]", i), r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (p *permissionService) CheckBulk(ctx context.Context, req *pb.CheckBulkRequest) (*pb.CheckBulkResponse, error) {
	items := req.GetItems()
	if len(items) == 0 {
		return nil, invalid("items", "at least one check is required")
	}
	cons, err := p.s.consistencyFromProto(req.GetConsistency())
	if err != nil {
		return nil, err
	}
	breq := op.CheckBulkRequest{Items: make([]op.CheckItem, len(items)), Consistency: cons, Explain: req.GetExplain()}
	contextual, err := contextualFromProto(req.GetContextualRelationships())
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		// Field names are built only for an item that fails: building the
		// "items[i]." prefix for every item was a measurable cost per check.
		creq, err := checkFromProto("", it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), it.GetOnBehalfOf())
		if err != nil {
			_, err = checkFromProto(fmt.Sprintf("items[%d].", i), it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), it.GetOnBehalfOf())
		}
		creq.CapabilityToken = req.GetCapabilityToken()
		creq.ApprovalID = it.GetApprovalId()
		creq.Contextual = contextual
		breq.Items[i] = op.CheckItem{CheckRequest: creq, Err: err}
	}
	out, err := p.s.core.CheckBulk(ctx, breq)
	if err != nil {
		return nil, err
	}
	// The response's messages are allocated in three slices rather than
	// three objects per item: at 100 items a call, allocation and the
	// garbage collector's scanning were a large share of CheckBulk's cost.
	pairs := make([]*pb.CheckBulkPair, len(items))
	pairStore := make([]pb.CheckBulkPair, len(items))
	itemStore := make([]pb.CheckBulkItemResult, len(items))
	oneofStore := make([]pb.CheckBulkPair_Item, len(items))
	for i, res := range out.Items {
		pairs[i] = &pairStore[i]
		pairs[i].Request = items[i]
		if res.Err != nil {
			err := res.Err
			if breq.Items[i].Err == nil {
				err = fmt.Errorf("items[%d]: %w", i, err) // the engine's, not the parser's
			}
			pairs[i].Response = itemError(err)
			continue
		}
		item := &itemStore[i]
		item.Decision = checkDecisionToProto(res.CheckResult)
		item.MissingParameters = res.Missing
		item.Delegation = delegationToProto(res.Delegation)
		item.Token = tokenExplanationToProto(res.Token)
		item.Approval = approvalContextToProto(res.Approval)
		oneofStore[i].Item = item
		pairs[i].Response = &oneofStore[i]
	}
	return &pb.CheckBulkResponse{CheckedAt: p.s.token(out.Revision), Pairs: pairs}, nil
}

func itemError(err error) *pb.CheckBulkPair_Error {
	st := status.Convert(toStatus(err))
	return &pb.CheckBulkPair_Error{Error: &pb.ItemError{Code: int32(st.Code()), Message: st.Message()}}
}

// sendLookupPage streams a page of lookup results, each with the cursor that
// resumes after it. The engine has already started after the request's
// cursor and stopped at its limit, evaluating only what the page needs.
func (s *Server) sendLookupPage(results []engine.LookupResult, rev store.Revision, hash uint64, send func(r engine.LookupResult, token *pb.RevisionToken, next *pb.Cursor) error) error {
	token := s.token(rev)
	for _, r := range results {
		if err := send(r, token, &pb.Cursor{Token: s.cursorAfter(rev, hash, r.ID)}); err != nil {
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
	contextual, err := contextualFromProto(req.GetContextualRelationships())
	if err != nil {
		return err
	}
	// A cursor resumes after an ID either way, batched or not.
	hash := requestHash(req, func(r *pb.LookupResourcesRequest) {
		r.OptionalCursor, r.OptionalLimit, r.Consistency, r.BatchResults = nil, 0, nil, false
	})
	cons, after, err := p.s.resume(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	var token *pb.RevisionToken
	var sendErr error
	err = p.s.core.StreamLookupResources(ctx, op.LookupResourcesRequest{
		ResourceType:    req.GetResourceObjectType(),
		Permission:      creq.Permission,
		Subject:         creq.Subject,
		Context:         creq.Context,
		OnBehalfOf:      creq.OnBehalfOf,
		Consistency:     cons,
		After:           after,
		Limit:           int(req.GetOptionalLimit()),
		Contextual:      contextual,
		CapabilityToken: req.GetCapabilityToken(),
	}, func(rev store.Revision, results []engine.LookupResult) error {
		if token == nil {
			token = p.s.token(rev) // one revision for the whole lookup
		}
		if req.GetBatchResults() {
			sendErr = stream.Send(lookupBatch(token, p.s.cursorAfter(rev, hash, results[len(results)-1].ID), results))
			return sendErr
		}
		// A batch's messages in three allocations; gRPC encodes each
		// before Send returns.
		cursors := p.s.cursorsAfter(rev, hash, results)
		msgs := make([]pb.LookupResourcesResponse, len(results))
		next := make([]pb.Cursor, len(results))
		for i, r := range results {
			next[i].Token = cursors[i]
			m := &msgs[i]
			m.LookedUpAt, m.ResourceObjectId, m.Decision, m.MissingParameters, m.AfterResultCursor =
				token, r.ID, decisionToProto(r.Decision), r.Missing, &next[i]
			if sendErr = stream.Send(m); sendErr != nil {
				return sendErr
			}
		}
		return nil
	})
	if sendErr != nil {
		return sendErr
	}
	return err
}

// lookupBatch is one batched LookupResources response (batch_results):
// the engine's batch of results, resuming after the last.
func lookupBatch(token *pb.RevisionToken, next string, results []engine.LookupResult) *pb.LookupResourcesResponse {
	items := make([]pb.LookedUpResource, len(results))
	m := &pb.LookupResourcesResponse{LookedUpAt: token, AfterResultCursor: &pb.Cursor{Token: next}, Results: make([]*pb.LookedUpResource, len(results))}
	for i, r := range results {
		items[i].ResourceObjectId, items[i].Decision, items[i].MissingParameters = r.ID, decisionToProto(r.Decision), r.Missing
		m.Results[i] = &items[i]
	}
	return m
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
	contextual, err := contextualFromProto(req.GetContextualRelationships())
	if err != nil {
		return err
	}
	hash := requestHash(req, func(r *pb.LookupSubjectsRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	cons, after, err := p.s.resume(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	out, err := p.s.core.LookupSubjects(ctx, op.LookupSubjectsRequest{
		Resource:        res,
		Permission:      req.GetPermission(),
		SubjectType:     probe.Type,
		SubjectRelation: probe.Relation,
		Context:         contextFromProto(req.GetContext()),
		Consistency:     cons,
		After:           after,
		Limit:           int(req.GetOptionalLimit()),
		Contextual:      contextual,
	})
	if err != nil {
		return err
	}
	return p.s.sendLookupPage(out.Results, out.Revision, hash, func(r engine.LookupResult, token *pb.RevisionToken, next *pb.Cursor) error {
		resp := &pb.LookupSubjectsResponse{
			LookedUpAt:        token,
			SubjectObjectId:   r.ID,
			Decision:          decisionToProto(r.Decision),
			MissingParameters: r.Missing,
			AfterResultCursor: next,
		}
		for _, x := range r.Excluded {
			resp.ExcludedSubjects = append(resp.ExcludedSubjects, &pb.ExcludedSubject{
				SubjectObjectId:   x.ID,
				Decision:          decisionToProto(x.Decision),
				MissingParameters: x.Missing,
			})
		}
		return stream.Send(resp)
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
	cons, err := p.s.consistencyFromProto(req.GetConsistency())
	if err != nil {
		return nil, err
	}
	out, err := p.s.core.Expand(ctx, op.ExpandRequest{Resource: res, Permission: req.GetPermission(), Consistency: cons, Recursive: req.GetRecursive()})
	if err != nil {
		return nil, err
	}
	tree, err := expandToProto(out.Tree)
	if err != nil {
		return nil, err
	}
	return &pb.ExpandResponse{ExpandedAt: p.s.token(out.Revision), Tree: tree}, nil
}
