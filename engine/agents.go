package engine

import (
	"fmt"

	"github.com/mandate-authz/mandate/schema"
	"github.com/mandate-authz/mandate/store/rel"
)

// Engine-supplied parameters of acts_for caveats: the request being checked.
// The caller's context can never override them.
const (
	ParamAction       = "action"
	ParamResourceType = "resource_type"
	ParamResourceID   = "resource_id"
)

// chain is one resolved delegation path from an agent to its principal.
type chain struct {
	members []rel.Object
	// links[i] is the outcome of the acts_for edge from members[i] to
	// members[i+1].
	links []outcome
}

// chainFailure is a reason the chain could not be resolved at all.
type chainFailure struct {
	reason Reason
	at     []rel.Object // the path walked up to the failure
}

// resolveChains follows live acts_for edges from an agent to every principal
// (a subject of a non-agent type) reachable within maxChain links. An edge is
// live when it has not expired and its caveat is not definitely false; an
// edge whose caveat needs missing context stays live, with an unknown link.
// When no chain exists, the failure explains why, preferring the most
// specific reason found.
func (c *checker) resolveChains(agent rel.Object) ([]chain, *chainFailure, error) {
	var chains []chain
	var failure *chainFailure
	fail := func(r Reason, path []rel.Object) {
		if failure == nil || failureRank(r) > failureRank(failure.reason) {
			failure = &chainFailure{reason: r, at: append([]rel.Object(nil), path...)}
		}
	}
	actsFor, hasActsFor := c.idx.lookup(schema.ActsFor)

	var walk func(path []rel.Object, links []outcome) error
	walk = func(path []rel.Object, links []outcome) error {
		cur := path[len(path)-1]
		def := c.sch.Definitions[cur.Type]
		if !def.IsAgent() {
			chains = append(chains, chain{members: append([]rel.Object(nil), path...), links: append([]outcome(nil), links...)})
			return nil
		}
		if len(links) >= c.eng.maxChain {
			fail(ReasonChainTooDeep, path)
			return nil
		}
		typ, ok1 := c.idx.lookup(cur.Type)
		obj, ok2 := c.idx.lookup(cur.ID)
		if !ok1 || !ok2 || !hasActsFor {
			fail(ReasonNoDelegation, path)
			return nil
		}
		edges := c.idx.slots[slotKey{typ, obj, actsFor}]
		var live, expired, outOfScope int
		for i := range edges {
			e := &edges[i]
			if e.created > c.rev || c.rev >= e.deleted {
				continue
			}
			if e.expires != 0 && c.now >= e.expires {
				expired++
				continue
			}
			link, err := c.caveat(e)
			if err != nil {
				return err
			}
			if link.v == schema.False {
				outOfScope++
				continue
			}
			next := rel.Object{Type: c.idx.name(e.subjType), ID: c.idx.name(e.subjID)}
			if containsObject(path, next) {
				fail(ReasonCycle, append(path, next))
				continue
			}
			live++
			if err := walk(append(path, next), append(links, link)); err != nil {
				return err
			}
		}
		if live == 0 {
			switch {
			case outOfScope > 0:
				fail(ReasonOutOfScope, path)
			case expired > 0:
				fail(ReasonDelegationExpired, path)
			default:
				fail(ReasonNoDelegation, path)
			}
		}
		return nil
	}
	if err := walk([]rel.Object{agent}, nil); err != nil {
		return nil, nil, err
	}
	return chains, failure, nil
}

// failureRank orders resolution failures from least to most specific.
func failureRank(r Reason) int {
	switch r {
	case ReasonNoDelegation:
		return 1
	case ReasonDelegationExpired:
		return 2
	case ReasonOutOfScope:
		return 3
	case ReasonCycle:
		return 4
	case ReasonChainTooDeep:
		return 5
	}
	return 0
}

func containsObject(path []rel.Object, o rel.Object) bool {
	for _, p := range path {
		if p == o {
			return true
		}
	}
	return false
}

// checkDelegated evaluates a check whose subject is an agent: the effective
// permission is the three-valued AND of every chain member's own grant and
// every link's caveat.
func (e *Engine) checkDelegated(c *checker, req CheckRequest) (CheckResult, error) {
	c.supplied = map[string]any{
		ParamAction:       req.Permission,
		ParamResourceType: req.Resource.Type,
		ParamResourceID:   req.Resource.ID,
	}
	agent := req.Subject.Object()
	chains, failure, err := c.resolveChains(agent)
	c.supplied = nil
	if err != nil {
		return CheckResult{}, err
	}
	if req.OnBehalfOf != nil {
		if err := rel.ValidateObject(*req.OnBehalfOf); err != nil {
			return CheckResult{}, fmt.Errorf("%w: %w", ErrInvalidOnBehalfOf, err)
		}
		var matching []chain
		for _, ch := range chains {
			if ch.members[len(ch.members)-1] == *req.OnBehalfOf {
				matching = append(matching, ch)
			}
		}
		if len(matching) == 0 && len(chains) > 0 {
			failure = &chainFailure{reason: ReasonNoDelegation, at: []rel.Object{agent}}
		}
		chains = matching
	} else if principals := distinctPrincipals(chains); len(principals) > 1 {
		return CheckResult{}, fmt.Errorf("%w: %s acts for %v", ErrAmbiguousAgent, agent, principals)
	}

	if len(chains) == 0 {
		res := CheckResult{Decision: Denied, Revision: c.rev}
		d := &Delegation{Reason: failure.reason, FailedAt: len(failure.at) - 1}
		for _, m := range failure.at {
			d.Chain = append(d.Chain, ChainElement{Subject: m})
		}
		res.Delegation = d
		return res, nil
	}

	// Several chains to the same principal (a diamond): the decision ties to
	// the first best one.
	var best *CheckResult
	for _, ch := range chains {
		r, err := e.evaluateChain(c, req, ch)
		if err != nil {
			return CheckResult{}, err
		}
		if best == nil || rankDecision(r.Decision) > rankDecision(best.Decision) {
			best = &r
		}
		if best.Decision == Allowed {
			break
		}
	}
	return *best, nil
}

func rankDecision(d Decision) int {
	switch d {
	case Allowed:
		return 2
	case Conditional:
		return 1
	}
	return 0
}

func distinctPrincipals(chains []chain) []string {
	var out []string
	seen := map[rel.Object]bool{}
	for _, ch := range chains {
		p := ch.members[len(ch.members)-1]
		if !seen[p] {
			seen[p] = true
			out = append(out, p.String())
		}
	}
	return out
}

// evaluateChain checks every member's own grant and combines them with the
// links. The first failing element, walking from the agent to the principal,
// gives the reason.
func (e *Engine) evaluateChain(c *checker, req CheckRequest, ch chain) (CheckResult, error) {
	d := &Delegation{FailedAt: -1}
	total := outTrue
	principal := len(ch.members) - 1
	onlyAgentGrantsMissing := true
	for i, m := range ch.members {
		grant, err := c.checkObject(req.Resource, req.Permission, rel.Subject{Type: m.Type, ID: m.ID})
		if err != nil {
			return CheckResult{}, err
		}
		el := ChainElement{Subject: m, Grant: grant.decision(), Link: Allowed, Missing: missingOf(grant)}
		elementOutcome := grant
		if i < principal {
			link := ch.links[i]
			el.Link = link.decision()
			el.Missing = mergeMissing(el.Missing, missingOf(link))
			elementOutcome = and(grant, link)
			if link.v != schema.True {
				onlyAgentGrantsMissing = false
			}
		}
		if grant.v != schema.True && i == principal {
			onlyAgentGrantsMissing = false
		}
		if elementOutcome.v == schema.False && d.FailedAt < 0 {
			d.FailedAt = i
			switch {
			case grant.v == schema.False && i == principal:
				d.Reason = ReasonPrincipalDenied
			case grant.v == schema.False:
				d.Reason = ReasonAgentNotGranted
			default:
				d.Reason = ReasonOutOfScope
			}
		}
		total = and(total, elementOutcome)
		d.Chain = append(d.Chain, el)
	}
	res := CheckResult{Decision: total.decision(), Missing: missingOf(total), Revision: c.rev, Delegation: d}
	if res.Decision == Denied && d.Reason == ReasonAgentNotGranted && onlyAgentGrantsMissing {
		d.ResolvableByApproval = true
	}
	return res, nil
}
