package inbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

// Bounds of the "my agents" page: how deep sub-agents are followed (the
// engine's default chain depth), how many agents and how many direct
// grants per agent are listed.
const (
	maxAgentDepth  = 8
	maxAgents      = 100
	maxAgentScopes = 100
)

// agentView is one agent acting for the person, directly or through
// another agent.
type agentView struct {
	Agent rel.Object
	// Link is its acts_for edge to For: the person, or the agent it is a
	// sub-agent of. Depth 0: it acts for the person only through a
	// capability token (no stored link).
	Link  rel.Relationship
	For   rel.Object
	Depth int
	// Scopes are the relationships that name the agent as subject (what
	// it has been granted directly); Truncated says there are more.
	Scopes    []rel.Relationship
	Truncated bool
	Tokens    []tokenView
	Grants    []approval.Request
}

// myAgents walks the acts_for edges down from me: the agents whose link
// names me, then their sub-agents, breadth first. Expired links are not
// followed: they grant nothing.
func (in *Inbox) myAgents(ctx context.Context, me rel.Object) ([]agentView, error) {
	sch, err := in.deps.Core.HeadSchema(ctx)
	if errors.Is(err, op.ErrSchemaNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the schema: %w", err)
	}
	agentTypes := agentTypes(sch)
	var out []agentView
	seen := map[rel.Object]bool{me: true}
	frontier := []rel.Object{me}
	now := time.Now()
	for depth := 1; depth <= maxAgentDepth && len(frontier) > 0 && len(out) < maxAgents; depth++ {
		var next []rel.Object
		for _, parent := range frontier {
			for _, t := range agentTypes {
				links, err := in.read(ctx, rel.Filter{ResourceType: t, Relation: schema.ActsFor, SubjectType: parent.Type, SubjectID: parent.ID}, 0)
				if err != nil {
					return nil, err
				}
				for _, l := range links {
					if l.ExpiredAt(now) || l.Subject.Relation != "" || seen[l.Resource] || len(out) >= maxAgents {
						continue
					}
					seen[l.Resource] = true
					out = append(out, agentView{Agent: l.Resource, Link: l, For: parent, Depth: depth})
					next = append(next, l.Resource)
				}
			}
		}
		frontier = next
	}
	return out, nil
}

func agentTypes(sch *schema.Schema) []string {
	var out []string
	if sch == nil {
		return nil
	}
	for _, name := range sch.DefinitionNames() {
		if sch.Definition(name).IsAgent() {
			out = append(out, name)
		}
	}
	return out
}

// read reads relationships at the store's head through the core (limit 0:
// all).
func (in *Inbox) read(ctx context.Context, f rel.Filter, limit int) ([]rel.Relationship, error) {
	res, err := in.deps.Core.Read(ctx, op.ReadRequest{Filter: op.Filter{Filter: f}, Limit: limit})
	if err != nil {
		return nil, fmt.Errorf("reading relationships: %w", err)
	}
	var out []rel.Relationship
	for r, err := range res.Relationships {
		if err != nil {
			return nil, fmt.Errorf("reading relationships: %w", err)
		}
		out = append(out, r)
	}
	return out, nil
}

// details fills in each agent's direct grants, tokens and approval grants,
// adding the agents that act for me through a token alone.
func (in *Inbox) details(ctx context.Context, me rel.Object, agents []agentView) ([]agentView, error) {
	tokens, err := in.tokensFor(ctx, me)
	if err != nil {
		return nil, err
	}
	// An agent holding a live token from me acts for me even without a
	// stored link: it is listed too.
	for _, t := range tokens {
		if !slices.ContainsFunc(agents, func(a agentView) bool { return a.Agent == t.Holder }) && len(agents) < maxAgents {
			agents = append(agents, agentView{Agent: t.Holder, For: me})
		}
	}
	if len(agents) == 0 {
		return nil, nil
	}
	sch, err := in.deps.Core.HeadSchema(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the schema: %w", err)
	}
	now := time.Now()
	for i := range agents {
		a := &agents[i]
		if err := in.scopes(ctx, sch, a, now); err != nil {
			return nil, err
		}
		for _, t := range tokens {
			if t.Holder == a.Agent {
				a.Tokens = append(a.Tokens, t)
			}
		}
		if in.deps.Approvals != nil {
			agent := a.Agent
			grants, err := in.deps.Approvals.List(ctx, approval.Filter{Agent: &agent, Principal: &me, Status: approval.Approved})
			if err != nil {
				return nil, fmt.Errorf("listing grants: %w", err)
			}
			for _, g := range grants {
				if g.GrantExpires.IsZero() || now.Before(g.GrantExpires) {
					a.Grants = append(a.Grants, g)
				}
			}
		}
	}
	return agents, nil
}

// grantable lists the relations whose allowed subjects include the agent
// type (directly or as a wildcard): the only places a direct grant to such
// an agent can be, so each read is bounded by one resource type.
type grantable struct {
	resourceType, relation string
	direct, wildcard       bool
}

func grantablesFor(sch *schema.Schema, agentType string) []grantable {
	var out []grantable
	for _, def := range sch.DefinitionNames() {
		d := sch.Definition(def)
		for _, name := range d.Order {
			r := d.Relations[name]
			if r == nil || r.IsPermission || name == schema.ActsFor {
				continue
			}
			g := grantable{resourceType: def, relation: name}
			for _, a := range r.Allowed {
				if a.Type == agentType && a.Relation == "" {
					g.direct = g.direct || !a.Wildcard
					g.wildcard = g.wildcard || a.Wildcard
				}
			}
			if g.direct || g.wildcard {
				out = append(out, g)
			}
		}
	}
	return out
}

// scopes fills in an agent's live direct grants (its own and those to
// every agent of its type), up to maxAgentScopes.
func (in *Inbox) scopes(ctx context.Context, sch *schema.Schema, a *agentView, now time.Time) error {
	for _, g := range grantablesFor(sch, a.Agent.Type) {
		var ids []string
		if g.direct {
			ids = append(ids, a.Agent.ID)
		}
		if g.wildcard {
			ids = append(ids, rel.Wildcard)
		}
		for _, id := range ids {
			rels, err := in.read(ctx, rel.Filter{ResourceType: g.resourceType, Relation: g.relation, SubjectType: a.Agent.Type, SubjectID: id}, 0)
			if err != nil {
				return err
			}
			for _, r := range rels {
				if r.ExpiredAt(now) || r.Subject.Relation != "" {
					continue
				}
				if len(a.Scopes) == maxAgentScopes {
					a.Truncated = true
					return nil
				}
				a.Scopes = append(a.Scopes, r)
			}
		}
	}
	return nil
}

func (in *Inbox) agentsPage(w http.ResponseWriter, r *http.Request) {
	me := personFrom(r.Context()).Object
	agents, err := in.myAgents(r.Context(), me)
	if err == nil {
		agents, err = in.details(r.Context(), me, agents)
	}
	if err != nil {
		in.serviceFailed(w, r, "listing your agents", err)
		return
	}
	p := in.base(r, "My agents", "agents")
	p.Agents = agents
	in.render(w, r, http.StatusOK, "agents.html", p)
}

// unlink deletes an acts_for link of an agent acting for me: the link
// named must be one the walk from me finds now, so nobody can cut a
// delegation that is not theirs.
func (in *Inbox) unlink(w http.ResponseWriter, r *http.Request) {
	me := personFrom(r.Context()).Object
	agent, err1 := parseObject(r.PostForm.Get("agent"))
	parent, err2 := parseObject(r.PostForm.Get("for"))
	if err := errors.Join(err1, err2); err != nil {
		in.fail(w, r, http.StatusBadRequest, "The form names no valid agent: "+err.Error())
		return
	}
	agents, err := in.myAgents(r.Context(), me)
	if err != nil {
		in.serviceFailed(w, r, "reading your agents", err)
		return
	}
	if !slices.ContainsFunc(agents, func(a agentView) bool { return a.Agent == agent && a.For == parent }) {
		in.fail(w, r, http.StatusForbidden, "Refused: "+agent.String()+" does not act for you through "+parent.String()+".")
		return
	}
	none := ""
	_, err = in.deps.Core.DeleteMatching(r.Context(), op.DeleteRequest{Filter: op.Filter{Filter: rel.Filter{
		ResourceType: agent.Type, ResourceIDs: []string{agent.ID}, Relation: schema.ActsFor,
		SubjectType: parent.Type, SubjectID: parent.ID, SubjectRelation: &none,
	}}})
	if err != nil {
		in.serviceFailed(w, r, "removing the delegation", err)
		return
	}
	http.Redirect(w, r, "/ui/agents?done=unlinked", http.StatusSeeOther)
}

func parseObject(s string) (rel.Object, error) {
	sub, err := rel.ParseSubject(s)
	if err != nil {
		return rel.Object{}, err
	}
	if sub.Relation != "" {
		return rel.Object{}, fmt.Errorf("%q: expected type:id", s)
	}
	return sub.Object(), nil
}

// revokeGrant ends an approval grant early; only the grant's principal or
// its decider may.
func (in *Inbox) revokeGrant(w http.ResponseWriter, r *http.Request) {
	if in.approvalsOff(w, r) {
		return
	}
	me := personFrom(r.Context()).Object
	q, err := in.deps.Approvals.Get(r.Context(), r.PathValue("id"))
	if errors.Is(err, approval.ErrNotFound) || (err == nil && q.Principal != me && q.Decider != me) {
		in.fail(w, r, http.StatusNotFound, "There is no such grant of yours.")
		return
	}
	if err == nil {
		_, err = in.deps.Approvals.Revoke(r.Context(), q.ID, me)
	}
	if err != nil {
		in.decisionFailed(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/agents?done=revoked", http.StatusSeeOther)
}
