package engine

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Expand returns the tree of a relation or permission on an object: operation
// nodes for permissions and leaves holding the relationships found directly.
// With recursive set, userset subjects (group:x#member) and arrows are
// expanded down to their own leaves; otherwise usersets stay as subjects.
// Expired relationships never appear; caveated ones carry their caveat.
func (e *Engine) Expand(ctx context.Context, obj rel.Object, relation string, rev store.Revision, recursive bool) (*ExpandNode, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	rev, p, err := e.planFor(rev)
	if err != nil {
		return nil, err
	}
	sch := p.sch
	if err := rel.ValidateObject(obj); err != nil {
		return nil, fmt.Errorf("resource: %w", err)
	}
	if sch.Definition(obj.Type) == nil {
		return nil, fmt.Errorf("%w: resource type %q is not defined", ErrUnknownType, obj.Type)
	}
	if sch.Relation(obj.Type, relation) == nil {
		return nil, unknownRelationError(obj.Type, relation)
	}
	c := e.getChecker(rev, p)
	defer e.putChecker(c)
	x := &expander{c: c, recursive: recursive, ctx: ctx}
	return x.relation(obj, relation, 0)
}

type expander struct {
	c         *checker
	recursive bool
	ctx       context.Context
	path      []frame
}

func (x *expander) relation(obj rel.Object, relation string, depth int) (*ExpandNode, error) {
	if err := x.ctx.Err(); err != nil {
		return nil, err
	}
	if depth > x.c.maxDepth {
		return nil, fmt.Errorf("%w (%d) expanding %s#%s", ErrMaxDepth, x.c.maxDepth, obj, relation)
	}
	rp := x.c.pl.relByName(obj.Type, relation)
	if rp == nil {
		return &ExpandNode{Object: obj, Relation: relation, Op: "leaf"}, nil
	}
	idx := x.c.idx
	id, seen := rp.typ.table.lookup(obj.ID)
	if seen {
		f := frame{rp, id}
		for _, p := range x.path {
			if p == f {
				// A cycle: what lies beyond was already expanded above.
				return &ExpandNode{Object: obj, Relation: relation, Op: "leaf"}, nil
			}
		}
		x.path = append(x.path, f)
		defer func() { x.path = x.path[:len(x.path)-1] }()
	}
	if rp.rewrite != nil {
		r := rp.typ.def.Relations[relation]
		n, err := x.rewrite(obj, rp, r.Rewrite, depth)
		if err != nil {
			return nil, err
		}
		switch r.Rewrite.Op {
		case schema.OpUnion, schema.OpIntersection, schema.OpExclusion:
			n.Object, n.Relation = obj, relation
			return n, nil
		}
		// A permission that is a single reference keeps the referenced
		// node intact (subjects are found on the relation that holds them)
		// under a node naming the permission.
		return &ExpandNode{Object: obj, Relation: relation, Op: "union", Children: []*ExpandNode{n}}, nil
	}
	leaf := &ExpandNode{Object: obj, Relation: relation, Op: "leaf"}
	if !seen {
		return leaf, nil
	}
	var usersets []rel.Subject
	edges := rp.table.edges(id)
	for i := range edges {
		e := &edges[i]
		if !x.c.live(e) {
			continue
		}
		r := idx.relationshipOf(rp.typ.sym, id, rp.sym, e)
		leaf.Subjects = append(leaf.Subjects, r)
		if r.Subject.Relation != "" {
			usersets = append(usersets, r.Subject)
		}
	}
	// In the order SpiceDB lists them (objects first, then usersets, each
	// as its datastores return them: sorted), not in the order IDs were
	// interned.
	slices.SortFunc(leaf.Subjects, func(a, b rel.Relationship) int { return compareSubjects(a.Subject, b.Subject) })
	slices.SortFunc(usersets, compareSubjects)
	if !x.recursive || len(usersets) == 0 {
		return leaf, nil
	}
	n := &ExpandNode{Object: obj, Relation: relation, Op: "union", Children: []*ExpandNode{leaf}}
	for _, s := range usersets {
		child, err := x.relation(s.Object(), s.Relation, depth+1)
		if err != nil {
			return nil, err
		}
		n.Children = append(n.Children, child)
	}
	return n, nil
}

func (x *expander) rewrite(obj rel.Object, rp *relPlan, rw *schema.Rewrite, depth int) (*ExpandNode, error) {
	switch rw.Op {
	case schema.OpUnion, schema.OpIntersection, schema.OpExclusion:
		n := &ExpandNode{Object: obj, Op: rw.Op.String()}
		for _, ch := range rw.Children {
			c, err := x.rewrite(obj, rp, ch, depth)
			if err != nil {
				return nil, err
			}
			n.Children = append(n.Children, c)
		}
		return n, nil
	case schema.OpComputed:
		return x.relation(obj, rw.Relation, depth+1)
	case schema.OpArrow, schema.OpArrowAll:
		op := "union"
		if rw.Op == schema.OpArrowAll {
			op = "intersection"
		}
		n := &ExpandNode{Object: obj, Relation: rw.Tupleset + "->" + rw.Relation, Op: op}
		idx := x.c.idx
		ts := rp.typ.rels[rw.Tupleset]
		id, seen := rp.typ.table.lookup(obj.ID)
		if ts == nil || ts.table == nil || !seen {
			return n, nil
		}
		edges := slices.Clone(ts.table.edges(id))
		slices.SortFunc(edges, func(a, b edge) int {
			return compareSubjects(subjectOf(idx, &a), subjectOf(idx, &b))
		})
		for i := range edges {
			e := &edges[i]
			if !x.c.live(e) {
				continue
			}
			tt := idx.types[e.subjType()]
			target := rel.Object{Type: tt.name, ID: tt.names[e.subjID]}
			if x.c.pl.relByName(target.Type, rw.Relation) == nil {
				continue
			}
			c, err := x.relation(target, rw.Relation, depth+1)
			if err != nil {
				return nil, err
			}
			via := idx.relationshipOf(rp.typ.sym, id, ts.sym, e)
			c.Via = &via
			n.Children = append(n.Children, c)
		}
		return n, nil
	case schema.OpNil:
		return &ExpandNode{Object: obj, Op: "leaf"}, nil
	case schema.OpSelf:
		return &ExpandNode{Object: obj, Op: "leaf", Subjects: []rel.Relationship{{
			Resource: obj, Relation: "self", Subject: rel.Subject{Type: obj.Type, ID: obj.ID},
		}}}, nil
	}
	return nil, fmt.Errorf("unknown rewrite operation %v", rw.Op)
}

// compareSubjects orders subjects as SpiceDB's expansion lists them: objects
// before usersets, each by type, ID, then relation.
func compareSubjects(a, b rel.Subject) int {
	isUserset := func(s rel.Subject) int {
		if s.Relation != "" {
			return 1
		}
		return 0
	}
	return cmp.Or(cmp.Compare(isUserset(a), isUserset(b)),
		strings.Compare(a.Type, b.Type), strings.Compare(a.ID, b.ID), strings.Compare(a.Relation, b.Relation))
}

// subjectOf names an edge's subject.
func subjectOf(idx *index, e *edge) rel.Subject {
	tt := idx.types[e.subjType()]
	return rel.Subject{Type: tt.name, ID: tt.names[e.subjID], Relation: idx.relNames[e.subjRel()]}
}
