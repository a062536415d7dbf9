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
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// authzedPermissions serves authzed.api.v1.PermissionsService; its
// relationship methods are in authzed_relationships.go.
type authzedPermissions struct {
	v1.UnimplementedPermissionsServiceServer
	s *Server
}

// checkFromV1 builds an engine check; prefix names the message in errors.
func checkFromV1(prefix string, resource *v1.ObjectReference, permission string, subject *v1.SubjectReference, ctx *structpb.Struct, obo *rel.Object) (engine.CheckRequest, error) {
	res, err := objectFromV1(prefix+"resource", resource)
	if err != nil {
		return engine.CheckRequest{}, err
	}
	sub, err := subjectFromV1(prefix+"subject", subject)
	if err != nil {
		return engine.CheckRequest{}, err
	}
	if sub.IsWildcard() {
		return engine.CheckRequest{}, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_WILDCARD_NOT_ALLOWED, "%ssubject: cannot perform check on wildcard subject", prefix)
	}
	return engine.CheckRequest{Resource: res, Permission: permission, Subject: sub, Context: contextFromProto(ctx), OnBehalfOf: obo}, nil
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
	creq, err := checkFromV1("", req.GetResource(), req.GetPermission(), req.GetSubject(), req.GetContext(), obo)
	if err != nil {
		return nil, err
	}
	if creq.Revision, err = p.s.authzedEngineRevision(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	res, err := p.s.eng.Check(ctx, creq)
	if err != nil {
		return nil, engineError(err, obo)
	}
	p.s.metrics.decision(res.Decision)
	auditDelegation(ctx, 0, res.Delegation) // SpiceDB's response has no field for the chain
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
	if max := p.s.lim.MaxCheckBulkItems; len(items) > max {
		return nil, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_TOO_MANY_CHECKS_IN_REQUEST,
			"check count of %d is greater than maximum allowed of %d (--max-check-bulk-items)", len(items), max)
	}
	obo, err := onBehalfOf(ctx)
	if err != nil {
		return nil, err
	}
	rev, err := p.s.authzedEngineRevision(ctx, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	if rev == 0 {
		// Pin the revision so every item and the response token agree.
		rev = p.s.eng.Head()
	}
	pairs := make([]*v1.CheckBulkPermissionsPair, len(items))
	var reqs []engine.CheckRequest
	var at []int
	for i, it := range items {
		pairs[i] = &v1.CheckBulkPermissionsPair{Request: it}
		creq, err := checkFromV1(fmt.Sprintf("items[%d].", i), it.GetResource(), it.GetPermission(), it.GetSubject(), it.GetContext(), obo)
		if err != nil {
			pairs[i].Response = &v1.CheckBulkPermissionsPair_Error{Error: status.Convert(err).Proto()}
			continue
		}
		creq.Revision = rev
		reqs = append(reqs, creq)
		at = append(at, i)
	}
	if len(reqs) > 0 {
		results, errs := p.s.eng.CheckBulk(ctx, reqs)
		for j, i := range at {
			if errs[j] != nil {
				if errors.Is(errs[j], context.Canceled) || errors.Is(errs[j], context.DeadlineExceeded) {
					return nil, status.FromContextError(errs[j]).Err()
				}
				pairs[i].Response = &v1.CheckBulkPermissionsPair_Error{Error: status.Convert(engineError(errs[j], obo)).Proto()}
				continue
			}
			res := results[j]
			p.s.metrics.decision(res.Decision)
			auditDelegation(ctx, i, res.Delegation)
			pairs[i].Response = &v1.CheckBulkPermissionsPair_Item{Item: &v1.CheckBulkPermissionsResponseItem{
				Permissionship:    checkPermissionshipToV1(res.Decision),
				PartialCaveatInfo: partialCaveat(res.Decision, res.Missing),
			}}
		}
	}
	return &v1.CheckBulkPermissionsResponse{CheckedAt: p.s.zedToken(rev), Pairs: pairs}, nil
}

// limitError is SpiceDB's answer to a limit over the server's maximum.
func limitError(limit uint32, max int, flag string) error {
	return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_EXCEEDS_MAXIMUM_ALLOWABLE_LIMIT,
		"provided limit %d is greater than maximum allowed of %d (%s)", limit, max, flag)
}

func (p *authzedPermissions) LookupResources(req *v1.LookupResourcesRequest, stream v1.PermissionsService_LookupResourcesServer) error {
	ctx := stream.Context()
	if err := validateAuthzed(req); err != nil {
		return err
	}
	if limit := req.GetOptionalLimit(); int64(limit) > int64(p.s.lim.MaxLookupLimit) {
		return limitError(limit, p.s.lim.MaxLookupLimit, "--max-lookup-limit")
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
	var rev store.Revision
	after := ""
	if c := req.GetOptionalCursor(); c != nil {
		cur, err := p.s.inst.decodeCursor("optional_cursor", c.GetToken(), hash)
		if err != nil {
			return err
		}
		if err := p.s.waitFor(ctx, cur.rev); err != nil {
			return err
		}
		rev, after = cur.rev, cur.after
	} else if rev, err = p.s.authzedEngineRevision(ctx, req.GetConsistency()); err != nil {
		return err
	}
	results, at, err := p.s.eng.LookupResources(ctx, engine.LookupResourcesRequest{
		ResourceType: req.GetResourceObjectType(),
		Permission:   req.GetPermission(),
		Subject:      sub,
		Context:      contextFromProto(req.GetContext()),
		OnBehalfOf:   obo,
		Revision:     rev,
		After:        after,
		Limit:        int(req.GetOptionalLimit()),
	})
	if err != nil {
		return engineError(err, obo)
	}
	token := p.s.zedToken(at)
	sent := uint32(0)
	limit := req.GetOptionalLimit()
	for _, r := range results {
		// Results come sorted by ID, so the last ID sent resumes the stream.
		if after != "" && r.ID <= after {
			continue
		}
		if limit > 0 && sent >= limit {
			break
		}
		err := stream.Send(&v1.LookupResourcesResponse{
			LookedUpAt:        token,
			ResourceObjectId:  r.ID,
			Permissionship:    lookupPermissionshipToV1(r.Decision),
			PartialCaveatInfo: partialCaveat(r.Decision, r.Missing),
			AfterResultCursor: &v1.Cursor{Token: p.s.inst.encodeCursor(cursor{rev: at, req: hash, after: r.ID})},
		})
		if err != nil {
			return err
		}
		sent++
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
	rev, err := p.s.authzedEngineRevision(ctx, req.GetConsistency())
	if err != nil {
		return err
	}
	results, at, err := p.s.eng.LookupSubjects(ctx, engine.LookupSubjectsRequest{
		Resource:        res,
		Permission:      req.GetPermission(),
		SubjectType:     req.GetSubjectObjectType(),
		SubjectRelation: relation,
		Context:         contextFromProto(req.GetContext()),
		Revision:        rev,
	})
	if err != nil {
		return authzedStatus(err)
	}
	token := p.s.zedToken(at)
	for _, r := range results {
		if r.ID == rel.Wildcard && req.GetWildcardOption() == v1.LookupSubjectsRequest_WILDCARD_OPTION_EXCLUDE_WILDCARDS {
			continue
		}
		subject := &v1.ResolvedSubject{
			SubjectObjectId:   r.ID,
			Permissionship:    lookupPermissionshipToV1(r.Decision),
			PartialCaveatInfo: partialCaveat(r.Decision, r.Missing),
		}
		out := &v1.LookupSubjectsResponse{
			LookedUpAt: token,
			Subject:    subject,
			// The deprecated flat fields, for older clients.
			SubjectObjectId:   subject.SubjectObjectId,
			Permissionship:    subject.Permissionship,
			PartialCaveatInfo: subject.PartialCaveatInfo,
		}
		for _, x := range r.Excluded {
			out.ExcludedSubjects = append(out.ExcludedSubjects, &v1.ResolvedSubject{
				SubjectObjectId:   x.ID,
				Permissionship:    lookupPermissionshipToV1(x.Decision),
				PartialCaveatInfo: partialCaveat(x.Decision, x.Missing),
			})
			out.ExcludedSubjectIds = append(out.ExcludedSubjectIds, x.ID)
		}
		if err := stream.Send(out); err != nil {
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
	rev, err := p.s.authzedEngineRevision(ctx, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	if rev == 0 {
		// Expand reports no revision; pin one so the token is exact.
		rev = p.s.eng.Head()
	}
	// SpiceDB's Expand is shallow: usersets stay subjects, arrows are
	// followed.
	tree, err := p.s.eng.Expand(ctx, res, req.GetPermission(), rev, false)
	if err != nil {
		return nil, authzedStatus(err)
	}
	return &v1.ExpandPermissionTreeResponse{ExpandedAt: p.s.zedToken(rev), TreeRoot: expandToV1(tree, "")}, nil
}
