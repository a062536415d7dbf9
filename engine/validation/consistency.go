package validation

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

// ConsistencyResult is the outcome of CheckConsistency.
type ConsistencyResult struct {
	// Comparisons counts the Check answers compared with a lookup.
	Comparisons int
	// Failures lists every disagreement and every call that failed.
	Failures []Failure
}

// CheckConsistency checks that Check, LookupResources and LookupSubjects
// tell the same story over the data of rels (without caveat context):
//
//   - resources: every object of every type whose ID appears in rels (as a
//     resource or a subject), as SpiceDB's own suite does, so that lookups
//     returning an object of the wrong type are caught too;
//   - permissions: every relation and permission of the resource's type, or
//     only those named in permissions when any are given;
//   - subjects: every non-wildcard subject in rels, and the plain object of
//     every userset subject.
//
// For each (resource type, permission, subject) LookupResources must list
// exactly the resources Check allows or allows conditionally, with the same
// decision. For each (resource, permission, subject type) LookupSubjects must
// give every subject the decision Check gives it: a subject listed
// concretely takes its listing's decision; otherwise a "*" result covers it
// with the wildcard's decision unless its Excluded list names it (an
// exclusion with decision Allowed means denied, Conditional means
// conditional); otherwise it is denied. Subjects and resources a lookup
// returns beyond those above are checked the same way.
func CheckConsistency(ctx context.Context, ev Evaluator, rels []rel.Relationship, permissions ...string) ConsistencyResult {
	c := &consistency{ev: ev, ctx: ctx, checks: map[checkKey]checkOutcome{}}
	sch := ev.Schema(0)
	if sch == nil {
		c.fail(0, "consistency", "a schema", "none")
		return c.result
	}

	idSet := map[string]bool{}
	subjectSet := map[rel.Subject]bool{}
	for _, r := range rels {
		idSet[r.Resource.ID] = true
		if r.Subject.IsWildcard() {
			continue
		}
		idSet[r.Subject.ID] = true
		subjectSet[r.Subject] = true
		if r.Subject.Relation != "" {
			subjectSet[rel.Subject{Type: r.Subject.Type, ID: r.Subject.ID}] = true
		}
	}
	ids := slices.Sorted(maps.Keys(idSet))
	subjects := slices.SortedFunc(maps.Keys(subjectSet), func(a, b rel.Subject) int { return strings.Compare(a.String(), b.String()) })
	// Subject types for LookupSubjects: type and relation of each subject.
	byType := map[typeKey][]rel.Subject{}
	for _, s := range subjects {
		k := typeKey{s.Type, s.Relation}
		byType[k] = append(byType[k], s)
	}
	subjectTypes := slices.SortedFunc(maps.Keys(byType), func(a, b typeKey) int {
		return strings.Compare(a.typ+"#"+a.relation, b.typ+"#"+b.relation)
	})

	for _, typ := range sch.DefinitionNames() {
		def := sch.Definitions[typ]
		for _, perm := range def.Order {
			if len(permissions) > 0 && !slices.Contains(permissions, perm) {
				continue
			}
			for _, s := range subjects {
				if ctx.Err() != nil {
					c.fail(0, "consistency", "to finish", ctx.Err().Error())
					return c.result
				}
				c.lookupResources(typ, perm, s, ids)
			}
			for _, id := range ids {
				obj := rel.Object{Type: typ, ID: id}
				for _, k := range subjectTypes {
					c.lookupSubjects(obj, perm, k, byType[k])
				}
			}
		}
	}
	return c.result
}

type checkKey struct {
	resource   rel.Object
	permission string
	subject    rel.Subject
}

func (k checkKey) String() string {
	return k.resource.String() + "#" + k.permission + "@" + k.subject.String()
}

type checkOutcome struct {
	res engine.CheckResult
	err error
}

type consistency struct {
	ev     Evaluator
	ctx    context.Context
	checks map[checkKey]checkOutcome
	result ConsistencyResult
}

func (c *consistency) fail(line int, what, expected, got string) {
	c.result.Failures = append(c.result.Failures, Failure{Line: line, Kind: KindConsistency, What: what, Expected: expected, Got: got})
}

// check answers (and remembers) a Check without context; a failed Check is
// reported once.
func (c *consistency) check(k checkKey) (engine.CheckResult, bool) {
	if o, ok := c.checks[k]; ok {
		return o.res, o.err == nil
	}
	res, err := c.ev.Check(c.ctx, engine.CheckRequest{Resource: k.resource, Permission: k.permission, Subject: k.subject})
	c.checks[k] = checkOutcome{res, err}
	if err != nil {
		c.fail(0, "consistency Check "+k.String(), "an answer", "error: "+err.Error())
		return res, false
	}
	return res, true
}

// lookupResources compares LookupResources for (typ, perm, subject) with
// Check on every candidate resource and on whatever the lookup returns.
func (c *consistency) lookupResources(typ, perm string, subject rel.Subject, ids []string) {
	what := fmt.Sprintf("consistency LookupResources %s#%s for %s", typ, perm, subject)
	results, _, err := c.ev.LookupResources(c.ctx, engine.LookupResourcesRequest{ResourceType: typ, Permission: perm, Subject: subject})
	if err != nil {
		c.fail(0, what, "an answer", "error: "+err.Error())
		return
	}
	listed := map[string]engine.LookupResult{}
	for _, r := range results {
		if _, dup := listed[r.ID]; dup {
			c.fail(0, what, "each resource once", typ+":"+r.ID+" listed twice")
		}
		listed[r.ID] = r
		if r.Decision == engine.Denied {
			c.fail(0, what, "only allowed or conditional results", typ+":"+r.ID+" listed as denied")
		}
	}
	candidates := slices.Clone(ids)
	for id := range listed {
		if !slices.Contains(candidates, id) {
			candidates = append(candidates, id)
		}
	}
	sort.Strings(candidates)
	for _, id := range candidates {
		k := checkKey{rel.Object{Type: typ, ID: id}, perm, subject}
		res, ok := c.check(k)
		if !ok {
			continue
		}
		c.result.Comparisons++
		r, isListed := listed[id]
		switch {
		case res.Decision == engine.Denied && isListed:
			c.fail(0, "consistency "+k.String(), "LookupResources to agree with Check (denied)",
				"LookupResources lists "+typ+":"+id+" as "+describeLookup(r))
		case res.Decision != engine.Denied && !isListed:
			c.fail(0, "consistency "+k.String(), "LookupResources to agree with Check ("+describe(res)+")",
				"LookupResources does not list "+typ+":"+id)
		case isListed && r.Decision != res.Decision:
			c.fail(0, "consistency "+k.String(), "LookupResources to agree with Check ("+describe(res)+")",
				"LookupResources lists "+typ+":"+id+" as "+describeLookup(r))
		}
	}
}

// lookupSubjects compares LookupSubjects for (obj, perm, subject type) with
// Check on every known subject of the type and on whatever the lookup
// returns.
func (c *consistency) lookupSubjects(obj rel.Object, perm string, k typeKey, known []rel.Subject) {
	what := fmt.Sprintf("consistency LookupSubjects %s#%s for subjects %s", obj, perm, typeKeyString(k))
	results, _, err := c.ev.LookupSubjects(c.ctx, engine.LookupSubjectsRequest{
		Resource: obj, Permission: perm, SubjectType: k.typ, SubjectRelation: k.relation,
	})
	if err != nil {
		c.fail(0, what, "an answer", "error: "+err.Error())
		return
	}
	concrete := map[string]engine.LookupResult{}
	var wildcard *engine.LookupResult
	for i, r := range results {
		if r.Decision == engine.Denied {
			c.fail(0, what, "only allowed or conditional results", r.ID+" listed as denied")
		}
		if r.ID == rel.Wildcard {
			if wildcard != nil {
				c.fail(0, what, "at most one wildcard result", "several")
			}
			if k.relation != "" {
				c.fail(0, what, "no wildcard for a subject relation", "a wildcard")
			}
			wildcard = &results[i]
			continue
		}
		if _, dup := concrete[r.ID]; dup {
			c.fail(0, what, "each subject once", r.ID+" listed twice")
		}
		if len(r.Excluded) > 0 {
			c.fail(0, what, "exclusions only on the wildcard result", r.ID+" has exclusions")
		}
		concrete[r.ID] = r
	}
	excluded := map[string]engine.LookupResult{}
	if wildcard != nil {
		for _, x := range wildcard.Excluded {
			excluded[x.ID] = x
		}
	}

	ids := map[string]bool{}
	for _, s := range known {
		ids[s.ID] = true
	}
	for id := range concrete {
		ids[id] = true
	}
	for id := range excluded {
		ids[id] = true
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		subject := rel.Subject{Type: k.typ, ID: id, Relation: k.relation}
		want, how := effective(id, concrete, wildcard, excluded)
		ck := checkKey{obj, perm, subject}
		res, ok := c.check(ck)
		if !ok {
			continue
		}
		c.result.Comparisons++
		if res.Decision != want {
			c.fail(0, "consistency "+ck.String(), "LookupSubjects to agree with Check ("+describe(res)+")",
				"LookupSubjects gives "+want.String()+" ("+how+")")
		}
	}
}

// effective is the decision LookupSubjects results give a subject ID, and
// how they give it: its own entry or the wildcard's cover, whichever grants
// more (a subject named under a caveat beside an unconditional wildcard is
// listed as conditional, and allowed through the wildcard).
func effective(id string, concrete map[string]engine.LookupResult, wildcard *engine.LookupResult, excluded map[string]engine.LookupResult) (engine.Decision, string) {
	wild, how := engine.Denied, "not listed, no wildcard"
	if wildcard != nil {
		x, ok := excluded[id]
		switch {
		case !ok:
			wild, how = wildcard.Decision, "via * ("+describeLookup(*wildcard)+"), not excluded"
		case x.Decision == engine.Conditional:
			wild, how = engine.Conditional, "via * ("+describeLookup(*wildcard)+"), conditionally excluded"
		default:
			wild, how = engine.Denied, "excluded from *"
		}
	}
	if r, ok := concrete[id]; ok && grantRank(r.Decision) >= grantRank(wild) {
		return r.Decision, "listed as " + describeLookup(r)
	}
	return wild, how
}

// grantRank orders decisions by how much they grant.
func grantRank(d engine.Decision) int {
	switch d {
	case engine.Allowed:
		return 2
	case engine.Conditional:
		return 1
	}
	return 0
}

func typeKeyString(k typeKey) string {
	if k.relation == "" {
		return k.typ
	}
	return k.typ + "#" + k.relation
}

// checkAssertionLookups checks, for each assertion, that LookupResources with
// the assertion's caveat context agrees with Check under that context, as
// SpiceDB's suite does.
func checkAssertionLookups(ctx context.Context, ev Evaluator, assertions []Assertion) ConsistencyResult {
	var out ConsistencyResult
	for _, a := range assertions {
		what := "consistency LookupResources for " + a.Kind + " " + a.Text
		res, err := ev.Check(ctx, engine.CheckRequest{Resource: a.Resource, Permission: a.Permission, Subject: a.Subject, Context: a.Context})
		if err != nil {
			continue // reported by the assertion itself
		}
		results, _, err := ev.LookupResources(ctx, engine.LookupResourcesRequest{
			ResourceType: a.Resource.Type, Permission: a.Permission, Subject: a.Subject, Context: a.Context,
		})
		if err != nil {
			out.Failures = append(out.Failures, Failure{Line: a.Line, Kind: KindConsistency, What: what, Expected: "an answer", Got: "error: " + err.Error()})
			continue
		}
		out.Comparisons++
		var found *engine.LookupResult
		for i := range results {
			if results[i].ID == a.Resource.ID {
				found = &results[i]
			}
		}
		expected := "LookupResources" + contextString(a.Context) + " to agree with Check (" + describe(res) + ")"
		switch {
		case res.Decision == engine.Denied && found != nil:
			out.Failures = append(out.Failures, Failure{Line: a.Line, Kind: KindConsistency, What: what, Expected: expected, Got: "listed as " + describeLookup(*found)})
		case res.Decision != engine.Denied && found == nil:
			out.Failures = append(out.Failures, Failure{Line: a.Line, Kind: KindConsistency, What: what, Expected: expected, Got: "not listed"})
		case found != nil && found.Decision != res.Decision:
			out.Failures = append(out.Failures, Failure{Line: a.Line, Kind: KindConsistency, What: what, Expected: expected, Got: "listed as " + describeLookup(*found)})
		}
	}
	return out
}
