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
	case len(req.Contextual) > 0:
		// The token's principal is checked against stored relationships
		// only; answering without the request's own would not be what it asked.
		return CheckResult{}, fmt.Errorf("%w: contextual_relationships: not allowed with a capability token", ErrInvalidTokenCheck)
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
	if err != nil || res.Token == nil {
		return
	}
	describeToken(ev, res.Token)
	ev.Decision, ev.Missing = decision(res.Decision), res.Missing
}

// describeToken names d's token, chain and reason in ev.
func describeToken(ev *audit.Event, d *capability.Decision) {
	ev.TokenID, ev.Principal = d.TokenID, d.Principal
	ev.Reason = string(d.Reason)
	ev.Detail = d.Detail
	for i := len(d.Holders) - 1; i >= 0; i-- {
		ev.Chain = append(ev.Chain, audit.Link{Subject: d.Holders[i]})
	}
	if d.Principal != "" {
		ev.Chain = append(ev.Chain, audit.Link{Subject: d.Principal})
	}
}

// lookupToken answers one page of a LookupResources made with a capability
// token at rev: the principal's resources (engine lookups, with the
// token's context) that the token's rights allow the holder, confirmed
// against this replica's revocations at the revision answered. A token
// that allows nothing is no error: the page is empty and d says why.
func (c *Core) lookupToken(ctx context.Context, req LookupResourcesRequest, rev store.Revision) ([]engine.LookupResult, store.Revision, *capability.Decision, error) {
	switch {
	case c.tokens == nil:
		return nil, 0, nil, fmt.Errorf("capability_token: %w", ErrTokensOff)
	case req.Subject.Relation != "":
		return nil, 0, nil, fmt.Errorf("%w: subject: a token is held by an object, not the userset %s", ErrInvalidTokenCheck, subjectString(req.Subject))
	case req.OnBehalfOf != nil:
		return nil, 0, nil, fmt.Errorf("%w: on_behalf_of: not allowed with a capability token, which names its own principal", ErrInvalidTokenCheck)
	case len(req.Contextual) > 0:
		return nil, 0, nil, fmt.Errorf("%w: contextual_relationships: not allowed with a capability token", ErrInvalidTokenCheck)
	case rev == engine.EmptyRevision:
		return nil, 0, nil, fmt.Errorf("looking up with a capability token at revision zero: %w", engine.ErrNoSchema)
	}
	task, _ := req.Context["task"].(string)
	scope, d := c.tokens.Lookup(c.tokenEng, capability.LookupRequest{
		Token: req.CapabilityToken, ResourceType: req.ResourceType, Permission: req.Permission,
		Subject: rel.Object{Type: req.Subject.Type, ID: req.Subject.ID}, Task: task, Context: req.Context,
	})
	if scope == nil {
		return nil, rev, &d, nil
	}
	// Pages of the principal's resources, filtered by the token, until the
	// page is full or the principal's resources run out: a page the token
	// filtered down must not look like the end.
	var out []engine.LookupResult
	after, answered := req.After, rev
	for {
		page, at, err := c.eng.LookupResources(ctx, engine.LookupResourcesRequest{
			ResourceType: req.ResourceType, Permission: req.Permission,
			Subject: rel.Subject{Type: scope.Principal.Type, ID: scope.Principal.ID},
			Context: scope.Context, Revision: rev, After: after, Limit: req.Limit,
		})
		if err != nil {
			return nil, 0, nil, fmt.Errorf("looking up the token's principal %s: %w", scope.Principal, err)
		}
		answered = at
		for _, r := range page {
			if scope.Keep(r.ID) && (req.Limit == 0 || len(out) < req.Limit) {
				out = append(out, r)
			}
		}
		if req.Limit == 0 || len(page) < req.Limit || len(out) >= req.Limit {
			break
		}
		after = page[len(page)-1].ID
	}
	d, ok := scope.Confirm(ctx, answered)
	if !ok {
		return nil, answered, &d, nil
	}
	return out, answered, &d, nil
}

// lookupTokenEvent fills a token lookup's event as tokenEvent does a
// check's.
func lookupTokenEvent(ev *audit.Event, d *capability.Decision, err error) {
	ev.SubjectKind = audit.Agent
	if err == nil && d != nil {
		describeToken(ev, d)
	}
}
