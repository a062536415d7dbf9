package server

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// invalid returns an InvalidArgument status naming the offending field.
func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}

func objectFromProto(field string, o *pb.ObjectReference) (rel.Object, error) {
	return objectOf(field, o != nil, o.GetObjectType(), o.GetObjectId())
}

// objectOf validates an object reference of either API (present: the
// message was sent), naming the field in errors.
func objectOf(field string, present bool, typ, id string) (rel.Object, error) {
	if !present {
		return rel.Object{}, invalid(field, "required")
	}
	out := rel.Object{Type: typ, ID: id}
	if err := rel.ValidateObject(out); err != nil {
		return rel.Object{}, invalid(field, "%v", err)
	}
	return out, nil
}

func objectToProto(o rel.Object) *pb.ObjectReference {
	return &pb.ObjectReference{ObjectType: o.Type, ObjectId: o.ID}
}

func subjectFromProto(field string, s *pb.SubjectReference) (rel.Subject, error) {
	o := s.GetObject()
	return subjectOf(field, o != nil, o.GetObjectType(), o.GetObjectId(), s.GetOptionalRelation())
}

// subjectOf validates a subject reference of either API (present: its
// object was sent); SpiceDB's "..." relation means none.
func subjectOf(field string, present bool, typ, id, relation string) (rel.Subject, error) {
	if !present {
		return rel.Subject{}, invalid(field, "required")
	}
	out := rel.Subject{Type: typ, ID: id, Relation: relation}
	if out.Relation == "..." {
		out.Relation = ""
	}
	if err := rel.ValidateSubject(out); err != nil {
		return rel.Subject{}, invalid(field, "%v", err)
	}
	return out, nil
}

func subjectToProto(s rel.Subject) *pb.SubjectReference {
	return &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: s.Type, ObjectId: s.ID}, OptionalRelation: s.Relation}
}

// contextFromProto converts caveat context; nil when none was given.
func contextFromProto(s *structpb.Struct) map[string]any {
	if s == nil || len(s.GetFields()) == 0 {
		return nil
	}
	return s.AsMap()
}

func relationshipFromProto(field string, r *pb.Relationship) (rel.Relationship, error) {
	if r == nil {
		return rel.Relationship{}, invalid(field, "required")
	}
	res, err := objectFromProto(field+".resource", r.GetResource())
	if err != nil {
		return rel.Relationship{}, err
	}
	sub, err := subjectFromProto(field+".subject", r.GetSubject())
	if err != nil {
		return rel.Relationship{}, err
	}
	out := rel.Relationship{Resource: res, Relation: r.GetRelation(), Subject: sub}
	if c := r.GetOptionalCaveat(); c != nil {
		out.Caveat = &rel.Caveat{Name: c.GetCaveatName(), Context: contextFromProto(c.GetContext())}
	}
	return completeRelationship(field, out, r.GetOptionalExpiresAt())
}

// completeRelationship sets the expiration both APIs carry the same way and
// validates the relationship.
func completeRelationship(field string, out rel.Relationship, expires *timestamppb.Timestamp) (rel.Relationship, error) {
	if expires != nil {
		if err := expires.CheckValid(); err != nil {
			return rel.Relationship{}, invalid(field+".optional_expires_at", "%v", err)
		}
		out.Expiration = expires.AsTime().UTC()
	}
	if err := out.Validate(); err != nil {
		return rel.Relationship{}, invalid(field, "%v", err)
	}
	return out, nil
}

// caveatContextToProto converts a relationship's caveat context; nil when
// it has none.
func caveatContextToProto(r rel.Relationship) (*structpb.Struct, error) {
	if len(r.Caveat.Context) == 0 {
		return nil, nil
	}
	ctx, err := structpb.NewStruct(r.Caveat.Context)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "relationship %s: caveat context: %v", r.Key(), err)
	}
	return ctx, nil
}

// expirationToProto converts a relationship's expiration; nil for none.
func expirationToProto(r rel.Relationship) *timestamppb.Timestamp {
	if r.Expiration.IsZero() {
		return nil
	}
	return timestamppb.New(r.Expiration)
}

func relationshipToProto(r rel.Relationship) (*pb.Relationship, error) {
	out := &pb.Relationship{
		Resource: objectToProto(r.Resource),
		Relation: r.Relation,
		Subject:  subjectToProto(r.Subject),
	}
	if r.Caveat != nil {
		ctx, err := caveatContextToProto(r)
		if err != nil {
			return nil, err
		}
		out.OptionalCaveat = &pb.ContextualizedCaveat{CaveatName: r.Caveat.Name, Context: ctx}
	}
	out.OptionalExpiresAt = expirationToProto(r)
	return out, nil
}

func filterFromProto(field string, f *pb.RelationshipFilter) (rel.Filter, error) {
	if f == nil {
		return rel.Filter{}, nil
	}
	out := rel.Filter{
		ResourceType: f.GetResourceType(),
		ResourceIDs:  f.GetOptionalResourceIds(),
		Relation:     f.GetOptionalRelation(),
	}
	if sf := f.GetOptionalSubjectFilter(); sf != nil {
		out.SubjectType = sf.GetSubjectType()
		out.SubjectID = sf.GetOptionalSubjectId()
		if rf := sf.GetOptionalRelation(); rf != nil {
			r := rf.GetRelation()
			if r == "..." {
				r = ""
			}
			out.SubjectRelation = &r
		}
		if out.SubjectType == "" {
			return rel.Filter{}, invalid(field+".optional_subject_filter.subject_type", "required when filtering by subject")
		}
	}
	// Validate names by building a throwaway relationship of the same shape;
	// this reuses rel's rules without duplicating them.
	if out.ResourceType != "" {
		if err := rel.ValidateObject(rel.Object{Type: out.ResourceType, ID: "x"}); err != nil {
			return rel.Filter{}, invalid(field+".resource_type", "%v", err)
		}
	}
	for i, id := range out.ResourceIDs {
		if err := rel.ValidateObject(rel.Object{Type: "x", ID: id}); err != nil {
			return rel.Filter{}, invalid(fmt.Sprintf("%s.optional_resource_ids[%d]", field, i), "%v", err)
		}
	}
	if out.Relation != "" {
		if _, _, err := rel.ParseObjectRelation("x:x#" + out.Relation); err != nil {
			return rel.Filter{}, invalid(field+".optional_relation", "relation %q: expected a lowercase name", out.Relation)
		}
	}
	if out.SubjectType != "" {
		id := out.SubjectID
		if id == "" {
			id = "x"
		}
		sub := rel.Subject{Type: out.SubjectType, ID: id}
		if out.SubjectRelation != nil && *out.SubjectRelation != "" && id != rel.Wildcard {
			sub.Relation = *out.SubjectRelation
		}
		if err := rel.ValidateSubject(sub); err != nil {
			return rel.Filter{}, invalid(field+".optional_subject_filter", "%v", err)
		}
	}
	return out, nil
}

// preconditionsFromProto converts preconditions; the core bounds their
// number.
func preconditionsFromProto(pre []*pb.Precondition) ([]store.Precondition, error) {
	out := make([]store.Precondition, 0, len(pre))
	for i, p := range pre {
		field := fmt.Sprintf("optional_preconditions[%d]", i)
		var mustExist bool
		switch p.GetOperation() {
		case pb.Precondition_OPERATION_MUST_MATCH:
			mustExist = true
		case pb.Precondition_OPERATION_MUST_NOT_MATCH:
		default:
			return nil, invalid(field+".operation", "expected OPERATION_MUST_MATCH or OPERATION_MUST_NOT_MATCH, got %v", p.GetOperation())
		}
		f, err := filterFromProto(field+".filter", p.GetFilter())
		if err != nil {
			return nil, err
		}
		if f.ResourceType == "" {
			return nil, invalid(field+".filter.resource_type", "required")
		}
		out = append(out, store.Precondition{MustExist: mustExist, Filter: f})
	}
	return out, nil
}

func opFromProto(field string, op pb.RelationshipUpdate_Operation) (store.Op, error) {
	switch op {
	case pb.RelationshipUpdate_OPERATION_CREATE:
		return store.Create, nil
	case pb.RelationshipUpdate_OPERATION_TOUCH:
		return store.Touch, nil
	case pb.RelationshipUpdate_OPERATION_DELETE:
		return store.Delete, nil
	}
	return 0, invalid(field, "expected OPERATION_CREATE, OPERATION_TOUCH or OPERATION_DELETE, got %v", op)
}

func opToProto(op store.Op) pb.RelationshipUpdate_Operation {
	switch op {
	case store.Create:
		return pb.RelationshipUpdate_OPERATION_CREATE
	case store.Touch:
		return pb.RelationshipUpdate_OPERATION_TOUCH
	case store.Delete:
		return pb.RelationshipUpdate_OPERATION_DELETE
	}
	return pb.RelationshipUpdate_OPERATION_UNSPECIFIED
}

func decisionToProto(d engine.Decision) pb.Decision {
	switch d {
	case engine.Allowed:
		return pb.Decision_DECISION_ALLOWED
	case engine.Conditional:
		return pb.Decision_DECISION_CONDITIONAL
	}
	return pb.Decision_DECISION_DENIED
}

func delegationToProto(d *engine.Delegation) *pb.DelegationExplanation {
	if d == nil {
		return nil
	}
	out := &pb.DelegationExplanation{
		Reason:               string(d.Reason),
		FailedAt:             int32(d.FailedAt),
		ResolvableByApproval: d.ResolvableByApproval,
	}
	for _, e := range d.Chain {
		out.Chain = append(out.Chain, &pb.ChainElement{
			Subject:           objectToProto(e.Subject),
			Grant:             decisionToProto(e.Grant),
			Link:              decisionToProto(e.Link),
			MissingParameters: e.Missing,
		})
	}
	return out
}

func expandToProto(n *engine.ExpandNode) (*pb.ExpandNode, error) {
	if n == nil {
		return nil, nil
	}
	out := &pb.ExpandNode{Object: objectToProto(n.Object), Relation: n.Relation, Operation: n.Op}
	for _, c := range n.Children {
		pc, err := expandToProto(c)
		if err != nil {
			return nil, err
		}
		out.Children = append(out.Children, pc)
	}
	for _, r := range n.Subjects {
		pr, err := relationshipToProto(r)
		if err != nil {
			return nil, err
		}
		out.Subjects = append(out.Subjects, pr)
	}
	return out, nil
}

// tokenExplanationToProto explains a check made with a capability token;
// nil for a check made without one.
func tokenExplanationToProto(d *capability.Decision) *pb.TokenExplanation {
	if d == nil {
		return nil
	}
	ref := func(s string) *pb.ObjectReference {
		typ, id, ok := strings.Cut(s, ":")
		if !ok {
			return nil
		}
		return &pb.ObjectReference{ObjectType: typ, ObjectId: id}
	}
	out := &pb.TokenExplanation{
		TokenId: d.TokenID, RootId: d.RootID, Block: int32(d.Block),
		Reason: string(d.Reason), Detail: d.Detail, Principal: ref(d.Principal), Task: d.Task,
	}
	for _, h := range d.Holders {
		out.Holders = append(out.Holders, ref(h))
	}
	return out
}

// checkFilterNames refuses a filter naming a type or relation the schema
// does not define, which would match nothing: an empty answer would hide
// the misspelling. Filters on IDs alone need no schema.
func (s *Server) checkFilterNames(ctx context.Context, field string, f rel.Filter) error {
	if f.ResourceType == "" && f.SubjectType == "" {
		return nil
	}
	sch, err := s.core.HeadSchema(ctx)
	if err != nil {
		return toStatus(err)
	}
	check := func(typeField, typ, relField, relation string) error {
		switch {
		case typ == "":
		case sch == nil:
			return invalid(typeField, "type %q: no schema has been written, so the filter would match nothing", typ)
		case sch.Definition(typ) == nil:
			return invalid(typeField, "type %q is not defined in the schema, so the filter would match nothing", typ)
		case relation != "" && sch.Relation(typ, relation) == nil:
			return invalid(relField, "%q has no relation %q in the schema, so the filter would match nothing", typ, relation)
		}
		return nil
	}
	if err := check(field+".resource_type", f.ResourceType, field+".optional_relation", f.Relation); err != nil {
		return err
	}
	subRel := ""
	if f.SubjectRelation != nil {
		subRel = *f.SubjectRelation
	}
	sub := field + ".optional_subject_filter"
	return check(sub+".subject_type", f.SubjectType, sub+".optional_relation.relation", subRel)
}
