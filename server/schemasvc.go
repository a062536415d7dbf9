package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/op"
)

type schemaService struct {
	pb.UnimplementedSchemaServiceServer
	s *Server
}

func (x *schemaService) WriteSchema(ctx context.Context, req *pb.WriteSchemaRequest) (*pb.WriteSchemaResponse, error) {
	if strings.TrimSpace(req.GetSchema()) == "" {
		return nil, invalid("schema", "required")
	}
	out, err := x.s.core.WriteSchema(ctx, op.WriteSchemaRequest{Text: req.GetSchema()})
	if err != nil {
		return nil, err
	}
	return &pb.WriteSchemaResponse{WrittenAt: x.s.token(out.Revision)}, nil
}

func (x *schemaService) ReadSchema(ctx context.Context, req *pb.ReadSchemaRequest) (*pb.ReadSchemaResponse, error) {
	cons, err := x.s.consistencyFromProto(req.GetConsistency())
	if err != nil {
		return nil, err
	}
	out, err := x.s.core.ReadSchema(ctx, op.ReadSchemaRequest{Consistency: cons})
	if err != nil {
		return nil, err
	}
	return &pb.ReadSchemaResponse{SchemaText: out.Text, ReadAt: x.s.token(out.Revision)}, nil
}

func (x *schemaService) ValidateSchema(ctx context.Context, req *pb.ValidateSchemaRequest) (*pb.ValidateSchemaResponse, error) {
	if strings.TrimSpace(req.GetSchema()) == "" {
		return nil, invalid("schema", "required")
	}
	v, err := x.s.core.ValidateSchema(ctx, op.ValidateSchemaRequest{Text: req.GetSchema()})
	if err != nil {
		return nil, err
	}
	out := &pb.ValidateSchemaResponse{ComparedAt: x.s.token(v.Revision)}
	if se := v.CompileError; se != nil {
		out.Error = &pb.SchemaError{Message: se.Message, Line: uint32(max(se.Line, 0)), Column: uint32(max(se.Column, 0)), Source: se.Source}
		return out, nil
	}
	out.Diffs = diffSchemas(v.Live, v.Candidate)
	out.OrphanedRelationships, out.OrphansTruncated = v.Orphans, v.Truncated
	out.Valid = len(v.Orphans) == 0
	return out, nil
}

// diffSchemas lists what changes from old (nil: no schema) to new, by
// definition, relation and caveat, in name order.
func diffSchemas(old, new *schema.Schema) []*pb.SchemaDiff {
	if old == nil {
		old = &schema.Schema{}
	}
	var out []*pb.SchemaDiff
	add := func(kind, name, relation, detail string) {
		out = append(out, &pb.SchemaDiff{Kind: kind, Name: name, Relation: relation, Detail: detail})
	}
	for _, name := range unionKeys(old.Definitions, new.Definitions) {
		od, nd := old.Definitions[name], new.Definitions[name]
		switch {
		case od == nil:
			add("definition_added", name, "", "")
			continue
		case nd == nil:
			add("definition_removed", name, "", "")
			continue
		}
		for _, rn := range unionKeys(od.Relations, nd.Relations) {
			or, nr := od.Relations[rn], nd.Relations[rn]
			switch {
			case or == nil:
				add(relationKind(nr)+"_added", name, rn, describeRelation(nr))
			case nr == nil:
				add(relationKind(or)+"_removed", name, rn, describeRelation(or))
			case or.IsPermission != nr.IsPermission:
				add(relationKind(nr)+"_changed", name, rn, fmt.Sprintf("was a %s: %s; now a %s: %s", relationKind(or), describeRelation(or), relationKind(nr), describeRelation(nr)))
			default:
				if a, b := describeRelation(or), describeRelation(nr); a != b {
					add(relationKind(nr)+"_changed", name, rn, a+" -> "+b)
				}
			}
		}
	}
	for _, name := range unionKeys(old.Caveats, new.Caveats) {
		oc, nc := old.Caveats[name], new.Caveats[name]
		switch {
		case oc == nil:
			add("caveat_added", name, "", describeParams(nc))
		case nc == nil:
			add("caveat_removed", name, "", describeParams(oc))
		default:
			if a, b := describeParams(oc), describeParams(nc); a != b {
				add("caveat_changed", name, "", "parameters "+a+" -> "+b)
			}
		}
	}
	return out
}

func unionKeys[V any](a, b map[string]V) []string {
	keys := slices.Collect(maps.Keys(a))
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

func relationKind(r *schema.Relation) string {
	if r.IsPermission {
		return "permission"
	}
	return "relation"
}

// describeRelation renders a relation's allowed subjects or a permission's
// expression, in schema-language form.
func describeRelation(r *schema.Relation) string {
	if r.IsPermission {
		return renderRewrite(r.Rewrite)
	}
	parts := make([]string, len(r.Allowed))
	for i, a := range r.Allowed {
		parts[i] = a.String()
	}
	return strings.Join(parts, " | ")
}

func renderRewrite(rw *schema.Rewrite) string {
	if rw == nil {
		return "nil"
	}
	join := func(op string) string {
		parts := make([]string, len(rw.Children))
		for i, c := range rw.Children {
			parts[i] = renderRewrite(c)
		}
		if len(parts) == 1 {
			return parts[0]
		}
		return "(" + strings.Join(parts, " "+op+" ") + ")"
	}
	switch rw.Op {
	case schema.OpUnion:
		return join("+")
	case schema.OpIntersection:
		return join("&")
	case schema.OpExclusion:
		return join("-")
	case schema.OpComputed:
		return rw.Relation
	case schema.OpArrow:
		return rw.Tupleset + "->" + rw.Relation
	case schema.OpArrowAll:
		return rw.Tupleset + ".all(" + rw.Relation + ")"
	case schema.OpSelf:
		return "self"
	}
	return "nil"
}

func describeParams(c *schema.Caveat) string {
	names := slices.Sorted(maps.Keys(c.Params))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = c.Params[n] + " " + n
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
