package engine

import (
	"context"
	"fmt"
	"slices"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// outcome is a three-valued result with the caveat parameters whose absence
// made it unknown. Combination follows Kleene logic, as SpiceDB's caveat
// expressions do.
type outcome struct {
	v       schema.Outcome
	missing []string
}

var (
	outFalse = outcome{v: schema.False}
	outTrue  = outcome{v: schema.True}
)

func or(a, b outcome) outcome {
	switch {
	case a.v == schema.True || b.v == schema.True:
		return outTrue
	case a.v == schema.False:
		return b
	case b.v == schema.False:
		return a
	}
	return outcome{v: schema.Unknown, missing: mergeMissing(a.missing, b.missing)}
}

func and(a, b outcome) outcome {
	switch {
	case a.v == schema.False || b.v == schema.False:
		return outFalse
	case a.v == schema.True:
		return b
	case b.v == schema.True:
		return a
	}
	return outcome{v: schema.Unknown, missing: mergeMissing(a.missing, b.missing)}
}

func not(a outcome) outcome {
	switch a.v {
	case schema.True:
		return outFalse
	case schema.False:
		return outTrue
	}
	return a
}

func mergeMissing(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := make([]string, 0, len(a)+len(b))
	out = append(out, a...)
	for _, m := range b {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return out
}

func (o outcome) decision() Decision {
	switch o.v {
	case schema.True:
		return Allowed
	case schema.Unknown:
		return Conditional
	}
	return Denied
}

// target is the subject a check looks for, interned. A subject ID that
// appears nowhere in the index gets an ID no edge carries (unknownID), so
// only wildcards can match it.
type target struct {
	typ, id, rel sym
}

// unknownID is never assigned by the interner.
const unknownID = sym(^uint32(0))

// unseenResource stands for a checked resource whose ID is in no
// relationship; only a subject naming that same object shares it.
const unseenResource = sym(^uint32(0) - 1)

// frame is a (object, relation) under evaluation, for cycle detection.
type frame struct {
	typ, obj, rel sym
}

// checker evaluates one request at one revision. It is not shared between
// goroutines.
type checker struct {
	eng   *Engine
	idx   *index
	sch   *schema.Schema
	rev   store.Revision
	now   int64
	ctx   map[string]any
	stack []frame
	// supplied holds engine-provided caveat parameters for acts_for links.
	supplied map[string]any
}

func (e *Engine) newChecker(rev store.Revision, sch *schema.Schema, reqCtx map[string]any) *checker {
	return &checker{eng: e, idx: e.idx, sch: sch, rev: rev, now: e.now().UnixMicro(), ctx: reqCtx}
}

// targetFor interns a subject for lookup without growing the index.
func (c *checker) targetFor(s rel.Subject) target {
	t := target{typ: unknownID, id: unknownID, rel: unknownID}
	if v, ok := c.idx.lookup(s.Type); ok {
		t.typ = v
	}
	if v, ok := c.idx.lookup(s.ID); ok {
		t.id = v
	}
	if v, ok := c.idx.lookup(s.Relation); ok {
		t.rel = v
	}
	return t
}

// relation evaluates relation or permission `relName` of object (typ, obj)
// for subject t.
func (c *checker) relation(typ, obj sym, relName string, t target, depth int) (outcome, error) {
	def := c.sch.Definitions[c.idx.name(typ)]
	if def == nil {
		return outFalse, nil
	}
	r := def.Relations[relName]
	if r == nil {
		return outFalse, nil
	}
	relSym, known := c.idx.lookup(relName)
	// A userset is a member of itself.
	if known && t.typ == typ && t.id == obj && t.rel == relSym {
		return outTrue, nil
	}
	if depth > c.eng.maxDepth {
		return outFalse, fmt.Errorf("%w (%d) at %s:%s#%s", ErrMaxDepth, c.eng.maxDepth, c.idx.name(typ), c.idx.name(obj), relName)
	}
	f := frame{typ, obj, relSym}
	if known {
		if slices.Contains(c.stack, f) {
			// Re-entering the same question on one path adds nothing: the
			// least fixed point does not hold through the cycle.
			return outFalse, nil
		}
		c.stack = append(c.stack, f)
		defer func() { c.stack = c.stack[:len(c.stack)-1] }()
	}
	if r.IsPermission {
		return c.rewrite(typ, obj, r.Rewrite, t, depth)
	}
	if !known {
		return outFalse, nil
	}
	return c.direct(typ, obj, relSym, t, depth)
}

// direct evaluates a stored relation: the subject itself, a wildcard of its
// type, or a userset that contains it.
func (c *checker) direct(typ, obj, relSym sym, t target, depth int) (outcome, error) {
	edges := c.idx.slots[slotKey{typ, obj, relSym}]
	if len(edges) == 0 {
		return outFalse, nil
	}
	result := outFalse
	// Exact subject.
	if t.id != unknownID {
		for i := find(edges, t.typ, t.rel, t.id); i < len(edges); i++ {
			e := &edges[i]
			if e.subjType != t.typ || e.subjRel != t.rel || e.subjID != t.id {
				break
			}
			if !e.liveAt(c.rev, c.now) {
				continue
			}
			o, err := c.caveat(e)
			if err != nil {
				return outFalse, err
			}
			if result = or(result, o); result.v == schema.True {
				return result, nil
			}
		}
	}
	// Wildcard of the subject's type, for subjects that are objects.
	if t.rel == noSym && t.id != c.idx.wildcard {
		for i := find(edges, t.typ, noSym, c.idx.wildcard); i < len(edges); i++ {
			e := &edges[i]
			if e.subjType != t.typ || e.subjRel != noSym || e.subjID != c.idx.wildcard {
				break
			}
			if !e.liveAt(c.rev, c.now) {
				continue
			}
			o, err := c.caveat(e)
			if err != nil {
				return outFalse, err
			}
			if result = or(result, o); result.v == schema.True {
				return result, nil
			}
		}
	}
	// Usersets: edges whose subject carries a relation.
	for i := range edges {
		e := &edges[i]
		if e.subjRel == noSym || !e.liveAt(c.rev, c.now) {
			continue
		}
		o, err := c.caveat(e)
		if err != nil {
			return outFalse, err
		}
		if o.v == schema.False {
			continue
		}
		sub, err := c.relation(e.subjType, e.subjID, c.idx.name(e.subjRel), t, depth+1)
		if err != nil {
			return outFalse, err
		}
		if result = or(result, and(o, sub)); result.v == schema.True {
			return result, nil
		}
	}
	return result, nil
}

// caveat evaluates an edge's caveat; an uncaveated edge is true.
func (c *checker) caveat(e *edge) (outcome, error) {
	if e.caveat == nil {
		return outTrue, nil
	}
	cv := c.sch.Caveats[e.caveat.name]
	if cv == nil {
		return outFalse, fmt.Errorf("caveat %q is not defined in the schema", e.caveat.name)
	}
	res, err := cv.Evaluate(c.ctx, e.caveat.context, c.supplied)
	if err != nil {
		return outFalse, fmt.Errorf("%w: %w", ErrInvalidContext, err)
	}
	return outcome{v: res.Outcome, missing: res.Missing}, nil
}

func (c *checker) rewrite(typ, obj sym, rw *schema.Rewrite, t target, depth int) (outcome, error) {
	switch rw.Op {
	case schema.OpUnion:
		result := outFalse
		for _, child := range rw.Children {
			o, err := c.rewrite(typ, obj, child, t, depth)
			if err != nil {
				return outFalse, err
			}
			if result = or(result, o); result.v == schema.True {
				return result, nil
			}
		}
		return result, nil
	case schema.OpIntersection:
		result := outTrue
		for _, child := range rw.Children {
			o, err := c.rewrite(typ, obj, child, t, depth)
			if err != nil {
				return outFalse, err
			}
			if result = and(result, o); result.v == schema.False {
				return result, nil
			}
		}
		return result, nil
	case schema.OpExclusion:
		result, err := c.rewrite(typ, obj, rw.Children[0], t, depth)
		if err != nil || result.v == schema.False {
			return result, err
		}
		for _, child := range rw.Children[1:] {
			o, err := c.rewrite(typ, obj, child, t, depth)
			if err != nil {
				return outFalse, err
			}
			if result = and(result, not(o)); result.v == schema.False {
				return result, nil
			}
		}
		return result, nil
	case schema.OpComputed:
		return c.relation(typ, obj, rw.Relation, t, depth+1)
	case schema.OpArrow:
		return c.arrow(typ, obj, rw, t, depth, false)
	case schema.OpArrowAll:
		return c.arrow(typ, obj, rw, t, depth, true)
	case schema.OpNil:
		return outFalse, nil
	case schema.OpSelf:
		if t.typ == typ && t.id == obj && t.rel == noSym {
			return outTrue, nil
		}
		return outFalse, nil
	}
	return outFalse, fmt.Errorf("unknown rewrite operation %v", rw.Op)
}

// arrow follows the tupleset relation to each subject object and evaluates
// the target relation there; all requires it on every such subject.
func (c *checker) arrow(typ, obj sym, rw *schema.Rewrite, t target, depth int, all bool) (outcome, error) {
	tsSym, ok := c.idx.lookup(rw.Tupleset)
	if !ok {
		return outFalse, nil
	}
	edges := c.idx.slots[slotKey{typ, obj, tsSym}]
	result := outFalse
	if all {
		result = outTrue
	}
	found := false
	for i := range edges {
		e := &edges[i]
		if !e.liveAt(c.rev, c.now) {
			continue
		}
		found = true
		o, err := c.caveat(e)
		if err != nil {
			return outFalse, err
		}
		if !all && o.v == schema.False {
			continue
		}
		// A subject type without the target relation yields false.
		sub, err := c.relation(e.subjType, e.subjID, rw.Relation, t, depth+1)
		if err != nil {
			return outFalse, err
		}
		if all {
			if result = and(result, and(o, sub)); result.v == schema.False {
				return result, nil
			}
			continue
		}
		if result = or(result, and(o, sub)); result.v == schema.True {
			return result, nil
		}
	}
	if all && !found {
		return outFalse, nil
	}
	return result, nil
}

// Check answers whether the subject has the permission on the resource.
func (e *Engine) Check(ctx context.Context, req CheckRequest) (CheckResult, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.checkLocked(ctx, req)
}

func (e *Engine) checkLocked(ctx context.Context, req CheckRequest) (CheckResult, error) {
	rev, err := e.resolveRevision(req.Revision)
	if err != nil {
		return CheckResult{}, err
	}
	sch := e.idx.schemaAt(rev)
	if sch == nil {
		return CheckResult{}, ErrNoSchema
	}
	if err := validateCheck(sch, req.Resource, req.Permission, req.Subject); err != nil {
		return CheckResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return CheckResult{}, err
	}
	c := e.newChecker(rev, sch, req.Context)
	if d := sch.Definitions[req.Subject.Type]; d.IsAgent() && req.Subject.Relation == "" && !req.Subject.IsWildcard() {
		return e.checkDelegated(c, req)
	}
	if req.OnBehalfOf != nil {
		return CheckResult{}, fmt.Errorf("%w: %s is not an agent; on_behalf_of applies only to agent subjects", ErrInvalidOnBehalfOf, req.Subject)
	}
	o, err := c.checkObject(req.Resource, req.Permission, req.Subject)
	if err != nil {
		return CheckResult{}, err
	}
	return CheckResult{Decision: o.decision(), Missing: missingOf(o), Revision: rev}, nil
}

// checkObject evaluates one plain (non-delegated) check.
func (c *checker) checkObject(resource rel.Object, permission string, subject rel.Subject) (outcome, error) {
	// Type and relation names are interned with the schema; an object ID
	// may appear in no relationship yet.
	typ, _ := c.idx.lookup(resource.Type)
	t := c.targetFor(subject)
	obj, ok := c.idx.lookup(resource.ID)
	if !ok {
		// An unseen resource still answers for itself: as a userset subject
		// (resource#rel is a member of resource#rel) and through `self`.
		obj = unseenResource
		if subject.Type == resource.Type && subject.ID == resource.ID {
			t.id = unseenResource
		}
	}
	return c.relation(typ, obj, permission, t, 0)
}

func missingOf(o outcome) []string {
	if o.v != schema.Unknown {
		return nil
	}
	return o.missing
}

// validateCheck rejects requests that name things the schema does not have.
func validateCheck(sch *schema.Schema, resource rel.Object, permission string, subject rel.Subject) error {
	if err := rel.ValidateObject(resource); err != nil {
		return fmt.Errorf("resource: %w", err)
	}
	if sch.Definition(resource.Type) == nil {
		return fmt.Errorf("%w: resource type %q is not defined", ErrUnknownType, resource.Type)
	}
	if sch.Relation(resource.Type, permission) == nil {
		return unknownRelationError(resource.Type, permission)
	}
	if err := rel.ValidateSubject(subject); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	if sch.Definition(subject.Type) == nil {
		return fmt.Errorf("%w: subject type %q is not defined", ErrUnknownType, subject.Type)
	}
	if subject.Relation != "" && sch.Relation(subject.Type, subject.Relation) == nil {
		return unknownRelationError(subject.Type, subject.Relation)
	}
	return nil
}

// CheckBulk answers many checks at one revision. Results and errors are
// index-aligned with the requests; one item's error does not fail the others.
func (e *Engine) CheckBulk(ctx context.Context, reqs []CheckRequest) ([]CheckResult, []error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	results := make([]CheckResult, len(reqs))
	errs := make([]error, len(reqs))
	for i, req := range reqs {
		results[i], errs[i] = e.checkLocked(ctx, req)
	}
	return results, errs
}
