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

// candidates lists the IDs of every object of a type that appears in a live
// or historical relationship, sorted for stable output.
func (idx *index) candidates(typ string) []string {
	t, ok := idx.lookup(typ)
	if !ok {
		return nil
	}
	ids := make([]string, 0, len(idx.objects[t]))
	for id := range idx.objects[t] {
		ids = append(ids, idx.name(id))
	}
	sort.Strings(ids)
	return ids
}

// LookupResources returns the resources of a type on which the subject has
// the permission, allowed or conditionally, sorted by ID. Every result agrees
// with Check on the same revision.
func (e *Engine) LookupResources(ctx context.Context, req LookupResourcesRequest) ([]LookupResult, store.Revision, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	rev, err := e.resolveRevision(req.Revision)
	if err != nil {
		return nil, 0, err
	}
	sch := e.idx.schemaAt(rev)
	if sch == nil {
		return nil, 0, ErrNoSchema
	}
	if sch.Definition(req.ResourceType) == nil {
		return nil, 0, fmt.Errorf("%w: resource type %q is not defined", ErrUnknownType, req.ResourceType)
	}
	if err := validateCheck(sch, rel.Object{Type: req.ResourceType, ID: "x"}, req.Permission, req.Subject); err != nil {
		return nil, 0, err
	}
	ids := e.idx.candidates(req.ResourceType)
	if req.Subject.Type == req.ResourceType && req.Subject.ID != rel.Wildcard {
		if i := sort.SearchStrings(ids, req.Subject.ID); i == len(ids) || ids[i] != req.Subject.ID {
			ids = append(ids, req.Subject.ID)
			sort.Strings(ids)
		}
	}
	var out []LookupResult
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		res, err := e.checkLocked(ctx, CheckRequest{
			Resource: rel.Object{Type: req.ResourceType, ID: id}, Permission: req.Permission,
			Subject: req.Subject, Context: req.Context, OnBehalfOf: req.OnBehalfOf, Revision: rev,
		})
		if err != nil {
			return nil, 0, err
		}
		if res.Decision != Denied {
			out = append(out, LookupResult{ID: id, Decision: res.Decision, Missing: res.Missing})
		}
	}
	return out, rev, nil
}

// LookupSubjects returns the subjects of a type (and optional relation) that
// have the permission on the resource. When a wildcard grants it, a "*"
// result lists in Excluded the known subjects it does not cover. Concrete
// subjects that hold the permission are always listed themselves.
func (e *Engine) LookupSubjects(ctx context.Context, req LookupSubjectsRequest) ([]LookupResult, store.Revision, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	rev, err := e.resolveRevision(req.Revision)
	if err != nil {
		return nil, 0, err
	}
	sch := e.idx.schemaAt(rev)
	if sch == nil {
		return nil, 0, ErrNoSchema
	}
	probe := rel.Subject{Type: req.SubjectType, ID: "x", Relation: req.SubjectRelation}
	if err := validateCheck(sch, req.Resource, req.Permission, probe); err != nil {
		return nil, 0, err
	}
	check := func(id string) (CheckResult, error) {
		res, err := e.checkLocked(ctx, CheckRequest{
			Resource: req.Resource, Permission: req.Permission,
			Subject: rel.Subject{Type: req.SubjectType, ID: id, Relation: req.SubjectRelation},
			Context: req.Context, Revision: rev,
		})
		if errors.Is(err, ErrAmbiguousAgent) {
			// An agent acting for several principals holds nothing until a
			// request names one.
			return CheckResult{Decision: Denied}, nil
		}
		return res, err
	}

	ids := e.idx.candidates(req.SubjectType)
	if req.SubjectType == req.Resource.Type {
		if i := sort.SearchStrings(ids, req.Resource.ID); i == len(ids) || ids[i] != req.Resource.ID {
			ids = append(ids, req.Resource.ID)
			sort.Strings(ids)
		}
	}
	var out []LookupResult
	var denied []LookupResult
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		res, err := check(id)
		if err != nil {
			return nil, 0, err
		}
		if res.Decision != Denied {
			out = append(out, LookupResult{ID: id, Decision: res.Decision, Missing: res.Missing})
		} else {
			denied = append(denied, LookupResult{ID: id, Decision: Allowed})
		}
	}

	// A wildcard can only cover plain objects of a type that some relation
	// accepts as `type:*`. What it grants is what an object that appears in
	// no relationship gets.
	if req.SubjectRelation == "" && wildcardAllowed(sch, req.SubjectType) {
		c := e.newChecker(rev, sch, req.Context)
		var fresh outcome
		if d := sch.Definitions[req.SubjectType]; d.IsAgent() {
			fresh = outFalse // an agent no relationship names acts for no one
		} else {
			t := target{typ: unknownID, id: unknownID, rel: noSym}
			if v, ok := e.idx.lookup(req.SubjectType); ok {
				t.typ = v
			}
			typ, ok1 := e.idx.lookup(req.Resource.Type)
			obj, ok2 := e.idx.lookup(req.Resource.ID)
			if ok1 && ok2 && t.typ != unknownID {
				if fresh, err = c.relation(typ, obj, req.Permission, t, 0); err != nil {
					return nil, 0, err
				}
			}
		}
		if fresh.v != schema.False {
			star := LookupResult{ID: rel.Wildcard, Decision: fresh.decision(), Missing: missingOf(fresh)}
			star.Excluded = denied
			// A subject that is only conditionally covered while the
			// wildcard is certain is excluded conditionally.
			if fresh.v == schema.True {
				for _, r := range out {
					if r.Decision == Conditional {
						star.Excluded = append(star.Excluded, LookupResult{ID: r.ID, Decision: Conditional, Missing: r.Missing})
					}
				}
				sort.Slice(star.Excluded, func(i, j int) bool { return star.Excluded[i].ID < star.Excluded[j].ID })
			}
			out = append([]LookupResult{star}, out...)
		}
	}
	return out, rev, nil
}

func wildcardAllowed(sch *schema.Schema, subjectType string) bool {
	for _, d := range sch.Definitions {
		for _, r := range d.Relations {
			for _, a := range r.Allowed {
				if a.Wildcard && a.Type == subjectType {
					return true
				}
			}
		}
	}
	return false
}
