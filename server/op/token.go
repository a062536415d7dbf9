package op

import (
	"context"
	"errors"
	"fmt"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

var (
	// ErrTokensOff: a check carries a capability token but the core has no
	// token checker (Config.Tokens). Answering it without one would check
	// the bare subject, which is not what the caller asked.
	ErrTokensOff = errors.New("capability tokens are not served by this server")
	// ErrInvalidTokenCheck: a check made with a capability token is shaped
	// wrongly (a userset subject, an on_behalf_of beside the token).
	ErrInvalidTokenCheck = errors.New("invalid check with a capability token")
)

// check answers one check at rev: through the token checker when the
// request carries a token, by the engine otherwise.
func (c *Core) check(ctx context.Context, req CheckRequest, rev store.Revision) (CheckResult, error) {
	if req.CapabilityToken != "" {
		return c.checkToken(ctx, req, rev)
	}
	res, err := c.eng.Check(ctx, req.engine(rev, req.Explain))
	return CheckResult{CheckResult: res}, err
}

// checkToken answers a check made with a capability token. Every way the
// token fails is a denial explained by res.Token; the error is for a
// request that cannot be decided at all.
func (c *Core) checkToken(ctx context.Context, req CheckRequest, rev store.Revision) (CheckResult, error) {
	switch {
	case c.tokens == nil:
		return CheckResult{}, fmt.Errorf("capability_token: %w", ErrTokensOff)
	case req.Subject.Relation != "":
		return CheckResult{}, fmt.Errorf("%w: subject: a token is held by an object, not the userset %s", ErrInvalidTokenCheck, subjectString(req.Subject))
	case req.OnBehalfOf != nil:
		return CheckResult{}, fmt.Errorf("%w: on_behalf_of: not allowed with a capability token, which names its own principal", ErrInvalidTokenCheck)
	case rev == engine.EmptyRevision:
		// Revision zero has no schema: nothing can be allowed there.
		return CheckResult{}, fmt.Errorf("checking a capability token at revision zero: %w", engine.ErrNoSchema)
	}
	task, _ := req.Context["task"].(string)
	d, err := c.tokens.Check(ctx, c.tokenEng, capability.CheckRequest{
		Token: req.CapabilityToken, Resource: req.Resource, Permission: req.Permission,
		Subject: rel.Object{Type: req.Subject.Type, ID: req.Subject.ID},
		Task:    task, Context: req.Context, Revision: rev,
	})
	if err != nil {
		return CheckResult{}, err
	}
	c.registerUsed(req.CapabilityToken, &d)
	res := CheckResult{Token: &d}
	switch {
	case d.Allowed:
		res.Decision = engine.Allowed
	case d.Conditional:
		res.Decision, res.Missing = engine.Conditional, d.Missing
	default:
		res.Decision = engine.Denied
	}
	// A token refused before the principal was checked was answered at no
	// revision of its own: report the one asked for, or the engine's head.
	res.Revision = d.Revision
	if res.Revision == 0 {
		res.Revision = rev
	}
	if res.Revision == 0 {
		res.Revision = c.eng.Head()
	}
	return res, nil
}

// tokenEvent fills a token check's event: the token's id, its holders from
// the current one back to the first, then the principal (the chain the
// token stands in for), and the token's reason for a denial.
func tokenEvent(ev *audit.Event, res CheckResult, err error) {
	ev.SubjectKind = audit.Agent
	d := res.Token
	if err != nil || d == nil {
		return
	}
	ev.TokenID, ev.Principal = d.TokenID, d.Principal
	ev.Decision, ev.Missing = decision(res.Decision), res.Missing
	ev.Reason = string(d.Reason)
	ev.Detail = d.Detail
	for i := len(d.Holders) - 1; i >= 0; i-- {
		ev.Chain = append(ev.Chain, audit.Link{Subject: d.Holders[i]})
	}
	if d.Principal != "" {
		ev.Chain = append(ev.Chain, audit.Link{Subject: d.Principal})
	}
}
