package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// candidate is an object a lookup considers: interned (id < unseenResource)
// or named only by the request (id == unseenResource).
type candidate struct {
	id   oid
	name string
}

// candidates enumerates, in ID order and starting after the ID after, every
// object of a type that appears in a live or historical relationship, plus
// extra (an ID the request names) when no relationship does. It stops when
// yield returns false.
func candidates(ov *overlay, tp *typePlan, after, extra string, yield func(candidate) bool) {
	t := tp.table
	ids := ov.objects(t, tp.sym)
	i := sort.Search(len(ids), func(i int) bool { return ov.name(t, ids[i]) > after })
	if _, ok := ov.lookup(t, tp.sym, extra); ok || extra == "" || extra <= after {
		extra = ""
	}
	for ; i < len(ids); i++ {
		name := ov.name(t, ids[i])
		if extra != "" && extra < name {
			if !yield(candidate{id: unseenResource, name: extra}) {
				return
			}
			extra = ""
		}
		if !yield(candidate{id: ids[i], name: name}) {
			return
		}
	}
	if extra != "" {
		yield(candidate{id: unseenResource, name: extra})
	}
}

// ctxCheckEvery is how many candidates a lookup evaluates between checks
// for cancellation.
const ctxCheckEvery = 64

// LookupResources returns the resources of a type on which the subject has
// the permission, allowed or conditionally, sorted by ID: those after
// req.After, at most req.Limit of them when it is positive. Every result
// agrees with Check on the same revision.
//
// The candidates come from a reverse walk from the subject (walk.go), so a
// lookup costs what lies between the subject and its answer, not the number
// of objects of the type; each candidate is confirmed by the check, in ID
// order from the cursor on, and the checks stop once the page is full. The
// candidates share memoized subproblems (a folder's viewers). An agent
// subject takes the candidates both it and the principals it acts for
// reach; only an agent that may act for several principals, with no
// on_behalf_of, has every object of the type checked, so that the
// ambiguity is reported exactly where a check reports it.
func (e *Engine) LookupResources(ctx context.Context, req LookupResourcesRequest) ([]LookupResult, store.Revision, error) {
	return e.collectResources(ctx, req, false)
}

// StreamLookupResources is LookupResources delivering its results as they
// are confirmed: send receives them in ID order, in batches that start
// small (the first result is not held back by the last) and grow. The
// engine's lock is released while send runs, so a slow receiver holds up no
// write. Every batch is evaluated at one revision, passed with it; a batch
// is valid only during the call. If the engine forgets that revision meanwhile
// (ForgetBefore), the stream ends with ErrRevisionGone.
func (e *Engine) StreamLookupResources(ctx context.Context, req LookupResourcesRequest, send func(rev store.Revision, results []LookupResult) error) error {
	_, err := e.streamResources(ctx, req, false, firstStreamBatch, send)
	return err
}

// Stream batches: the first holds this many results, each next one twice
// as many, up to maxStreamBatch.
const (
	firstStreamBatch = 8
	maxStreamBatch   = 1024
)

// collectResources is LookupResources; scan makes it check every object of
// the type instead of walking (the reference the walk is tested against).
func (e *Engine) collectResources(ctx context.Context, req LookupResourcesRequest, scan bool) ([]LookupResult, store.Revision, error) {
	var out []LookupResult
	rev, err := e.streamResources(ctx, req, scan, 0, func(_ store.Revision, rs []LookupResult) error {
		out = rs // one batch, never reused
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, rev, nil
}

// streamResources evaluates a LookupResources, sending results in batches
// of batch results (0: one batch) with the lock released in between.
func (e *Engine) streamResources(ctx context.Context, req LookupResourcesRequest, scan bool, batch int, send func(store.Revision, []LookupResult) error) (store.Revision, error) {
	e.mu.RLock()
	locked := true
	defer func() {
		if locked {
			e.mu.RUnlock()
		}
	}()
	rev, p, err := e.planFor(req.Revision)
	if err != nil {
		return 0, err
	}
	if p.types[req.ResourceType] == nil {
		return 0, fmt.Errorf("%w: resource type %q is not defined", ErrUnknownType, req.ResourceType)
	}
	c := e.getChecker(rev, p)
	defer e.putChecker(c)
	c.req = CheckRequest{
		Resource: rel.Object{Type: req.ResourceType, ID: "x"}, Permission: req.Permission,
		Subject: req.Subject, Context: req.Context, OnBehalfOf: req.OnBehalfOf, Revision: rev,
	}
	if c.ov, err = e.overlayFor(p, req.Contextual); err != nil {
		return 0, err
	}
	s, err := c.prepare(true)
	if err != nil {
		return 0, err
	}
	c.setContext(req.Context)
	c.useMemo = true

	extra := ""
	if req.Subject.Type == req.ResourceType && req.Subject.ID != rel.Wildcard {
		// The subject itself is a candidate even when no relationship names
		// it (`self`, a userset's own object).
		extra = req.Subject.ID
	}
	var ids []oid
	walk := !scan && (!s.agent || req.OnBehalfOf != nil || !c.maySeveralPrincipals(&s))
	if walk {
		ids, extra = withExtra(c.ov, s.resType, c.resourceCandidates(e.idx.reverseFor(p), &s), extra)
	}
	var out []LookupResult
	after, found, n := req.After, 0, 0
	full := false // the batch is full
	evaluate := func(cand candidate) bool {
		if n++; n%ctxCheckEvery == 0 {
			if err = ctx.Err(); err != nil {
				return false
			}
		}
		after = cand.name
		c.req.Resource.ID = cand.name
		var res CheckResult
		if res, err = c.evaluate(&s, cand.id); err != nil {
			return false
		}
		if res.Decision != Denied {
			out = append(out, LookupResult{ID: cand.name, Decision: res.Decision, Missing: res.Missing})
			found++
		}
		full = batch > 0 && len(out) >= batch
		return (req.Limit <= 0 || found < req.Limit) && !full
	}
	for {
		full = false
		if walk {
			eachCandidate(c.ov, s.resType.table, ids, after, extra, evaluate)
		} else {
			candidates(c.ov, s.resType, after, extra, evaluate)
		}
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			return 0, err
		}
		e.mu.RUnlock()
		locked = false
		if len(out) > 0 {
			if err := send(rev, out); err != nil {
				return 0, err
			}
		}
		if !full || req.Limit > 0 && found >= req.Limit {
			return rev, nil
		}
		out, batch = out[:0], min(2*batch, maxStreamBatch)
		// Let other callers run between batches: a lookup with a large
		// answer then delays others' first results by a batch, not by
		// itself.
		runtime.Gosched()
		e.mu.RLock()
		locked = true
		if rev < e.idx.oldest {
			return 0, fmt.Errorf("%w: the lookup at %d outlived it, oldest retained is %d", ErrRevisionGone, rev, e.idx.oldest)
		}
	}
}

// resourceCandidates returns, sorted by name, the objects of the resource
// type a reverse walk from the subject reaches. For an agent, they are those
// the agent itself reaches that one of the subjects it acts for directly also
// reaches: every member of a chain must hold the permission by its own
// grants.
func (c *checker) resourceCandidates(rv *reversePlan, s *checkSpec) []oid {
	w := &c.walk
	w.found, w.ov = w.found[:0], c.ov
	defer func() { w.ov = nil }()
	if !s.agent {
		w.run(c.idx, c.pl, rv, s.perm, s.t)
		sortByName(c.ov, s.resType.table, w.found)
		return w.found
	}
	w.run(c.idx, c.pl, rv, s.perm, target{typ: s.t.typ, id: s.t.id})
	own := slices.Clone(w.found)
	if len(own) == 0 || s.t.id >= unseenResource || s.subType.actsFor == nil {
		return nil
	}
	w.found = w.found[:0]
	edges := c.edges(s.subType.actsFor, s.t.id)
	for i := range edges {
		if e := &edges[i]; c.live(e) {
			w.run(c.idx, c.pl, rv, s.perm, target{typ: e.subjType(), id: e.subjID})
		}
	}
	hop := make(map[oid]struct{}, len(w.found))
	for _, o := range w.found {
		hop[o] = struct{}{}
	}
	own = slices.DeleteFunc(own, func(o oid) bool { _, ok := hop[o]; return !ok })
	sortByName(c.ov, s.resType.table, own)
	return own
}

// maySeveralPrincipals reports whether the agent's live acts_for edges,
// caveats aside, lead to more than one principal within the chain limit:
// only then can a check of it fail as ambiguous.
func (c *checker) maySeveralPrincipals(s *checkSpec) bool {
	var first *chainMember
	several := false
	var walk func(tp *typePlan, typ sym, id oid, depth int)
	walk = func(tp *typePlan, typ sym, id oid, depth int) {
		if several {
			return
		}
		if tp == nil || !tp.isAgent {
			m := chainMember{typ: typ, id: id}
			if first == nil {
				first = &m
			} else if first.typ != typ || first.id != id {
				several = true
			}
			return
		}
		if depth >= c.maxChain || id >= unseenResource || tp.actsFor == nil {
			return
		}
		edges := c.edges(tp.actsFor, id)
		for i := range edges {
			if e := &edges[i]; c.live(e) {
				walk(c.pl.typeBySym(e.subjType()), e.subjType(), e.subjID, depth+1)
			}
		}
	}
	walk(s.subType, s.t.typ, s.t.id, 0)
	return several
}

// withExtra adds to ids (sorted by name) the object an ID the request
// names, when some relationship names it; otherwise it returns the ID for
// eachCandidate to yield in its place.
func withExtra(ov *overlay, tp *typePlan, ids []oid, extra string) ([]oid, string) {
	t := tp.table
	o, ok := ov.lookup(t, tp.sym, extra)
	if extra == "" || !ok {
		return ids, extra
	}
	i, _ := slices.BinarySearchFunc(ids, extra, func(o oid, name string) int { return strings.Compare(ov.name(t, o), name) })
	return slices.Insert(slices.Clip(ids), i, o), ""
}

// eachCandidate yields, in ID order and starting after the ID after, the
// objects ids (sorted by name, possibly repeating) and extra, an ID the
// request names that no relationship does (see withExtra). It stops when
// yield returns false.
func eachCandidate(ov *overlay, t *typeTable, ids []oid, after, extra string, yield func(candidate) bool) {
	if extra <= after {
		extra = ""
	}
	i, _ := slices.BinarySearchFunc(ids, after, func(o oid, name string) int {
		if c := strings.Compare(ov.name(t, o), name); c != 0 {
			return c
		}
		return -1 // after itself is excluded
	})
	last := oid(unknownID)
	for ; i < len(ids); i++ {
		if ids[i] == last {
			continue
		}
		last = ids[i]
		name := ov.name(t, ids[i])
		if extra != "" && extra < name {
			if !yield(candidate{id: unseenResource, name: extra}) {
				return
			}
			extra = ""
		}
		if !yield(candidate{id: ids[i], name: name}) {
			return
		}
	}
	if extra != "" {
		yield(candidate{id: unseenResource, name: extra})
	}
}

// LookupSubjects returns the subjects of a type (and optional relation) that
// have the permission on the resource, sorted by ID with a wildcard ("*")
// first: those after req.After, at most req.Limit of them when it is
// positive. When a wildcard grants the permission, the "*" result lists in
// Excluded the known subjects it does not cover. A subject is listed by name
// when a relationship names it on a path that grants the permission, as
// SpiceDB lists it; one only a wildcard covers is in the "*" result alone.
//
// The candidates are the subjects named on the paths the permission's
// evaluation on the resource follows (walk.go), in every operand: any other
// subject evaluates exactly as one no relationship names, which is what the
// wildcard result says. Agent subjects are evaluated through their chains,
// which lead elsewhere, so for them every agent of the type is checked.
func (e *Engine) LookupSubjects(ctx context.Context, req LookupSubjectsRequest) ([]LookupResult, store.Revision, error) {
	return e.lookupSubjects(ctx, req, false)
}

// lookupSubjects is LookupSubjects; scan makes it check every object of the
// subject type instead of walking (the reference the walk is tested
// against).
func (e *Engine) lookupSubjects(ctx context.Context, req LookupSubjectsRequest, scan bool) ([]LookupResult, store.Revision, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	rev, p, err := e.planFor(req.Revision)
	if err != nil {
		return nil, 0, err
	}
	c := e.getChecker(rev, p)
	defer e.putChecker(c)
	c.req = CheckRequest{
		Resource: req.Resource, Permission: req.Permission,
		Subject: rel.Subject{Type: req.SubjectType, ID: "x", Relation: req.SubjectRelation},
		Context: req.Context, Revision: rev,
	}
	if c.ov, err = e.overlayFor(p, req.Contextual); err != nil {
		return nil, 0, err
	}
	s, err := c.prepare(true)
	if err != nil {
		return nil, 0, err
	}
	c.setContext(req.Context)
	obj, ok := c.ov.lookup(s.resType.table, s.resType.sym, req.Resource.ID)
	if !ok {
		obj = unseenResource
	}
	check := func(cand candidate) (CheckResult, error) {
		c.req.Subject.ID = cand.name
		s.t.id = cand.id
		if cand.id == unseenResource {
			s.t.id = unknownID // checkObject recognizes the resource itself
		}
		res, err := c.evaluate(&s, obj)
		if errors.Is(err, ErrAmbiguousAgent) {
			// An agent acting for several principals holds nothing until a
			// request names one.
			return CheckResult{Decision: Denied}, nil
		}
		return res, err
	}
	extra := ""
	if req.SubjectType == req.Resource.Type {
		extra = req.Resource.ID
	}

	// A wildcard can only cover plain objects of a type that some relation
	// accepts as `type:*`. What it grants is what an object that appears in
	// no relationship gets.
	var star *LookupResult
	if req.After == "" && req.SubjectRelation == "" && p.wildcardTypes[req.SubjectType] {
		fresh := outFalse // an agent no relationship names acts for no one
		if !s.subType.isAgent && obj != unseenResource {
			c.itemCuts = c.cuts
			if fresh, err = c.relation(s.perm, obj, target{typ: s.subType.sym, id: unknownID}, 0, false); err != nil {
				return nil, 0, err
			}
		}
		if fresh.v != schema.False {
			star = &LookupResult{ID: rel.Wildcard, Decision: fresh.decision(), Missing: missingOf(fresh)}
		}
	}

	var out []LookupResult
	if star != nil {
		out = append(out, LookupResult{})
	}
	// Only a plain object of a type some relation accepts as `type:*` can
	// hold the permission through a wildcard alone. Agents are listed by
	// their delegated decision.
	mayBeWildOnly := req.SubjectRelation == "" && p.wildcardTypes[req.SubjectType] && !s.subType.isAgent
	// The wildcard's exclusions need every subject; otherwise the walk
	// stops when the page is full.
	full := func() bool { return req.Limit > 0 && len(out) >= req.Limit }
	n := 0
	each := func(yield func(candidate) bool) { candidates(c.ov, s.subType, req.After, extra, yield) }
	if !scan && !s.agent {
		w := &c.walk
		w.found, w.ov = w.found[:0], c.ov
		if obj != unseenResource {
			w.forward(c.idx, p, s.perm, obj, s.t)
		}
		w.ov = nil
		sortByName(c.ov, s.subType.table, w.found)
		ids, extra := withExtra(c.ov, s.subType, w.found, extra)
		each = func(yield func(candidate) bool) { eachCandidate(c.ov, s.subType.table, ids, req.After, extra, yield) }
	}
	each(func(cand candidate) bool {
		if n++; n%ctxCheckEvery == 0 {
			if err = ctx.Err(); err != nil {
				return false
			}
		}
		var res CheckResult
		if res, err = check(cand); err != nil {
			return false
		}
		listed := res.Decision != Denied
		decision, missing := res.Decision, res.Missing
		if listed && mayBeWildOnly {
			// Listed by name only when SpiceDB's set algebra names it, not
			// when only a wildcard covers it (named.go), and with the named
			// part's own decision: beside an unconditional wildcard, a
			// subject named under a caveat is listed as conditional.
			var n named
			if n, err = c.nameOf(s.perm, obj, s.t, 0, false); err != nil {
				return false
			}
			listed = n.named.v != schema.False
			decision, missing = n.named.decision(), missingOf(n.named)
		}
		if listed {
			if !full() {
				out = append(out, LookupResult{ID: cand.name, Decision: decision, Missing: missing})
			}
		} else if star != nil && res.Decision == Denied {
			star.Excluded = append(star.Excluded, LookupResult{ID: cand.name, Decision: Allowed})
		}
		// A subject that is only conditionally covered while the wildcard
		// is certain is excluded conditionally.
		if star != nil && res.Decision == Conditional && star.Decision == Allowed {
			star.Excluded = append(star.Excluded, LookupResult{ID: cand.name, Decision: Conditional, Missing: res.Missing})
		}
		return star != nil || !full()
	})
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return nil, 0, err
	}
	if star != nil {
		out[0] = *star
	}
	return out, rev, nil
}
