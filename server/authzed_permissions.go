package server

//lint:file-ignore SA1019 LookupSubjects fills the deprecated flat fields too, as SpiceDB does, for older clients.

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// authzedPermissions serves authzed.api.v1.PermissionsService; its
// relationship methods are in authzed_relationships.go.
type authzedPermissions struct {
	v1.UnimplementedPermissionsServiceServer
	s *Server
}

// checkFromV1 builds a check; prefix names the message in errors.
func checkFromV1(prefix string, resource *v1.ObjectReference, permission string, subject *v1.SubjectReference, ctx *structpb.Struct, obo *rel.Object) (op.CheckRequest, error) {
	res, err := objectFromV1(prefix+"resource", resource)
	if err != nil {
		return op.CheckRequest{}, err
	}
	sub, err := subjectFromV1(prefix+"subject", subject)
	if err != nil {
		return op.CheckRequest{}, err
	}
	if sub.IsWildcard() {
		return op.CheckRequest{}, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_WILDCARD_NOT_ALLOWED, "%ssubject: cannot perform check on wildcard subject", prefix)
	}
	return op.CheckRequest{Resource: res, Permission: permission, Subject: sub, Context: contextFromProto(ctx), OnBehalfOf: obo}, nil
}

// engineError converts an engine error, saying where an on_behalf_of that
// does not apply came from.
func engineError(err error, obo *rel.Object) error {
	if obo != nil && errors.Is(err, engine.ErrInvalidOnBehalfOf) {
		return status.Errorf(codes.InvalidArgument, "metadata %s: %v", OnBehalfOfHeader, err)
	}
	return authzedStatus(err)
}

func (p *authzedPermissions) CheckPermission(ctx context.Context, req *v1.CheckPermissionRequest) (*v1.CheckPermissionResponse, error) {
	if err := validateAuthzed(req); err != nil {
		return nil, err
	}
	obo, err := onBehalfOf(ctx)
	if err != nil {
		return nil, err
	}
	capTok, err := capabilityToken(ctx)
	if err != nil {
		return nil, err
	}
	creq, err := checkFromV1("", req.GetResource(), req.GetPermission(), req.GetSubject(), req.GetContext(), obo)
	if err != nil {
		return nil, err
	}
	creq.CapabilityToken = capTok
	if creq.ApprovalID, err = approvalIDFromMetadata(ctx); err != nil {
		return nil, err
	}
	if creq.Consistency, err = p.s.consistencyFromV1(req.GetConsistency()); err != nil {
		return nil, err
	}
	res, err := p.s.core.Check(ctx, creq)
	if err != nil {
		return nil, engineError(err, obo)
	}
	setApprovalTrailer(ctx, res.Approval)
	return &v1.CheckPermissionResponse{
		CheckedAt:         p.s.zedToken(res.Revision),
		Permissionship:    checkPermissionshipToV1(res.Decision),
		PartialCaveatInfo: partialCaveat(res.Decision, res.Missing),
	}, nil
}

func (p *authzedPermissions) CheckBulkPermissions(ctx context.Context, req *v1.CheckBulkPermissionsRequest) (*v1.CheckBulkPermissionsResponse, error) {
	if err := validateAuthzed(req); err != nil {
		return nil, err
	}
	items := req.GetItems()
	obo, err := onBehalfOf(ctx)
	if err != nil {
		return nil, err
	}
	capTok, err := capabilityToken(ctx)
	if err != nil {
		return nil, err
	}
	cons, err := p.s.consistencyFromV1(req.GetConsistency())
	if err != nil {
		return nil, err
	}
	breq := op.CheckBulkRequest{Items: make([]op.CheckItem, len(items)), Consistency: cons}
	for i, it := range items {
		creq, err := checkFromV1(fmt.Sprintf("items[%d].", i), it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), obo)
		creq.CapabilityToken = capTok
		breq.Items[i] = op.CheckItem{CheckRequest: creq, Err: err}
	}
	out, err := p.s.core.CheckBulk(ctx, breq)
	if err != nil {
		return nil, authzedStatus(err)
	}
	pairs := make([]*v1.CheckBulkPermissionsPair, len(items))
	for i, res := range out.Items {
		pairs[i] = &v1.CheckBulkPermissionsPair{Request: items[i]}
		if res.Err != nil {
			if errors.Is(res.Err, context.Canceled) || errors.Is(res.Err, context.DeadlineExceeded) {
				return nil, status.FromContextError(res.Err).Err()
			}
			pairs[i].Response = &v1.CheckBulkPermissionsPair_Error{Error: status.Convert(engineError(res.Err, obo)).Proto()}
			continue
		}
		pairs[i].Response = &v1.CheckBulkPermissionsPair_Item{Item: &v1.CheckBulkPermissionsResponseItem{
			Permissionship:    checkPermissionshipToV1(res.Decision),
			PartialCaveatInfo: partialCaveat(res.Decision, res.Missing),
		}}
	}
	return &v1.CheckBulkPermissionsResponse{CheckedAt: p.s.zedToken(out.Revision), Pairs: pairs}, nil
}

// resumeV1 parses a paged request's cursor (the page's exact revision and
// the last key or ID returned) or, without one, its consistency.
func (s *Server) resumeV1(c *v1.Cursor, consistency *v1.Consistency, reqHash uint64) (op.Consistency, string, error) {
	if c == nil {
		cons, err := s.consistencyFromV1(consistency)
		return cons, "", err
	}
	return s.resumeCursor(c.GetToken(), reqHash)
}

func (p *authzedPermissions) LookupResources(req *v1.LookupResourcesRequest, stream v1.PermissionsService_LookupResourcesServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	capTok, err := capabilityToken(ctx)
	if err != nil {
		return err
	}
	obo, err := onBehalfOf(ctx)
	if err != nil {
		return err
	}
	if err := rel.ValidateObject(rel.Object{Type: req.GetResourceObjectType(), ID: "x"}); err != nil {
		return invalid("resource_object_type", "%v", err)
	}
	sub, err := subjectFromV1("subject", req.GetSubject())
	if err != nil {
		return err
	}
	if sub.IsWildcard() {
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_WILDCARD_NOT_ALLOWED, "subject: cannot perform lookup resources on wildcard")
	}
	hash := requestHash(req, func(r *v1.LookupResourcesRequest) { r.OptionalCursor, r.OptionalLimit, r.Consistency = nil, 0, nil })
	cons, after, err := p.s.resumeV1(req.GetOptionalCursor(), req.GetConsistency(), hash)
	if err != nil {
		return err
	}
	var token *v1.ZedToken
	var sendErr error
	err = p.s.core.StreamLookupResources(ctx, op.LookupResourcesRequest{
		ResourceType:    req.GetResourceObjectType(),
		Permission:      req.GetPermission(),
		Subject:         sub,
		Context:         contextFromProto(req.GetContext()),
		OnBehalfOf:      obo,
		Consistency:     cons,
		After:           after,
		Limit:           int(req.GetOptionalLimit()),
		CapabilityToken: capTok,
	}, func(rev store.Revision, results []engine.LookupResult) error {
		if token == nil {
			token = p.s.zedToken(rev) // one revision for the whole lookup
		}
		// As SpiceDB: one message per result, each with its cursor; a
		// batch's messages in three allocations.
		cursors := p.s.cursorsAfter(rev, hash, results)
		msgs := make([]v1.LookupResourcesResponse, len(results))
		next := make([]v1.Cursor, len(results))
		for i, r := range results {
			next[i].Token = cursors[i]
			m := &msgs[i]
			m.LookedUpAt, m.ResourceObjectId, m.AfterResultCursor = token, r.ID, &next[i]
			m.Permissionship, m.PartialCaveatInfo = lookupPermissionshipToV1(r.Decision), partialCaveat(r.Decision, r.Missing)
			if sendErr = stream.Send(m); sendErr != nil {
				return sendErr
			}
		}
		return nil
	})
	if sendErr != nil {
		return sendErr
	}
	if err != nil {
		return engineError(err, obo)
	}
	return nil
}

func (p *authzedPermissions) LookupSubjects(req *v1.LookupSubjectsRequest, stream v1.PermissionsService_LookupSubjectsServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	if req.GetOptionalConcreteLimit() != 0 {
		// As SpiceDB v1.56: subjects come in one unpaged stream.
		return status.Error(codes.Unimplemented, "concrete limit is not yet supported")
	}
	res, err := objectFromV1("resource", req.GetResource())
	if err != nil {
		return err
	}
	relation := req.GetOptionalSubjectRelation()
	if relation == "..." {
		relation = ""
	}
	if err := rel.ValidateSubject(rel.Subject{Type: req.GetSubjectObjectType(), ID: "x", Relation: relation}); err != nil {
		return invalid("subject_object_type", "%v", err)
	}
	cons, err := p.s.consistencyFromV1(req.GetConsistency())
	if err != nil {
		return err
	}
	out, err := p.s.core.LookupSubjects(ctx, op.LookupSubjectsRequest{
		Resource:        res,
		Permission:      req.GetPermission(),
		SubjectType:     req.GetSubjectObjectType(),
		SubjectRelation: relation,
		Context:         contextFromProto(req.GetContext()),
		Consistency:     cons,
	})
	if err != nil {
		return authzedStatus(err)
	}
	token := p.s.zedToken(out.Revision)
	for _, r := range out.Results {
		if r.ID == rel.Wildcard && req.GetWildcardOption() == v1.LookupSubjectsRequest_WILDCARD_OPTION_EXCLUDE_WILDCARDS {
			continue
		}
		subject := &v1.ResolvedSubject{
			SubjectObjectId:   r.ID,
			Permissionship:    lookupPermissionshipToV1(r.Decision),
			PartialCaveatInfo: partialCaveat(r.Decision, r.Missing),
		}
		resp := &v1.LookupSubjectsResponse{
			LookedUpAt: token,
			Subject:    subject,
			// The deprecated flat fields, for older clients.
			SubjectObjectId:   subject.SubjectObjectId,
			Permissionship:    subject.Permissionship,
			PartialCaveatInfo: subject.PartialCaveatInfo,
		}
		for _, x := range r.Excluded {
			resp.ExcludedSubjects = append(resp.ExcludedSubjects, &v1.ResolvedSubject{
				SubjectObjectId:   x.ID,
				Permissionship:    lookupPermissionshipToV1(x.Decision),
				PartialCaveatInfo: partialCaveat(x.Decision, x.Missing),
			})
			resp.ExcludedSubjectIds = append(resp.ExcludedSubjectIds, x.ID)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

func (p *authzedPermissions) ExpandPermissionTree(ctx context.Context, req *v1.ExpandPermissionTreeRequest) (*v1.ExpandPermissionTreeResponse, error) {
	if err := validateAuthzed(req); err != nil {
		return nil, err
	}
	res, err := objectFromV1("resource", req.GetResource())
	if err != nil {
		return nil, err
	}
	cons, err := p.s.consistencyFromV1(req.GetConsistency())
	if err != nil {
		return nil, err
	}
	// SpiceDB's Expand is shallow: usersets stay subjects, arrows are
	// followed.
	out, err := p.s.core.Expand(ctx, op.ExpandRequest{Resource: res, Permission: req.GetPermission(), Consistency: cons})
	if err != nil {
		return nil, authzedStatus(err)
	}
	return &v1.ExpandPermissionTreeResponse{ExpandedAt: p.s.zedToken(out.Revision), TreeRoot: expandToV1(out.Tree, "")}, nil
}
