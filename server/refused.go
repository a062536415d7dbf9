package server

import (
	"context"
	"strings"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// refusedRequest describes, for its audit event, a call refused before it
// reached the core (no valid key, or input that did not parse): whatever
// the wire request names, taken as it was sent, without validation. req is
// the unary request or a stream's first message (nil when none arrived).
// It returns nil for calls that are not audited (health, reflection).
func refusedRequest(ctx context.Context, method string, req any) op.Request {
	switch r := req.(type) {
	case *pb.CheckRequest:
		return rawCheck(r.GetResource(), r.GetPermission(), r.GetSubject(), r.GetContext(), r.GetOnBehalfOf())
	case *pb.CheckBulkRequest:
		return op.CheckBulkRequest{Items: make([]op.CheckItem, len(r.GetItems()))}
	case *pb.ExpandRequest:
		return op.ExpandRequest{Resource: rawObject(r.GetResource()), Permission: r.GetPermission()}
	case *pb.LookupResourcesRequest:
		return op.LookupResourcesRequest{ResourceType: r.GetResourceObjectType(), Permission: r.GetPermission(),
			Subject: rawSubject(r.GetSubject()), Context: contextFromProto(r.GetContext()), OnBehalfOf: rawOptObject(r.GetOnBehalfOf())}
	case *pb.LookupSubjectsRequest:
		return op.LookupSubjectsRequest{Resource: rawObject(r.GetResource()), Permission: r.GetPermission(),
			SubjectType: r.GetSubjectObjectType(), SubjectRelation: r.GetOptionalSubjectRelation(), Context: contextFromProto(r.GetContext())}
	case *pb.WriteRelationshipsRequest:
		muts := make([]store.Mutation, len(r.GetUpdates()))
		for i, u := range r.GetUpdates() {
			op, _ := opFromProto("", u.GetOperation())
			muts[i] = store.Mutation{Op: op, Rel: rawRelationship(u.GetRelationship())}
		}
		return op.WriteRequest{Mutations: muts}
	case *pb.DeleteRelationshipsRequest:
		f, _ := filterFromProto("filter", r.GetFilter())
		return op.DeleteRequest{Filter: op.Filter{Filter: f}}
	case *pb.ReadRelationshipsRequest:
		f, _ := filterFromProto("filter", r.GetFilter())
		return op.ReadRequest{Filter: op.Filter{Filter: f}}
	case *pb.ExportRelationshipsRequest:
		f, _ := filterFromProto("optional_filter", r.GetOptionalFilter())
		return op.ExportRequest{Filter: op.Filter{Filter: f}}
	case *pb.WriteSchemaRequest:
		return op.WriteSchemaRequest{Text: r.GetSchema()}
	case *pb.MintRequest:
		return op.TokenRequest{Operation: audit.OpTokenMint, Holder: objectString(r.GetHolder()), Principal: objectString(r.GetOnBehalfOf())}
	case *pb.RevokeRequest:
		return op.TokenRequest{Operation: audit.OpTokenRevoke}
	case *pb.ListTokensRequest:
		return op.TokenRequest{Operation: audit.OpTokenList}
	case *pb.InspectRequest:
		return op.TokenRequest{Operation: audit.OpTokenInspect}
	case *v1.CheckPermissionRequest:
		return rawCheckV1(ctx, r.GetResource(), r.GetPermission(), r.GetSubject(), r.GetContext())
	case *v1.CheckBulkPermissionsRequest:
		return op.CheckBulkRequest{Items: make([]op.CheckItem, len(r.GetItems()))}
	case *v1.ExpandPermissionTreeRequest:
		return op.ExpandRequest{Resource: rawObjectV1(r.GetResource()), Permission: r.GetPermission()}
	case *v1.LookupResourcesRequest:
		return op.LookupResourcesRequest{ResourceType: r.GetResourceObjectType(), Permission: r.GetPermission(),
			Subject: rawSubjectV1(r.GetSubject()), Context: contextFromProto(r.GetContext()), OnBehalfOf: rawOnBehalfOf(ctx)}
	case *v1.LookupSubjectsRequest:
		return op.LookupSubjectsRequest{Resource: rawObjectV1(r.GetResource()), Permission: r.GetPermission(),
			SubjectType: r.GetSubjectObjectType(), SubjectRelation: r.GetOptionalSubjectRelation(), Context: contextFromProto(r.GetContext())}
	case *v1.WriteRelationshipsRequest:
		muts := make([]store.Mutation, len(r.GetUpdates()))
		for i, u := range r.GetUpdates() {
			op, _ := opFromV1("", u.GetOperation())
			rl := u.GetRelationship()
			muts[i] = store.Mutation{Op: op, Rel: rel.Relationship{Resource: rawObjectV1(rl.GetResource()), Relation: rl.GetRelation(), Subject: rawSubjectV1(rl.GetSubject())}}
		}
		return op.WriteRequest{Mutations: muts}
	case *v1.DeleteRelationshipsRequest:
		f, _ := filterFromV1("relationship_filter", r.GetRelationshipFilter())
		return op.DeleteRequest{Filter: f}
	case *v1.ReadRelationshipsRequest:
		f, _ := filterFromV1("relationship_filter", r.GetRelationshipFilter())
		return op.ReadRequest{Filter: f}
	case *v1.ExportBulkRelationshipsRequest:
		f, _ := filterFromV1("optional_relationship_filter", r.GetOptionalRelationshipFilter())
		return op.ExportRequest{Filter: f}
	case *v1.WriteSchemaRequest:
		return op.WriteSchemaRequest{Text: r.GetSchema()}
	}
	return refusedOperation(method)
}

// refusedOperation describes a call by its method alone: the methods whose
// requests say nothing more for the trail, and streams refused before their
// first message.
func refusedOperation(method string) op.Request {
	switch method {
	case pb.PermissionService_Check_FullMethodName, v1.PermissionsService_CheckPermission_FullMethodName:
		return op.CheckRequest{}
	case pb.PermissionService_CheckBulk_FullMethodName, v1.PermissionsService_CheckBulkPermissions_FullMethodName:
		return op.CheckBulkRequest{}
	case pb.PermissionService_Expand_FullMethodName, v1.PermissionsService_ExpandPermissionTree_FullMethodName:
		return op.ExpandRequest{}
	case pb.PermissionService_LookupResources_FullMethodName, v1.PermissionsService_LookupResources_FullMethodName:
		return op.LookupResourcesRequest{}
	case pb.PermissionService_LookupSubjects_FullMethodName, v1.PermissionsService_LookupSubjects_FullMethodName:
		return op.LookupSubjectsRequest{}
	case pb.RelationshipService_WriteRelationships_FullMethodName, v1.PermissionsService_WriteRelationships_FullMethodName:
		return op.WriteRequest{}
	case pb.RelationshipService_DeleteRelationships_FullMethodName, v1.PermissionsService_DeleteRelationships_FullMethodName:
		return op.DeleteRequest{}
	case pb.RelationshipService_ReadRelationships_FullMethodName, v1.PermissionsService_ReadRelationships_FullMethodName:
		return op.ReadRequest{}
	case pb.RelationshipService_ExportRelationships_FullMethodName, v1.PermissionsService_ExportBulkRelationships_FullMethodName:
		return op.ExportRequest{}
	case pb.RelationshipService_ImportRelationships_FullMethodName, v1.PermissionsService_ImportBulkRelationships_FullMethodName:
		return op.ImportRequest{}
	case pb.RelationshipService_Watch_FullMethodName, v1.WatchService_Watch_FullMethodName:
		return op.WatchRequest{}
	case pb.SchemaService_WriteSchema_FullMethodName, v1.SchemaService_WriteSchema_FullMethodName:
		return op.WriteSchemaRequest{}
	case pb.SchemaService_ReadSchema_FullMethodName, v1.SchemaService_ReadSchema_FullMethodName:
		return op.ReadSchemaRequest{}
	case pb.SchemaService_ValidateSchema_FullMethodName:
		return op.ValidateSchemaRequest{}
	case pb.AuditService_Query_FullMethodName:
		return op.AuditQueryRequest{Query: audit.Query{}}
	}
	return nil
}

func rawObject(o *pb.ObjectReference) rel.Object {
	return rel.Object{Type: o.GetObjectType(), ID: o.GetObjectId()}
}

// objectString is a reference's type:id as given, "" when absent.
func objectString(o *pb.ObjectReference) string {
	if o == nil {
		return ""
	}
	return rawObject(o).String()
}

func rawOptObject(o *pb.ObjectReference) *rel.Object {
	if o == nil {
		return nil
	}
	out := rawObject(o)
	return &out
}

func rawSubject(s *pb.SubjectReference) rel.Subject {
	out := rel.Subject{Type: s.GetObject().GetObjectType(), ID: s.GetObject().GetObjectId(), Relation: s.GetOptionalRelation()}
	if out.Relation == "..." {
		out.Relation = ""
	}
	return out
}

func rawRelationship(r *pb.Relationship) rel.Relationship {
	return rel.Relationship{Resource: rawObject(r.GetResource()), Relation: r.GetRelation(), Subject: rawSubject(r.GetSubject())}
}

func rawCheck(res *pb.ObjectReference, perm string, sub *pb.SubjectReference, c *structpb.Struct, obo *pb.ObjectReference) op.CheckRequest {
	return op.CheckRequest{Resource: rawObject(res), Permission: perm, Subject: rawSubject(sub), Context: contextFromProto(c), OnBehalfOf: rawOptObject(obo)}
}

func rawObjectV1(o *v1.ObjectReference) rel.Object {
	return rel.Object{Type: o.GetObjectType(), ID: o.GetObjectId()}
}

func rawSubjectV1(s *v1.SubjectReference) rel.Subject {
	out := rel.Subject{Type: s.GetObject().GetObjectType(), ID: s.GetObject().GetObjectId(), Relation: s.GetOptionalRelation()}
	if out.Relation == "..." {
		out.Relation = ""
	}
	return out
}

func rawCheckV1(ctx context.Context, res *v1.ObjectReference, perm string, sub *v1.SubjectReference, c *structpb.Struct) op.CheckRequest {
	return op.CheckRequest{Resource: rawObjectV1(res), Permission: perm, Subject: rawSubjectV1(sub), Context: contextFromProto(c), OnBehalfOf: rawOnBehalfOf(ctx)}
}

// rawOnBehalfOf reads the mandate-on-behalf-of header as sent.
func rawOnBehalfOf(ctx context.Context) *rel.Object {
	v := metadata.ValueFromIncomingContext(ctx, OnBehalfOfHeader)
	if len(v) == 0 {
		return nil
	}
	typ, id, ok := strings.Cut(strings.TrimSpace(v[0]), ":")
	if !ok {
		return nil
	}
	return &rel.Object{Type: typ, ID: id}
}
