package op

import (
	"context"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/store"
)

// StreamLookupResources is LookupResources delivering its results as the
// engine confirms them: send receives them in ID order, in batches that
// start small and grow (engine.StreamLookupResources), each with the one
// revision the whole lookup is evaluated at. A batch is valid only during
// the call. A caller streaming a large answer then sees its first results
// after a fraction of the work, and the answer is never held whole.
//
// The call's audit event, with the number of results sent, is recorded
// when the evaluation ends, before the call returns: a lookup the trail
// cannot record then fails with ErrUnavailable instead of succeeding, so
// no lookup completes unaudited (with a durable trail, not before its
// event is durable). Its results are out by then: the price of not
// holding a large answer back until its last result. A lookup refused
// before it starts (its limit, its consistency) is audited at once and
// answers nothing.
func (c *Core) StreamLookupResources(ctx context.Context, req LookupResourcesRequest, send func(rev store.Revision, results []engine.LookupResult) error) error {
	if req.CapabilityToken != "" {
		// A token's lookup filters pages of its principal's resources
		// (lookupToken): answered whole, then sent as one batch.
		out, err := c.LookupResources(ctx, req)
		if err != nil || len(out.Results) == 0 {
			return err
		}
		return send(out.Revision, out.Results)
	}
	call := callFrom(ctx)
	ev := call.event(audit.OpLookupResources, nil)
	describeLookupResources(ev, req)
	rev, err := c.lookupRevision(ctx, req.Limit, req.Consistency)
	if err == nil {
		err = c.contextualWithin(req.Contextual, "")
	}
	if err != nil {
		call.fail(ev, err)
		if aerr := c.recordRead(ctx, call, ev); aerr != nil {
			return aerr
		}
		return err
	}
	if rev != engine.EmptyRevision {
		ev.Revision = uint64(rev)
	}
	c.describeLookupSubject(ev, req, rev)
	err = c.eng.StreamLookupResources(ctx, engine.LookupResourcesRequest{
		ResourceType: req.ResourceType, Permission: req.Permission, Subject: req.Subject,
		Context: req.Context, OnBehalfOf: req.OnBehalfOf, Revision: rev, After: req.After, Limit: req.Limit,
		Contextual: req.Contextual,
	}, func(rev store.Revision, results []engine.LookupResult) error {
		if err := send(rev, results); err != nil {
			return err
		}
		ev.Count += int64(len(results))
		return nil
	})
	if err != nil {
		call.fail(ev, err)
		c.recordStreamed(ctx, call, ev, call.claim())
		return err
	}
	return c.recordRead(ctx, call, ev)
}

// lookupRevision checks a lookup's limit and resolves the revision its
// consistency asks for, pinned to the engine's head when it is left open,
// so that the audit event names the revision of an empty answer too.
func (c *Core) lookupRevision(ctx context.Context, limit int, cons Consistency) (store.Revision, error) {
	if err := c.within(LimitLookup, limit, c.lim.MaxLookupLimit); err != nil {
		return 0, err
	}
	return c.pinnedRevision(ctx, cons)
}

// describeLookupSubject names the kind of a resource lookup's subject, and
// its principal, by the schema at the lookup's revision.
func (c *Core) describeLookupSubject(ev *audit.Event, req LookupResourcesRequest, rev store.Revision) {
	if req.Subject.Type == "" {
		return
	}
	ev.SubjectKind = kindIn(c.eng.Schema(rev), req.Subject)
	switch {
	case ev.SubjectKind == audit.Person:
		ev.Principal = ev.Subject
	case ev.OnBehalfOf != "":
		ev.Principal = ev.OnBehalfOf
	}
}
