package engine

import (
	"fmt"
	"slices"

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

// chainMember is an object on a delegation path.
type chainMember struct {
	tp  *typePlan // nil for a type the schema no longer defines
	typ sym
	id  oid
	obj rel.Object
}

// chain is one resolved delegation path from an agent to its principal.
type chain struct {
	members []chainMember
	// links[i] is the outcome of the acts_for edge from members[i] to
	// members[i+1].
	links []outcome
}

// chainFailure is a reason the chain could not be resolved at all.
type chainFailure struct {
	reason Reason
	at     []chainMember // the path walked up to the failure
}

// resolveChains follows live acts_for edges from an agent to every principal
// (a subject of a non-agent type) reachable within maxChain links. An edge is
// live when it has not expired and its caveat is not definitely false; an
// edge whose caveat needs missing context stays live, with an unknown link.
// When no chain exists, the failure explains why, preferring the most
// specific reason found.
func (c *checker) resolveChains(agent chainMember, maxChain int) ([]chain, *chainFailure, error) {
	var chains []chain
	var failure *chainFailure
	fail := func(r Reason, path []chainMember) {
		if failure == nil || failureRank(r) > failureRank(failure.reason) {
			failure = &chainFailure{reason: r, at: slices.Clone(path)}
		}
	}

	var walk func(path []chainMember, links []outcome) error
	walk = func(path []chainMember, links []outcome) error {
		cur := path[len(path)-1]
		if cur.tp == nil || !cur.tp.isAgent {
			chains = append(chains, chain{members: slices.Clone(path), links: slices.Clone(links)})
			return nil
		}
		if len(links) >= maxChain {
			fail(ReasonChainTooDeep, path)
			return nil
		}
		if cur.id >= unseenResource || cur.tp.actsFor == nil {
			fail(ReasonNoDelegation, path)
			return nil
		}
		edges := c.edges(cur.tp.actsFor, cur.id)
		var live, expired, outOfScope int
		for i := range edges {
			e := &edges[i]
			if at := c.idx.edgeRev(c.rev); e.created > at || at >= e.deleted {
				continue
			}
			if e.extra != 0 {
				if x := c.extra(e.extra).expires; x != 0 && c.nowMicros() >= x {
					expired++
					continue
				}
			}
			link, err := c.caveat(e)
			if err != nil {
				return err
			}
			if link.v == schema.False {
				outOfScope++
				continue
			}
			tt := c.idx.types[e.subjType()]
			next := chainMember{tp: c.pl.typeBySym(e.subjType()), typ: e.subjType(), id: e.subjID, obj: rel.Object{Type: tt.name, ID: c.ov.name(tt, e.subjID)}}
			if containsMember(path, next) {
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
	if cap(c.pathBuf) < maxChain+2 {
		c.pathBuf = make([]chainMember, 0, maxChain+2)
		c.linkBuf = make([]outcome, 0, maxChain+1)
	}
	c.pathBuf = append(c.pathBuf[:0], agent)
	err := walk(c.pathBuf, c.linkBuf[:0])
	if err != nil {
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

func containsMember(path []chainMember, m chainMember) bool {
	for _, p := range path {
		if p.typ == m.typ && p.id == m.id {
			return true
		}
	}
	return false
}

// checkDelegated evaluates a check whose subject is an agent: the effective
// permission is the three-valued AND of every chain member's own grant and
// every link's caveat.
func (c *checker) checkDelegated(s *checkSpec, obj oid) (CheckResult, error) {
	req := s.req
	c.setSupplied(req)
	agent := chainMember{tp: s.subType, typ: s.subType.sym, id: s.t.id, obj: req.Subject.Object()}
	chains, failure, err := c.resolveChains(agent, c.maxChain)
	c.setSupplied(nil)
	if err != nil {
		return CheckResult{}, err
	}
	if req.OnBehalfOf != nil {
		if err := rel.ValidateObject(*req.OnBehalfOf); err != nil {
			return CheckResult{}, fmt.Errorf("%w: %w", ErrInvalidOnBehalfOf, err)
		}
		var matching []chain
		for _, ch := range chains {
			if ch.members[len(ch.members)-1].obj == *req.OnBehalfOf {
				matching = append(matching, ch)
			}
		}
		if len(matching) == 0 && len(chains) > 0 {
			failure = &chainFailure{reason: ReasonNoDelegation, at: []chainMember{agent}}
		}
		chains = matching
	} else if principals := distinctPrincipals(chains); len(principals) > 1 {
		return CheckResult{}, fmt.Errorf("%w: %s acts for %v", ErrAmbiguousAgent, agent.obj, principals)
	}

	if len(chains) == 0 {
		res := CheckResult{Decision: Denied, Revision: c.rev}
		d := &Delegation{Reason: failure.reason, FailedAt: len(failure.at) - 1}
		d.Chain = make([]ChainElement, 0, len(failure.at))
		for _, m := range failure.at {
			d.Chain = append(d.Chain, ChainElement{Subject: m.obj})
		}
		res.Delegation = d
		return res, nil
	}

	// Several chains to the same principal (a diamond): the decision ties to
	// the first best one.
	var best CheckResult
	for i, ch := range chains {
		r, err := c.evaluateChain(s, obj, ch)
		if err != nil {
			return CheckResult{}, err
		}
		if i == 0 || rankDecision(r.Decision) > rankDecision(best.Decision) {
			best = r
		}
		if best.Decision == Allowed {
			break
		}
	}
	return best, nil
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

// distinctPrincipals names the principals the chains end at, when there are
// several; nil when they all end at one.
func distinctPrincipals(chains []chain) []string {
	principal := func(ch chain) rel.Object { return ch.members[len(ch.members)-1].obj }
	several := false
	for _, ch := range chains[min(1, len(chains)):] {
		if principal(ch) != principal(chains[0]) {
			several = true
			break
		}
	}
	if !several {
		return nil
	}
	var out []string
	seen := map[rel.Object]bool{}
	for _, ch := range chains {
		p := principal(ch)
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
func (c *checker) evaluateChain(s *checkSpec, obj oid, ch chain) (CheckResult, error) {
	req := s.req
	d := &Delegation{FailedAt: -1, Chain: make([]ChainElement, 0, len(ch.members))}
	total := outTrue
	principal := len(ch.members) - 1
	onlyAgentGrantsMissing := true
	for i, m := range ch.members {
		t := target{typ: m.typ, id: m.id}
		grant, err := c.checkObject(s, obj, t, m.obj == req.Resource)
		if err != nil {
			return CheckResult{}, err
		}
		el := ChainElement{Subject: m.obj, Grant: grant.decision(), Link: Allowed, Missing: missingOf(grant)}
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
