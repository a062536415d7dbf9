package engine_test

// TestDelegationProperty checks the engine's agent delegation semantics
// against an independent reference on seeded random schemas and graphs.
//
// The reference walks acts_for relationships from the generated list (never
// the engine's index), evaluates each link's caveat with plain Go logic, and
// takes each chain member's own grant from a plain check: users through the
// engine under test, agents through a second engine whose schema renames
// acts_for so that no type is an agent type there. Decisions combine with
// Kleene three-valued AND.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

var (
	agentPropSeed  = flag.Int64("agentprop.seed", 1, "first seed of TestDelegationProperty; case i uses seed+i")
	agentPropCases = flag.Int("agentprop.cases", 200, "number of random cases TestDelegationProperty runs")
)

// agentPropNow is the engines' clock: expirations are set around it.
var agentPropNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// agentPropPerms are the permission names every resource type defines, so a
// scope caveat's allowed_actions means the same on every type.
var agentPropPerms = []string{"read", "write", "manage"}

const agentPropCaveats = `use expiration

caveat scope(action string, allowed_actions list<string>, task string, allowed_task string) {
  action in allowed_actions && task == allowed_task
}

caveat on_type(resource_type string, resource_id string, allowed_type string, blocked_id string) {
  resource_type == allowed_type && resource_id != blocked_id
}

caveat window(hour int, max_hour int) {
  hour <= max_hour
}
`

// ---- three-valued logic of the reference ----

type propTruth uint8

const (
	propFalse propTruth = iota
	propTrue
	propUnknown
)

// propValue is a three-valued outcome with the parameters whose absence made
// it unknown.
type propValue struct {
	v       propTruth
	missing []string
}

func propAnd(a, b propValue) propValue {
	switch {
	case a.v == propFalse || b.v == propFalse:
		return propValue{v: propFalse}
	case a.v == propTrue:
		return b
	case b.v == propTrue:
		return a
	}
	m := append(append([]string(nil), a.missing...), b.missing...)
	sort.Strings(m)
	return propValue{v: propUnknown, missing: slices.Compact(m)}
}

func (p propValue) decision() engine.Decision {
	switch p.v {
	case propTrue:
		return engine.Allowed
	case propUnknown:
		return engine.Conditional
	}
	return engine.Denied
}

func propFromResult(r engine.CheckResult) propValue {
	switch r.Decision {
	case engine.Allowed:
		return propValue{v: propTrue}
	case engine.Conditional:
		return propValue{v: propUnknown, missing: r.Missing}
	}
	return propValue{v: propFalse}
}

// ---- schema model ----

// propActsForForm is one allowed subject of an acts_for relation.
type propActsForForm struct {
	typ    string
	caveat string // "", "scope" or "on_type"
	exp    bool
}

func (f propActsForForm) String() string {
	switch {
	case f.caveat != "" && f.exp:
		return f.typ + " with " + f.caveat + " and expiration"
	case f.caveat != "":
		return f.typ + " with " + f.caveat
	case f.exp:
		return f.typ + " with expiration"
	}
	return f.typ
}

// propSubjectForm is one allowed subject of a resource or group relation.
type propSubjectForm struct {
	typ      string
	relation string // "member" for group#member
	wildcard bool
	window   bool // caveated with window
}

func (f propSubjectForm) String() string {
	s := f.typ
	switch {
	case f.wildcard:
		s += ":*"
	case f.relation != "":
		s += "#" + f.relation
	}
	if f.window {
		s += " with window"
	}
	return s
}

type propRelation struct {
	name    string
	allowed []propSubjectForm
}

type propResourceType struct {
	name      string
	parent    string // type of the `parent` relation, or ""
	relations []propRelation
	perms     [][2]string // name, expression
}

type propSchema struct {
	agentTypes []string
	// actsFor[agentType] lists the allowed subjects of its acts_for.
	actsFor     map[string][]propActsForForm
	groupMember []propSubjectForm
	resources   []propResourceType
}

// render prints the schema with the delegation relation named actsFor:
// "acts_for" for the engine under test, anything else for the plain engine.
func (s *propSchema) render(actsFor string) string {
	var b strings.Builder
	b.WriteString(agentPropCaveats)
	b.WriteString("\ndefinition user {}\n")
	for _, at := range s.agentTypes {
		forms := make([]string, len(s.actsFor[at]))
		for i, f := range s.actsFor[at] {
			forms[i] = f.String()
		}
		fmt.Fprintf(&b, "\ndefinition %s {\n  relation %s: %s\n}\n", at, actsFor, strings.Join(forms, " | "))
	}
	fmt.Fprintf(&b, "\ndefinition group {\n  relation member: %s\n}\n", propJoinForms(s.groupMember))
	for _, rt := range s.resources {
		fmt.Fprintf(&b, "\ndefinition %s {\n", rt.name)
		if rt.parent != "" {
			fmt.Fprintf(&b, "  relation parent: %s\n", rt.parent)
		}
		for _, r := range rt.relations {
			fmt.Fprintf(&b, "  relation %s: %s\n", r.name, propJoinForms(r.allowed))
		}
		for _, p := range rt.perms {
			fmt.Fprintf(&b, "  permission %s = %s\n", p[0], p[1])
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func propJoinForms(forms []propSubjectForm) string {
	out := make([]string, len(forms))
	for i, f := range forms {
		out[i] = f.String()
	}
	return strings.Join(out, " | ")
}

// ---- one generated case ----

type propCase struct {
	seed     int64
	schema   *propSchema
	text     string // schema of the engine under test
	rels     []rel.Relationship
	maxChain int

	users     []rel.Object
	agents    []rel.Object
	groups    []rel.Object
	resources []rel.Object
	contexts  []map[string]any

	isAgent map[string]bool
	// outgoing acts_for relationships per agent, in generation order.
	actsFor map[rel.Object][]rel.Relationship
	// candidates: objects named by any relationship, per type.
	candidates map[string]map[string]bool

	main, plain *engine.Engine
	grants      map[propGrantKey]propValue
}

type propGrantKey struct {
	member   rel.Object
	resource rel.Object
	perm     string
	ctx      int
}

func propPick[T any](r *rand.Rand, xs []T) T { return xs[r.Intn(len(xs))] }

// propGenSchema draws 2-3 agent types and two resource types (a folder and a
// doc with a parent arrow) whose relations mix users, agents, agent
// wildcards, group usersets and a caveat.
func propGenSchema(r *rand.Rand) *propSchema {
	s := &propSchema{actsFor: map[string][]propActsForForm{}}
	s.agentTypes = []string{"agent", "bot", "svc"}[:2+r.Intn(2)]

	actsForVariants := func(typ string) []propActsForForm {
		all := []propActsForForm{
			{typ: typ}, {typ: typ, caveat: "scope"}, {typ: typ, caveat: "on_type"},
			{typ: typ, exp: true}, {typ: typ, caveat: "scope", exp: true},
		}
		r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		forms := all[:1+r.Intn(3)]
		if r.Intn(4) > 0 && !slices.Contains(forms, propActsForForm{typ: typ}) {
			forms = append(forms, propActsForForm{typ: typ})
		}
		return forms
	}
	for _, at := range s.agentTypes {
		forms := actsForVariants("user")
		for _, target := range s.agentTypes {
			if r.Intn(4) > 0 {
				forms = append(forms, actsForVariants(target)...)
			}
		}
		s.actsFor[at] = forms
	}
	// Sub-agents must be possible somewhere for chains to form.
	first := s.agentTypes[0]
	if !slices.ContainsFunc(s.actsFor[first], func(f propActsForForm) bool { return f.typ != "user" }) {
		s.actsFor[first] = append(s.actsFor[first], propActsForForm{typ: first})
	}

	subjectPool := []propSubjectForm{{typ: "user"}, {typ: "user", wildcard: true}, {typ: "user", window: true}, {typ: "group", relation: "member"}}
	for _, at := range s.agentTypes {
		subjectPool = append(subjectPool, propSubjectForm{typ: at}, propSubjectForm{typ: at, wildcard: true}, propSubjectForm{typ: at, window: true})
	}
	s.groupMember = []propSubjectForm{{typ: "user"}, {typ: "group", relation: "member"}}
	for _, at := range s.agentTypes {
		if r.Intn(2) == 0 {
			s.groupMember = append(s.groupMember, propSubjectForm{typ: at})
		}
	}

	for _, name := range []string{"folder", "doc"} {
		rt := propResourceType{name: name}
		var terms []string
		if name == "doc" {
			rt.parent = "folder"
		}
		for _, rn := range []string{"owner", "editor", "viewer", "blocked"} {
			pool := slices.Clone(subjectPool)
			r.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
			allowed := pool[:1+r.Intn(4)]
			// Agents must be grantable somewhere, or every agent check is a
			// trivial denial.
			if rn == "viewer" {
				for _, at := range s.agentTypes {
					if f := (propSubjectForm{typ: at, wildcard: true}); !slices.Contains(allowed, f) && r.Intn(3) > 0 {
						allowed = append(allowed, f)
					}
				}
			}
			rt.relations = append(rt.relations, propRelation{name: rn, allowed: allowed})
			terms = append(terms, rn)
		}
		for _, p := range agentPropPerms {
			pool := slices.Clone(terms)
			if rt.parent != "" {
				for _, fp := range agentPropPerms {
					pool = append(pool, "parent->"+fp)
				}
			}
			rt.perms = append(rt.perms, [2]string{p, propGenExpr(r, pool)})
			terms = append(terms, p)
		}
		s.resources = append(s.resources, rt)
	}
	return s
}

// propGenExpr builds a union of terms, sometimes intersected with or minus
// another term.
func propGenExpr(r *rand.Rand, terms []string) string {
	pool := slices.Clone(terms)
	r.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	e := strings.Join(pool[:1+r.Intn(min(3, len(pool)))], " + ")
	switch r.Intn(6) {
	case 0:
		e = "(" + e + ") & " + propPick(r, terms)
	case 1:
		e = "(" + e + ") - " + propPick(r, terms)
	}
	return e
}

// propGenCase draws a schema, objects, relationships and request contexts.
func propGenCase(seed int64) *propCase {
	r := rand.New(rand.NewSource(seed))
	s := propGenSchema(r)
	pc := &propCase{seed: seed, schema: s, text: s.render("acts_for"), maxChain: engine.DefaultMaxChain, isAgent: map[string]bool{}}
	if r.Intn(4) == 0 {
		pc.maxChain = 2 + r.Intn(5)
	}
	for i := range 4 {
		pc.users = append(pc.users, rel.Object{Type: "user", ID: fmt.Sprintf("u%d", i)})
	}
	for _, at := range s.agentTypes {
		pc.isAgent[at] = true
		n := 3 + r.Intn(3)
		for i := range n {
			pc.agents = append(pc.agents, rel.Object{Type: at, ID: fmt.Sprintf("%s%d", at[:1], i)})
		}
	}
	for i := range 3 {
		pc.groups = append(pc.groups, rel.Object{Type: "group", ID: fmt.Sprintf("g%d", i)})
	}
	for i := range 2 {
		pc.resources = append(pc.resources, rel.Object{Type: "folder", ID: fmt.Sprintf("f%d", i)})
	}
	for i := range 3 {
		pc.resources = append(pc.resources, rel.Object{Type: "doc", ID: fmt.Sprintf("d%d", i)})
	}

	seen := map[rel.Key]bool{}
	add := func(rl rel.Relationship) {
		if !seen[rl.Key()] {
			seen[rl.Key()] = true
			pc.rels = append(pc.rels, rl)
		}
	}
	subjectFor := func(f propSubjectForm) (rel.Subject, *rel.Caveat) {
		var sub rel.Subject
		switch {
		case f.wildcard:
			sub = rel.Subject{Type: f.typ, ID: rel.Wildcard}
		case f.relation != "":
			g := propPick(r, pc.groups)
			sub = rel.Subject{Type: g.Type, ID: g.ID, Relation: f.relation}
		case f.typ == "user":
			u := propPick(r, pc.users)
			sub = rel.Subject{Type: u.Type, ID: u.ID}
		default:
			var of []rel.Object
			for _, a := range pc.agents {
				if a.Type == f.typ {
					of = append(of, a)
				}
			}
			a := propPick(r, of)
			sub = rel.Subject{Type: a.Type, ID: a.ID}
		}
		if f.window {
			return sub, &rel.Caveat{Name: "window", Context: map[string]any{"max_hour": float64(propPick(r, []int{8, 12}))}}
		}
		return sub, nil
	}

	for _, g := range pc.groups {
		for range 1 + r.Intn(3) {
			sub, cv := subjectFor(propPick(r, s.groupMember))
			add(rel.Relationship{Resource: g, Relation: "member", Subject: sub, Caveat: cv})
		}
	}
	for _, res := range pc.resources {
		rt := s.resources[0]
		if res.Type == "doc" {
			rt = s.resources[1]
			if r.Intn(3) > 0 {
				f := propPick(r, pc.resources[:2])
				add(rel.Relationship{Resource: res, Relation: "parent", Subject: rel.Subject{Type: f.Type, ID: f.ID}})
			}
		}
		for _, rl := range rt.relations {
			for range propPick(r, []int{0, 1, 1, 2, 2, 3}) {
				sub, cv := subjectFor(propPick(r, rl.allowed))
				add(rel.Relationship{Resource: res, Relation: rl.name, Subject: sub, Caveat: cv})
			}
			// Agent wildcards let whole chains hold a grant, so that long
			// chains are allowed often enough to matter.
			if rl.name != "blocked" {
				for _, f := range rl.allowed {
					if f.wildcard && f.typ != "user" && r.Intn(3) > 0 {
						add(rel.Relationship{Resource: res, Relation: rl.name, Subject: rel.Subject{Type: f.typ, ID: rel.Wildcard}})
					}
				}
			}
		}
	}

	// acts_for: mostly one outgoing edge per agent; sometimes a long linear
	// chain, cycles from random agent targets, expired links, agents with
	// no delegation, and a few agents with two principals.
	pc.actsFor = map[rel.Object][]rel.Relationship{}
	link := func(from, to rel.Object) bool {
		var forms []propActsForForm
		for _, f := range s.actsFor[from.Type] {
			if f.typ == to.Type {
				forms = append(forms, f)
			}
		}
		if len(forms) == 0 {
			return false
		}
		f := propPick(r, forms)
		// Favour unconditional links so that most chains resolve.
		if plain := slices.Index(forms, propActsForForm{typ: to.Type}); plain >= 0 && r.Intn(2) == 0 {
			f = forms[plain]
		}
		rl := rel.Relationship{Resource: from, Relation: "acts_for", Subject: rel.Subject{Type: to.Type, ID: to.ID}}
		if seen[rl.Key()] {
			return false
		}
		switch f.caveat {
		case "scope":
			actions := []any{}
			for _, p := range agentPropPerms {
				if r.Intn(4) > 0 {
					actions = append(actions, p)
				}
			}
			rl.Caveat = &rel.Caveat{Name: "scope", Context: map[string]any{"allowed_actions": actions, "allowed_task": propPick(r, []string{"t1", "t1", "t2"})}}
		case "on_type":
			res := propPick(r, pc.resources)
			blocked := "none"
			if r.Intn(2) == 0 {
				blocked = propPick(r, pc.resources).ID
			}
			rl.Caveat = &rel.Caveat{Name: "on_type", Context: map[string]any{"allowed_type": res.Type, "blocked_id": blocked}}
		}
		if f.exp {
			// An expiration at the clock's instant has already expired.
			if r.Intn(4) == 0 {
				rl.Expiration = agentPropNow.Add(-propPick(r, []time.Duration{0, time.Hour}))
			} else {
				rl.Expiration = agentPropNow.Add(propPick(r, []time.Duration{time.Second, 24 * time.Hour}))
			}
		}
		add(rl)
		pc.actsFor[from] = append(pc.actsFor[from], rl)
		return true
	}
	order := slices.Clone(pc.agents)
	r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	if r.Intn(2) == 0 {
		n := min(len(order), 6+r.Intn(6))
		for i := 0; i < n-1; i++ {
			if !link(order[i], order[i+1]) {
				link(order[i], propPick(r, pc.users))
			}
		}
		link(order[n-1], propPick(r, pc.users))
	}
	for _, a := range order {
		if len(pc.actsFor[a]) > 0 {
			continue
		}
		switch x := r.Intn(20); {
		case x < 2: // no delegation
		case x < 9:
			link(a, propPick(r, pc.users))
		case x < 17:
			if !link(a, propPick(r, pc.agents)) {
				link(a, propPick(r, pc.users))
			}
		default: // two principals, directly or through a sub-agent
			link(a, propPick(r, pc.users))
			if r.Intn(2) == 0 {
				link(a, propPick(r, pc.users))
			} else {
				link(a, propPick(r, pc.agents))
			}
		}
	}

	pc.candidates = map[string]map[string]bool{}
	note := func(typ, id string) {
		if id == rel.Wildcard {
			return
		}
		if pc.candidates[typ] == nil {
			pc.candidates[typ] = map[string]bool{}
		}
		pc.candidates[typ][id] = true
	}
	for _, rl := range pc.rels {
		note(rl.Resource.Type, rl.Resource.ID)
		note(rl.Subject.Type, rl.Subject.ID)
	}

	pc.contexts = []map[string]any{nil}
	for range 2 {
		c := map[string]any{}
		if x := r.Intn(3); x > 0 {
			c["task"] = []string{"", "t1", "t2"}[x]
		}
		if r.Intn(2) == 0 {
			c["hour"] = 9
		}
		// Attempts to override engine-supplied parameters must change nothing.
		if r.Intn(3) == 0 {
			c["action"] = propPick(r, append(slices.Clone(agentPropPerms), "bogus"))
		}
		if r.Intn(4) == 0 {
			c["resource_type"] = propPick(r, []string{"doc", "folder"})
			c["resource_id"] = propPick(r, pc.resources).ID
		}
		pc.contexts = append(pc.contexts, c)
	}
	return pc
}

func (pc *propCase) load(ctx context.Context) error {
	clock := engine.WithClock(func() time.Time { return agentPropNow })
	var err error
	if pc.main, err = engine.Load(ctx, pc.text, pc.rels, clock, engine.WithMaxChain(pc.maxChain)); err != nil {
		return fmt.Errorf("loading the engine under test: %w", err)
	}
	// The plain engine: acts_for renamed, so agent types are ordinary types
	// and an agent subject's check is its own grant only.
	plainRels := make([]rel.Relationship, len(pc.rels))
	for i, rl := range pc.rels {
		if rl.Relation == "acts_for" {
			rl.Relation = "acts_for_x"
		}
		plainRels[i] = rl
	}
	if pc.plain, err = engine.Load(ctx, pc.schema.render("acts_for_x"), plainRels, clock); err != nil {
		return fmt.Errorf("loading the plain engine: %w", err)
	}
	pc.grants = map[propGrantKey]propValue{}
	return nil
}

// dump renders everything needed to reproduce a failure.
func (pc *propCase) dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "reproduce with: go test ./engine -run TestDelegationProperty -agentprop.seed=%d -agentprop.cases=1\n", pc.seed)
	fmt.Fprintf(&b, "max chain: %d, clock: %s\n--- schema ---\n%s--- relationships ---\n", pc.maxChain, agentPropNow.Format(time.RFC3339), pc.text)
	for _, rl := range pc.rels {
		b.WriteString(rl.String())
		b.WriteString("\n")
	}
	b.WriteString("--- request contexts ---\n")
	for i, c := range pc.contexts {
		fmt.Fprintf(&b, "%d: %v\n", i, c)
	}
	return b.String()
}

// ---- the reference ----

// grant is a member's own plain grant of perm on res.
func (pc *propCase) grant(ctx context.Context, member, res rel.Object, perm string, ci int) (propValue, error) {
	k := propGrantKey{member, res, perm, ci}
	if v, ok := pc.grants[k]; ok {
		return v, nil
	}
	e := pc.main
	if pc.isAgent[member.Type] {
		e = pc.plain
	}
	out, err := e.Check(ctx, engine.CheckRequest{Resource: res, Permission: perm, Subject: rel.Subject{Type: member.Type, ID: member.ID}, Context: pc.contexts[ci]})
	if err != nil {
		return propValue{}, fmt.Errorf("own grant of %s on %s#%s: %w", member, res, perm, err)
	}
	v := propFromResult(out)
	pc.grants[k] = v
	return v, nil
}

// linkValue evaluates an acts_for relationship's caveat for a check of perm
// on res: the engine supplies action, resource_type and resource_id; task
// comes from the request.
func propLinkValue(rl rel.Relationship, res rel.Object, perm string, reqCtx map[string]any) propValue {
	if rl.Caveat == nil {
		return propValue{v: propTrue}
	}
	c := rl.Caveat.Context
	switch rl.Caveat.Name {
	case "scope":
		allowed := slices.ContainsFunc(c["allowed_actions"].([]any), func(a any) bool { return a == perm })
		if !allowed {
			return propValue{v: propFalse}
		}
		task, ok := reqCtx["task"]
		if !ok {
			return propValue{v: propUnknown, missing: []string{"task"}}
		}
		if task == c["allowed_task"] {
			return propValue{v: propTrue}
		}
		return propValue{v: propFalse}
	case "on_type":
		if res.Type == c["allowed_type"] && res.ID != c["blocked_id"] {
			return propValue{v: propTrue}
		}
		return propValue{v: propFalse}
	}
	panic("unknown caveat " + rl.Caveat.Name)
}

// reachableUsers lists the users any acts_for path from a reaches, live or
// not: the candidates worth naming in on_behalf_of.
func (pc *propCase) reachableUsers(a rel.Object) map[rel.Object]bool {
	out := map[rel.Object]bool{}
	seen := map[rel.Object]bool{a: true}
	queue := []rel.Object{a}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, rl := range pc.actsFor[cur] {
			next := rl.Subject.Object()
			if !pc.isAgent[next.Type] {
				out[next] = true
			} else if !seen[next] {
				seen[next] = true
				queue = append(queue, next)
			}
		}
	}
	return out
}

type propChain struct {
	members []rel.Object
	links   []propValue
}

// chains lists every path of live acts_for links from agent to a non-agent
// principal, within maxChain links and without revisiting a member.
func (pc *propCase) chains(agent, res rel.Object, perm string, ci int) []propChain {
	var out []propChain
	var walk func(path []rel.Object, links []propValue)
	walk = func(path []rel.Object, links []propValue) {
		cur := path[len(path)-1]
		if !pc.isAgent[cur.Type] {
			out = append(out, propChain{members: slices.Clone(path), links: slices.Clone(links)})
			return
		}
		if len(links) >= pc.maxChain {
			return
		}
		for _, rl := range pc.actsFor[cur] {
			if rl.ExpiredAt(agentPropNow) {
				continue
			}
			lv := propLinkValue(rl, res, perm, pc.contexts[ci])
			if lv.v == propFalse {
				continue
			}
			next := rl.Subject.Object()
			if slices.Contains(path, next) {
				continue
			}
			walk(append(path, next), append(links, lv))
		}
	}
	walk([]rel.Object{agent}, nil)
	return out
}

// propExpect is the reference's answer to one delegated check.
type propExpect struct {
	ambiguous bool
	decision  engine.Decision
	// best lists the chains reaching the decision; a result ties to one.
	best    []propChain
	missing [][]string
	// single is the only chain to the principal when there is exactly one,
	// with each member's own grant: its explanation is fully determined.
	single *propChain
	grants []propValue
	// chains counts the chains to the principal (or to the one named).
	chains int
}

func (pc *propCase) expect(ctx context.Context, agent, res rel.Object, perm string, ci int, onBehalfOf *rel.Object) (propExpect, error) {
	all := pc.chains(agent, res, perm, ci)
	var chains []propChain
	principals := map[rel.Object]bool{}
	for _, ch := range all {
		p := ch.members[len(ch.members)-1]
		principals[p] = true
		if onBehalfOf == nil || *onBehalfOf == p {
			chains = append(chains, ch)
		}
	}
	if onBehalfOf == nil && len(principals) > 1 {
		return propExpect{ambiguous: true}, nil
	}
	exp := propExpect{decision: engine.Denied}
	rank := map[engine.Decision]int{engine.Denied: 0, engine.Conditional: 1, engine.Allowed: 2}
	var lastGrants []propValue // the members' own grants of the chain last evaluated
	for _, ch := range chains {
		total := propValue{v: propTrue}
		lastGrants = nil
		for i, m := range ch.members {
			g, err := pc.grant(ctx, m, res, perm, ci)
			if err != nil {
				return propExpect{}, err
			}
			lastGrants = append(lastGrants, g)
			total = propAnd(total, g)
			if i < len(ch.links) {
				total = propAnd(total, ch.links[i])
			}
		}
		d := total.decision()
		switch {
		case len(exp.best) == 0 || rank[d] > rank[exp.decision]:
			exp.decision, exp.best, exp.missing = d, []propChain{ch}, [][]string{total.missing}
		case rank[d] == rank[exp.decision]:
			exp.best = append(exp.best, ch)
			exp.missing = append(exp.missing, total.missing)
		}
	}
	exp.chains = len(chains)
	if len(chains) == 1 {
		exp.single, exp.grants = &chains[0], lastGrants
	}
	if exp.decision == engine.Denied {
		exp.best, exp.missing = nil, nil
	}
	return exp, nil
}

// ---- the test ----

func TestDelegationProperty(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	var checks, lookups atomic.Int64
	// Cases are independent (each has its own engines), so they run in
	// parallel to keep the -race run short.
	t.Run("cases", func(t *testing.T) {
		for i := range *agentPropCases {
			seed := *agentPropSeed + int64(i)
			t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
				t.Parallel()
				pc := propGenCase(seed)
				if err := pc.load(ctx); err != nil {
					t.Fatalf("seed %d: %v\n%s", pc.seed, err, pc.dump())
				}
				c, l, problems := pc.run(ctx)
				checks.Add(int64(c))
				lookups.Add(int64(l))
				if len(problems) > 0 {
					if len(problems) > 15 {
						problems = append(problems[:15], fmt.Sprintf("... and %d more", len(problems)-15))
					}
					t.Fatalf("seed %d: engine and reference disagree:\n  %s\n%s", pc.seed, strings.Join(problems, "\n  "), pc.dump())
				}
			})
		}
	})
	t.Logf("%d cases from seed %d: %d delegated checks, %d lookups in %s", *agentPropCases, *agentPropSeed, checks.Load(), lookups.Load(), time.Since(start).Round(time.Millisecond))
}

type propCheckKey struct {
	agent, res rel.Object
	perm       string
	ctx        int
	obo        rel.Object // zero: no on_behalf_of
}

// run compares checks and lookups of the case with the reference and
// returns the disagreements.
func (pc *propCase) run(ctx context.Context) (checks, lookups int, problems []string) {
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	// Checks and lookups see each request context with a seeded draw: the
	// empty context always, one of the others per query, so that every kind
	// of query meets every kind of context over the run at a fraction of the
	// cost.
	sample := rand.New(rand.NewSource(pc.seed))
	someContext := func() int { return 1 + sample.Intn(len(pc.contexts)-1) }

	memo := map[propCheckKey]propExpect{}
	var refErr error
	expect := func(a, res rel.Object, perm string, ci int, obo *rel.Object) propExpect {
		k := propCheckKey{agent: a, res: res, perm: perm, ctx: ci}
		if obo != nil {
			k.obo = *obo
		}
		if e, ok := memo[k]; ok {
			return e
		}
		e, err := pc.expect(ctx, a, res, perm, ci, obo)
		if err != nil && refErr == nil {
			refErr = err
		}
		memo[k] = e
		return e
	}

	// Agents with several outgoing links are also checked on behalf of each
	// user; a few single-link agents too, where on_behalf_of must be a no-op
	// for the right principal and a denial for any other.
	onBehalfOf := func(a rel.Object) []*rel.Object {
		out := []*rel.Object{nil}
		if len(pc.actsFor[a]) > 1 || (len(pc.actsFor[a]) == 1 && a.ID[len(a.ID)-1] == '0') {
			reach := pc.reachableUsers(a)
			for i := range pc.users {
				if reach[pc.users[i]] {
					out = append(out, &pc.users[i])
				}
			}
			// And one user it does not act for, when there is one.
			for i := range pc.users {
				if !reach[pc.users[i]] {
					out = append(out, &pc.users[i])
					break
				}
			}
		}
		return out
	}

	for _, res := range pc.resources {
		for _, perm := range agentPropPerms {
			for _, a := range pc.agents {
				for _, ci := range []int{0, someContext()} {
					for _, obo := range onBehalfOf(a) {
						want := expect(a, res, perm, ci, obo)
						if refErr != nil {
							problem("reference: %v", refErr)
							return
						}
						checks++
						got, err := pc.main.Check(ctx, engine.CheckRequest{
							Resource: res, Permission: perm, Subject: rel.Subject{Type: a.Type, ID: a.ID},
							Context: pc.contexts[ci], OnBehalfOf: obo, Explain: true,
						})
						if msg := propCompareCheck(a, want, got, err, pc.maxChain, obo); msg != "" {
							problem("check %s#%s@%s context=%v on_behalf_of=%v: %s", res, perm, a, pc.contexts[ci], obo, msg)
						}
					}
				}
			}
		}
	}
	if len(problems) > 0 {
		return
	}

	// LookupResources agrees with Check for every agent, type and permission.
	for _, a := range pc.agents {
		for _, typ := range []string{"folder", "doc"} {
			for _, perm := range agentPropPerms {
				ci := sample.Intn(len(pc.contexts))
				for _, obo := range onBehalfOf(a) {
					lookups++
					got, _, err := pc.main.LookupResources(ctx, engine.LookupResourcesRequest{
						ResourceType: typ, Permission: perm, Subject: rel.Subject{Type: a.Type, ID: a.ID},
						Context: pc.contexts[ci], OnBehalfOf: obo,
					})
					var want []engine.LookupResult
					var missing [][][]string
					ambiguous := false
					for _, res := range pc.resources {
						if res.Type != typ {
							continue
						}
						e := expect(a, res, perm, ci, obo)
						if !pc.candidates[typ][res.ID] {
							// Named by no relationship, so not a lookup
							// candidate: only a denial can be right.
							if !e.ambiguous && e.decision != engine.Denied {
								problem("lookup resources: reference allows %s which no relationship names", res)
							}
							continue
						}
						if e.ambiguous {
							ambiguous = true
						} else if e.decision != engine.Denied {
							want = append(want, engine.LookupResult{ID: res.ID, Decision: e.decision})
							missing = append(missing, e.missing)
						}
					}
					if refErr != nil {
						problem("reference: %v", refErr)
						return
					}
					msg := ""
					switch {
					case ambiguous && !errors.Is(err, engine.ErrAmbiguousAgent):
						msg = fmt.Sprintf("want ErrAmbiguousAgent (a candidate resource has several principals), got %s, %v", propFormatLookup(got), err)
					case ambiguous:
					case err != nil:
						msg = fmt.Sprintf("unexpected error %v", err)
					default:
						msg = propCompareLookup(want, missing, got)
					}
					if msg != "" {
						problem("lookup resources %s#%s@%s context=%v on_behalf_of=%v: %s", typ, perm, a, pc.contexts[ci], obo, msg)
					}
				}
			}
		}
	}

	// LookupSubjects of each agent type agrees with Check per agent: an
	// ambiguous agent holds nothing there, and no wildcard is reported for
	// agents (an agent no relationship names acts for no one).
	for _, res := range pc.resources {
		for _, perm := range agentPropPerms {
			for _, at := range pc.schema.agentTypes {
				ci := sample.Intn(len(pc.contexts))
				lookups++
				got, _, err := pc.main.LookupSubjects(ctx, engine.LookupSubjectsRequest{Resource: res, Permission: perm, SubjectType: at, Context: pc.contexts[ci]})
				var want []engine.LookupResult
				var missing [][][]string
				for _, a := range pc.agents {
					if a.Type != at {
						continue
					}
					e := expect(a, res, perm, ci, nil)
					if !pc.candidates[at][a.ID] {
						if !e.ambiguous && e.decision != engine.Denied {
							problem("lookup subjects: reference allows %s which no relationship names", a)
						}
						continue
					}
					if !e.ambiguous && e.decision != engine.Denied {
						want = append(want, engine.LookupResult{ID: a.ID, Decision: e.decision})
						missing = append(missing, e.missing)
					}
				}
				if refErr != nil {
					problem("reference: %v", refErr)
					return
				}
				msg := ""
				if err != nil {
					msg = fmt.Sprintf("unexpected error %v", err)
				} else if i := slices.IndexFunc(got, func(r engine.LookupResult) bool { return r.ID == rel.Wildcard }); i >= 0 {
					msg = fmt.Sprintf("wildcard result %+v for an agent type", got[i])
				} else {
					msg = propCompareLookup(want, missing, got)
				}
				if msg != "" {
					problem("lookup subjects %s#%s@%s context=%v: %s", res, perm, at, pc.contexts[ci], msg)
				}
			}
		}
	}
	return
}

func propMissingOK(allowed [][]string, got []string) bool {
	for _, m := range allowed {
		if slices.Equal(m, got) {
			return true
		}
	}
	return false
}

func propChainString(members []rel.Object) string {
	parts := make([]string, len(members))
	for i, m := range members {
		parts[i] = m.String()
	}
	return strings.Join(parts, " -> ")
}

// propCompareCheck returns "" when the engine's answer matches the
// reference's, or what differs.
func propCompareCheck(agent rel.Object, want propExpect, got engine.CheckResult, err error, maxChain int, obo *rel.Object) string {
	if want.ambiguous {
		if !errors.Is(err, engine.ErrAmbiguousAgent) {
			return fmt.Sprintf("want ErrAmbiguousAgent, got %v (err %v)", got.Decision, err)
		}
		return ""
	}
	if err != nil {
		return fmt.Sprintf("want %v, got error %v", want.decision, err)
	}
	if got.Decision != want.decision {
		var best []string
		for _, ch := range want.best {
			best = append(best, propChainString(ch.members))
		}
		return fmt.Sprintf("want %v (chains %v), got %v (missing %v, delegation %+v)", want.decision, best, got.Decision, got.Missing, got.Delegation)
	}
	switch {
	case want.decision == engine.Conditional && !propMissingOK(want.missing, got.Missing):
		return fmt.Sprintf("conditional: want missing one of %v, got %v", want.missing, got.Missing)
	case want.decision != engine.Conditional && len(got.Missing) > 0:
		return fmt.Sprintf("%v with missing %v", got.Decision, got.Missing)
	}
	d := got.Delegation
	if d == nil || len(d.Chain) == 0 {
		return "no delegation explanation for an agent subject"
	}
	if d.Chain[0].Subject != agent {
		return fmt.Sprintf("explained chain %s does not start at the agent", d)
	}
	if msg := propCompareExplanation(want, d, maxChain); msg != "" {
		return msg
	}
	if want.decision == engine.Denied {
		return ""
	}
	members := make([]rel.Object, len(d.Chain))
	for i, el := range d.Chain {
		members[i] = el.Subject
	}
	if !slices.ContainsFunc(want.best, func(ch propChain) bool { return slices.Equal(ch.members, members) }) {
		var best []string
		for _, ch := range want.best {
			best = append(best, propChainString(ch.members))
		}
		return fmt.Sprintf("explained chain %s is none of the reference's %v", d, best)
	}
	if len(members)-1 > maxChain {
		return fmt.Sprintf("chain %s is longer than %d links", d, maxChain)
	}
	if obo != nil && members[len(members)-1] != *obo {
		return fmt.Sprintf("chain %s does not end at on_behalf_of %s", d, obo)
	}
	return ""
}

// propCompareExplanation checks the reason, failing element, approval
// hint and per-element outcomes of an explanation against the reference,
// where the reference determines them: a single chain to the principal, or
// no chain at all.
func propCompareExplanation(want propExpect, d *engine.Delegation, maxChain int) string {
	if want.decision == engine.Allowed && (d.Reason != engine.ReasonNone || d.FailedAt != -1 || d.ResolvableByApproval) {
		return fmt.Sprintf("allowed, yet explained as reason %q failed at %d resolvable %v", d.Reason, d.FailedAt, d.ResolvableByApproval)
	}
	if want.chains > 1 {
		return ""
	}
	if want.chains == 0 {
		// No chain resolves: the reason is one of resolution's, at the end
		// of the path walked.
		resolution := []engine.Reason{engine.ReasonNoDelegation, engine.ReasonDelegationExpired, engine.ReasonOutOfScope, engine.ReasonCycle, engine.ReasonChainTooDeep}
		switch {
		case !slices.Contains(resolution, d.Reason):
			return fmt.Sprintf("no chain resolves, yet reason is %q", d.Reason)
		case d.FailedAt != len(d.Chain)-1:
			return fmt.Sprintf("no chain resolves, yet failed at %d of %s", d.FailedAt, d)
		case d.ResolvableByApproval:
			return fmt.Sprintf("no chain resolves, yet resolvable by approval (%s)", d)
		case d.Reason == engine.ReasonChainTooDeep && len(d.Chain)-1 != maxChain:
			return fmt.Sprintf("chain_too_deep after %d links, limit %d", len(d.Chain)-1, maxChain)
		}
		return ""
	}
	ch := want.single
	if len(d.Chain) != len(ch.members) {
		return fmt.Sprintf("explained chain %s, want %s", d, propChainString(ch.members))
	}
	for i, el := range d.Chain {
		link := engine.Allowed
		if i < len(ch.links) {
			link = ch.links[i].decision()
		}
		if el.Subject != ch.members[i] || el.Grant != want.grants[i].decision() || el.Link != link {
			return fmt.Sprintf("chain element %d: %s grant %v link %v, want %s grant %v link %v", i, el.Subject, el.Grant, el.Link, ch.members[i], want.grants[i].decision(), link)
		}
	}
	if want.decision != engine.Denied {
		return ""
	}
	// Links of a resolved chain are never false, so the first false grant
	// fails it.
	last := len(ch.members) - 1
	failed := slices.IndexFunc(want.grants, func(g propValue) bool { return g.v == propFalse })
	reason := engine.ReasonAgentNotGranted
	if failed == last {
		reason = engine.ReasonPrincipalDenied
	}
	resolvable := failed < last && want.grants[last].v == propTrue &&
		!slices.ContainsFunc(ch.links, func(l propValue) bool { return l.v != propTrue })
	if d.Reason != reason || d.FailedAt != failed || d.ResolvableByApproval != resolvable {
		return fmt.Sprintf("explained reason %q failed at %d resolvable %v, want %q at %d resolvable %v (chain %s)", d.Reason, d.FailedAt, d.ResolvableByApproval, reason, failed, resolvable, d)
	}
	return ""
}

func propFormatLookup(rs []engine.LookupResult) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%s:%v%v", r.ID, r.Decision, r.Missing)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// propCompareLookup compares lookup results with the expected IDs and
// decisions; missing[i] lists the acceptable Missing of want[i].
func propCompareLookup(want []engine.LookupResult, missing [][][]string, got []engine.LookupResult) string {
	if len(want) != len(got) {
		return fmt.Sprintf("want %s, got %s", propFormatLookup(want), propFormatLookup(got))
	}
	for i := range want {
		if want[i].ID != got[i].ID || want[i].Decision != got[i].Decision {
			return fmt.Sprintf("want %s, got %s", propFormatLookup(want), propFormatLookup(got))
		}
		if want[i].Decision == engine.Conditional {
			if !propMissingOK(missing[i], got[i].Missing) {
				return fmt.Sprintf("%s: want missing one of %v, got %v", want[i].ID, missing[i], got[i].Missing)
			}
		} else if len(got[i].Missing) > 0 {
			return fmt.Sprintf("%s: allowed with missing %v", got[i].ID, got[i].Missing)
		}
	}
	return ""
}
