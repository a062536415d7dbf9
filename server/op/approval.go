package op

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/escalation"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Human-in-the-loop approval at check time. Two things can stop an agent's
// check for a person's consent:
//
//   - an escalation rule (Config.Escalator) matching a check the engine
//     allowed: the answer becomes "approval required", naming the rule,
//     unless the agent holds a live grant for exactly that (agent,
//     principal, resource, permission);
//   - a denial the engine says is resolvable by approval where only the
//     checked agent's own grant is missing: a live matching grant allows it
//     (the engine has just checked that the principal and every link still
//     allow it, at the same revision).
//
// Both answers stay denials (Decision Denied, with Approval set): an API
// that does not know approvals refuses, and nothing but a grant ever turns
// an answer into an allow. A rule that fails to evaluate escalates (fails
// closed); a grant lookup that fails denies.

// EscalationInput is what an escalation rule sees of an agent's check, and
// EscalationMatch the rule that matched: server/escalation's types, so that
// *escalation.Escalator is an Escalator.
type (
	EscalationInput = escalation.Input
	EscalationMatch = escalation.Match
)

// Escalator decides which allowed agent checks need a person's approval
// and learns from every agent check (its behavioural signals).
type Escalator interface {
	// Escalate is called for an allowed agent check; an error means the
	// rules could not be evaluated, and the check escalates, under the
	// rule that failed when the Match names one.
	Escalate(ctx context.Context, in EscalationInput) (EscalationMatch, bool, error)
	// Observe is told every agent check's final answer.
	Observe(in EscalationInput, allowed bool)
}

// GrantKey is exactly what a grant allows.
type GrantKey struct {
	Agent, Principal, Resource rel.Object
	Permission                 string
}

// Grant is a live approval grant.
type Grant struct {
	ID        string
	SingleUse bool
	Expires   time.Time
}

// Grants finds and redeems approval grants; *approval.Service implements it.
type Grants interface {
	// LiveGrant returns the live grant for exactly key: the one named id
	// when id is set (single-use grants are found only so), else any
	// live multi-use one. It waits, within ctx, until the grants are
	// current at rev, and fails rather than answer from older state.
	LiveGrant(ctx context.Context, key GrantKey, id string, rev store.Revision) (Grant, bool, error)
	// Redeem uses a single-use grant; false when it was already used or
	// ended (on any replica).
	Redeem(ctx context.Context, id string, key GrantKey) (bool, error)
}

// ApprovalOutcome says how approvals shaped a check's answer.
type ApprovalOutcome struct {
	// Required: the answer is "approval required" (an escalation rule
	// matched and no grant allows it), or a denial a grant would resolve.
	Required bool
	// Rule names the escalation rule; empty for a resolvable denial.
	Rule        string
	Description string
	// EvaluationID identifies this evaluation in the audit trail; the
	// agent quotes it when it files the request.
	EvaluationID string
	// Request is what the agent should file (Agent, Principal, Chain,
	// Resource, Permission, Task from the check's context "task").
	Request GrantKey
	Chain   []rel.Object
	Task    string
	// MaxDuration bounds the grant the rule allows (0: the server's).
	MaxDuration time.Duration
	// GrantID names the grant that allowed the check.
	GrantID string
}

// SetApprovals installs the grant store and the escalation rules. The
// approval service needs the core to check approvers, so it is built after
// the core; call this before serving.
func (c *Core) SetApprovals(g Grants, e Escalator) {
	c.grants, c.escalator = g, e
}

// ReasonApprovalRequired is the audited reason of an escalated check.
const ReasonApprovalRequired = "approval_required"

// applyApprovals shapes an answered check by escalation rules and grants.
func (c *Core) applyApprovals(ctx context.Context, req CheckRequest, res *CheckResult) {
	if req.noApprovals || (c.grants == nil && c.escalator == nil) {
		return
	}
	chain, ok := checkChain(*res)
	if !ok {
		// A person's own checks are never escalated; an agent whose chain
		// reached no principal is denied, and only feeds the signals.
		if d := res.Delegation; d != nil && len(d.Chain) > 0 && c.escalator != nil {
			c.escalator.Observe(EscalationInput{Resource: req.Resource, Permission: req.Permission, Agent: d.Chain[0].Subject,
				Context: req.Context, Time: time.Now()}, false)
		}
		return
	}
	task, _ := req.Context["task"].(string)
	in := EscalationInput{Resource: req.Resource, Permission: req.Permission, Agent: chain[0], Chain: chain, Context: req.Context, Time: time.Now()}
	key := GrantKey{Agent: chain[0], Principal: chain[len(chain)-1], Resource: req.Resource, Permission: req.Permission}
	out := &ApprovalOutcome{Request: key, Chain: chain, Task: task}
	if c.escalator != nil {
		// Every answer feeds the signals, once Escalate has seen the check.
		defer func() { c.escalator.Observe(in, res.Decision == engine.Allowed) }()
	}
	switch {
	case res.Decision == engine.Allowed && c.escalator != nil:
		m, matched, err := c.escalator.Escalate(ctx, in)
		if err != nil {
			m, matched = failedRule(m), true
			c.log.Error("escalation rules failed to evaluate; the check needs approval", "rule", m.Rule, "error", err)
		}
		if !matched {
			// No rule holds it: the answer carries no approval context.
			return
		}
		out.Rule, out.Description, out.MaxDuration = m.Rule, m.Description, m.MaxDuration
		if g, ok := c.grantFor(ctx, key, req.ApprovalID, res.Revision); ok {
			out.GrantID = g.ID
			break
		}
		out.Required = true
		res.Decision, res.Missing = engine.Denied, nil
	case res.Decision == engine.Denied && OnlyAgentGrantMissing(*res):
		if g, ok := c.grantFor(ctx, key, req.ApprovalID, res.Revision); ok {
			out.GrantID = g.ID
			res.Decision = engine.Allowed
			break
		}
		out.Required = true
	default:
		return
	}
	if out.Required {
		out.EvaluationID = newEvaluationID()
	}
	res.Approval = out
}

// grantFor finds a live grant for key and redeems it when single-use. Any
// failure is no grant: the check stays as it was (denied or escalated).
func (c *Core) grantFor(ctx context.Context, key GrantKey, id string, rev store.Revision) (Grant, bool) {
	if c.grants == nil {
		return Grant{}, false
	}
	wctx, cancel := context.WithTimeout(ctx, c.wait)
	defer cancel()
	g, ok, err := c.grants.LiveGrant(wctx, key, id, rev)
	if err != nil {
		c.log.Warn("approval grants unavailable; the check is answered without them", "error", err)
		return Grant{}, false
	}
	if !ok {
		return Grant{}, false
	}
	if g.SingleUse {
		used, err := c.grants.Redeem(ctx, g.ID, key)
		if err != nil {
			c.log.Warn("redeeming a single-use approval grant failed; the check is answered without it", "approval_id", g.ID, "error", err)
			return Grant{}, false
		}
		if !used {
			return Grant{}, false
		}
	}
	return g, true
}

// checkChain returns an answered agent check's chain, agent first and
// principal last, when it reached a principal.
func checkChain(res CheckResult) ([]rel.Object, bool) {
	if res.Token != nil {
		d := res.Token
		if d.Principal == "" || len(d.Holders) == 0 {
			return nil, false
		}
		var chain []rel.Object
		for i := len(d.Holders) - 1; i >= 0; i-- {
			o, err := parseObject(d.Holders[i])
			if err != nil {
				return nil, false
			}
			chain = append(chain, o)
		}
		p, err := parseObject(d.Principal)
		if err != nil {
			return nil, false
		}
		return append(chain, p), true
	}
	d := res.Delegation
	if d == nil || len(d.Chain) < 2 {
		return nil, false
	}
	chain := make([]rel.Object, len(d.Chain))
	for i, e := range d.Chain {
		chain[i] = e.Subject
	}
	return chain, true
}

// OnlyAgentGrantMissing: the engine's denial is resolvable by approval and
// the checked agent's own grant is the only one missing, so a grant to it
// (and nothing else) would make the chain allow.
func OnlyAgentGrantMissing(res CheckResult) bool {
	d := res.Delegation
	if res.Token != nil || d == nil || !d.ResolvableByApproval || len(d.Chain) < 2 || d.FailedAt != 0 {
		return false
	}
	for _, e := range d.Chain[1:] {
		if e.Grant != engine.Allowed {
			return false
		}
	}
	return d.Chain[0].Link == engine.Allowed
}

func parseObject(s string) (rel.Object, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			o := rel.Object{Type: s[:i], ID: s[i+1:]}
			return o, rel.ValidateObject(o)
		}
	}
	return rel.Object{}, fmt.Errorf("%q: expected type:id", s)
}

func newEvaluationID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// approvalEvent fills what a check's event says of approvals.
func approvalEvent(ev *audit.Event, a *ApprovalOutcome) {
	if a == nil {
		return
	}
	switch {
	case a.GrantID != "":
		ev.ApprovalID = a.GrantID
		ev.Rule = a.Rule
	case a.Required:
		ev.Rule, ev.EvaluationID = a.Rule, a.EvaluationID
		if a.Rule != "" {
			ev.Reason = ReasonApprovalRequired
		}
	}
}

// Escalation asks the escalation rules about an agent check the engine
// allowed, without feeding the signals: what rule would hold it now, and
// how long a grant for it may last.
func (c *Core) Escalation(ctx context.Context, req CheckRequest, res CheckResult) (EscalationMatch, bool, error) {
	chain, ok := checkChain(res)
	if !ok || c.escalator == nil || res.Decision != engine.Allowed {
		return EscalationMatch{}, false, nil
	}
	m, matched, err := c.escalator.Escalate(ctx, EscalationInput{Resource: req.Resource, Permission: req.Permission, Agent: chain[0], Chain: chain, Context: req.Context, Time: time.Now()})
	if err != nil {
		return failedRule(m), true, err
	}
	return m, matched, nil
}

// failedRule is the match an escalation error escalates under: the rule
// that failed, when the escalator could name it.
func failedRule(m EscalationMatch) EscalationMatch {
	if m.Rule == "" {
		return EscalationMatch{Rule: "escalation-error", Description: "the escalation rules could not be evaluated"}
	}
	return m
}

// CheckWithoutApprovals answers a check as the engine does, with neither
// escalation rules nor grants: the approval service's own checks (does
// the approver hold the permission now, would a grant help the agent).
// It is audited as any check.
func (c *Core) CheckWithoutApprovals(ctx context.Context, req CheckRequest) (CheckResult, error) {
	req.noApprovals = true
	req.ApprovalID = ""
	return c.Check(ctx, req)
}

// ApprovalEvent is one step of an approval request, for the audit trail.
type ApprovalEvent struct {
	Operation audit.Operation
	ID        string
	Chain     []rel.Object
	Resource  rel.Object
	// By is the person who decided, revoked or ended the task.
	By         rel.Object
	Permission string
	Task       string
	Rule       string
	Detail     string
	Revision   store.Revision
}

// AuditApproval records one approval step, made durable as writes are.
func (c *Core) AuditApproval(ctx context.Context, a ApprovalEvent) error {
	if c.aud == nil {
		return nil
	}
	call := callFrom(ctx)
	ev := call.event(a.Operation, nil)
	ev.ApprovalID, ev.Resource, ev.Permission, ev.Rule, ev.Detail = a.ID, objectString(a.Resource), a.Permission, a.Rule, a.Detail
	ev.Revision = uint64(a.Revision)
	ev.SubjectKind = audit.Agent
	if len(a.Chain) > 0 {
		ev.Subject = objectString(a.Chain[0])
		ev.Principal = objectString(a.Chain[len(a.Chain)-1])
		for _, o := range a.Chain {
			ev.Chain = append(ev.Chain, audit.Link{Subject: objectString(o)})
		}
	}
	if a.By.Type != "" {
		ev.Decider = objectString(a.By)
	}
	if a.Task != "" {
		ev.Context = map[string]any{"task": a.Task}
	}
	return c.recordWrite(ctx, call, ev)
}
