package engine

import (
	"fmt"
	"slices"

	"github.com/mandate-authz/mandate/schema"
)

// plan is a schema compiled against the index: every name resolved to a
// symbol or straight to the table holding its edges, so that evaluation
// follows pointers and indexes slices instead of looking names up.
type plan struct {
	sch *schema.Schema
	// types by name (requests) and by type symbol (edges).
	types  map[string]*typePlan
	byType []*typePlan
	// wildcardTypes are the subject types some relation accepts as `type:*`.
	wildcardTypes map[string]bool
}

type typePlan struct {
	name  string
	sym   sym
	table *typeTable
	def   *schema.Definition
	rels  map[string]*relPlan
	// byRel is indexed by relation symbol; nil where the type has no such
	// relation or permission.
	byRel   []*relPlan
	isAgent bool
	// actsFor holds the acts_for edges of an agent type.
	actsFor *relTable
}

// relPlan is one relation or permission of a type.
type relPlan struct {
	typ  *typePlan
	name string
	sym  sym
	// num numbers the plan's relations from 1, for memo keys.
	num uint32
	// table holds a relation's edges; nil for a permission.
	table   *relTable
	rewrite *node // a permission's expression; nil for a relation

	// What the schema lets a relation hold, so that evaluation skips
	// searching for what cannot be there: the store refuses relationships
	// (and schema changes) that break these.
	kinds     []uint64 // subjectKind of every allowed subject that is not a wildcard
	wildcards []sym    // types allowed as type:*
	usersets  bool     // some allowed subject is a userset

	// reach holds the subject kinds that can ever hold this relation or
	// permission, through any path the schema allows; usersetReach those
	// reachable through its userset subjects. A subject of any other kind
	// is answered false without walking the relationships: an agent never
	// descends into group memberships that can hold only users.
	reach        []uint64
	usersetReach []uint64
}

// reaches reports whether a subject of kind k can hold rp.
func (rp *relPlan) reaches(k uint64) bool { return slices.Contains(rp.reach, k) }

// node is a compiled rewrite.
type node struct {
	op       schema.Op
	children []*node
	// rel is the relation OpComputed evaluates on the same object.
	rel *relPlan
	// tupleset holds the edges an arrow follows (nil: the type has no such
	// relation, so the arrow finds nothing).
	tupleset *relTable
	// targets is indexed by the subject type symbol of a tupleset edge: the
	// relation evaluated there, nil when that type lacks it.
	targets []*relPlan
	// tuplesetRel is the tupleset relation's plan (nil when undefined).
	tuplesetRel *relPlan
}

// rel returns the relation or permission of type t with symbol r, or nil.
func (p *plan) rel(t, r sym) *relPlan {
	if int(t) >= len(p.byType) {
		return nil
	}
	tp := p.byType[t]
	if tp == nil || int(r) >= len(tp.byRel) {
		return nil
	}
	return tp.byRel[r]
}

// typeBySym returns the plan of the type with symbol t, or nil.
func (p *plan) typeBySym(t sym) *typePlan {
	if int(t) < len(p.byType) {
		return p.byType[t]
	}
	return nil
}

// relByName resolves a relation or permission by names, or nil.
func (p *plan) relByName(typ, relation string) *relPlan {
	tp := p.types[typ]
	if tp == nil {
		return nil
	}
	return tp.rels[relation]
}

// compilePlan compiles sch against idx, interning every name the schema uses
// and creating the tables of its relations.
func compilePlan(idx *index, sch *schema.Schema) (*plan, error) {
	p := &plan{sch: sch, types: make(map[string]*typePlan, len(sch.Definitions)), wildcardTypes: map[string]bool{}}
	var nrels uint32
	for _, name := range sch.DefinitionNames() {
		d := sch.Definitions[name]
		tp := &typePlan{name: name, sym: idx.typeSym(name), def: d, rels: make(map[string]*relPlan, len(d.Relations)), isAgent: d.IsAgent()}
		tp.table = idx.types[tp.sym]
		p.types[name] = tp
		for rn, r := range d.Relations {
			rp := &relPlan{typ: tp, name: rn, sym: idx.relSym(rn)}
			nrels++
			rp.num = nrels
			if !r.IsPermission {
				rp.table = idx.table(tp.sym, rp.sym)
				for _, a := range r.Allowed {
					st := idx.typeSym(a.Type)
					switch {
					case a.Wildcard:
						p.wildcardTypes[a.Type] = true
						rp.wildcards = append(rp.wildcards, st)
					default:
						rp.kinds = append(rp.kinds, subjectKind(idx.relSym(a.Relation), st))
						rp.usersets = rp.usersets || a.Relation != ""
					}
				}
			}
			tp.rels[rn] = rp
		}
		if tp.isAgent {
			tp.actsFor = tp.rels[schema.ActsFor].table
		}
	}
	p.byType = make([]*typePlan, len(idx.types))
	for _, tp := range p.types {
		p.byType[tp.sym] = tp
		tp.byRel = make([]*relPlan, len(idx.relNames))
		for _, rp := range tp.rels {
			tp.byRel[rp.sym] = rp
		}
	}
	for _, tp := range p.types {
		for rn, r := range tp.def.Relations {
			if !r.IsPermission {
				continue
			}
			n, err := p.compileRewrite(idx, tp, r.Rewrite)
			if err != nil {
				return nil, fmt.Errorf("compiling %s#%s: %w", tp.name, rn, err)
			}
			tp.rels[rn].rewrite = n
		}
	}
	p.computeReach()
	return p, nil
}

// computeReach fills every relPlan's reach: its own kind (a userset is a
// member of itself), its allowed subjects, and, to a fixed point, the reach
// of every relation or permission it evaluates. Over-approximating is safe;
// a missing kind would wrongly deny, so every path evaluation follows is
// included.
func (p *plan) computeReach() {
	var all []*relPlan
	deps := map[*relPlan][]*relPlan{}
	add := func(set []uint64, k uint64) ([]uint64, bool) {
		if slices.Contains(set, k) {
			return set, false
		}
		return append(set, k), true
	}
	for _, tp := range p.types {
		for _, rp := range tp.rels {
			all = append(all, rp)
			rp.reach, _ = add(nil, subjectKind(rp.sym, tp.sym))
			for _, k := range rp.kinds {
				rp.reach, _ = add(rp.reach, k)
			}
			for _, w := range rp.wildcards {
				rp.reach, _ = add(rp.reach, subjectKind(noSym, w))
			}
			if rp.rewrite != nil {
				deps[rp] = p.rewriteDeps(rp.rewrite, nil)
				if usesSelf(rp.rewrite) {
					// `self` holds for the object itself as a plain subject.
					rp.reach, _ = add(rp.reach, subjectKind(noSym, tp.sym))
				}
			} else {
				deps[rp] = p.usersetDeps(rp)
			}
		}
	}
	for changed := true; changed; {
		changed = false
		for _, rp := range all {
			for _, d := range deps[rp] {
				for _, k := range d.reach {
					var grew bool
					if rp.reach, grew = add(rp.reach, k); grew {
						changed = true
					}
				}
			}
		}
	}
	for _, rp := range all {
		if rp.rewrite != nil {
			continue
		}
		for _, d := range deps[rp] {
			for _, k := range d.reach {
				rp.usersetReach, _ = add(rp.usersetReach, k)
			}
		}
	}
}

// usesSelf reports whether a rewrite contains `self`.
func usesSelf(n *node) bool {
	return n.op == schema.OpSelf || slices.ContainsFunc(n.children, usesSelf)
}

// usersetDeps lists the relations a relation's userset subjects evaluate.
func (p *plan) usersetDeps(rp *relPlan) []*relPlan {
	var out []*relPlan
	for _, k := range rp.kinds {
		if r := sym(k >> 32); r != noSym {
			if d := p.rel(sym(k), r); d != nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// rewriteDeps lists the relations and permissions a rewrite evaluates.
func (p *plan) rewriteDeps(n *node, out []*relPlan) []*relPlan {
	switch n.op {
	case schema.OpComputed:
		if n.rel != nil {
			out = append(out, n.rel)
		}
	case schema.OpArrow, schema.OpArrowAll:
		// The arrow evaluates its target on the object of every tupleset
		// subject, whatever the subject's relation or wildcard.
		if ts := n.tuplesetRel; ts != nil {
			types := slices.Clone(ts.wildcards)
			for _, k := range ts.kinds {
				types = append(types, sym(k))
			}
			for _, t := range types {
				if int(t) < len(n.targets) && n.targets[t] != nil {
					out = append(out, n.targets[t])
				}
			}
		}
	}
	for _, c := range n.children {
		out = p.rewriteDeps(c, out)
	}
	return out
}

func (p *plan) compileRewrite(idx *index, tp *typePlan, rw *schema.Rewrite) (*node, error) {
	n := &node{op: rw.Op}
	switch rw.Op {
	case schema.OpUnion, schema.OpIntersection, schema.OpExclusion:
		if len(rw.Children) == 0 {
			return nil, fmt.Errorf("%v without operands", rw.Op)
		}
		for _, c := range rw.Children {
			cn, err := p.compileRewrite(idx, tp, c)
			if err != nil {
				return nil, err
			}
			n.children = append(n.children, cn)
		}
	case schema.OpComputed:
		// A reference the schema does not define evaluates to false.
		n.rel = tp.rels[rw.Relation]
	case schema.OpArrow, schema.OpArrowAll:
		if ts := tp.rels[rw.Tupleset]; ts != nil {
			n.tupleset = ts.table
			n.tuplesetRel = ts
		}
		n.targets = make([]*relPlan, len(p.byType))
		for _, target := range p.types {
			n.targets[target.sym] = target.rels[rw.Relation]
		}
	case schema.OpNil, schema.OpSelf:
	default:
		return nil, fmt.Errorf("unknown rewrite operation %v", rw.Op)
	}
	return n, nil
}
