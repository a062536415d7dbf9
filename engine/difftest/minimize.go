package difftest

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

type minimizer struct {
	ctx            context.Context
	oracle, tested Builder
	budget         int
	best           *Disagreement
}

// Minimize shrinks d's case (schema, relationships and query context) for
// as long as it keeps disagreeing in the same way, trying at most budget
// candidates. It returns the smallest disagreement found.
func Minimize(ctx context.Context, d *Disagreement, oracle, tested Builder, budget int) *Disagreement {
	m := &minimizer{ctx: ctx, oracle: oracle, tested: tested, budget: budget, best: d}
	if d.Query != nil {
		q := *d.Query
		cp := *d
		cp.Query = &q
		m.best = &cp
	}
	for m.budget > 0 {
		progress := m.schemaPass()
		progress = m.relationshipPass() || progress
		progress = m.queryPass() || progress
		if !progress {
			break
		}
	}
	return m.best
}

// try tests a candidate and adopts it when it still disagrees.
func (m *minimizer) try(c *Case, q *Query) bool {
	if m.budget <= 0 {
		return false
	}
	m.budget--
	nd, ok := sameDisagreement(m.ctx, m.best, c, q, m.oracle, m.tested)
	if ok {
		nd.Minimized = true
		m.best = nd
	}
	return ok
}

func (m *minimizer) withRels(rels []rel.Relationship) *Case {
	c := m.best.Case.Clone()
	c.Rels = rels
	return c
}

func (m *minimizer) relationshipPass() bool {
	progress := false
	// Remove chunks of relationships, halving the chunk size.
	for chunk := max(1, len(m.best.Case.Rels)/2); chunk >= 1; chunk /= 2 {
		for i := 0; i < len(m.best.Case.Rels); {
			rels := m.best.Case.Rels
			cand := slices.Concat(rels[:i], rels[min(len(rels), i+chunk):])
			if m.try(m.withRels(cand), m.best.Query) {
				progress = true
				continue
			}
			i += chunk
		}
		if chunk == 1 {
			break
		}
	}
	// Simplify caveat contexts.
	for i := range m.best.Case.Rels {
		r := m.best.Case.Rels[i]
		if r.Caveat == nil || len(r.Caveat.Context) == 0 {
			continue
		}
		c := m.best.Case.Clone()
		c.Rels[i].Caveat.Context = nil
		if m.try(c, m.best.Query) {
			progress = true
			continue
		}
		for _, k := range slices.Sorted(maps.Keys(r.Caveat.Context)) {
			c := m.best.Case.Clone()
			delete(c.Rels[i].Caveat.Context, k)
			if m.try(c, m.best.Query) {
				progress = true
			}
		}
	}
	return progress
}

func (m *minimizer) queryPass() bool {
	q := m.best.Query
	if q == nil || q.Context == nil {
		return false
	}
	nq := *q
	nq.Context = nil
	if m.try(m.best.Case, &nq) {
		return true
	}
	progress := false
	for _, k := range slices.Sorted(maps.Keys(q.Context)) {
		nq := *m.best.Query
		nq.Context = maps.Clone(nq.Context)
		delete(nq.Context, k)
		if m.try(m.best.Case, &nq) {
			progress = true
		}
	}
	return progress
}

// keep filters relationships to those whose types and relations still
// exist and that keep satisfies.
func keepRels(s *SchemaModel, rels []rel.Relationship, keep func(rel.Relationship) bool) []rel.Relationship {
	var out []rel.Relationship
	for _, r := range rels {
		d := s.Def(r.Resource.Type)
		if d == nil || d.Relation(r.Relation) == nil {
			continue
		}
		sd := s.Def(r.Subject.Type)
		if sd == nil || (r.Subject.Relation != "" && !sd.HasName(r.Subject.Relation)) {
			continue
		}
		if keep != nil && !keep(r) {
			continue
		}
		out = append(out, r.Clone())
	}
	return out
}

// queryNeeds reports whether the query names a type or member.
func (m *minimizer) queryNeedsDef(name string) bool {
	q := m.best.Query
	if q == nil {
		return false
	}
	return q.Resource.Type == name || q.ResourceType == name || q.Subject.Type == name || q.SubjectType == name
}

func (m *minimizer) queryNeedsMember(def, name string) bool {
	q := m.best.Query
	if q == nil {
		return false
	}
	resType := q.Resource.Type
	if q.Kind == QueryLookupResources {
		resType = q.ResourceType
	}
	if resType == def && q.Permission == name {
		return true
	}
	if q.Subject.Type == def && q.Subject.Relation == name {
		return true
	}
	return q.SubjectType == def && q.SubjectRelation == name
}

// schemaEdits enumerates single-step simplifications of the current schema.
func (m *minimizer) schemaEdits() []func() *Case {
	var edits []func() *Case
	s := m.best.Case.Schema
	for di, d := range s.Defs {
		if m.queryNeedsDef(d.Name) {
			continue
		}
		edits = append(edits, func() *Case {
			c := m.best.Case.Clone()
			c.Schema.Defs = slices.Delete(c.Schema.Defs, di, di+1)
			c.Rels = keepRels(c.Schema, c.Rels, nil)
			return c
		})
	}
	for di, d := range s.Defs {
		for pi, p := range d.Permissions {
			if !m.queryNeedsMember(d.Name, p.Name) {
				edits = append(edits, func() *Case {
					c := m.best.Case.Clone()
					cd := c.Schema.Defs[di]
					cd.Permissions = slices.Delete(cd.Permissions, pi, pi+1)
					c.Rels = keepRels(c.Schema, c.Rels, nil)
					return c
				})
			}
		}
		for ri, r := range d.Relations {
			if !m.queryNeedsMember(d.Name, r.Name) {
				edits = append(edits, func() *Case {
					c := m.best.Case.Clone()
					cd := c.Schema.Defs[di]
					cd.Relations = slices.Delete(cd.Relations, ri, ri+1)
					c.Rels = keepRels(c.Schema, c.Rels, nil)
					return c
				})
			}
		}
	}
	for di, d := range s.Defs {
		for ri, r := range d.Relations {
			if len(r.Allowed) < 2 {
				continue
			}
			for ai, a := range r.Allowed {
				edits = append(edits, func() *Case {
					c := m.best.Case.Clone()
					cr := c.Schema.Defs[di].Relations[ri]
					cr.Allowed = slices.Delete(cr.Allowed, ai, ai+1)
					c.Rels = keepRels(c.Schema, c.Rels, func(x rel.Relationship) bool {
						return !(x.Resource.Type == d.Name && x.Relation == r.Name && matchesAllowed(a, x))
					})
					return c
				})
			}
		}
	}
	// Strip caveats and expiration from allowed types, and from the
	// relationships written through them.
	for di, d := range s.Defs {
		for ri, r := range d.Relations {
			for ai, a := range r.Allowed {
				if a.Caveat == "" && !a.Expiration {
					continue
				}
				for _, strip := range []AllowedModel{{Caveat: a.Caveat}, {Expiration: a.Expiration}} {
					if strip == (AllowedModel{}) {
						continue
					}
					edits = append(edits, func() *Case {
						c := m.best.Case.Clone()
						cr := c.Schema.Defs[di].Relations[ri]
						na := a
						if strip.Caveat != "" {
							na.Caveat = ""
						}
						if strip.Expiration {
							na.Expiration = false
						}
						if slices.Contains(cr.Allowed, na) {
							return c // would duplicate another allowed type
						}
						cr.Allowed[ai] = na
						for i, x := range c.Rels {
							if x.Resource.Type != d.Name || x.Relation != r.Name || !matchesAllowed(a, x) {
								continue
							}
							if strip.Caveat != "" {
								c.Rels[i].Caveat = nil
							}
							if strip.Expiration {
								c.Rels[i].Expiration = time.Time{}
							}
						}
						return c
					})
				}
			}
		}
	}
	for di, d := range s.Defs {
		for pi, p := range d.Permissions {
			n := 0
			p.Expr.walk(func(*Expr) { n++ })
			for k := range n {
				node := nodeAt(p.Expr, k)
				replacements := []*Expr{}
				if node.Kind != ExprNil {
					replacements = append(replacements, &Expr{Kind: ExprNil})
				}
				replacements = append(replacements, node.Children...)
				if node.Parens > 0 {
					stripped := *node
					stripped.Parens = 0
					replacements = append(replacements, &stripped)
				}
				for _, rep := range replacements {
					edits = append(edits, func() *Case {
						c := m.best.Case.Clone()
						cp := c.Schema.Defs[di].Permissions[pi]
						cp.Expr = replaceAt(cp.Expr, k, rep.Clone())
						return c
					})
				}
			}
		}
	}
	for ci := range s.Caveats {
		edits = append(edits, func() *Case {
			c := m.best.Case.Clone()
			c.Schema.Caveats = slices.Delete(c.Schema.Caveats, ci, ci+1)
			return c
		})
	}
	return edits
}

func (m *minimizer) schemaPass() bool {
	progress := false
	for {
		// Edits index into the schema they were made from: after each
		// success, enumerate them again.
		improved := false
		for _, edit := range m.schemaEdits() {
			if m.budget <= 0 {
				return progress
			}
			if m.try(edit(), m.best.Query) {
				improved, progress = true, true
				break
			}
		}
		if !improved {
			return progress
		}
	}
}

func matchesAllowed(a AllowedModel, r rel.Relationship) bool {
	if a.Type != r.Subject.Type || a.Wildcard != r.Subject.IsWildcard() || a.Relation != r.Subject.Relation {
		return false
	}
	caveat := ""
	if r.Caveat != nil {
		caveat = r.Caveat.Name
	}
	return a.Caveat == caveat && a.Expiration == !r.Expiration.IsZero()
}

// nodeAt returns the k-th node of e in pre-order.
func nodeAt(e *Expr, k int) *Expr {
	var found *Expr
	i := 0
	e.walk(func(x *Expr) {
		if i == k {
			found = x
		}
		i++
	})
	return found
}

// replaceAt returns a copy of e with its k-th node (pre-order) replaced.
func replaceAt(e *Expr, k int, rep *Expr) *Expr {
	i := 0
	var rec func(x *Expr) *Expr
	rec = func(x *Expr) *Expr {
		if i == k {
			i += countNodes(x)
			return rep
		}
		i++
		c := *x
		c.Children = make([]*Expr, len(x.Children))
		for j, ch := range x.Children {
			c.Children[j] = rec(ch)
		}
		return &c
	}
	return rec(e)
}

func countNodes(e *Expr) int {
	n := 0
	e.walk(func(*Expr) { n++ })
	return n
}
