package engine

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"time"

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

// mergeMissing returns the sorted union of two parameter lists; it never
// modifies either, so outcomes may share them.
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

// target is the subject a check looks for, interned: its type, its ID
// within that type (unknownID when no relationship names it, so only
// wildcards match) and its relation (noSym for an object).
type target struct {
	typ sym
	id  oid
	rel sym
}

// frame is a (relation, object) under evaluation, for cycle detection.
type frame struct {
	rp  *relPlan
	obj oid
}

// checker evaluates requests at one revision. It is not shared between
// goroutines; engines pool them.
type checker struct {
	idx *index
	pl  *plan
	rev store.Revision
	// now is the time expiration is decided at, read from clock on first
	// need (most checks meet no expiring edge).
	now      int64
	nowSet   bool
	clock    func() time.Time
	maxDepth int
	maxChain int
	ctx      map[string]any
	// evalCtx bounds caveat evaluation (nil: unbounded but for the cost
	// limit); maxContextBytes bounds ctx, checked once per context.
	evalCtx         context.Context
	maxContextBytes int
	ctxChecked      bool
	// req is the request being evaluated, held here so that it does not
	// escape to the heap per call.
	req CheckRequest
	// supplied holds engine-provided caveat parameters for acts_for links,
	// built on first use from suppliedFor.
	supplied    map[string]any
	suppliedFor *CheckRequest
	// ctxConv and suppliedConv hold ctx and supplied converted per caveat;
	// reset whenever those change.
	ctxConv      []convEntry
	suppliedConv []convEntry
	stack        []frame
	// namedStack is nameOf's cycle detection (named.go).
	namedStack []frame

	// memo holds subproblems solved for earlier items of the same call
	// (CheckBulk, lookups); useMemo says whether the current item reads and
	// writes it, under key group.
	memo    memoTable
	useMemo bool
	group   uint32
	// cuts counts cycle cuts. An entry is stored only when its subtree made
	// none, and read only while the current item has made none: then the
	// evaluation that stored it followed exactly the path a fresh one would.
	cuts     int
	itemCuts int
	// reach is the deepest depth reached so far, for memo heights.
	reach int

	// ov is the request's contextual relationships (contextual.go); nil
	// for most requests.
	ov *overlay

	// walk is a lookup's reverse walk (walk.go), reused between requests.
	walk lookupWalk

	// chain resolution buffers, reused between requests.
	pathBuf []chainMember
	linkBuf []outcome
}

func (e *Engine) getChecker(rev store.Revision, p *plan) *checker {
	c, _ := e.checkers.Get().(*checker)
	if c == nil {
		c = &checker{}
	}
	c.idx, c.pl, c.rev, c.clock, c.maxDepth, c.maxChain = e.idx, p, rev, e.now, e.maxDepth, e.maxChain
	c.maxContextBytes = e.maxContextBytes
	return c
}

// nowMicros returns the time expiration is decided at.
func (c *checker) nowMicros() int64 {
	if !c.nowSet {
		c.now, c.nowSet = c.clock().UnixMicro(), true
	}
	return c.now
}

func (e *Engine) putChecker(c *checker) {
	c.idx, c.pl, c.ov = nil, nil, nil
	c.resetConverted()
	c.req, c.now, c.nowSet = CheckRequest{}, 0, false
	c.evalCtx = nil
	c.memo.reset()
	c.useMemo, c.group = false, 0
	c.cuts, c.itemCuts, c.reach = 0, 0, 0
	c.stack = c.stack[:0]
	c.namedStack = c.namedStack[:0]
	clear(c.pathBuf)
	c.pathBuf = c.pathBuf[:0]
	c.linkBuf = c.linkBuf[:0]
	e.checkers.Put(c)
}

// setContext sets the request's caveat context.
func (c *checker) setContext(ctx map[string]any) {
	c.ctx, c.ctxChecked = ctx, false
	clear(c.ctxConv)
	c.ctxConv = c.ctxConv[:0]
}

// setSupplied sets (or, with nil, clears) the request whose action and
// resource acts_for caveats are evaluated against.
func (c *checker) setSupplied(req *CheckRequest) {
	c.supplied, c.suppliedFor = nil, req
	clear(c.suppliedConv)
	c.suppliedConv = c.suppliedConv[:0]
}

// resetConverted clears the caveat context, the supplied parameters and
// their conversions.
func (c *checker) resetConverted() {
	c.setContext(nil)
	c.setSupplied(nil)
}

func (c *checker) live(e *edge) bool {
	if at := c.idx.edgeRev(c.rev); e.created > at || at >= e.deleted {
		return false
	}
	if e.extra != 0 {
		if x := c.extra(e.extra).expires; x != 0 && c.nowMicros() >= x {
			return false
		}
	}
	return true
}

// relation evaluates relation or permission rp of object obj for subject t.
// shared marks a subproblem other items may share (reached through an arrow
// or a userset): only those are memoized.
func (c *checker) relation(rp *relPlan, obj oid, t target, depth int, shared bool) (outcome, error) {
	if rp == nil {
		// The type has no such relation: nothing holds it.
		return outFalse, nil
	}
	// A userset is a member of itself.
	if t.typ == rp.typ.sym && t.id == obj && t.rel == rp.sym {
		return outTrue, nil
	}
	kind := subjectKind(t.rel, t.typ)
	if !rp.reaches(kind) {
		// No path the schema allows leads to a subject of this kind.
		return outFalse, nil
	}
	if depth > c.maxDepth {
		return outFalse, fmt.Errorf("%w (%d) at %s:%s#%s", ErrMaxDepth, c.maxDepth, rp.typ.name, c.objectName(rp.typ, obj), rp.name)
	}
	if depth > c.reach {
		c.reach = depth
	}
	f := frame{rp, obj}
	for _, s := range c.stack {
		if s == f {
			// Re-entering the same question on one path adds nothing: the
			// least fixed point does not hold through the cycle.
			c.cuts++
			return outFalse, nil
		}
	}
	memo := shared && c.useMemo && obj < unseenResource && t.id < unseenResource
	var key memoKey
	if memo {
		key = memoKey{rp: rp, obj: obj, t: t, group: c.group}
		if c.cuts == c.itemCuts {
			if m, ok := c.memo.get(key); ok && depth+int(m.height) <= c.maxDepth {
				c.reach = max(c.reach, depth+int(m.height))
				return m.out, nil
			}
		}
	}
	c.stack = append(c.stack, f)
	cuts, reach := c.cuts, c.reach
	c.reach = depth
	var o outcome
	var err error
	if rp.rewrite != nil {
		o, err = c.rewrite(rp.typ.sym, obj, rp.rewrite, t, depth)
	} else {
		o, err = c.direct(rp, obj, t, depth)
	}
	c.stack = c.stack[:len(c.stack)-1]
	height := c.reach - depth
	c.reach = max(reach, c.reach)
	if memo && err == nil && c.cuts == cuts {
		c.memo.put(key, memoEntry{out: o, height: int32(height)})
	}
	return o, err
}

func (c *checker) objectName(tp *typePlan, obj oid) string {
	if int(obj) < len(tp.table.names) || local(obj) {
		return c.ov.name(tp.table, obj)
	}
	return "(unseen)"
}

// edgeRun is the OR of the caveats of the live edges to subject (kind, id):
// several versions of one relationship may be live with different caveats
// and expirations.
func (c *checker) edgeRun(edges []edge, kind uint64, id oid) (outcome, error) {
	result := outFalse
	for i := find(edges, kind, id); i < len(edges); i++ {
		e := &edges[i]
		if e.kind != kind || e.subjID != id {
			break
		}
		if !c.live(e) {
			continue
		}
		o, err := c.caveat(e)
		if err != nil {
			return outFalse, err
		}
		if result = or(result, o); result.v == schema.True {
			break
		}
	}
	return result, nil
}

// direct evaluates a stored relation: the subject itself, a wildcard of its
// type, or a userset that contains it.
func (c *checker) direct(rp *relPlan, obj oid, t target, depth int) (outcome, error) {
	edges := c.edges(rp.table, obj)
	if len(edges) == 0 {
		return outFalse, nil
	}
	result := outFalse
	// Exact subject.
	kind := subjectKind(t.rel, t.typ)
	// A wildcard subject (user:*) is found among the wildcard edges.
	if t.id != unknownID && (slices.Contains(rp.kinds, kind) || t.id == wildcardID && t.rel == noSym && slices.Contains(rp.wildcards, t.typ)) {
		o, err := c.edgeRun(edges, kind, t.id)
		if err != nil {
			return outFalse, err
		}
		if result = or(result, o); result.v == schema.True {
			return result, nil
		}
	}
	// Wildcard of the subject's type, for subjects that are objects.
	if t.rel == noSym && t.id != wildcardID && slices.Contains(rp.wildcards, t.typ) {
		// kind is the plain kind of the subject's type here.
		o, err := c.edgeRun(edges, kind, wildcardID)
		if err != nil {
			return outFalse, err
		}
		if result = or(result, o); result.v == schema.True {
			return result, nil
		}
	}
	// Usersets: edges whose subject carries a relation, sorted last.
	if !rp.usersets || !rp.usersetReaches(kind) {
		return result, nil
	}
	for i := firstUserset(edges); i < len(edges); i++ {
		e := &edges[i]
		if !c.live(e) {
			continue
		}
		if sub := c.pl.rel(e.subjType(), e.subjRel()); sub == nil || !sub.reaches(kind) {
			// Skip the whole run of this userset kind: none can hold t.
			for i+1 < len(edges) && edges[i+1].kind == e.kind {
				i++
			}
			continue
		}
		o, err := c.caveat(e)
		if err != nil {
			return outFalse, err
		}
		if o.v == schema.False {
			continue
		}
		sub, err := c.relation(c.pl.rel(e.subjType(), e.subjRel()), e.subjID, t, depth+1, true)
		if err != nil {
			return outFalse, err
		}
		if result = or(result, and(o, sub)); result.v == schema.True {
			return result, nil
		}
	}
	return result, nil
}

func (c *checker) rewrite(typ sym, obj oid, n *node, t target, depth int) (outcome, error) {
	switch n.op {
	case schema.OpUnion:
		result := outFalse
		for _, child := range n.children {
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
		for _, child := range n.children {
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
		result, err := c.rewrite(typ, obj, n.children[0], t, depth)
		if err != nil || result.v == schema.False {
			return result, err
		}
		for _, child := range n.children[1:] {
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
		return c.relation(n.rel, obj, t, depth+1, false)
	case schema.OpArrow:
		return c.arrow(obj, n, t, depth, false)
	case schema.OpArrowAll:
		return c.arrow(obj, n, t, depth, true)
	case schema.OpNil:
		return outFalse, nil
	case schema.OpSelf:
		if t.typ == typ && t.id == obj && t.rel == noSym {
			return outTrue, nil
		}
		return outFalse, nil
	}
	return outFalse, fmt.Errorf("unknown rewrite operation %v", n.op)
}

// arrow follows the tupleset relation to each subject object and evaluates
// the target relation there; all requires it on every such subject.
func (c *checker) arrow(obj oid, n *node, t target, depth int, all bool) (outcome, error) {
	var edges []edge
	if n.tupleset != nil {
		edges = c.edges(n.tupleset, obj)
	}
	result := outFalse
	if all {
		result = outTrue
	}
	found := false
	for i := range edges {
		e := &edges[i]
		if !c.live(e) {
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
		var rp *relPlan
		if st := e.subjType(); int(st) < len(n.targets) {
			rp = n.targets[st]
		}
		sub, err := c.relation(rp, e.subjID, t, depth+1, true)
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
	rev, p, err := e.planFor(req.Revision)
	if err != nil {
		return CheckResult{}, err
	}
	c := e.getChecker(rev, p)
	defer e.putChecker(c)
	if c.ov, err = e.overlayFor(p, req.Contextual); err != nil {
		return CheckResult{}, err
	}
	c.req = req
	return c.check(ctx)
}

// overlayFor lays a request's contextual relationships over the index, or
// returns nil when it has none. Callers hold e.mu.
func (e *Engine) overlayFor(p *plan, rels []rel.Relationship) (*overlay, error) {
	if len(rels) == 0 {
		return nil, nil
	}
	return newOverlay(e.idx, p, rels)
}

// planFor resolves the revision to answer at and the schema in force there.
// Callers hold e.mu.
func (e *Engine) planFor(rev store.Revision) (store.Revision, *plan, error) {
	rev, err := e.resolveRevision(rev)
	if err != nil {
		return 0, nil, err
	}
	p := e.idx.planAt(rev)
	if p == nil {
		return 0, nil, ErrNoSchema
	}
	return rev, p, nil
}

// checkSpec is a validated check, resolved against the plan.
type checkSpec struct {
	req     *CheckRequest // the checker's req
	resType *typePlan
	perm    *relPlan
	subType *typePlan
	t       target
	agent   bool
}

// prepare validates c.req and resolves its names. The resource ID is
// resolved separately (lookups vary it).
func (c *checker) prepare(validateResource bool) (checkSpec, error) {
	req := &c.req
	resType, perm, subType, err := validateCheck(c.pl, req.Resource, req.Permission, req.Subject, validateResource)
	if err != nil {
		return checkSpec{}, err
	}
	s := checkSpec{req: req, resType: resType, perm: perm, subType: subType}
	s.t = target{typ: subType.sym, id: unknownID}
	if id, ok := c.ov.lookup(subType.table, subType.sym, req.Subject.ID); ok {
		s.t.id = id
	}
	if req.Subject.Relation != "" {
		s.t.rel = subType.rels[req.Subject.Relation].sym
	}
	s.agent = subType.isAgent && req.Subject.Relation == "" && !req.Subject.IsWildcard()
	if !s.agent && req.OnBehalfOf != nil {
		return checkSpec{}, fmt.Errorf("%w: %s is not an agent; on_behalf_of applies only to agent subjects", ErrInvalidOnBehalfOf, req.Subject)
	}
	return s, nil
}

// check evaluates c.req.
func (c *checker) check(ctx context.Context) (CheckResult, error) {
	req := &c.req
	s, err := c.prepare(true)
	if err != nil {
		return CheckResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return CheckResult{}, err
	}
	c.setContext(req.Context)
	if err := c.checkContextSize(); err != nil {
		return CheckResult{}, err
	}
	c.evalCtx = ctx
	obj, ok := c.ov.lookup(s.resType.table, s.resType.sym, req.Resource.ID)
	if !ok {
		obj = unseenResource
	}
	return c.evaluate(&s, obj)
}

// evaluate answers a prepared check for resource obj (whose ID is
// s.req.Resource.ID).
func (c *checker) evaluate(s *checkSpec, obj oid) (CheckResult, error) {
	c.itemCuts = c.cuts
	if s.agent {
		return c.checkDelegated(s, obj)
	}
	o, err := c.checkObject(s, obj, s.t, s.req.Subject.Type == s.req.Resource.Type && s.req.Subject.ID == s.req.Resource.ID)
	if err != nil {
		return CheckResult{}, err
	}
	return CheckResult{Decision: o.decision(), Missing: missingOf(o), Revision: c.rev}, nil
}

// checkObject evaluates one plain (non-delegated) check; sameObject says the
// subject names the resource itself.
func (c *checker) checkObject(s *checkSpec, obj oid, t target, sameObject bool) (outcome, error) {
	if obj == unseenResource && sameObject {
		// An unseen resource still answers for itself: as a userset subject
		// (resource#rel is a member of resource#rel) and through `self`.
		t.id = unseenResource
	}
	return c.relation(s.perm, obj, t, 0, false)
}

// missingOf returns an outcome's missing parameters for a result, copied:
// memoized outcomes share their lists.
func missingOf(o outcome) []string {
	if o.v != schema.Unknown || len(o.missing) == 0 {
		return nil
	}
	return slices.Clone(o.missing)
}

// validateCheck rejects requests that name things the schema does not have,
// and returns the resource type, the permission and the subject type.
func validateCheck(p *plan, resource rel.Object, permission string, subject rel.Subject, validateResource bool) (*typePlan, *relPlan, *typePlan, error) {
	if validateResource {
		if err := rel.ValidateObject(resource); err != nil {
			return nil, nil, nil, fmt.Errorf("resource: %w", err)
		}
	}
	resType := p.types[resource.Type]
	if resType == nil {
		return nil, nil, nil, fmt.Errorf("%w: resource type %q is not defined", ErrUnknownType, resource.Type)
	}
	perm := resType.rels[permission]
	if perm == nil {
		return nil, nil, nil, unknownRelationError(resource.Type, permission)
	}
	if err := rel.ValidateSubject(subject); err != nil {
		return nil, nil, nil, fmt.Errorf("subject: %w", err)
	}
	subType := p.types[subject.Type]
	if subType == nil {
		return nil, nil, nil, fmt.Errorf("%w: subject type %q is not defined", ErrUnknownType, subject.Type)
	}
	if subject.Relation != "" && subType.rels[subject.Relation] == nil {
		return nil, nil, nil, unknownRelationError(subject.Type, subject.Relation)
	}
	return resType, perm, subType, nil
}

// CheckBulk answers many checks at one revision. Results and errors are
// index-aligned with the requests; one item's error does not fail the others.
// Items that share a subject, revision and caveat context share the
// subproblems they solve (a folder's viewers, a group's members).
func (e *Engine) CheckBulk(ctx context.Context, reqs []CheckRequest) ([]CheckResult, []error) {
	results := make([]CheckResult, len(reqs))
	errs := make([]error, len(reqs))
	now := e.now().UnixMicro()
	e.mu.RLock()
	defer e.mu.RUnlock()

	// Only items whose subject recurs can share anything.
	subjects := make(map[rel.Subject]int, len(reqs))
	for i := range reqs {
		subjects[reqs[i].Subject]++
	}
	var groups []bulkGroup
	c := e.getChecker(0, nil)
	defer e.putChecker(c)
	// Items share one time, as they may share subproblems.
	c.now, c.nowSet = now, true
	// Items usually share one list of contextual relationships: its overlay
	// is built once per plan.
	var ov *overlay
	for i := range reqs {
		req := &reqs[i]
		rev, p, err := e.planFor(req.Revision)
		if err != nil {
			errs[i] = err
			continue
		}
		if len(req.Contextual) == 0 {
			c.ov = nil
		} else if ov == nil || ov.plan != p || !sameSlice(ov.rels, req.Contextual) {
			if ov, err = newOverlay(e.idx, p, req.Contextual); err != nil {
				errs[i] = err
				continue
			}
			c.ov = ov
		} else {
			c.ov = ov
		}
		// A group fixes the revision, hence the plan, and the overlay of its
		// entries.
		c.rev, c.pl, c.useMemo = rev, p, false
		if subjects[req.Subject] > 1 {
			c.group, c.useMemo = groupOf(&groups, rev, c.ov, req.Context)
		}
		c.req = *req
		results[i], errs[i] = c.check(ctx)
	}
	return results, errs
}

// bulkGroup is a (revision, caveat context) pair whose items may share
// memoized subproblems.
type bulkGroup struct {
	rev store.Revision
	ov  *overlay
	ctx map[string]any
}

// maxBulkGroups bounds the distinct contexts compared per CheckBulk.
const maxBulkGroups = 16

// groupOf returns the group of items at rev with context ctx, adding one;
// ok is false past maxBulkGroups.
func groupOf(groups *[]bulkGroup, rev store.Revision, ov *overlay, ctx map[string]any) (uint32, bool) {
	for i, g := range *groups {
		if g.rev == rev && g.ov == ov && (len(g.ctx) == 0 && len(ctx) == 0 || reflect.DeepEqual(g.ctx, ctx)) {
			return uint32(i), true
		}
	}
	if len(*groups) >= maxBulkGroups {
		return 0, false
	}
	*groups = append(*groups, bulkGroup{rev: rev, ov: ov, ctx: ctx})
	return uint32(len(*groups) - 1), true
}
