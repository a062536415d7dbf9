package validation

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

// This file turns a recursive expansion tree into the set of subjects it
// reaches, the way `zed validate` reads SpiceDB's expand output: each subject
// with whether a caveat conditions it, the object#relation leaves it was found
// on, and, for a wildcard, the subjects excluded from it.
//
// Caveats are tracked only as present or absent (the validation block marks
// a subject `[...]` without saying which caveat), so the caveat algebra
// reduces to booleans: a && b and a || b are conditional when either side
// is; !a is conditional when a is; and the "short-circuited" or, which drops
// the condition when either side is unconditional, is conditional only when
// both are.

// foundSubject is one subject reached by an expansion.
type foundSubject struct {
	subject  rel.Subject
	caveated bool
	// excluded lists the subjects a wildcard does not cover; nil otherwise.
	excluded []*foundSubject
	// resources holds the object#relation strings of the leaves the subject
	// was found on.
	resources map[string]bool
}

// derive builds a subject from the ones it combines, which contribute their
// resources.
func derive(subject rel.Subject, caveated bool, excluded []*foundSubject, sources ...*foundSubject) *foundSubject {
	f := &foundSubject{subject: subject, caveated: caveated, excluded: excluded, resources: map[string]bool{}}
	for _, s := range sources {
		if s != nil {
			maps.Copy(f.resources, s.resources)
		}
	}
	return f
}

func (f *foundSubject) exclusion(id string) (*foundSubject, bool) {
	for _, x := range f.excluded {
		if x.subject.ID == id {
			return x, true
		}
	}
	return nil, false
}

// exclusionStrings renders the exclusions as in a validation file, sorted.
func (f *foundSubject) exclusionStrings() []string {
	out := make([]string, 0, len(f.excluded))
	for _, x := range f.excluded {
		s := x.subject.String()
		if x.caveated {
			s += "[...]"
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// String renders the subject as in a validation file: user:* [...] - {...}.
func (f *foundSubject) String() string {
	s := f.subject.String()
	if f.caveated {
		s += "[...]"
	}
	if f.subject.IsWildcard() && len(f.excluded) > 0 {
		s += " - {" + strings.Join(f.exclusionStrings(), ", ") + "}"
	}
	return s
}

func (f *foundSubject) resourceList() []string {
	out := slices.Collect(maps.Keys(f.resources))
	sort.Strings(out)
	return out
}

// typeKey groups subjects that can meet in set operations: same type and
// subject relation.
type typeKey struct{ typ, relation string }

// typedSet is the subjects of one typeKey: concrete ones by ID and at most
// one wildcard. Unlike a plain set, a wildcard and a concrete subject it
// covers are both kept, so each keeps its own caveat and resources.
type typedSet struct {
	concrete map[string]*foundSubject
	wildcard *foundSubject
}

func newTypedSet() *typedSet { return &typedSet{concrete: map[string]*foundSubject{}} }

func (s *typedSet) clone() *typedSet {
	return &typedSet{concrete: maps.Clone(s.concrete), wildcard: s.wildcard}
}

func (s *typedSet) list() []*foundSubject {
	ids := slices.Sorted(maps.Keys(s.concrete))
	out := make([]*foundSubject, 0, len(ids)+1)
	for _, id := range ids {
		out = append(out, s.concrete[id])
	}
	if s.wildcard != nil {
		out = append(out, s.wildcard)
	}
	return out
}

func (s *typedSet) setConcrete(id string, f *foundSubject) {
	if f == nil {
		delete(s.concrete, id)
		return
	}
	s.concrete[id] = f
}

// add unions one subject into the set.
func (s *typedSet) add(f *foundSubject) {
	if f.subject.IsWildcard() {
		w := unionWildcards(s.wildcard, f)
		for _, id := range slices.Sorted(maps.Keys(s.concrete)) {
			w = unionWildcardConcrete(w, s.concrete[id])
		}
		s.wildcard = w
		return
	}
	s.setConcrete(f.subject.ID, unionConcretes(s.concrete[f.subject.ID], f))
	s.wildcard = unionWildcardConcrete(s.wildcard, f)
}

func (s *typedSet) addAll(o *typedSet) {
	for _, f := range o.list() {
		s.add(f)
	}
}

// subtract removes one subject from the set.
func (s *typedSet) subtract(r *foundSubject) {
	if r.subject.IsWildcard() {
		for _, id := range slices.Sorted(maps.Keys(s.concrete)) {
			s.setConcrete(id, subtractWildcardFromConcrete(s.concrete[id], r))
		}
		w, concretes := subtractWildcardFromWildcard(s.wildcard, r)
		s.wildcard = w
		for _, c := range concretes {
			s.setConcrete(c.subject.ID, c)
		}
		return
	}
	if c, ok := s.concrete[r.subject.ID]; ok {
		s.setConcrete(r.subject.ID, subtractConcreteFromConcrete(c, r))
	}
	if s.wildcard != nil {
		s.wildcard = subtractConcreteFromWildcard(s.wildcard, r)
	}
}

func (s *typedSet) subtractAll(o *typedSet) {
	for _, f := range o.list() {
		s.subtract(f)
	}
}

// intersect keeps what is in both sets, in place.
func (s *typedSet) intersect(o *typedSet) {
	mine := s.wildcard
	s.wildcard = intersectWildcards(mine, o.wildcard)
	updated := make(map[string]*foundSubject, len(s.concrete))
	for _, id := range slices.Sorted(maps.Keys(s.concrete)) {
		c := s.concrete[id]
		both := intersectConcretes(c, o.concrete[id])
		viaWildcard := intersectConcreteWildcard(c, o.wildcard)
		if r := unionConcretes(both, viaWildcard); r != nil {
			updated[id] = r
		}
	}
	if mine != nil {
		for _, id := range slices.Sorted(maps.Keys(o.concrete)) {
			viaWildcard := intersectConcreteWildcard(o.concrete[id], mine)
			if existing, ok := updated[id]; ok {
				updated[id] = unionConcretes(existing, viaWildcard)
			} else if viaWildcard != nil {
				updated[id] = viaWildcard
			}
		}
	}
	s.concrete = updated
}

// conditioned returns a copy in which every subject is caveated: the set
// was reached through a caveated relationship.
func (s *typedSet) conditioned() *typedSet {
	out := newTypedSet()
	if s.wildcard != nil {
		out.wildcard = derive(s.wildcard.subject, true, s.wildcard.excluded, s.wildcard)
	}
	for id, c := range s.concrete {
		out.concrete[id] = derive(c.subject, true, nil, c)
	}
	return out
}

// unionWildcards: the union of two wildcards holds unless both are
// conditional, and excludes only what both exclude.
func unionWildcards(existing, adding *foundSubject) *foundSubject {
	if existing == nil {
		return adding
	}
	mine := newTypedSet()
	for _, x := range existing.excluded {
		mine.add(x)
	}
	theirs := newTypedSet()
	for _, x := range adding.excluded {
		theirs.add(x)
	}
	mine.intersect(theirs)
	return derive(existing.subject, existing.caveated && adding.caveated, mine.list(), existing, adding)
}

// unionWildcardConcrete: adding a concrete subject to a set lifts its
// exclusion from the wildcard, or makes the exclusion conditional when the
// concrete subject is itself conditional.
func unionWildcardConcrete(w, c *foundSubject) *foundSubject {
	if w == nil {
		return nil
	}
	var excluded []*foundSubject
	for _, x := range w.excluded {
		if x.subject.ID != c.subject.ID {
			excluded = append(excluded, x)
			continue
		}
		if !c.caveated {
			continue
		}
		excluded = append(excluded, derive(c.subject, true, nil, x, c))
	}
	return derive(w.subject, w.caveated, excluded, w)
}

// unionConcretes: a subject found twice is conditional only if both finds
// are.
func unionConcretes(existing, adding *foundSubject) *foundSubject {
	if existing == nil {
		return adding
	}
	if adding == nil {
		return existing
	}
	return derive(existing.subject, existing.caveated && adding.caveated, nil, existing, adding)
}

// subtractWildcardFromWildcard returns what remains of w after removing r,
// and the concrete subjects r's exclusions leave behind.
func subtractWildcardFromWildcard(w, r *foundSubject) (*foundSubject, []*foundSubject) {
	if w == nil {
		return nil, nil
	}
	if !r.caveated && len(r.excluded) == 0 {
		return nil, nil
	}
	var concretes []*foundSubject
	for _, x := range r.excluded {
		if mine, ok := w.exclusion(x.subject.ID); ok && !mine.caveated {
			continue // excluded from both: not in w, so not left behind
		}
		// Left behind when w holds it and r excludes it: conditional if any
		// of the conditions involved is.
		concretes = append(concretes, derive(x.subject, w.caveated || r.caveated || x.caveated || excludedCaveated(w, x.subject.ID), nil, x))
	}
	if w.caveated || r.caveated {
		return derive(w.subject, true, w.excluded, w, r), concretes
	}
	return nil, concretes
}

func excludedCaveated(w *foundSubject, id string) bool {
	x, ok := w.exclusion(id)
	return ok && x.caveated
}

func subtractWildcardFromConcrete(c, w *foundSubject) *foundSubject {
	x, excluded := w.exclusion(c.subject.ID)
	if !excluded {
		if !w.caveated {
			return nil
		}
		return derive(c.subject, true, nil, c)
	}
	if !x.caveated {
		return c
	}
	return derive(c.subject, true, nil, c)
}

func subtractConcreteFromConcrete(c, r *foundSubject) *foundSubject {
	if !r.caveated {
		return nil
	}
	return derive(c.subject, true, nil, c, r)
}

func subtractConcreteFromWildcard(w, c *foundSubject) *foundSubject {
	var excluded []*foundSubject
	found := false
	for _, x := range w.excluded {
		if x.subject.ID == c.subject.ID {
			excluded = append(excluded, derive(c.subject, x.caveated && c.caveated, nil, x, c))
			found = true
			continue
		}
		excluded = append(excluded, x)
	}
	if !found {
		excluded = append(excluded, c)
	}
	return derive(w.subject, w.caveated, excluded, w)
}

func intersectConcretes(a, b *foundSubject) *foundSubject {
	if b == nil {
		return nil
	}
	return derive(a.subject, a.caveated || b.caveated, nil, a, b)
}

// intersectWildcards: both wildcards must hold, and either's exclusions
// apply.
func intersectWildcards(a, b *foundSubject) *foundSubject {
	if a == nil || b == nil {
		return nil
	}
	excluded := newTypedSet()
	for _, x := range a.excluded {
		excluded.add(x)
	}
	for _, x := range b.excluded {
		excluded.add(x)
	}
	return derive(a.subject, a.caveated || b.caveated, excluded.list(), a, b)
}

func intersectConcreteWildcard(c, w *foundSubject) *foundSubject {
	if w == nil {
		return nil
	}
	x, excluded := w.exclusion(c.subject.ID)
	switch {
	case !excluded && !w.caveated:
		return c
	case !excluded:
		return derive(c.subject, true, nil, c, w)
	case !x.caveated:
		return nil
	default:
		return derive(c.subject, true, nil, c, w, x)
	}
}

// subjectSet is the subjects an expansion reaches, by type and relation.
type subjectSet struct {
	byType map[typeKey]*typedSet
}

func newSubjectSet() *subjectSet { return &subjectSet{byType: map[typeKey]*typedSet{}} }

func (s *subjectSet) typed(k typeKey) *typedSet {
	t, ok := s.byType[k]
	if !ok {
		t = newTypedSet()
		s.byType[k] = t
	}
	return t
}

func (s *subjectSet) keys() []typeKey {
	keys := slices.Collect(maps.Keys(s.byType))
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].typ != keys[j].typ {
			return keys[i].typ < keys[j].typ
		}
		return keys[i].relation < keys[j].relation
	})
	return keys
}

func (s *subjectSet) addAll(o *subjectSet) {
	for _, k := range o.keys() {
		s.typed(k).addAll(o.byType[k])
	}
}

func (s *subjectSet) exclude(o *subjectSet) *subjectSet {
	out := newSubjectSet()
	for _, k := range s.keys() {
		c := s.byType[k].clone()
		if other, ok := o.byType[k]; ok {
			c.subtractAll(other)
		}
		out.byType[k] = c
	}
	return out
}

func (s *subjectSet) intersect(o *subjectSet) *subjectSet {
	out := newSubjectSet()
	for _, k := range s.keys() {
		other, ok := o.byType[k]
		if !ok {
			continue
		}
		c := s.byType[k].clone()
		c.intersect(other)
		out.byType[k] = c
	}
	return out
}

func (s *subjectSet) conditioned() *subjectSet {
	out := newSubjectSet()
	for k, t := range s.byType {
		out.byType[k] = t.conditioned()
	}
	return out
}

// get returns the subject found for s, if any.
func (s *subjectSet) get(sub rel.Subject) (*foundSubject, bool) {
	t, ok := s.byType[typeKey{sub.Type, sub.Relation}]
	if !ok {
		return nil, false
	}
	if sub.IsWildcard() {
		return t.wildcard, t.wildcard != nil
	}
	f, ok := t.concrete[sub.ID]
	return f, ok
}

// list returns every subject found, ordered by type, relation and ID.
func (s *subjectSet) list() []*foundSubject {
	var out []*foundSubject
	for _, k := range s.keys() {
		out = append(out, s.byType[k].list()...)
	}
	return out
}

// foundSubjects computes the subjects a recursive expansion tree reaches.
// at is the object#relation the tree expands, inherited by nodes that do not
// name their own.
func foundSubjects(n *engine.ExpandNode, at string) (*subjectSet, error) {
	out, err := foundSubjectsOf(n, at)
	if err == nil && n.Via != nil && n.Via.Caveat != nil {
		// Reached through a caveated arrow relationship: holds only under
		// its caveat.
		out = out.conditioned()
	}
	return out, err
}

func foundSubjectsOf(n *engine.ExpandNode, at string) (*subjectSet, error) {
	if n == nil {
		return nil, errors.New("expansion returned no tree")
	}
	if n.Relation != "" && !strings.Contains(n.Relation, "->") {
		at = onrString(n.Object.Type, n.Object.ID, n.Relation)
	}
	switch n.Op {
	case "leaf":
		out := newSubjectSet()
		for _, r := range n.Subjects {
			f := &foundSubject{subject: r.Subject, caveated: r.Caveat != nil, resources: map[string]bool{at: true}}
			out.typed(typeKey{r.Subject.Type, r.Subject.Relation}).add(f)
		}
		return out, nil
	case "union":
		out := newSubjectSet()
		caveated := usersetCaveats(n)
		for _, c := range n.Children {
			cs, err := foundSubjects(c, at)
			if err != nil {
				return nil, err
			}
			direct := c.Op == "leaf" && c.Object == n.Object && c.Relation == n.Relation
			if !direct && caveated[onrString(c.Object.Type, c.Object.ID, c.Relation)] {
				cs = cs.conditioned()
			}
			out.addAll(cs)
		}
		return out, nil
	case "intersection":
		if len(n.Children) == 0 {
			return newSubjectSet(), nil
		}
		out := newSubjectSet()
		for i, c := range n.Children {
			cs, err := foundSubjects(c, at)
			if err != nil {
				return nil, err
			}
			if i == 0 {
				out.addAll(cs)
				continue
			}
			out = out.intersect(cs)
		}
		return out, nil
	case "exclusion":
		if len(n.Children) == 0 {
			return nil, fmt.Errorf("expansion of %s: exclusion node has no children", at)
		}
		out := newSubjectSet()
		for i, c := range n.Children {
			cs, err := foundSubjects(c, at)
			if err != nil {
				return nil, err
			}
			if i == 0 {
				out.addAll(cs)
				continue
			}
			out = out.exclude(cs)
		}
		return out, nil
	}
	return nil, fmt.Errorf("expansion of %s: unknown node operation %q", at, n.Op)
}

// usersetCaveats finds, in a union that expands a relation's userset
// subjects, which of them were reached through a caveated relationship: the
// leaf listing the relation's direct subjects sits beside the expansions of
// the usersets among them, and holds the relationships with their caveats.
// (Arrows say the same with Via on the node they reach.)
func usersetCaveats(n *engine.ExpandNode) map[string]bool {
	var out map[string]bool
	for _, c := range n.Children {
		if c.Op != "leaf" || c.Object != n.Object || c.Relation != n.Relation || c.Relation == "" {
			continue
		}
		for _, r := range c.Subjects {
			if r.Subject.Relation != "" && r.Caveat != nil {
				if out == nil {
					out = map[string]bool{}
				}
				out[r.Subject.String()] = true
			}
		}
	}
	return out
}
