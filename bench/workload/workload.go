// Package workload generates the seeded benchmark workload of issue 7: users
// in nested groups, a folder tree, documents with owners, viewers and folder
// inheritance, and agents acting for users through scoped 2-link delegation
// chains; the checks and lookups to ask about them; and the same model as a
// SpiceDB schema, a Mandate schema (the SpiceDB one plus agents) and an
// OpenFGA model. The same Config always yields the same workload.
package workload

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mandate-authz/mandate/store/rel"
)

// Config sizes the workload. DefaultConfig is the shape.
type Config struct {
	Seed      uint64
	Users     int
	Groups    int
	Folders   int
	Documents int
	// Agents is the number of 2-link chains: agent:sN acts for agent:pN,
	// which acts for a user (Mandate only).
	Agents int
	// Checks is the size of the pool of document#view checks by users;
	// AgentChecks the pool of checks by agents; Lookups the number of
	// distinct users whose viewable documents are looked up.
	Checks      int
	AgentChecks int
	Lookups     int
}

// DefaultConfig is the workload: 10k users, 1k nested groups, a
// 10k-folder tree and 100k documents, about 300k relationships.
func DefaultConfig() Config {
	return Config{
		Seed: 1, Users: 10_000, Groups: 1_000, Folders: 10_000, Documents: 100_000,
		Agents: 1_000, Checks: 100_000, AgentChecks: 20_000, Lookups: 1_000,
	}
}

// Validate reports the first size that cannot produce a workload.
func (c Config) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{
		{"users", c.Users}, {"groups", c.Groups}, {"folders", c.Folders}, {"documents", c.Documents},
		{"agents", c.Agents}, {"checks", c.Checks}, {"agent-checks", c.AgentChecks}, {"lookups", c.Lookups},
	} {
		if f.v < 1 {
			return fmt.Errorf("workload: %s is %d; expected at least 1", f.name, f.v)
		}
	}
	return nil
}

// CheckKind says how a check's subject was chosen.
type CheckKind uint8

const (
	// Owner: the subject owns the document (allowed).
	Owner CheckKind = iota
	// GroupMember: the subject is a (possibly nested) member of a group
	// that may view the document (allowed).
	GroupMember
	// RandomUser: any user (mostly denied).
	RandomUser
)

func (k CheckKind) String() string {
	switch k {
	case Owner:
		return "owner"
	case GroupMember:
		return "group-member"
	}
	return "random"
}

// Check asks whether Subject may view Resource (document#view).
type Check struct {
	Resource rel.Object
	Subject  rel.Object
	Kind     CheckKind
}

func (c Check) String() string {
	return c.Resource.String() + "#" + Permission + "@" + c.Subject.String()
}

// AgentCheck is a check made by a sub-agent through its 2-link chain
// (agent:sN -> agent:pN -> user). Principal is the chain's user and
// ScopeAllows whether both links' delegation scopes allow viewing
// documents, so the expected answer is ScopeAllows && (Principal may view).
type AgentCheck struct {
	Check
	Principal   rel.Object
	ScopeAllows bool
}

// Names of the model's types and the permission checked.
const (
	DocumentType = "document"
	UserType     = "user"
	AgentType    = "agent"
	Permission   = "view"
)

// Workload is everything one run needs.
type Workload struct {
	Config Config
	// Rels are the relationships every engine loads; AgentRels are the
	// Mandate-only delegations and agent grants.
	Rels      []rel.Relationship
	AgentRels []rel.Relationship
	// Checks is the pool of user checks, AgentChecks of agent checks,
	// LookupUsers the subjects of LookupResources(document#view).
	Checks      []Check
	AgentChecks []AgentCheck
	LookupUsers []rel.Object

	rand       *rand.Rand // the generator, after the relationships and checks
	owner      []int32    // document -> owning user
	groupViews []int32    // document -> group viewer, -1 when none
	groupUsers [][]int32  // group -> direct user members
	children   [][]int32  // group -> direct subgroups
	parent     []int32    // group -> the group it is nested in, -1 for g0
	userGroups [][]int32  // user -> groups it is a direct member of
	ownedDocs  [][]int32  // user -> documents it owns
	groupDocs  [][]int32  // group -> documents it may view directly
}

// SpiceDBSchema is the model in SpiceDB's schema language.
const SpiceDBSchema = `definition user {}

definition group {
	relation member: user | group#member
}

definition folder {
	relation parent: folder
	relation viewer: user | group#member
	permission view = viewer + parent->view
}

definition document {
	relation folder: folder
	relation owner: user
	relation viewer: user | group#member
	permission edit = owner
	permission view = edit + viewer + folder->view
}
`

// MandateSchema is SpiceDBSchema plus agents: every agent may view the
// whole folder tree on its own (agent:* on the root folder), and acts for a
// user or another agent under a delegation scope naming the actions and the
// resource type it may act on. A delegated check is allowed only when every
// chain member may view and every link's scope allows it.
const MandateSchema = `caveat delegation_scope(action string, resource_type string, allowed_actions list<string>, allowed_type string) {
	action in allowed_actions && resource_type == allowed_type
}

definition user {}

definition agent {
	relation acts_for: user with delegation_scope | agent with delegation_scope
}

definition group {
	relation member: user | group#member
}

definition folder {
	relation parent: folder
	relation viewer: user | group#member | agent:*
	permission view = viewer + parent->view
}

definition document {
	relation folder: folder
	relation owner: user
	relation viewer: user | group#member
	permission edit = owner
	permission view = edit + viewer + folder->view
}
`

// OpenFGAModel is SpiceDBSchema in OpenFGA's modeling language.
const OpenFGAModel = `model
  schema 1.1

type user

type group
  relations
    define member: [user, group#member]

type folder
  relations
    define parent: [folder]
    define viewer: [user, group#member]
    define view: viewer or view from parent

type document
  relations
    define folder: [folder]
    define owner: [user]
    define viewer: [user, group#member]
    define edit: owner
    define view: edit or viewer or view from folder
`

func obj(typ, prefix string, n int) rel.Object {
	return rel.Object{Type: typ, ID: prefix + strconv.Itoa(n)}
}

// User, Group, Folder and Document name the n-th object of each type.
func User(n int) rel.Object     { return obj(UserType, "u", n) }
func Group(n int) rel.Object    { return obj("group", "g", n) }
func Folder(n int) rel.Object   { return obj("folder", "f", n) }
func Document(n int) rel.Object { return obj(DocumentType, "d", n) }

func subject(o rel.Object) rel.Subject { return rel.Subject{Type: o.Type, ID: o.ID} }

func members(g rel.Object) rel.Subject {
	return rel.Subject{Type: g.Type, ID: g.ID, Relation: "member"}
}

// Generate builds the workload for cfg.
//
// Shape: group gN (N>0) is nested in a random lower-numbered group, so g0
// contains every group (a random recursive tree, depth ~ln N); each user is
// a direct member of 1-3 groups; folder fN (N>0) has a random
// lower-numbered parent and every tenth folder a group viewer; every
// document has an owner and a folder, a third a group viewer and a third a
// user viewer. At the default sizes that is about 298k relationships.
func Generate(cfg Config) (*Workload, error) {
	w := &Workload{}
	w.Rels = make([]rel.Relationship, 0, cfg.Groups+2*cfg.Users+cfg.Folders*11/10+cfg.Documents*8/3)
	err := generate(cfg, w, func(r rel.Relationship) error {
		w.Rels = append(w.Rels, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.generateAgents(w.rand)
	w.LookupUsers = make([]rel.Object, cfg.Lookups)
	for i := range w.LookupUsers {
		w.LookupUsers[i] = User(w.rand.IntN(cfg.Users))
	}
	return w, nil
}

// Stream is Generate for workloads too large to hold: it passes each
// relationship to emit instead of keeping it (Rels stays empty; an error
// from emit stops it), then draws the check pool and lookup users as
// Generate does. Agents are left out: see ScaleAgents.
func Stream(cfg Config, emit func(rel.Relationship) error) (*Workload, error) {
	w := &Workload{}
	if err := generate(cfg, w, emit); err != nil {
		return nil, err
	}
	w.LookupUsers = make([]rel.Object, cfg.Lookups)
	for i := range w.LookupUsers {
		w.LookupUsers[i] = User(w.rand.IntN(cfg.Users))
	}
	return w, nil
}

// generate draws the relationships of cfg's shape into emit and the check
// pool into w, keeping in w only the per-object facts the checks need.
func generate(cfg Config, w *Workload, emit func(rel.Relationship) error) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(cfg.Seed, 0x6d616e64617465))
	*w = Workload{
		Config:     cfg,
		Rels:       w.Rels,
		rand:       r,
		owner:      make([]int32, cfg.Documents),
		groupViews: make([]int32, cfg.Documents),
		groupUsers: make([][]int32, cfg.Groups),
		children:   make([][]int32, cfg.Groups),
		parent:     make([]int32, cfg.Groups),
		userGroups: make([][]int32, cfg.Users),
		ownedDocs:  make([][]int32, cfg.Users),
		groupDocs:  make([][]int32, cfg.Groups),
	}
	w.parent[0] = -1
	var err error
	add := func(res rel.Object, relation string, s rel.Subject) {
		if err == nil {
			err = emit(rel.Relationship{Resource: res, Relation: relation, Subject: s})
		}
	}
	for g := 1; g < cfg.Groups; g++ {
		p := r.IntN(g)
		w.children[p] = append(w.children[p], int32(g))
		w.parent[g] = int32(p)
		add(Group(p), "member", members(Group(g)))
	}
	for u := 0; u < cfg.Users; u++ {
		n := 1 + r.IntN(3)
		if n > cfg.Groups {
			n = cfg.Groups
		}
		for _, g := range distinct(r, cfg.Groups, n) {
			w.groupUsers[g] = append(w.groupUsers[g], int32(u))
			w.userGroups[u] = append(w.userGroups[u], int32(g))
			add(Group(g), "member", subject(User(u)))
		}
	}
	for f := 1; f < cfg.Folders; f++ {
		add(Folder(f), "parent", subject(Folder(r.IntN(f))))
		if f%10 == 0 {
			add(Folder(f), "viewer", members(Group(r.IntN(cfg.Groups))))
		}
	}
	for d := 0; d < cfg.Documents; d++ {
		o := r.IntN(cfg.Users)
		w.owner[d] = int32(o)
		w.ownedDocs[o] = append(w.ownedDocs[o], int32(d))
		w.groupViews[d] = -1
		add(Document(d), "owner", subject(User(o)))
		add(Document(d), "folder", subject(Folder(r.IntN(cfg.Folders))))
		switch r.IntN(3) {
		case 0:
			g := r.IntN(cfg.Groups)
			w.groupViews[d] = int32(g)
			w.groupDocs[g] = append(w.groupDocs[g], int32(d))
			add(Document(d), "viewer", members(Group(g)))
		case 1:
			if v := r.IntN(cfg.Users); v != o {
				add(Document(d), "viewer", subject(User(v)))
			}
		}
	}
	if err != nil {
		return err
	}
	w.generateChecks(r)
	return nil
}

// distinct draws n distinct numbers below max. Up to permThreshold it
// takes a permutation's first n, the draw every published figure used;
// above, a permutation per user would make generation quadratic in the
// workload's size, so it draws until n differ.
func distinct(r *rand.Rand, max, n int) []int {
	if max <= permThreshold {
		return r.Perm(max)[:n]
	}
	out := make([]int, 0, n)
	for len(out) < n {
		if v := r.IntN(max); !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// permThreshold is the largest group count distinct draws by permutation.
const permThreshold = 10_000

// memberOf returns a random user that is a member of group g, directly or
// through nested groups, or -1 when the group has no members at all.
func (w *Workload) memberOf(r *rand.Rand, g int32) int32 {
	// Walk down from g, at each step either stopping at this group's own
	// users or descending into a random subgroup.
	for {
		users, kids := w.groupUsers[g], w.children[g]
		switch {
		case len(users) > 0 && (len(kids) == 0 || r.IntN(2) == 0):
			return users[r.IntN(len(users))]
		case len(kids) > 0:
			g = kids[r.IntN(len(kids))]
		default:
			return -1
		}
	}
}

// pickCheck chooses a document and a subject user of the given kind; for
// GroupMember it falls back to an owner when no group grant has members.
func (w *Workload) pickCheck(r *rand.Rand, kind CheckKind) (doc int, user int32, actual CheckKind) {
	cfg := w.Config
	switch kind {
	case Owner:
		d := r.IntN(cfg.Documents)
		return d, w.owner[d], Owner
	case GroupMember:
		for range 100 {
			d := r.IntN(cfg.Documents)
			if g := w.groupViews[d]; g >= 0 {
				if u := w.memberOf(r, g); u >= 0 {
					return d, u, GroupMember
				}
			}
		}
		d := r.IntN(cfg.Documents)
		return d, w.owner[d], Owner
	}
	return r.IntN(cfg.Documents), int32(r.IntN(cfg.Users)), RandomUser
}

func (w *Workload) generateChecks(r *rand.Rand) {
	w.Checks = make([]Check, w.Config.Checks)
	for i := range w.Checks {
		d, u, k := w.pickCheck(r, CheckKind(i%3))
		w.Checks[i] = Check{Resource: Document(d), Subject: User(int(u)), Kind: k}
	}
}

// Agent returns the n-th principal agent (acting for a user) and the n-th
// sub-agent (acting for the principal agent).
func Agent(n int) (principal, sub rel.Object) {
	return obj(AgentType, "p", n), obj(AgentType, "s", n)
}

// delegationCaveat scopes a link to viewing and editing documents, or, for
// one link in ten, to editing only (so a view through it is out of scope).
func delegationCaveat(r *rand.Rand) (*rel.Caveat, bool) {
	actions := []any{"view", "edit"}
	allows := r.IntN(10) != 0
	if !allows {
		actions = []any{"edit"}
	}
	return &rel.Caveat{Name: "delegation_scope", Context: map[string]any{
		"allowed_actions": actions, "allowed_type": DocumentType,
	}}, allows
}

func (w *Workload) generateAgents(r *rand.Rand) {
	cfg := w.Config
	w.AgentRels = append(w.AgentRels, rel.Relationship{
		Resource: Folder(0), Relation: "viewer", Subject: rel.Subject{Type: AgentType, ID: rel.Wildcard},
	})
	principals := make([]int32, cfg.Agents)
	allows := make([]bool, cfg.Agents)
	for a := 0; a < cfg.Agents; a++ {
		p, s := Agent(a)
		u := r.IntN(cfg.Users)
		principals[a] = int32(u)
		c1, ok1 := delegationCaveat(r)
		c2, ok2 := delegationCaveat(r)
		allows[a] = ok1 && ok2
		w.AgentRels = append(w.AgentRels,
			rel.Relationship{Resource: p, Relation: "acts_for", Subject: subject(User(u)), Caveat: c1},
			rel.Relationship{Resource: s, Relation: "acts_for", Subject: subject(p), Caveat: c2},
		)
	}
	w.AgentChecks = make([]AgentCheck, cfg.AgentChecks)
	for i := range w.AgentChecks {
		a := r.IntN(cfg.Agents)
		_, s := Agent(a)
		u := principals[a]
		d, kind := w.agentDocument(r, u, CheckKind(i%3))
		w.AgentChecks[i] = AgentCheck{
			Check:     Check{Resource: Document(d), Subject: s, Kind: kind},
			Principal: User(int(u)), ScopeAllows: allows[a],
		}
	}
}

// agentDocument picks the document of an agent check for principal u: one
// u owns, one u may view through a group, or a random one, falling back to a
// random document when u has none of the kind asked for.
func (w *Workload) agentDocument(r *rand.Rand, u int32, kind CheckKind) (int, CheckKind) {
	switch kind {
	case Owner:
		if docs := w.ownedDocs[u]; len(docs) > 0 {
			return int(docs[r.IntN(len(docs))]), Owner
		}
	case GroupMember:
		// The user's groups and every group they are nested in.
		var groups []int32
		for _, g := range w.userGroups[u] {
			for ; g >= 0; g = w.parent[g] {
				if len(w.groupDocs[g]) > 0 {
					groups = append(groups, g)
				}
			}
		}
		if len(groups) > 0 {
			docs := w.groupDocs[groups[r.IntN(len(groups))]]
			return int(docs[r.IntN(len(docs))]), GroupMember
		}
	}
	return r.IntN(w.Config.Documents), RandomUser
}

// WriteRel is the n-th relationship a writer writes in the write
// measurement: the owner of a document that exists nowhere else, so it is
// new on every engine and every run.
func WriteRel(runID string, worker, n, users int) rel.Relationship {
	return rel.Relationship{
		Resource: rel.Object{Type: DocumentType, ID: "w" + runID + "-" + strconv.Itoa(worker) + "-" + strconv.Itoa(n)},
		Relation: "owner",
		Subject:  subject(User((worker*7919 + n*104729) % users)),
	}
}

// ScaleSchema is MandateSchema with expiring delegation links, for the
// scale mode's agents (ScaleAgents).
var ScaleSchema = "use expiration\n\n" + strings.Replace(MandateSchema,
	"relation acts_for: user with delegation_scope | agent with delegation_scope",
	"relation acts_for: user with delegation_scope | agent with delegation_scope | user with delegation_scope and expiration | agent with delegation_scope and expiration", 1)

// ScaleAgent is the last agent of one ScaleAgents chain and the user the
// chain acts for.
type ScaleAgent struct {
	Agent, Principal rel.Object
	// Expires is when the chain's expiring link ends (zero: none does).
	Expires time.Time
}

// ScaleAgents emits n agents in chains of 1-3 acts_for links (agent:cK_0
// acts for a user, agent:cK_i for agent:cK_(i-1)), every link scoped to
// viewing and editing documents; one link in ten expires at a random
// instant in [from, from+within). It returns each chain's last agent, for
// checks, and the number of links emitted.
func ScaleAgents(seed uint64, n, users int, from time.Time, within time.Duration, emit func(rel.Relationship) error) ([]ScaleAgent, int, error) {
	r := rand.New(rand.NewPCG(seed, 0x6167656e7473))
	scope := func() *rel.Caveat {
		return &rel.Caveat{Name: "delegation_scope", Context: map[string]any{
			"allowed_actions": []any{"view", "edit"}, "allowed_type": DocumentType,
		}}
	}
	if err := emit(rel.Relationship{Resource: Folder(0), Relation: "viewer", Subject: rel.Subject{Type: AgentType, ID: rel.Wildcard}}); err != nil {
		return nil, 0, err
	}
	var chains []ScaleAgent
	links := 0
	for made, k := 0, 0; made < n; k++ {
		length := min(1+r.IntN(3), n-made)
		principal := User(r.IntN(users))
		prev := subject(principal)
		var expires time.Time
		for i := 0; i < length; i++ {
			a := rel.Object{Type: AgentType, ID: "c" + strconv.Itoa(k) + "_" + strconv.Itoa(i)}
			l := rel.Relationship{Resource: a, Relation: "acts_for", Subject: prev, Caveat: scope()}
			if r.IntN(10) == 0 {
				l.Expiration = from.Add(time.Duration(r.Int64N(int64(within) + 1)))
				if expires.IsZero() || l.Expiration.Before(expires) {
					expires = l.Expiration
				}
			}
			if err := emit(l); err != nil {
				return nil, links, err
			}
			links++
			prev = subject(a)
			if i == length-1 {
				chains = append(chains, ScaleAgent{Agent: a, Principal: principal, Expires: expires})
			}
		}
		made += length
	}
	return chains, links, nil
}

// ScaledConfig is DefaultConfig's shape grown (or shrunk) to about rels
// relationships: users, groups, folders and documents in the same
// proportions. Agents are ScaleAgents' and not counted.
func ScaledConfig(rels int) Config {
	c := DefaultConfig()
	f := float64(rels) / 298_442
	scale := func(n int) int { return max(1, int(float64(n)*f+0.5)) }
	c.Users, c.Groups, c.Folders, c.Documents = scale(c.Users), scale(c.Groups), scale(c.Folders), scale(c.Documents)
	return c
}
