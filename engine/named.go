package engine

import (
	"fmt"
	"slices"

	"github.com/mandate-authz/mandate/schema"
)

// LookupSubjects lists a subject by name only when SpiceDB would. SpiceDB
// computes a permission's subjects as a set of named subjects plus,
// optionally, a wildcard minus named exclusions, so a subject only the
// wildcard covers appears as "*" alone. For one subject S, split membership
// of every expression X into named(X) (S is among X's named subjects) and
// wild(X) (X's wildcard covers S); member = named OR wild. Then
//
//	union          named = OR of named             wild = OR of wild
//	A & B          named = nA & mB | nB & mA       wild = wA & wB
//	A - B          named = nA & !mB | wA & W(B) & xB & !nB
//	               wild  = wA & !W(B) & !nB
//
// where W(B), whether B has a wildcard at all, is wild(B) for a subject
// named nowhere, and xB, whether B's wildcard excludes S by name, is !wB
// where wB falls short of W(B). (A wildcard minus a wildcard that excludes S by name
// leaves S named: {*} - {* - S} = {S}.) Arrows and usersets are unions over
// what they lead to; an all() arrow is an intersection.

// named is membership split into its named and wildcard parts.
type named struct {
	named, wild outcome
}

func (n named) member() outcome { return or(n.named, n.wild) }

var notNamed = named{named: outFalse, wild: outFalse}

// nameOf evaluates rp on obj for subject t as named/wild. With needWild
// false the caller reads only named, so evaluation may stop once it is
// certain.
func (c *checker) nameOf(rp *relPlan, obj oid, t target, depth int, needWild bool) (named, error) {
	if rp == nil {
		return notNamed, nil
	}
	if t.typ == rp.typ.sym && t.id == obj && t.rel == rp.sym {
		return named{named: outTrue, wild: outFalse}, nil
	}
	if !rp.reaches(subjectKind(t.rel, t.typ)) {
		return notNamed, nil
	}
	if depth > c.maxDepth {
		return notNamed, fmt.Errorf("%w (%d) at %s:%s#%s", ErrMaxDepth, c.maxDepth, rp.typ.name, c.objectName(rp.typ, obj), rp.name)
	}
	f := frame{rp, obj}
	if slices.Contains(c.namedStack, f) {
		return notNamed, nil
	}
	c.namedStack = append(c.namedStack, f)
	defer func() { c.namedStack = c.namedStack[:len(c.namedStack)-1] }()
	if rp.rewrite != nil {
		return c.nameRewrite(rp.typ.sym, obj, rp.rewrite, t, depth, needWild)
	}
	return c.nameDirect(rp, obj, t, depth, needWild)
}

// done reports whether a union can stop: named is certain, and so is wild
// when it is needed.
func (n named) done(needWild bool) bool {
	return n.named.v == schema.True && (!needWild || n.wild.v == schema.True)
}

func (c *checker) nameDirect(rp *relPlan, obj oid, t target, depth int, needWild bool) (named, error) {
	edges := c.edges(rp.table, obj)
	res := notNamed
	kind := subjectKind(t.rel, t.typ)
	var err error
	if t.id != unknownID && t.id != wildcardID && slices.Contains(rp.kinds, kind) {
		if res.named, err = c.edgeRun(edges, kind, t.id); err != nil {
			return notNamed, err
		}
	}
	if t.rel == noSym && slices.Contains(rp.wildcards, t.typ) {
		if res.wild, err = c.edgeRun(edges, kind, wildcardID); err != nil {
			return notNamed, err
		}
	}
	if res.done(needWild) || !rp.usersets || !rp.usersetReaches(kind) {
		return res, nil
	}
	for i := firstUserset(edges); i < len(edges); i++ {
		e := &edges[i]
		if !c.live(e) {
			continue
		}
		sub := c.pl.rel(e.subjType(), e.subjRel())
		if sub == nil || !sub.reaches(kind) {
			continue
		}
		o, err := c.caveat(e)
		if err != nil {
			return notNamed, err
		}
		if o.v == schema.False {
			continue
		}
		n, err := c.nameOf(sub, e.subjID, t, depth+1, needWild)
		if err != nil {
			return notNamed, err
		}
		res.named, res.wild = or(res.named, and(o, n.named)), or(res.wild, and(o, n.wild))
		if res.done(needWild) {
			break
		}
	}
	return res, nil
}

func (c *checker) nameRewrite(typ sym, obj oid, n *node, t target, depth int, needWild bool) (named, error) {
	switch n.op {
	case schema.OpUnion:
		res := notNamed
		for _, child := range n.children {
			x, err := c.nameRewrite(typ, obj, child, t, depth, needWild)
			if err != nil {
				return notNamed, err
			}
			res.named, res.wild = or(res.named, x.named), or(res.wild, x.wild)
			if res.done(needWild) {
				break
			}
		}
		return res, nil
	case schema.OpIntersection:
		parts := make([]named, len(n.children))
		for i, child := range n.children {
			x, err := c.nameRewrite(typ, obj, child, t, depth, true)
			if err != nil {
				return notNamed, err
			}
			if x.member().v == schema.False {
				return notNamed, nil
			}
			parts[i] = x
		}
		return intersect(parts), nil
	case schema.OpExclusion:
		res, err := c.nameRewrite(typ, obj, n.children[0], t, depth, true)
		if err != nil {
			return notNamed, err
		}
		for _, child := range n.children[1:] {
			if res.member().v == schema.False {
				return notNamed, nil
			}
			b, err := c.nameRewrite(typ, obj, child, t, depth, true)
			if err != nil {
				return notNamed, err
			}
			// W(B): B's wildcard, as a subject named nowhere sees it.
			fresh, err := c.nameRewrite(typ, obj, child, target{typ: t.typ, id: unknownID, rel: t.rel}, depth, true)
			if err != nil {
				return notNamed, err
			}
			res = subtract(res, b, fresh.wild)
		}
		return res, nil
	case schema.OpComputed:
		return c.nameOf(n.rel, obj, t, depth+1, needWild)
	case schema.OpArrow, schema.OpArrowAll:
		return c.nameArrow(obj, n, t, depth, needWild, n.op == schema.OpArrowAll)
	case schema.OpNil:
		return notNamed, nil
	case schema.OpSelf:
		o, err := c.rewrite(typ, obj, n, t, depth)
		return named{named: o, wild: outFalse}, err
	}
	return notNamed, fmt.Errorf("unknown rewrite operation %v", n.op)
}

// intersect combines the operands of an intersection.
func intersect(parts []named) named {
	res := parts[0]
	for _, b := range parts[1:] {
		a := res
		res = named{
			named: or(and(a.named, b.member()), and(b.named, a.member())),
			wild:  and(a.wild, b.wild),
		}
	}
	return res
}

// subtract is a - b, where bHasWildcard is W(b).
func subtract(a, b named, bHasWildcard outcome) named {
	return named{
		named: or(and(a.named, not(b.member())), and(and(a.wild, bHasWildcard), and(excludedFromWildcard(b, bHasWildcard), not(b.named)))),
		wild:  and(and(a.wild, not(bHasWildcard)), not(b.named)),
	}
}

// excludedFromWildcard is whether b's wildcard excludes the subject by name:
// its wildcard covers the subject less than it covers a subject named
// nowhere. (Under caveats, a wildcard both cover only conditionally is not
// an exclusion: {*[c]} - {*[c]} names no one.)
func excludedFromWildcard(b named, bHasWildcard outcome) outcome {
	if b.wild.v == bHasWildcard.v {
		return outFalse
	}
	return not(b.wild)
}

// nameArrow is a union (or, for all(), an intersection) over the targets of
// the tupleset's subjects.
func (c *checker) nameArrow(obj oid, n *node, t target, depth int, needWild, all bool) (named, error) {
	var edges []edge
	if n.tupleset != nil {
		edges = c.edges(n.tupleset, obj)
	}
	res := notNamed
	var parts []named
	for i := range edges {
		e := &edges[i]
		if !c.live(e) {
			continue
		}
		o, err := c.caveat(e)
		if err != nil {
			return notNamed, err
		}
		if !all && o.v == schema.False {
			continue
		}
		var rp *relPlan
		if st := e.subjType(); int(st) < len(n.targets) {
			rp = n.targets[st]
		}
		if rp == nil && all {
			// SpiceDB's LookupSubjects leaves out of an all() the subjects
			// whose type lacks the relation (its check counts them as
			// failing, as Check does: the decision stays the check's).
			continue
		}
		x, err := c.nameOf(rp, e.subjID, t, depth+1, needWild || all)
		if err != nil {
			return notNamed, err
		}
		x = named{named: and(o, x.named), wild: and(o, x.wild)}
		if all {
			if x.member().v == schema.False {
				return notNamed, nil
			}
			parts = append(parts, x)
			continue
		}
		res.named, res.wild = or(res.named, x.named), or(res.wild, x.wild)
		if res.done(needWild) {
			break
		}
	}
	if all {
		if len(parts) == 0 {
			return notNamed, nil
		}
		return intersect(parts), nil
	}
	return res, nil
}
