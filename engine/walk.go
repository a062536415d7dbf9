package engine

import (
	"slices"
	"strings"

	"github.com/mandate-authz/mandate/schema"
)

// A reverse walk finds the candidate resources of a LookupResources: the
// objects on which the permission may hold for the subject. It starts at the
// relationships naming the subject (and its type's wildcard) and climbs the
// plan backwards: from a relation to the permissions computing it, through
// usersets to the relations that hold them, through arrows to the objects
// whose tupleset names the object reached. Every candidate is then confirmed
// by the check itself, so the walk only has to never miss a resource the
// check allows:
//
//   - a union takes candidates from every operand, an arrow (any or all)
//     from its targets;
//   - an intersection takes them from its first operand, an exclusion from
//     its base: the result needs them, whatever the other operands say;
//   - caveats, expiration and revisions are ignored (every version of a
//     relationship is walked), and so is the depth limit: the check decides
//     them, and raises the depth error where it meets it.
//
// The cost of a walk is the part of the graph between the subject and the
// resources it reaches, not the number of objects of the resource type.

// reversePlan is what a reverse walk needs of a plan, indexed by
// relPlan.num.
type reversePlan struct {
	// computed lists, for each relation or permission, the permissions of
	// the same type that take candidates from it on the same object.
	computed [][]*relPlan
	// arrows lists the permissions that take candidates from it through an
	// arrow, with the arrow's tupleset.
	arrows [][]arrowParent
	// deps lists what a relation or permission takes candidates from, for
	// pruning the walk to what can lead to the permission looked up.
	deps [][]*relPlan
	// self lists, by type symbol, the permissions holding for the object
	// itself through `self`.
	self map[sym][]*relPlan
	size int
}

type arrowParent struct {
	perm     *relPlan
	tupleset *relTable
}

func newReversePlan(p *plan) *reversePlan {
	n := 0
	for _, tp := range p.types {
		for _, rp := range tp.rels {
			n = max(n, int(rp.num))
		}
	}
	rv := &reversePlan{
		computed: make([][]*relPlan, n+1),
		arrows:   make([][]arrowParent, n+1),
		deps:     make([][]*relPlan, n+1),
		self:     map[sym][]*relPlan{},
		size:     n + 1,
	}
	for _, tp := range p.types {
		for _, rp := range tp.rels {
			if rp.rewrite == nil {
				rv.deps[rp.num] = p.usersetDeps(rp)
				continue
			}
			forEachSource(rp.rewrite, func(n *node) {
				switch n.op {
				case schema.OpComputed:
					if n.rel != nil {
						rv.computed[n.rel.num] = append(rv.computed[n.rel.num], rp)
						rv.deps[rp.num] = append(rv.deps[rp.num], n.rel)
					}
				case schema.OpArrow, schema.OpArrowAll:
					if n.tupleset == nil {
						return
					}
					for _, target := range n.targets {
						if target != nil {
							rv.arrows[target.num] = append(rv.arrows[target.num], arrowParent{perm: rp, tupleset: n.tupleset})
							rv.deps[rp.num] = append(rv.deps[rp.num], target)
						}
					}
				case schema.OpSelf:
					rv.self[tp.sym] = append(rv.self[tp.sym], rp)
				}
			})
		}
	}
	return rv
}

// forEachSource calls f on every leaf of a rewrite that the rewrite takes
// candidates from: all operands of a union, the first of an intersection or
// an exclusion.
func forEachSource(n *node, f func(*node)) {
	switch n.op {
	case schema.OpUnion:
		for _, c := range n.children {
			forEachSource(c, f)
		}
	case schema.OpIntersection, schema.OpExclusion:
		forEachSource(n.children[0], f)
	default:
		f(n)
	}
}

// lookupWalk is a walk's state, either direction, kept on the checker
// between calls.
type lookupWalk struct {
	rv       *reversePlan
	idx      *index
	ov       *overlay // the request's contextual relationships, or nil
	pl       *plan
	target   *relPlan
	kind     uint64
	relevant []bool
	seen     map[uint64]struct{}
	queue    []frame
	found    []oid
}

// maxRetainedWalk bounds the visited set a pooled checker keeps.
const maxRetainedWalk = 1 << 16

// run appends to w.found, unsorted and without duplicates, every
// object on which perm may hold for subject t.
func (w *lookupWalk) run(idx *index, pl *plan, rv *reversePlan, perm *relPlan, t target) {
	w.idx, w.pl, w.rv, w.target = idx, pl, rv, perm
	w.kind = subjectKind(t.rel, t.typ)
	w.reset()
	w.markRelevant(perm)

	if t.id != unknownID && t.id != wildcardID {
		for _, r := range w.ov.reverseOf(idx, t.typ, t.id) {
			if w.ov.via(idx, r.via).subjRel != t.rel {
				continue
			}
			if rp := w.relationOf(r); rp != nil && slices.Contains(rp.kinds, w.kind) {
				w.visit(rp, r.obj)
			}
		}
		if t.rel != noSym {
			// A userset is a member of itself.
			w.visit(pl.rel(t.typ, t.rel), t.id)
		} else {
			for _, rp := range rv.self[t.typ] {
				w.visit(rp, t.id)
			}
		}
	}
	if t.rel == noSym {
		for _, r := range w.ov.reverseOf(idx, t.typ, wildcardID) {
			if w.ov.via(idx, r.via).subjRel != noSym {
				continue
			}
			if rp := w.relationOf(r); rp != nil && slices.Contains(rp.wildcards, t.typ) {
				w.visit(rp, r.obj)
			}
		}
	}
	for len(w.queue) > 0 {
		f := w.queue[len(w.queue)-1]
		w.queue = w.queue[:len(w.queue)-1]
		w.climb(f.rp, f.obj)
	}
	w.idx, w.pl, w.rv, w.target = nil, nil, nil, nil
}

// reset empties the visited set and the queue.
func (w *lookupWalk) reset() {
	if w.seen == nil || len(w.seen) > maxRetainedWalk {
		w.seen = map[uint64]struct{}{}
	} else {
		clear(w.seen)
	}
	w.queue = w.queue[:0]
}

// relationOf returns the relation of the table a reverse edge lies in, or
// nil when the plan has none (or it is a permission).
func (w *lookupWalk) relationOf(r revEdge) *relPlan {
	ref := w.idx.tables[w.ov.via(w.idx, r.via).table]
	rp := w.pl.rel(ref.typ, ref.rel)
	if rp == nil || rp.rewrite != nil {
		return nil
	}
	return rp
}

// markRelevant marks what the permission takes candidates from,
// transitively.
func (w *lookupWalk) markRelevant(perm *relPlan) {
	if cap(w.relevant) < w.rv.size {
		w.relevant = make([]bool, w.rv.size)
	}
	w.relevant = w.relevant[:w.rv.size]
	clear(w.relevant)
	stack := []*relPlan{perm}
	w.relevant[perm.num] = true
	for len(stack) > 0 {
		rp := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, d := range w.rv.deps[rp.num] {
			if !w.relevant[d.num] {
				w.relevant[d.num] = true
				stack = append(stack, d)
			}
		}
	}
}

// visit queues (rp, obj) unless it was seen or cannot lead to the target.
func (w *lookupWalk) visit(rp *relPlan, obj oid) {
	if rp == nil || !w.relevant[rp.num] || !rp.reaches(w.kind) {
		return
	}
	key := uint64(rp.num)<<32 | uint64(obj)
	if _, ok := w.seen[key]; ok {
		return
	}
	w.seen[key] = struct{}{}
	if rp == w.target {
		w.found = append(w.found, obj)
	}
	w.queue = append(w.queue, frame{rp: rp, obj: obj})
}

// climb queues what (rp, obj) may grant: the permissions computing it, the
// relations holding it as a userset, the objects whose tupleset leads to it.
func (w *lookupWalk) climb(rp *relPlan, obj oid) {
	for _, q := range w.rv.computed[rp.num] {
		w.visit(q, obj)
	}
	arrows := w.rv.arrows[rp.num]
	userset := subjectKind(rp.sym, rp.typ.sym)
	for _, r := range w.ov.reverseOf(w.idx, rp.typ.sym, obj) {
		via := w.ov.via(w.idx, r.via)
		if via.subjRel == rp.sym {
			if q := w.relationOf(r); q != nil && slices.Contains(q.kinds, userset) {
				w.visit(q, r.obj)
			}
		}
		for _, a := range arrows {
			if a.tupleset.id == via.table {
				w.visit(a.perm, r.obj)
			}
		}
	}
}

// sortByName sorts object IDs of a type by their names, the cursor order.
func sortByName(ov *overlay, t *typeTable, ids []oid) {
	slices.SortFunc(ids, func(a, b oid) int { return strings.Compare(ov.name(t, a), ov.name(t, b)) })
}

// forward appends to w.found, unsorted and possibly repeated, the subjects
// of t's type (and relation) that the evaluation of perm on obj may meet by
// name: named by a relationship on a path it follows, a userset on that
// path, the object itself under `self`. It follows every operand, so a
// subject it does not find is one the evaluation never tells from a
// subject no relationship names.
func (w *lookupWalk) forward(idx *index, pl *plan, perm *relPlan, obj oid, t target) {
	w.idx, w.pl = idx, pl
	w.kind = subjectKind(t.rel, t.typ)
	w.reset()
	w.enqueue(perm, obj)
	for len(w.queue) > 0 {
		f := w.queue[len(w.queue)-1]
		w.queue = w.queue[:len(w.queue)-1]
		rp, obj := f.rp, f.obj
		if t.rel != noSym && rp.typ.sym == t.typ && rp.sym == t.rel {
			w.found = append(w.found, obj)
		}
		if rp.rewrite == nil {
			edges := w.ov.slot(rp.table, obj)
			for i := range edges {
				e := &edges[i]
				if e.kind == w.kind && e.subjID != wildcardID {
					w.found = append(w.found, e.subjID)
				}
				if e.subjRel() != noSym {
					w.enqueue(pl.rel(e.subjType(), e.subjRel()), e.subjID)
				}
			}
			continue
		}
		w.descend(rp, obj, rp.rewrite, t)
	}
	w.idx, w.pl = nil, nil
}

// descend queues what every operand of a rewrite evaluates.
func (w *lookupWalk) descend(rp *relPlan, obj oid, n *node, t target) {
	switch n.op {
	case schema.OpComputed:
		w.enqueue(n.rel, obj)
	case schema.OpArrow, schema.OpArrowAll:
		if n.tupleset == nil {
			return
		}
		edges := w.ov.slot(n.tupleset, obj)
		for i := range edges {
			if st := edges[i].subjType(); int(st) < len(n.targets) {
				w.enqueue(n.targets[st], edges[i].subjID)
			}
		}
	case schema.OpSelf:
		if t.rel == noSym && t.typ == rp.typ.sym {
			w.found = append(w.found, obj)
		}
	}
	for _, c := range n.children {
		w.descend(rp, obj, c, t)
	}
}

// enqueue queues (rp, obj) for a forward walk unless it was seen or cannot
// hold a subject of the kind looked up.
func (w *lookupWalk) enqueue(rp *relPlan, obj oid) {
	if rp == nil || !rp.reaches(w.kind) {
		return
	}
	key := uint64(rp.num)<<32 | uint64(obj)
	if _, ok := w.seen[key]; ok {
		return
	}
	w.seen[key] = struct{}{}
	w.queue = append(w.queue, frame{rp: rp, obj: obj})
}
