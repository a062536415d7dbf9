package difftest

import (
	"context"

	"github.com/mandate-authz/mandate/store/rel"
)

// freshID names a subject that appears in no relationship: it has a
// permission exactly when a wildcard grants it.
const freshID = "zfresh"

// CheckDerived wraps a builder so that the built system answers lookups by
// running one check per pool object instead of its own lookup APIs. Compared
// with the plain system it tests that system's lookups against its checks,
// which validates this harness (and SpiceDB's own consistency) without the
// engine.
func CheckDerived(inner Builder, pools map[string][]string) Builder {
	return func(ctx context.Context, schema string, rels []rel.Relationship) (System, error) {
		s, err := inner(ctx, schema, rels)
		if err != nil {
			return nil, err
		}
		return &checkDerived{inner: s, pools: pools}, nil
	}
}

type checkDerived struct {
	inner System
	pools map[string][]string
}

func (d *checkDerived) Close() { d.inner.Close() }

func (d *checkDerived) Check(ctx context.Context, q Query) (Outcome, error) {
	return d.inner.Check(ctx, q)
}

func (d *checkDerived) LookupResources(ctx context.Context, q Query) (map[string]Outcome, error) {
	out := map[string]Outcome{}
	for _, id := range d.pools[q.ResourceType] {
		o, err := d.inner.Check(ctx, Query{Kind: QueryCheck, Resource: rel.Object{Type: q.ResourceType, ID: id}, Permission: q.Permission, Subject: q.Subject, Context: q.Context})
		if err != nil {
			return nil, err
		}
		if o != No {
			out[id] = o
		}
	}
	return out, nil
}

func (d *checkDerived) LookupSubjects(ctx context.Context, q Query) ([]FoundSubject, error) {
	check := func(id string) (Outcome, error) {
		return d.inner.Check(ctx, Query{Kind: QueryCheck, Resource: q.Resource, Permission: q.Permission,
			Subject: rel.Subject{Type: q.SubjectType, ID: id, Relation: q.SubjectRelation}, Context: q.Context})
	}
	var out []FoundSubject
	var wildcard *FoundSubject
	if q.SubjectRelation == "" {
		o, err := check(freshID)
		if err != nil {
			return nil, err
		}
		if o != No {
			wildcard = &FoundSubject{ID: rel.Wildcard, Outcome: o}
		}
	}
	for _, id := range d.pools[q.SubjectType] {
		o, err := check(id)
		if err != nil {
			return nil, err
		}
		if o != No {
			out = append(out, FoundSubject{ID: id, Outcome: o})
		}
		// Exclude from the wildcard whatever the check denies, so the
		// effective membership is the check's.
		if wildcard != nil && o != Has {
			wildcard.Excluded = append(wildcard.Excluded, FoundSubject{ID: id, Outcome: not(o)})
		}
	}
	if wildcard != nil {
		out = append(out, *wildcard)
	}
	return out, nil
}
