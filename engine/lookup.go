package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"

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
func candidates(t *typeTable, after, extra string, yield func(candidate) bool) {
	ids := t.objects()
	i := sort.Search(len(ids), func(i int) bool { return t.names[ids[i]] > after })
	if _, ok := t.lookup(extra); ok || extra == "" || extra <= after {
		extra = ""
	}
	for ; i < len(ids); i++ {
		name := t.names[ids[i]]
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
// agrees with Check on the same revision. Candidates are checked in ID order
// from the cursor on and the walk stops once the page is full, so a page
// costs the candidates it spans, not those before it; the candidates share
// memoized subproblems (a folder's viewers).
func (e *Engine) LookupResources(ctx context.Context, req LookupResourcesRequest) ([]LookupResult, store.Revision, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	rev, p, err := e.planFor(req.Revision)
	if err != nil {
		return nil, 0, err
	}
	if p.types[req.ResourceType] == nil {
		return nil, 0, fmt.Errorf("%w: resource type %q is not defined", ErrUnknownType, req.ResourceType)
	}
	c := e.getChecker(rev, p)
	defer e.putChecker(c)
	c.req = CheckRequest{
		Resource: rel.Object{Type: req.ResourceType, ID: "x"}, Permission: req.Permission,
		Subject: req.Subject, Context: req.Context, OnBehalfOf: req.OnBehalfOf, Revision: rev,
	}
	s, err := c.prepare(true)
	if err != nil {
		return nil, 0, err
	}
	c.setContext(req.Context)
	c.useMemo = true

	extra := ""
	if req.Subject.Type == req.ResourceType && req.Subject.ID != rel.Wildcard {
		// The subject itself is a candidate even when no relationship names
		// it (`self`, a userset's own object).
		extra = req.Subject.ID
	}
	var out []LookupResult
	n := 0
	candidates(s.resType.table, req.After, extra, func(cand candidate) bool {
		if n++; n%ctxCheckEvery == 0 {
			if err = ctx.Err(); err != nil {
				return false
			}
		}
		c.req.Resource.ID = cand.name
		var res CheckResult
		if res, err = c.evaluate(&s, cand.id); err != nil {
			return false
		}
		if res.Decision != Denied {
			out = append(out, LookupResult{ID: cand.name, Decision: res.Decision, Missing: res.Missing})
		}
		return req.Limit <= 0 || len(out) < req.Limit
	})
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return nil, 0, err
	}
	return out, rev, nil
}

// LookupSubjects returns the subjects of a type (and optional relation) that
// have the permission on the resource, sorted by ID with a wildcard ("*")
// first: those after req.After, at most req.Limit of them when it is
// positive. When a wildcard grants the permission, the "*" result lists in
// Excluded the known subjects it does not cover. A subject is listed by name
// when a relationship names it on a path that grants the permission, as
// SpiceDB lists it; one only a wildcard covers is in the "*" result alone.
func (e *Engine) LookupSubjects(ctx context.Context, req LookupSubjectsRequest) ([]LookupResult, store.Revision, error) {
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
	s, err := c.prepare(true)
	if err != nil {
		return nil, 0, err
	}
	c.setContext(req.Context)
	obj, ok := s.resType.table.lookup(req.Resource.ID)
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
	candidates(s.subType.table, req.After, extra, func(cand candidate) bool {
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
		if listed && mayBeWildOnly {
			// Listed by name only when SpiceDB's set algebra names it, not
			// when only a wildcard covers it (named.go).
			var n named
			if n, err = c.nameOf(s.perm, obj, s.t, 0, false); err != nil {
				return false
			}
			listed = n.named.v != schema.False
		}
		if listed {
			if !full() {
				out = append(out, LookupResult{ID: cand.name, Decision: res.Decision, Missing: res.Missing})
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
