package server

import (
	"fmt"
	"strings"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Conversions between authzed.api.v1 messages and Mandate's types. Requests
// have passed validateAuthzed first; the rel checks here catch what the
// proto rules do not, naming the field.

func objectFromV1(field string, o *v1.ObjectReference) (rel.Object, error) {
	return objectOf(field, o != nil, o.GetObjectType(), o.GetObjectId())
}

func subjectFromV1(field string, s *v1.SubjectReference) (rel.Subject, error) {
	o := s.GetObject()
	return subjectOf(field, o != nil, o.GetObjectType(), o.GetObjectId(), s.GetOptionalRelation())
}

func subjectToV1(s rel.Subject) *v1.SubjectReference {
	return &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: s.Type, ObjectId: s.ID}, OptionalRelation: s.Relation}
}

func relationshipFromV1(field string, r *v1.Relationship) (rel.Relationship, error) {
	if r == nil {
		return rel.Relationship{}, invalid(field, "required")
	}
	res, err := objectFromV1(field+".resource", r.GetResource())
	if err != nil {
		return rel.Relationship{}, err
	}
	sub, err := subjectFromV1(field+".subject", r.GetSubject())
	if err != nil {
		return rel.Relationship{}, err
	}
	out := rel.Relationship{Resource: res, Relation: r.GetRelation(), Subject: sub}
	if c := r.GetOptionalCaveat(); c != nil {
		out.Caveat = &rel.Caveat{Name: c.GetCaveatName(), Context: contextFromProto(c.GetContext())}
	}
	return completeRelationship(field, out, r.GetOptionalExpiresAt())
}

func relationshipToV1(r rel.Relationship) (*v1.Relationship, error) {
	out := &v1.Relationship{
		Resource: &v1.ObjectReference{ObjectType: r.Resource.Type, ObjectId: r.Resource.ID},
		Relation: r.Relation,
		Subject:  subjectToV1(r.Subject),
	}
	if r.Caveat != nil {
		ctx, err := caveatContextToProto(r)
		if err != nil {
			return nil, err
		}
		out.OptionalCaveat = &v1.ContextualizedCaveat{CaveatName: r.Caveat.Name, Context: ctx}
	}
	out.OptionalExpiresAt = expirationToProto(r)
	return out, nil
}

// filterFromV1 converts a filter; a nil filter matches everything.
func filterFromV1(field string, f *v1.RelationshipFilter) (op.Filter, error) {
	if f == nil {
		return op.Filter{}, nil
	}
	out := op.Filter{Filter: rel.Filter{ResourceType: f.GetResourceType(), Relation: f.GetOptionalRelation()}, ResourceIDPrefix: f.GetOptionalResourceIdPrefix()}
	if id := f.GetOptionalResourceId(); id != "" {
		if out.ResourceIDPrefix != "" {
			return op.Filter{}, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_INVALID_FILTER,
				"the relationship filter provided is not valid: resource_id and resource_id_prefix cannot be set at the same time")
		}
		out.ResourceIDs = []string{id}
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
	}
	return out, nil
}

// checkFilter applies SpiceDB's checks of a filter against the schema: named
// types and relations must exist, and the filter must not be empty.
func checkFilter(sch *schema.Schema, f *v1.RelationshipFilter) error {
	if f.GetResourceType() != "" {
		if err := checkTypeAndRelation(sch, f.GetResourceType(), f.GetOptionalRelation()); err != nil {
			return err
		}
	}
	if sf := f.GetOptionalSubjectFilter(); sf != nil && sf.GetSubjectType() != "" {
		relation := sf.GetOptionalRelation().GetRelation()
		if relation == "..." {
			relation = ""
		}
		if err := checkTypeAndRelation(sch, sf.GetSubjectType(), relation); err != nil {
			return err
		}
	}
	if f.GetResourceType() == "" && f.GetOptionalResourceId() == "" && f.GetOptionalResourceIdPrefix() == "" &&
		f.GetOptionalRelation() == "" && f.GetOptionalSubjectFilter() == nil {
		return authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_INVALID_FILTER,
			"the relationship filter provided is not valid: at least one field must be set")
	}
	return nil
}

// preconditionsFromV1 converts and checks preconditions against the schema.
func preconditionsFromV1(sch *schema.Schema, pre []*v1.Precondition) ([]store.Precondition, error) {
	out := make([]store.Precondition, 0, len(pre))
	for i, p := range pre {
		field := fmt.Sprintf("optional_preconditions[%d]", i)
		if p.GetFilter() == nil || p.GetOperation() == v1.Precondition_OPERATION_UNSPECIFIED {
			return nil, authzedErr(codes.InvalidArgument, v1.ErrorReason_ERROR_REASON_EMPTY_PRECONDITION, "%s: one of the specified preconditions is empty", field)
		}
		if err := checkFilter(sch, p.GetFilter()); err != nil {
			return nil, err
		}
		f, err := filterFromV1(field+".filter", p.GetFilter())
		if err != nil {
			return nil, err
		}
		if f.ResourceIDPrefix != "" {
			// The store checks preconditions atomically with the write
			// only through filters it can evaluate itself.
			return nil, status.Errorf(codes.Unimplemented, "%s.filter.optional_resource_id_prefix: preconditions by resource ID prefix are not supported by Mandate; name the resource IDs instead", field)
		}
		out = append(out, store.Precondition{MustExist: p.GetOperation() == v1.Precondition_OPERATION_MUST_MATCH, Filter: f.Filter})
	}
	return out, nil
}

func opFromV1(field string, op v1.RelationshipUpdate_Operation) (store.Op, error) {
	switch op {
	case v1.RelationshipUpdate_OPERATION_CREATE:
		return store.Create, nil
	case v1.RelationshipUpdate_OPERATION_TOUCH:
		return store.Touch, nil
	case v1.RelationshipUpdate_OPERATION_DELETE:
		return store.Delete, nil
	}
	return 0, invalid(field, "expected OPERATION_CREATE, OPERATION_TOUCH or OPERATION_DELETE, got %v", op)
}

// opToV1 reports store updates as SpiceDB's watch does: writes as touches.
func opToV1(op store.Op) v1.RelationshipUpdate_Operation {
	if op == store.Delete {
		return v1.RelationshipUpdate_OPERATION_DELETE
	}
	return v1.RelationshipUpdate_OPERATION_TOUCH
}

func checkPermissionshipToV1(d engine.Decision) v1.CheckPermissionResponse_Permissionship {
	switch d {
	case engine.Allowed:
		return v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION
	case engine.Conditional:
		return v1.CheckPermissionResponse_PERMISSIONSHIP_CONDITIONAL_PERMISSION
	}
	return v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION
}

func lookupPermissionshipToV1(d engine.Decision) v1.LookupPermissionship {
	if d == engine.Conditional {
		return v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_CONDITIONAL_PERMISSION
	}
	return v1.LookupPermissionship_LOOKUP_PERMISSIONSHIP_HAS_PERMISSION
}

// partialCaveat is set exactly when the answer is conditional.
func partialCaveat(d engine.Decision, missing []string) *v1.PartialCaveatInfo {
	if d != engine.Conditional {
		return nil
	}
	return &v1.PartialCaveatInfo{MissingRequiredContext: missing}
}

// expandToV1 translates the engine's expansion tree into SpiceDB's.
// enclosing is the relation of the nearest ancestor that names one: SpiceDB
// labels the operation and arrow nodes inside a permission with it.
func expandToV1(n *engine.ExpandNode, enclosing string) *v1.PermissionRelationshipTree {
	if n == nil {
		return nil
	}
	out := &v1.PermissionRelationshipTree{}
	relation := n.Relation
	if relation == "" || strings.Contains(relation, "->") {
		relation = enclosing
	}
	if n.Object.Type != "" {
		out.ExpandedObject = &v1.ObjectReference{ObjectType: n.Object.Type, ObjectId: n.Object.ID}
		out.ExpandedRelation = relation
	}
	if n.Op == "leaf" {
		leaf := &v1.DirectSubjectSet{}
		for _, r := range n.Subjects {
			leaf.Subjects = append(leaf.Subjects, subjectToV1(r.Subject))
		}
		out.TreeType = &v1.PermissionRelationshipTree_Leaf{Leaf: leaf}
		return out
	}
	op := v1.AlgebraicSubjectSet_OPERATION_UNION
	switch n.Op {
	case "intersection":
		op = v1.AlgebraicSubjectSet_OPERATION_INTERSECTION
	case "exclusion":
		op = v1.AlgebraicSubjectSet_OPERATION_EXCLUSION
	}
	set := &v1.AlgebraicSubjectSet{Operation: op}
	for _, c := range n.Children {
		set.Children = append(set.Children, expandToV1(c, relation))
	}
	out.TreeType = &v1.PermissionRelationshipTree_Intermediate{Intermediate: set}
	return out
}
