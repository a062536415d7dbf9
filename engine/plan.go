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
	reach        kindSet
	usersetReach kindSet
}

// reaches reports whether a subject of kind k can hold rp.
func (rp *relPlan) reaches(k uint64) bool { return rp.reach.has(k) }

// usersetReaches reports whether a subject of kind k can hold rp through one
// of its userset subjects.
func (rp *relPlan) usersetReaches(k uint64) bool { return rp.usersetReach.has(k) }

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
	p := internPlan(idx, sch)
	if err := p.compile(); err != nil {
		return nil, err
	}
	return p, nil
}

// internPlan is the part of compilePlan that writes to idx: it interns every
// name and creates the relations' tables, in time linear in the schema. The
// rest, compile, reads only the plan, so that it can run without the
// engine's lock.
func internPlan(idx *index, sch *schema.Schema) *plan {
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
		// Sized by the type's own relations, not every name ever interned:
		// many definitions times many names would be quadratic.
		var top sym
		for _, rp := range tp.rels {
			top = max(top, rp.sym)
		}
		tp.byRel = make([]*relPlan, int(top)+1)
		for _, rp := range tp.rels {
			tp.byRel[rp.sym] = rp
		}
	}
	return p
}

// compile compiles the permissions' rewrites and computes reachability.
func (p *plan) compile() error {
	for _, tp := range p.types {
		for rn, r := range tp.def.Relations {
			if !r.IsPermission {
				continue
			}
			n, err := p.compileRewrite(tp, r.Rewrite)
			if err != nil {
				return fmt.Errorf("compiling %s#%s: %w", tp.name, rn, err)
			}
			tp.rels[rn].rewrite = n
		}
	}
	p.computeReach()
	return nil
}

// computeReach fills every relPlan's reach: its own kind (a userset is a
// member of itself), its allowed subjects, and the reach of every relation or
// permission it evaluates. Over-approximating is safe; a missing kind would
// wrongly deny, so every path evaluation follows is included.
//
// It runs in time linear in the schema: the relations are condensed into
// strongly connected components (every member of a cycle reaches the same
// kinds), which Tarjan's algorithm emits dependencies first, so one pass
// unions each component's set from those already final. A set that would
// exceed maxReachKinds becomes "any kind": long permission chains would
// otherwise make the sets, and the time to build them, quadratic.
func (p *plan) computeReach() {
	var all []*relPlan
	for _, name := range p.sch.DefinitionNames() {
		tp := p.types[name]
		for _, rn := range tp.def.Order {
			all = append(all, tp.rels[rn])
		}
	}
	num := make(map[*relPlan]int32, len(all))
	for i, rp := range all {
		num[rp] = int32(i)
	}
	deps := make([][]int32, len(all))
	own := make([]kindSet, len(all))
	for i, rp := range all {
		tp := rp.typ
		s := &own[i]
		s.add(subjectKind(rp.sym, tp.sym))
		for _, k := range rp.kinds {
			s.add(k)
		}
		for _, w := range rp.wildcards {
			s.add(subjectKind(noSym, w))
		}
		var ds []*relPlan
		if rp.rewrite != nil {
			ds = p.rewriteDeps(rp.rewrite, nil)
			if usesSelf(rp.rewrite) {
				// `self` holds for the object itself as a plain subject.
				s.add(subjectKind(noSym, tp.sym))
			}
		} else {
			ds = p.usersetDeps(rp)
		}
		for _, d := range ds {
			deps[i] = append(deps[i], num[d])
		}
	}
	for _, comp := range sccs(deps) {
		var set kindSet
		for _, v := range comp {
			set.union(own[v])
			for _, d := range deps[v] {
				// Dependencies outside the component are final already;
				// inside it, their own kinds are added by the loop above.
				set.union(all[d].reach)
			}
		}
		for _, v := range comp {
			all[v].reach = set
		}
	}
	for _, rp := range all {
		if rp.rewrite != nil {
			continue
		}
		var set kindSet
		for _, d := range p.usersetDeps(rp) {
			set.union(d.reach)
		}
		rp.usersetReach = set
	}
}

// maxReachKinds bounds the kinds a reach set lists before it stands for any
// kind, keeping both its size and a lookup in it small.
const maxReachKinds = 64

// kindSet is a set of subject kinds, or every kind. The zero value is empty.
type kindSet struct {
	kinds []uint64
	any   bool
}

func (s *kindSet) has(k uint64) bool { return s.any || slices.Contains(s.kinds, k) }

func (s *kindSet) add(k uint64) {
	if s.any || slices.Contains(s.kinds, k) {
		return
	}
	if len(s.kinds) == maxReachKinds {
		s.kinds, s.any = nil, true
		return
	}
	s.kinds = append(s.kinds, k)
}

func (s *kindSet) union(o kindSet) {
	if o.any {
		s.kinds, s.any = nil, true
		return
	}
	for _, k := range o.kinds {
		s.add(k)
	}
}

// sccs returns the strongly connected components of the graph whose edges
// from v are deps[v], each component after every component it depends on
// (Tarjan's algorithm, iterative so that a chain of thousands of relations
// needs no deep recursion).
func sccs(deps [][]int32) [][]int32 {
	n := len(deps)
	const unvisited = -1
	index := make([]int32, n)
	low := make([]int32, n)
	onStack := make([]bool, n)
	for i := range index {
		index[i] = unvisited
	}
	var stack []int32
	var out [][]int32
	type frame struct{ v, next int32 }
	var work []frame
	next := int32(0)
	for root := range n {
		if index[root] != unvisited {
			continue
		}
		work = append(work[:0], frame{v: int32(root)})
		index[root], low[root] = next, next
		next++
		stack = append(stack, int32(root))
		onStack[root] = true
		for len(work) > 0 {
			f := &work[len(work)-1]
			v := f.v
			if int(f.next) < len(deps[v]) {
				w := deps[v][f.next]
				f.next++
				switch {
				case index[w] == unvisited:
					index[w], low[w] = next, next
					next++
					stack = append(stack, w)
					onStack[w] = true
					work = append(work, frame{v: w})
				case onStack[w]:
					low[v] = min(low[v], index[w])
				}
				continue
			}
			work = work[:len(work)-1]
			if len(work) > 0 {
				u := work[len(work)-1].v
				low[u] = min(low[u], low[v])
			}
			if low[v] == index[v] {
				var comp []int32
				for {
					w := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					onStack[w] = false
					comp = append(comp, w)
					if w == v {
						break
					}
				}
				out = append(out, comp)
			}
		}
	}
	return out
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

func (p *plan) compileRewrite(tp *typePlan, rw *schema.Rewrite) (*node, error) {
	n := &node{op: rw.Op}
	switch rw.Op {
	case schema.OpUnion, schema.OpIntersection, schema.OpExclusion:
		if len(rw.Children) == 0 {
			return nil, fmt.Errorf("%v without operands", rw.Op)
		}
		for _, c := range rw.Children {
			cn, err := p.compileRewrite(tp, c)
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
