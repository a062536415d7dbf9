package schema

import (
	"fmt"

	core "github.com/authzed/spicedb/pkg/proto/core/v1"
	"github.com/authzed/spicedb/pkg/tuple"
)

func translateDefinition(nd *core.NamespaceDefinition) (*Definition, error) {
	d := &Definition{Name: nd.Name, Relations: make(map[string]*Relation, len(nd.Relation))}
	for _, r := range nd.Relation {
		rel := &Relation{Definition: nd.Name, Name: r.Name}
		if rw := r.GetUsersetRewrite(); rw != nil {
			rel.IsPermission = true
			t, err := translateRewrite(rw)
			if err != nil {
				return nil, fmt.Errorf("permission %q: %w", r.Name, err)
			}
			rel.Rewrite = t
		} else {
			for _, ar := range r.GetTypeInformation().GetAllowedDirectRelations() {
				a := AllowedSubject{Type: ar.Namespace}
				if ar.GetPublicWildcard() != nil {
					a.Wildcard = true
				} else if rn := ar.GetRelation(); rn != tuple.Ellipsis {
					a.Relation = rn
				}
				if c := ar.GetRequiredCaveat(); c != nil {
					a.Caveat = c.CaveatName
				}
				a.Expiration = ar.GetRequiredExpiration() != nil
				rel.Allowed = append(rel.Allowed, a)
			}
		}
		d.Relations[r.Name] = rel
		d.Order = append(d.Order, r.Name)
	}
	return d, nil
}

func translateRewrite(rw *core.UsersetRewrite) (*Rewrite, error) {
	var op Op
	var set *core.SetOperation
	switch r := rw.RewriteOperation.(type) {
	case *core.UsersetRewrite_Union:
		op, set = OpUnion, r.Union
	case *core.UsersetRewrite_Intersection:
		op, set = OpIntersection, r.Intersection
	case *core.UsersetRewrite_Exclusion:
		op, set = OpExclusion, r.Exclusion
	default:
		return nil, fmt.Errorf("unsupported rewrite %T", rw.RewriteOperation)
	}
	node := &Rewrite{Op: op}
	for _, child := range set.GetChild() {
		c, err := translateChild(child)
		if err != nil {
			return nil, err
		}
		node.Children = append(node.Children, c)
	}
	if len(node.Children) == 1 && op != OpExclusion {
		return node.Children[0], nil
	}
	return node, nil
}

func translateChild(child *core.SetOperation_Child) (*Rewrite, error) {
	switch c := child.ChildType.(type) {
	case *core.SetOperation_Child_ComputedUserset:
		return &Rewrite{Op: OpComputed, Relation: c.ComputedUserset.Relation}, nil
	case *core.SetOperation_Child_TupleToUserset:
		return &Rewrite{
			Op:       OpArrow,
			Tupleset: c.TupleToUserset.GetTupleset().GetRelation(),
			Relation: c.TupleToUserset.GetComputedUserset().GetRelation(),
		}, nil
	case *core.SetOperation_Child_FunctionedTupleToUserset:
		op := OpArrow
		switch c.FunctionedTupleToUserset.Function {
		case core.FunctionedTupleToUserset_FUNCTION_ANY:
		case core.FunctionedTupleToUserset_FUNCTION_ALL:
			op = OpArrowAll
		default:
			return nil, fmt.Errorf("unknown arrow function %v", c.FunctionedTupleToUserset.Function)
		}
		return &Rewrite{
			Op:       op,
			Tupleset: c.FunctionedTupleToUserset.GetTupleset().GetRelation(),
			Relation: c.FunctionedTupleToUserset.GetComputedUserset().GetRelation(),
		}, nil
	case *core.SetOperation_Child_UsersetRewrite:
		return translateRewrite(c.UsersetRewrite)
	case *core.SetOperation_Child_XNil:
		return &Rewrite{Op: OpNil}, nil
	case *core.SetOperation_Child_XSelf:
		return &Rewrite{Op: OpSelf}, nil
	case *core.SetOperation_Child_XThis:
		return nil, fmt.Errorf("_this is not supported in permissions")
	}
	return nil, fmt.Errorf("unsupported expression %T", child.ChildType)
}
