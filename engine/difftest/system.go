package difftest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/mandate-authz/mandate/store/rel"
)

// Outcome is a three-valued answer: no, yes, or yes depending on caveat
// context that was not supplied.
type Outcome uint8

// Outcomes, ordered so that max is "or".
const (
	No Outcome = iota
	Conditional
	Has
)

func (o Outcome) String() string {
	switch o {
	case Has:
		return "has"
	case Conditional:
		return "conditional"
	}
	return "no"
}

func and(a, b Outcome) Outcome { return min(a, b) }

func not(a Outcome) Outcome {
	switch a {
	case Has:
		return No
	case No:
		return Has
	}
	return Conditional
}

// FoundSubject is one LookupSubjects result: a subject ID, or "*" with the
// subjects the wildcard excludes.
type FoundSubject struct {
	ID       string
	Outcome  Outcome
	Excluded []FoundSubject
}

// System is an authorization system under comparison, loaded with one
// case's schema and relationships.
type System interface {
	Check(ctx context.Context, q Query) (Outcome, error)
	// LookupResources returns the IDs found and their outcomes (Has or
	// Conditional).
	LookupResources(ctx context.Context, q Query) (map[string]Outcome, error)
	LookupSubjects(ctx context.Context, q Query) ([]FoundSubject, error)
	Close()
}

// Builder loads a system from schema text and relationships.
type Builder func(ctx context.Context, schema string, rels []rel.Relationship) (System, error)

// Answer is a system's answer to a query in comparable form.
type Answer struct {
	// Outcome answers a check.
	Outcome Outcome
	// Set answers a lookup: for resources, each ID found; for subjects,
	// the effective membership of every subject of the pool (wildcards
	// expanded and exclusions applied), plus "*" for the wildcard itself.
	// Absent keys mean No.
	Set map[string]Outcome
	// Named lists, for LookupSubjects, the subjects the result names
	// (sorted, without "*"): SpiceDB names a subject a relationship reaches,
	// and leaves one only a wildcard covers to the "*" result.
	Named []string
}

// Equal reports whether two answers to the same query agree.
func (a Answer) Equal(b Answer) bool {
	if a.Outcome != b.Outcome || len(a.Set) != len(b.Set) || !slices.Equal(a.Named, b.Named) {
		return false
	}
	for k, v := range a.Set {
		if w, ok := b.Set[k]; !ok || v != w {
			return false
		}
	}
	return true
}

func (a Answer) String() string {
	if a.Set == nil {
		return a.Outcome.String()
	}
	keys := slices.Sorted(maps.Keys(a.Set))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ":" + a.Set[k].String()
	}
	out := "{" + strings.Join(parts, " ") + "}"
	if a.Named != nil {
		out += " named [" + strings.Join(a.Named, " ") + "]"
	}
	return out
}

// Diff lists, for lookups, the keys on which two answers differ.
func (a Answer) Diff(b Answer) []string {
	keys := map[string]bool{}
	for k := range a.Set {
		keys[k] = true
	}
	for k := range b.Set {
		keys[k] = true
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if a.Set[k] != b.Set[k] {
			out = append(out, k)
		}
	}
	return out
}

// Ask puts a query to a system and normalizes the answer. pool lists the
// subject IDs of q.SubjectType, over which LookupSubjects results are
// expanded.
func Ask(ctx context.Context, s System, q Query, pool []string) (Answer, error) {
	switch q.Kind {
	case QueryCheck:
		o, err := s.Check(ctx, q)
		return Answer{Outcome: o}, err
	case QueryLookupResources:
		found, err := s.LookupResources(ctx, q)
		if err != nil {
			return Answer{}, err
		}
		set := map[string]Outcome{}
		for id, o := range found {
			if o != No {
				set[id] = o
			}
		}
		return Answer{Set: set}, nil
	case QueryLookupSubjects:
		found, err := s.LookupSubjects(ctx, q)
		if err != nil {
			return Answer{}, err
		}
		return Answer{Set: Effective(found, pool), Named: namedIn(found)}, nil
	}
	return Answer{}, fmt.Errorf("unknown query kind %d", q.Kind)
}

// namedIn lists the subjects LookupSubjects results name with a non-No
// outcome, each with its own outcome ("cat:maybe"), sorted, never nil.
// Results naming a subject several times combine as "or". A subject's own
// outcome is compared, not only its effective membership: beside an
// unconditional wildcard, a subject named under a caveat is listed as
// conditional although the wildcard covers it.
func namedIn(found []FoundSubject) []string {
	own := map[string]Outcome{}
	for _, f := range found {
		if f.ID != rel.Wildcard && f.Outcome != No {
			own[f.ID] = max(own[f.ID], f.Outcome)
		}
	}
	out := []string{}
	for _, id := range slices.Sorted(maps.Keys(own)) {
		out = append(out, id+":"+own[id].String())
	}
	return out
}

// Effective computes each pool subject's membership from LookupSubjects
// results: its own entry, or else the wildcard's unless excluded. Results
// listing a subject several times combine as "or". The wildcard itself is
// reported as "*".
func Effective(found []FoundSubject, pool []string) map[string]Outcome {
	concrete := map[string]Outcome{}
	var wildcards []FoundSubject
	for _, f := range found {
		if f.Outcome == No {
			continue
		}
		if f.ID == rel.Wildcard {
			wildcards = append(wildcards, f)
			continue
		}
		concrete[f.ID] = max(concrete[f.ID], f.Outcome)
	}
	ids := map[string]bool{}
	for _, id := range pool {
		ids[id] = true
	}
	for id := range concrete {
		ids[id] = true
	}
	out := map[string]Outcome{}
	for id := range ids {
		o := concrete[id]
		for _, w := range wildcards {
			excluded := No
			for _, x := range w.Excluded {
				if x.ID == id {
					excluded = max(excluded, x.Outcome)
				}
			}
			o = max(o, and(w.Outcome, not(excluded)))
		}
		if o != No {
			out[id] = o
		}
	}
	for _, w := range wildcards {
		out[rel.Wildcard] = max(out[rel.Wildcard], w.Outcome)
	}
	return out
}
