package server

// Auditing of the authzed.api.v1 API, served beside mandate.v1: the same
// events, built from SpiceDB's request and response shapes. SpiceDB's
// responses have no field for an agent's delegation chain, so the handlers
// hand it over with auditDelegation; until a handler does, its events name
// the agent, its kind and the on_behalf_of principal, but no chain.

import (
	"context"
	"strings"
	"sync"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
)

// auditSlot collects what a handler adds to its call's events.
type auditSlot struct {
	mu          sync.Mutex
	delegations map[int]*engine.Delegation
}

type auditSlotKey struct{}

// auditDelegation records the delegation explanation of a call's check
// (item 0) or of item i of a bulk check, for the call's audit events. It
// does nothing when the call is not audited.
func auditDelegation(ctx context.Context, item int, d *engine.Delegation) {
	slot, _ := ctx.Value(auditSlotKey{}).(*auditSlot)
	if slot == nil || d == nil {
		return
	}
	slot.mu.Lock()
	defer slot.mu.Unlock()
	if slot.delegations == nil {
		slot.delegations = map[int]*engine.Delegation{}
	}
	slot.delegations[item] = d
}

func (s *auditSlot) delegation(item int) *pb.DelegationExplanation {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return delegationToProto(s.delegations[item])
}

// slotted methods get an auditSlot in their context.
var slotted = map[string]bool{
	v1.PermissionsService_CheckPermission_FullMethodName:      true,
	v1.PermissionsService_CheckBulkPermissions_FullMethodName: true,
}

func v1Object(o *v1.ObjectReference) *pb.ObjectReference {
	if o == nil {
		return nil
	}
	return &pb.ObjectReference{ObjectType: o.GetObjectType(), ObjectId: o.GetObjectId()}
}

func v1Subject(s *v1.SubjectReference) *pb.SubjectReference {
	if s == nil {
		return nil
	}
	return &pb.SubjectReference{Object: v1Object(s.GetObject()), OptionalRelation: s.GetOptionalRelation()}
}

func v1Decision(p v1.CheckPermissionResponse_Permissionship) pb.Decision {
	switch p {
	case v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION:
		return pb.Decision_DECISION_ALLOWED
	case v1.CheckPermissionResponse_PERMISSIONSHIP_CONDITIONAL_PERMISSION:
		return pb.Decision_DECISION_CONDITIONAL
	}
	return pb.Decision_DECISION_DENIED
}

func v1Token(t *v1.ZedToken) *pb.RevisionToken {
	if t == nil {
		return nil
	}
	return &pb.RevisionToken{Token: t.GetToken()}
}

// v1OnBehalfOf reads the mandate-on-behalf-of header as an object.
func v1OnBehalfOf(ctx context.Context) *pb.ObjectReference {
	v := metadata.ValueFromIncomingContext(ctx, OnBehalfOfHeader)
	if len(v) == 0 {
		return nil
	}
	typ, id, ok := strings.Cut(strings.TrimSpace(v[0]), ":")
	if !ok {
		return nil
	}
	return &pb.ObjectReference{ObjectType: typ, ObjectId: id}
}

func init() {
	unaryAuditors[v1.PermissionsService_CheckPermission_FullMethodName] = func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*v1.CheckPermissionRequest)
		out, _ := resp.(*v1.CheckPermissionResponse)
		ev := a.event(audit.OpCheck)
		ev.Transport += "-authzed"
		a.checkEvent(ev, v1Object(r.GetResource()), r.GetPermission(), v1Subject(r.GetSubject()), r.GetContext(), a.obo,
			v1Decision(out.GetPermissionship()), out.GetPartialCaveatInfo().GetMissingRequiredContext(),
			a.slot.delegation(0), a.revision(v1Token(out.GetCheckedAt())), a.err != nil)
		return []*audit.Event{ev}
	}
	unaryAuditors[v1.PermissionsService_CheckBulkPermissions_FullMethodName] = func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*v1.CheckBulkPermissionsRequest)
		out, _ := resp.(*v1.CheckBulkPermissionsResponse)
		if a.err != nil || out == nil {
			ev := a.event(audit.OpCheckBulk)
			ev.Transport += "-authzed"
			ev.Count = int64(len(r.GetItems()))
			return []*audit.Event{ev}
		}
		rev := a.revision(v1Token(out.GetCheckedAt()))
		evs := make([]*audit.Event, len(out.GetPairs()))
		for i, p := range out.GetPairs() {
			it := p.GetRequest()
			ev := a.event(audit.OpCheckBulk)
			ev.Transport += "-authzed"
			res := p.GetItem()
			if e := p.GetError(); e != nil {
				ev.Decision, ev.Code, ev.Error = audit.Error, codes.Code(e.GetCode()).String(), e.GetMessage()
			}
			a.checkEvent(ev, v1Object(it.GetResource()), it.GetPermission(), v1Subject(it.GetSubject()), it.GetContext(), a.obo,
				v1Decision(res.GetPermissionship()), res.GetPartialCaveatInfo().GetMissingRequiredContext(), a.slot.delegation(i), rev, res == nil)
			evs[i] = ev
		}
		return evs
	}
	unaryAuditors[v1.PermissionsService_WriteRelationships_FullMethodName] = func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*v1.WriteRelationshipsRequest)
		out, _ := resp.(*v1.WriteRelationshipsResponse)
		rev := a.revision(v1Token(out.GetWrittenAt()))
		if len(r.GetUpdates()) == 0 {
			return []*audit.Event{a.event(audit.OpWriteRelationships)}
		}
		evs := make([]*audit.Event, len(r.GetUpdates()))
		for i, u := range r.GetUpdates() {
			ev := a.event(audit.OpWriteRelationships)
			ev.Transport += "-authzed"
			rl := u.GetRelationship()
			ev.Update = strings.ToLower(strings.TrimPrefix(u.GetOperation().String(), "OPERATION_"))
			ev.Resource, ev.Permission = objString(v1Object(rl.GetResource())), rl.GetRelation()
			ev.Subject = subjString(v1Subject(rl.GetSubject()))
			ev.SubjectKind = a.writtenKind(rl.GetSubject().GetObject().GetObjectType(), rl.GetSubject().GetOptionalRelation(), rev)
			writtenDetails(ev, rl.GetOptionalCaveat(), rl.GetOptionalExpiresAt(), rev)
			evs[i] = ev
		}
		return evs
	}
	unaryAuditors[v1.PermissionsService_DeleteRelationships_FullMethodName] = func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*v1.DeleteRelationshipsRequest)
		out, _ := resp.(*v1.DeleteRelationshipsResponse)
		ev := a.event(audit.OpDeleteRelationships)
		ev.Transport += "-authzed"
		f := r.GetRelationshipFilter()
		ev.Resource, ev.Permission = f.GetResourceType(), f.GetOptionalRelation()
		if id := f.GetOptionalResourceId(); id != "" {
			ev.Resource += ":" + id
		}
		if sf := f.GetOptionalSubjectFilter(); sf != nil && sf.GetOptionalSubjectId() != "" {
			ev.Subject = sf.GetSubjectType() + ":" + sf.GetOptionalSubjectId()
		}
		ev.Detail = "filter " + ev.Resource
		if ev.Permission != "" {
			ev.Detail += "#" + ev.Permission
		}
		if ev.Subject != "" {
			ev.Detail += "@" + ev.Subject
		}
		ev.Count, ev.Revision = int64(out.GetRelationshipsDeletedCount()), a.revision(v1Token(out.GetDeletedAt()))
		return []*audit.Event{ev}
	}
	unaryAuditors[v1.SchemaService_WriteSchema_FullMethodName] = func(a *auditCall, req, resp any) []*audit.Event {
		r, _ := req.(*v1.WriteSchemaRequest)
		out, _ := resp.(*v1.WriteSchemaResponse)
		evs := unaryAuditors[pb.SchemaService_WriteSchema_FullMethodName](a, &pb.WriteSchemaRequest{Schema: r.GetSchema()},
			&pb.WriteSchemaResponse{WrittenAt: v1Token(out.GetWrittenAt())})
		evs[0].Transport += "-authzed"
		return evs
	}
	streamAuditors[v1.PermissionsService_LookupResources_FullMethodName] = func(a *auditCall, w *auditedStream) *audit.Event {
		r, _ := w.req.(*v1.LookupResourcesRequest)
		first, _ := w.first.(*v1.LookupResourcesResponse)
		ev := a.event(audit.OpLookupResources)
		ev.Transport += "-authzed"
		ev.Resource, ev.Permission, ev.Subject = r.GetResourceObjectType(), r.GetPermission(), subjString(v1Subject(r.GetSubject()))
		ev.OnBehalfOf, ev.Context = objString(a.obo), contextOf(r.GetContext())
		ev.Revision, ev.Count = a.revision(v1Token(first.GetLookedUpAt())), w.sent
		if r.GetSubject() != nil {
			ev.SubjectKind = a.kind(r.GetSubject().GetObject().GetObjectType(), r.GetSubject().GetOptionalRelation(), ev.Revision)
			switch {
			case ev.SubjectKind == audit.Person:
				ev.Principal = ev.Subject
			case ev.OnBehalfOf != "":
				ev.Principal = ev.OnBehalfOf
			}
		}
		return ev
	}
	streamAuditors[v1.PermissionsService_LookupSubjects_FullMethodName] = func(a *auditCall, w *auditedStream) *audit.Event {
		r, _ := w.req.(*v1.LookupSubjectsRequest)
		ev := a.event(audit.OpLookupSubjects)
		ev.Transport += "-authzed"
		ev.Resource, ev.Permission = objString(v1Object(r.GetResource())), r.GetPermission()
		ev.Subject = r.GetSubjectObjectType()
		if rl := r.GetOptionalSubjectRelation(); rl != "" {
			ev.Subject += "#" + rl
		}
		ev.Context, ev.Count = contextOf(r.GetContext()), w.sent
		return ev
	}
	streamAuditors[v1.PermissionsService_ImportBulkRelationships_FullMethodName] = func(a *auditCall, w *auditedStream) *audit.Event {
		out, _ := w.last.(*v1.ImportBulkRelationshipsResponse)
		ev := a.event(audit.OpImportRelationships)
		ev.Transport += "-authzed"
		ev.Count = int64(out.GetNumLoaded())
		return ev
	}
	for method, op := range map[string]audit.Operation{
		v1.PermissionsService_ReadRelationships_FullMethodName:       audit.OpReadRelationships,
		v1.PermissionsService_ExportBulkRelationships_FullMethodName: audit.OpExportRelationships,
		v1.WatchService_Watch_FullMethodName:                         audit.OpWatch,
	} {
		streamAuditors[method] = func(a *auditCall, w *auditedStream) *audit.Event {
			ev := a.event(op)
			ev.Transport += "-authzed"
			ev.Count = w.sent
			return ev
		}
	}
	for method, op := range map[string]audit.Operation{
		v1.PermissionsService_ExpandPermissionTree_FullMethodName: audit.OpExpand,
		v1.SchemaService_ReadSchema_FullMethodName:                audit.OpReadSchema,
	} {
		unaryAuditors[method] = func(a *auditCall, req, resp any) []*audit.Event {
			ev := a.event(op)
			ev.Transport += "-authzed"
			return []*audit.Event{ev}
		}
	}
	mutatingAuthzed = map[string]bool{
		v1.PermissionsService_WriteRelationships_FullMethodName:      true,
		v1.PermissionsService_DeleteRelationships_FullMethodName:     true,
		v1.PermissionsService_ImportBulkRelationships_FullMethodName: true,
		v1.SchemaService_WriteSchema_FullMethodName:                  true,
	}
}

// mutatingAuthzed are the authzed.api.v1 methods that change the store.
var mutatingAuthzed map[string]bool
