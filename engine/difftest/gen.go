package difftest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// Config sizes generated cases. Small ID pools are deliberate: they make
// relationships overlap, nest and form cycles.
type Config struct {
	// MaxDefs bounds the definitions besides user (at least one).
	MaxDefs int
	// MaxRelations and MaxPermissions bound each definition's members.
	MaxRelations   int
	MaxPermissions int
	// MaxExprDepth bounds permission expression nesting.
	MaxExprDepth int
	// Users and IDsPerType size the ID pools.
	Users      int
	IDsPerType int
	// MaxPerSlot bounds relationships written per resource and relation.
	MaxPerSlot int
	// CycleRate is the fraction of cases whose nested-group relations
	// may form cycles (SpiceDB answers most queries over a cycle with a
	// depth error, so cycles cost comparisons).
	CycleRate float64
	// NestedRate is the probability that a definition's first relation
	// is a nested-group relation (user | T#rel0).
	NestedRate float64
	// Query budgets per case; the full cross product is sampled down to
	// these.
	MaxChecks          int
	MaxLookupResources int
	MaxLookupSubjects  int
	// SelfRate weighs `self` among expression leaves (0: never). Off by
	// default: SpiceDB v1.56.1's lookups mishandle self (LookupResources
	// panics with "cannot call HintForEntrypoint for kind
	// SELF_ENTRYPOINT", LookupSubjects returns the resource as a subject
	// of any type), so it cannot serve as the oracle for it.
	SelfRate float64
	// UsersetSubjects makes checks and lookups also start from, and look
	// up, usersets such as group:g0#rel0 (not only objects).
	UsersetSubjects bool
	// ContextRate is the probability that a query carries a request
	// context.
	ContextRate float64
}

// DefaultConfig is the configuration TestDifferential uses.
func DefaultConfig() Config {
	return Config{
		MaxDefs:            3,
		MaxRelations:       3,
		MaxPermissions:     3,
		MaxExprDepth:       3,
		Users:              4,
		IDsPerType:         3,
		MaxPerSlot:         3,
		CycleRate:          0.3,
		NestedRate:         0.3,
		MaxChecks:          120,
		MaxLookupResources: 40,
		MaxLookupSubjects:  40,
		ContextRate:        0.35,
		UsersetSubjects:    true,
	}
}

// Case is one generated scenario: a schema, relationships over small ID
// pools, and the queries to compare.
type Case struct {
	Seed   int64
	Schema *SchemaModel
	Rels   []rel.Relationship
	// Pools lists the object IDs of each type.
	Pools   map[string][]string
	Queries []Query
}

// SchemaText returns the schema source.
func (c *Case) SchemaText() string { return c.Schema.String() }

// RelationshipsText returns the relationships, one per line, in
// validation-file form.
func (c *Case) RelationshipsText() string {
	var b strings.Builder
	for _, r := range c.Rels {
		b.WriteString(r.String())
		b.WriteString("\n")
	}
	return b.String()
}

// Clone copies the case deeply enough for Minimize to edit it.
func (c *Case) Clone() *Case {
	out := &Case{Seed: c.Seed, Schema: c.Schema.Clone(), Pools: c.Pools, Queries: c.Queries}
	out.Rels = make([]rel.Relationship, len(c.Rels))
	for i, r := range c.Rels {
		out.Rels[i] = r.Clone()
	}
	return out
}

// QueryKind says which API a query exercises.
type QueryKind uint8

// Query kinds.
const (
	QueryCheck QueryKind = iota
	QueryLookupResources
	QueryLookupSubjects
)

func (k QueryKind) String() string {
	switch k {
	case QueryCheck:
		return "check"
	case QueryLookupResources:
		return "lookup-resources"
	}
	return "lookup-subjects"
}

// Query is one question put to both systems.
type Query struct {
	Kind QueryKind
	// Resource is checked (QueryCheck) or expanded (QueryLookupSubjects).
	Resource rel.Object
	// ResourceType is looked up (QueryLookupResources).
	ResourceType string
	Permission   string
	// Subject is checked or looked up from (QueryCheck,
	// QueryLookupResources).
	Subject rel.Subject
	// SubjectType and SubjectRelation are looked up (QueryLookupSubjects).
	SubjectType     string
	SubjectRelation string
	// Context is the request's caveat context, or nil.
	Context map[string]any
}

func (q Query) String() string {
	var s string
	switch q.Kind {
	case QueryCheck:
		s = fmt.Sprintf("check %s#%s@%s", q.Resource, q.Permission, q.Subject)
	case QueryLookupResources:
		s = fmt.Sprintf("lookup-resources %s#%s@%s", q.ResourceType, q.Permission, q.Subject)
	case QueryLookupSubjects:
		st := q.SubjectType
		if q.SubjectRelation != "" {
			st += "#" + q.SubjectRelation
		}
		s = fmt.Sprintf("lookup-subjects %s#%s@%s", q.Resource, q.Permission, st)
	}
	if q.Context != nil {
		ctx, _ := json.Marshal(q.Context)
		s += " with " + string(ctx)
	}
	return s
}

// paramPool holds every caveat parameter a case may use. Sharing names and
// types across caveats lets one request context feed several caveats.
var paramPool = []Param{
	{"a", "int"}, {"b", "int"}, {"s", "string"}, {"flag", "bool"},
	{"tags", "list<string>"}, {"nums", "list<int>"},
}

var defNames = []string{"group", "folder", "doc"}

// Past and far-future expirations: never near the present, so both systems
// agree on them whatever their clocks.
var (
	expiredAt = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	futureAt  = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

type gen struct {
	r *rand.Rand
	// shapes draws whether a case gets a fixed shape, apart from r so that
	// cases without one stay what they were.
	shapes *rand.Rand
	cfg    Config
	s      *SchemaModel
}

// Generate builds the case for a seed. It is deterministic: the same seed
// and config give the same case.
func Generate(seed int64, cfg Config) *Case {
	g := &gen{r: rand.New(rand.NewPCG(uint64(seed), 0x6d616e64617465)), shapes: rand.New(rand.NewPCG(uint64(seed), 0x7368617065)), cfg: cfg}
	c := &Case{Seed: seed}
	c.Schema = g.schema()
	c.Pools = g.pools()
	c.Rels = g.relationships(c.Pools)
	c.Queries = g.queries(c)
	return c
}

func (g *gen) chance(p float64) bool { return g.r.Float64() < p }

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// weighted picks an index with probability proportional to its weight.
func weighted(r *rand.Rand, weights []float64) int {
	total := 0.0
	for _, w := range weights {
		total += w
	}
	x := r.Float64() * total
	for i, w := range weights {
		if x < w {
			return i
		}
		x -= w
	}
	return len(weights) - 1
}

func (g *gen) schema() *SchemaModel {
	s := &SchemaModel{}
	g.s = s
	for i := range 1 + g.r.IntN(3) {
		s.Caveats = append(s.Caveats, g.caveat(fmt.Sprintf("cav%d", i)))
	}
	s.Defs = append(s.Defs, &DefModel{Name: "user"})
	n := 1 + g.r.IntN(max(1, g.cfg.MaxDefs))
	names := slices.Clone(defNames)
	g.r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	names = names[:min(n, len(names))]
	sort.Strings(names)
	for _, name := range names {
		d := &DefModel{Name: name}
		for i := range 1 + g.r.IntN(max(1, g.cfg.MaxRelations)) {
			d.Relations = append(d.Relations, &RelationModel{Name: fmt.Sprintf("rel%d", i)})
		}
		for i := range 1 + g.r.IntN(max(1, g.cfg.MaxPermissions)) {
			d.Permissions = append(d.Permissions, &PermissionModel{Name: fmt.Sprintf("perm%d", i)})
		}
		s.Defs = append(s.Defs, d)
	}
	for _, d := range s.Defs[1:] {
		for _, r := range d.Relations {
			r.Allowed = g.allowedTypes()
		}
		if g.shapes.Float64() < 0.15 {
			// A named subject under a caveat beside an unconditional
			// wildcard: LookupSubjects lists it with the caveat's decision
			// although the wildcard covers it (issue 18).
			r := pick(g.r, d.Relations)
			r.Allowed = []AllowedModel{{Type: "user"}, {Type: "user", Wildcard: true}, {Type: "user", Caveat: pick(g.r, s.Caveats).Name}}
		}
		if g.chance(g.cfg.NestedRate) {
			// Nested groups: members are users or members of other
			// objects of the same type.
			member := AllowedModel{Type: d.Name, Relation: d.Relations[0].Name}
			if g.chance(0.3) {
				member.Expiration = true
			}
			d.Relations[0].Allowed = []AllowedModel{{Type: "user"}, member}
		}
	}
	fixWildcards(s)
	for _, d := range s.Defs[1:] {
		for i, p := range d.Permissions {
			p.Expr = g.expr(d, i, 0)
		}
	}
	return s
}

func (g *gen) nonTerminal() []*DefModel { return g.s.Defs[1:] }

func (g *gen) allowedTypes() []AllowedModel {
	var out []AllowedModel
	seen := map[string]bool{}
	for range 1 + g.r.IntN(3) {
		var a AllowedModel
		switch weighted(g.r, []float64{6, 1.5, 2.5, 2}) {
		case 0:
			a = AllowedModel{Type: "user"}
		case 1:
			a = AllowedModel{Type: "user", Wildcard: true}
		case 2:
			a = AllowedModel{Type: pick(g.r, g.nonTerminal()).Name}
		case 3:
			t := pick(g.r, g.nonTerminal())
			a = AllowedModel{Type: t.Name, Relation: pick(g.r, t.Names())}
		}
		switch weighted(g.r, []float64{70, 12, 10, 8}) {
		case 1:
			a.Caveat = pick(g.r, g.s.Caveats).Name
		case 2:
			a.Expiration = true
		case 3:
			a.Caveat = pick(g.r, g.s.Caveats).Name
			a.Expiration = true
		}
		if !seen[a.String()] {
			seen[a.String()] = true
			out = append(out, a)
		}
	}
	return out
}

// fixWildcards drops the allowed usersets SpiceDB rejects: a T#x where the
// relation x reaches a wildcard through relations only.
func fixWildcards(s *SchemaModel) {
	for changed := true; changed; {
		changed = false
		for _, d := range s.Defs {
			for _, r := range d.Relations {
				kept := r.Allowed[:0]
				for _, a := range r.Allowed {
					if a.Relation != "" && refsWildcard(s, a.Type, a.Relation, map[string]bool{}) {
						changed = true
						continue
					}
					kept = append(kept, a)
				}
				r.Allowed = kept
				if len(r.Allowed) == 0 {
					r.Allowed = []AllowedModel{{Type: "user"}}
				}
			}
		}
	}
}

// refsWildcard mirrors SpiceDB's rule: a relation references a wildcard if it
// allows one, or allows a userset over a relation that does. Permissions
// never do.
func refsWildcard(s *SchemaModel, typ, name string, seen map[string]bool) bool {
	key := typ + "#" + name
	if seen[key] {
		return false
	}
	seen[key] = true
	d := s.Def(typ)
	if d == nil {
		return false
	}
	r := d.Relation(name)
	if r == nil {
		return false
	}
	for _, a := range r.Allowed {
		if a.Wildcard {
			return true
		}
		if a.Relation != "" && refsWildcard(s, a.Type, a.Relation, seen) {
			return true
		}
	}
	return false
}

// tuplesets lists the relations of d an arrow may walk: SpiceDB forbids
// arrows over relations that reach a wildcard.
func tuplesets(s *SchemaModel, d *DefModel) []*RelationModel {
	var out []*RelationModel
	for _, r := range d.Relations {
		if !refsWildcard(s, d.Name, r.Name, map[string]bool{}) {
			out = append(out, r)
		}
	}
	return out
}

// arrowTargets lists the names an arrow over r can reach: the members of its
// subject types.
func arrowTargets(s *SchemaModel, r *RelationModel) []string {
	var out []string
	for _, a := range r.Allowed {
		if d := s.Def(a.Type); d != nil {
			for _, n := range d.Names() {
				if !slices.Contains(out, n) {
					out = append(out, n)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// expr generates the expression of permission index pi of d. It references
// only relations and earlier permissions of d directly, so the schema has no
// cycle that data cannot break; arrows may reach anything.
func (g *gen) expr(d *DefModel, pi, depth int) *Expr {
	var e *Expr
	if depth < g.cfg.MaxExprDepth && g.chance(0.55-0.15*float64(depth)) {
		kind := []ExprKind{ExprUnion, ExprIntersect, ExprExclude}[weighted(g.r, []float64{4, 3, 3})]
		n := 2
		if kind != ExprExclude && g.chance(0.3) {
			n = 3
		}
		e = &Expr{Kind: kind}
		for range n {
			e.Children = append(e.Children, g.expr(d, pi, depth+1))
		}
	} else {
		e = g.leaf(d, pi)
	}
	if g.chance(0.08) {
		e.Parens = 1 + g.r.IntN(2)
	}
	return e
}

func (g *gen) leaf(d *DefModel, pi int) *Expr {
	ts := tuplesets(g.s, d)
	weights := []float64{5, 0, 0, 0.4, g.cfg.SelfRate}
	if pi > 0 {
		weights[1] = 2
	}
	if len(ts) > 0 {
		weights[2] = 3.5
	}
	switch weighted(g.r, weights) {
	case 0:
		return &Expr{Kind: ExprRef, Name: pick(g.r, d.Relations).Name}
	case 1:
		return &Expr{Kind: ExprRef, Name: d.Permissions[g.r.IntN(pi)].Name}
	case 2:
		t := pick(g.r, ts)
		targets := arrowTargets(g.s, t)
		name := "rel0" // exists on no subject type: the arrow finds nothing
		if len(targets) > 0 {
			name = pick(g.r, targets)
		}
		kind := []ExprKind{ExprArrow, ExprArrowAny, ExprArrowAll}[weighted(g.r, []float64{6, 2, 2.5})]
		return &Expr{Kind: kind, Tupleset: t.Name, Name: name}
	case 3:
		return &Expr{Kind: ExprNil}
	}
	return &Expr{Kind: ExprSelf}
}

// caveat generates a caveat over 1-3 parameters of the pool, using each.
func (g *gen) caveat(name string) *CaveatModel {
	params := slices.Clone(paramPool)
	g.r.Shuffle(len(params), func(i, j int) { params[i], params[j] = params[j], params[i] })
	params = params[:1+g.r.IntN(3)]
	sort.Slice(params, func(i, j int) bool { return params[i].Name < params[j].Name })
	has := map[string]bool{}
	for _, p := range params {
		has[p.Name] = true
	}
	var atoms []string
	for _, p := range params {
		atoms = append(atoms, g.atom(p, has))
	}
	g.r.Shuffle(len(atoms), func(i, j int) { atoms[i], atoms[j] = atoms[j], atoms[i] })
	expr := atoms[0]
	for _, a := range atoms[1:] {
		op := " && "
		if g.chance(0.45) {
			op = " || "
		}
		if g.chance(0.5) {
			expr = "(" + expr + ")"
		}
		expr = expr + op + a
	}
	if g.chance(0.1) {
		expr = "!(" + expr + ")"
	}
	return &CaveatModel{Name: name, Params: params, Expr: expr}
}

func (g *gen) atom(p Param, has map[string]bool) string {
	k := g.r.IntN(4)
	switch p.Name {
	case "a", "b":
		other := map[string]string{"a": "b", "b": "a"}[p.Name]
		if has[other] && g.chance(0.3) {
			return p.Name + " < " + other
		}
		return fmt.Sprintf("%s %s %d", p.Name, pick(g.r, []string{">", "<=", "==", "!="}), k)
	case "s":
		return pick(g.r, []string{`s == "x"`, `s != "y"`, `s.startsWith("x")`})
	case "flag":
		return pick(g.r, []string{"flag", "!flag"})
	case "tags":
		if has["s"] && g.chance(0.3) {
			return "s in tags"
		}
		return pick(g.r, []string{`"x" in tags`, `tags.size() > 1`})
	case "nums":
		if has["a"] && g.chance(0.3) {
			return "a in nums"
		}
		return pick(g.r, []string{"2 in nums", "nums.size() == 0"})
	}
	panic("difftest: unknown caveat parameter " + p.Name)
}

// value returns a random JSON-shaped value of a parameter type (numbers as
// float64, lists as []any), as a request's structpb context decodes to.
func (g *gen) value(typ string) any {
	switch typ {
	case "int":
		return float64(g.r.IntN(4))
	case "string":
		return pick(g.r, []string{"x", "y", "xy", "z"})
	case "bool":
		return g.chance(0.5)
	case "list<string>":
		out := []any{}
		for range g.r.IntN(3) {
			out = append(out, pick(g.r, []string{"x", "y", "z"}))
		}
		return out
	case "list<int>":
		out := []any{}
		for range g.r.IntN(3) {
			out = append(out, float64(g.r.IntN(4)))
		}
		return out
	}
	panic("difftest: unknown parameter type " + typ)
}

// requestContext returns a context with a random subset of the pool.
func (g *gen) requestContext() map[string]any {
	ctx := map[string]any{}
	for _, p := range paramPool {
		if g.chance(0.5) {
			ctx[p.Name] = g.value(p.Type)
		}
	}
	return ctx
}

func (g *gen) pools() map[string][]string {
	pools := map[string][]string{}
	for i := range max(1, g.cfg.Users) {
		pools["user"] = append(pools["user"], fmt.Sprintf("u%d", i))
	}
	for _, d := range g.nonTerminal() {
		for i := range 1 + g.r.IntN(max(1, g.cfg.IDsPerType)) {
			pools[d.Name] = append(pools[d.Name], fmt.Sprintf("%c%d", d.Name[0], i))
		}
	}
	return pools
}

// relationships writes random relationships. SpiceDB's development engine
// has no memoization: on a cycle with branching it dispatches exponentially
// until its depth limit, for minutes. So the object graph is kept acyclic
// (every edge goes from an object to a lower-ranked one) except, in a
// CycleRate fraction of cases, on cycle-safe relations (see cycleSafe),
// where nested-group cycles stay linear.
func (g *gen) relationships(pools map[string][]string) []rel.Relationship {
	rank := map[rel.Object]int{}
	var objects []rel.Object
	for _, d := range g.nonTerminal() {
		for _, id := range pools[d.Name] {
			objects = append(objects, rel.Object{Type: d.Name, ID: id})
		}
	}
	for i, p := range g.r.Perm(len(objects)) {
		rank[objects[p]] = i + 1 // users keep rank 0, below everything
	}
	cyclic := g.chance(g.cfg.CycleRate)

	var out []rel.Relationship
	seen := map[rel.Key]bool{}
	caveats := map[string]*CaveatModel{}
	for _, c := range g.s.Caveats {
		caveats[c.Name] = c
	}
	for _, d := range g.nonTerminal() {
		for _, r := range d.Relations {
			safe := cyclic && cycleSafe(g.s, d, r)
			for _, id := range pools[d.Name] {
				resource := rel.Object{Type: d.Name, ID: id}
				usersets := 0
				for range g.r.IntN(g.cfg.MaxPerSlot + 1) {
					a := pick(g.r, r.Allowed)
					sub := rel.Subject{Type: a.Type, Relation: a.Relation}
					switch {
					case a.Wildcard:
						sub.ID = rel.Wildcard
					case a.Type == "user":
						sub.ID = pick(g.r, pools[a.Type])
					case safe:
						// Only the self userset, at most once per
						// object: a cycle through it is a simple loop.
						if a.Relation != r.Name || a.Type != d.Name || usersets > 0 {
							continue
						}
						usersets++
						sub.ID = pick(g.r, pools[a.Type])
					default:
						var lower []string
						for _, sid := range pools[a.Type] {
							if rank[rel.Object{Type: a.Type, ID: sid}] < rank[resource] {
								lower = append(lower, sid)
							}
						}
						if len(lower) == 0 {
							continue
						}
						sub.ID = pick(g.r, lower)
					}
					x := rel.Relationship{Resource: resource, Relation: r.Name, Subject: sub}
					if seen[x.Key()] {
						continue
					}
					seen[x.Key()] = true
					if a.Caveat != "" {
						x.Caveat = &rel.Caveat{Name: a.Caveat, Context: g.relationshipContext(caveats[a.Caveat])}
					}
					if a.Expiration {
						x.Expiration = futureAt
						if g.chance(0.35) {
							x.Expiration = expiredAt
						}
					}
					out = append(out, x)
				}
			}
		}
	}
	return out
}

// cycleSafe reports whether relationships of r may form cycles that SpiceDB
// walks linearly: r allows its own userset (T#r, nested groups) and no arrow
// walks r (an arrow would re-enter permissions, which branch). No .all()
// may appear anywhere either: when a branch of .all() fails (as a cycle
// does, with a depth error) SpiceDB v1.56.1 never schedules its siblings and
// waits until the request is cancelled.
func cycleSafe(s *SchemaModel, d *DefModel, r *RelationModel) bool {
	for _, od := range s.Defs {
		for _, p := range od.Permissions {
			all := false
			p.Expr.walk(func(e *Expr) { all = all || e.Kind == ExprArrowAll })
			if all {
				return false
			}
		}
	}
	self := false
	for _, a := range r.Allowed {
		if a.Type == d.Name && a.Relation == r.Name {
			self = true
		}
	}
	if !self {
		return false
	}
	for _, p := range d.Permissions {
		walked := false
		p.Expr.walk(func(e *Expr) {
			if e.Tupleset == r.Name {
				walked = true
			}
		})
		if walked {
			return false
		}
	}
	return true
}

// relationshipContext writes none, some or all of a caveat's parameters.
func (g *gen) relationshipContext(c *CaveatModel) map[string]any {
	switch weighted(g.r, []float64{4, 3, 3}) {
	case 0:
		return nil
	case 1:
		ctx := map[string]any{}
		for _, p := range c.Params {
			if g.chance(0.5) {
				ctx[p.Name] = g.value(p.Type)
			}
		}
		if len(ctx) == 0 {
			return nil
		}
		return ctx
	}
	ctx := map[string]any{}
	for _, p := range c.Params {
		ctx[p.Name] = g.value(p.Type)
	}
	return ctx
}

// subjects lists the subjects checks and resource lookups start from: every
// user, one object of each other type, and one userset of each userset type
// the schema allows.
func (g *gen) subjects(c *Case) []rel.Subject {
	var out []rel.Subject
	for _, id := range c.Pools["user"] {
		out = append(out, rel.Subject{Type: "user", ID: id})
	}
	for _, d := range g.nonTerminal() {
		out = append(out, rel.Subject{Type: d.Name, ID: pick(g.r, c.Pools[d.Name])})
	}
	if g.cfg.UsersetSubjects {
		for _, st := range usersetTypes(c.Schema) {
			typ, relation, _ := strings.Cut(st, "#")
			out = append(out, rel.Subject{Type: typ, ID: pick(g.r, c.Pools[typ]), Relation: relation})
		}
	}
	return out
}

// usersetTypes lists the distinct T#x allowed anywhere in the schema.
func usersetTypes(s *SchemaModel) []string {
	var out []string
	for _, d := range s.Defs {
		for _, r := range d.Relations {
			for _, a := range r.Allowed {
				if a.Relation != "" && !slices.Contains(out, a.Type+"#"+a.Relation) {
					out = append(out, a.Type+"#"+a.Relation)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func (g *gen) queries(c *Case) []Query {
	subjects := g.subjects(c)
	var checks, lrs, lss []Query
	for _, d := range g.nonTerminal() {
		for _, name := range d.Names() {
			for _, s := range subjects {
				lrs = append(lrs, Query{Kind: QueryLookupResources, ResourceType: d.Name, Permission: name, Subject: s})
			}
			for _, id := range c.Pools[d.Name] {
				obj := rel.Object{Type: d.Name, ID: id}
				for _, s := range subjects {
					checks = append(checks, Query{Kind: QueryCheck, Resource: obj, Permission: name, Subject: s})
				}
				lss = append(lss, Query{Kind: QueryLookupSubjects, Resource: obj, Permission: name, SubjectType: "user"})
				for _, t := range g.nonTerminal() {
					lss = append(lss, Query{Kind: QueryLookupSubjects, Resource: obj, Permission: name, SubjectType: t.Name})
				}
				for _, st := range usersetTypes(c.Schema) {
					if !g.cfg.UsersetSubjects {
						break
					}
					typ, relation, _ := strings.Cut(st, "#")
					lss = append(lss, Query{Kind: QueryLookupSubjects, Resource: obj, Permission: name, SubjectType: typ, SubjectRelation: relation})
				}
			}
		}
	}
	var out []Query
	for _, qs := range []struct {
		list []Query
		max  int
	}{{checks, g.cfg.MaxChecks}, {lrs, g.cfg.MaxLookupResources}, {lss, g.cfg.MaxLookupSubjects}} {
		list := qs.list
		if len(list) > qs.max {
			g.r.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
			list = list[:qs.max]
		}
		out = append(out, list...)
	}
	for i := range out {
		if g.chance(g.cfg.ContextRate) {
			out[i].Context = g.requestContext()
		}
	}
	return out
}
