package op

import (
	"context"
	"fmt"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// CheckRequest asks whether Subject has Permission on Resource.
type CheckRequest struct {
	Resource   rel.Object
	Permission string
	Subject    rel.Subject
	// Context supplies caveat parameters.
	Context map[string]any
	// OnBehalfOf names the principal when an agent subject acts for
	// several.
	OnBehalfOf  *rel.Object
	Consistency Consistency
	// Explain asks for the delegation chain's details in the result.
	Explain bool
	// CapabilityToken checks with a capability token: Subject must be its
	// holder, and the token stands in for the holder's own grant and
	// acts_for link (the token's principal must still hold the permission;
	// see capability.Checker). A task-restricted token allows only requests
	// whose Context has "task" set to its task.
	CapabilityToken string
	// ApprovalID names the approval grant the check redeems: a single-use
	// grant allows only a check naming it (see approval.go).
	ApprovalID string
	// Contextual relationships hold for this check only: validated as a
	// write is, never stored, named in the audit event.
	Contextual []rel.Relationship

	// noApprovals answers without escalation rules or grants
	// (CheckWithoutApprovals).
	noApprovals bool
}

// CheckResult is the engine's answer, at the revision it was computed at.
type CheckResult struct {
	engine.CheckResult
	// Token explains a check made with a capability token; nil otherwise.
	Token *capability.Decision
	// Approval says how an escalation rule or an approval grant shaped
	// the answer; nil when neither did (see approval.go).
	Approval *ApprovalOutcome
	// Contextual are the request's contextual relationships the answer was
	// computed with.
	Contextual []rel.Relationship
}

func (r CheckRequest) engine(rev store.Revision, explain bool) engine.CheckRequest {
	return engine.CheckRequest{Resource: r.Resource, Permission: r.Permission, Subject: r.Subject,
		Context: r.Context, OnBehalfOf: r.OnBehalfOf, Revision: rev, Explain: explain, Contextual: r.Contextual}
}

// Check answers one check.
func (c *Core) Check(ctx context.Context, req CheckRequest) (CheckResult, error) {
	err := c.contextualWithin(req.Contextual, req.CapabilityToken)
	var rev store.Revision
	if err == nil {
		rev, err = c.engineRevision(ctx, req.Consistency)
	}
	var res CheckResult
	if err == nil {
		res, err = c.check(ctx, req, rev)
		res.Contextual = req.Contextual
	}
	if err == nil {
		c.applyApprovals(ctx, req, &res)
		c.decided(res.Decision)
	}
	if c.aud == nil {
		return res, err
	}
	call := callFrom(ctx)
	ev := call.event(audit.OpCheck, err)
	c.checkEvent(ev, req, res, err, res.Revision)
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return CheckResult{}, aerr
	}
	return res, err
}

func (r CheckRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpCheck, err)
	describeCheck(ev, r)
	return []*audit.Event{ev}
}

// CheckBulkRequest asks several checks at one revision.
type CheckBulkRequest struct {
	// Items are the checks; an item's own Consistency is ignored.
	Items       []CheckItem
	Consistency Consistency
	Explain     bool
}

// CheckItem is one check of a bulk check. Err is set by the facade when the
// item did not parse: the item then fails on its own, with Err, and the
// others are answered.
type CheckItem struct {
	CheckRequest
	Err error
}

// CheckBulkResult answers a bulk check: Items[i] answers request item i.
type CheckBulkResult struct {
	// Revision is the one revision every item was answered at.
	Revision store.Revision
	Items    []CheckItemResult
}

// CheckItemResult is one item's answer, or its error.
type CheckItemResult struct {
	CheckResult
	Err error
}

// CheckBulk answers several checks at one revision. The call fails as a
// whole only when the request does (limits, consistency, cancellation);
// an item's own failure is its Err.
func (c *Core) CheckBulk(ctx context.Context, req CheckBulkRequest) (CheckBulkResult, error) {
	out, err := c.checkBulk(ctx, req)
	if c.aud == nil {
		return out, err
	}
	call := callFrom(ctx)
	if err != nil {
		ev := call.event(audit.OpCheckBulk, err)
		ev.Count = int64(len(req.Items))
		if aerr := c.recordRead(ctx, call, ev); aerr != nil {
			return CheckBulkResult{}, aerr
		}
		return CheckBulkResult{}, err
	}
	evs := make([]*audit.Event, len(req.Items))
	for i, it := range req.Items {
		res := out.Items[i]
		ev := call.event(audit.OpCheckBulk, res.Err)
		c.checkEvent(ev, it.CheckRequest, res.CheckResult, res.Err, out.Revision)
		evs[i] = ev
	}
	if aerr := c.recordRead(ctx, call, evs...); aerr != nil {
		return CheckBulkResult{}, aerr
	}
	return out, nil
}

func (c *Core) checkBulk(ctx context.Context, req CheckBulkRequest) (CheckBulkResult, error) {
	if err := c.within(LimitCheckBulkItems, len(req.Items), c.lim.MaxCheckBulkItems); err != nil {
		return CheckBulkResult{}, err
	}
	if c.tokens == nil {
		for _, it := range req.Items {
			if it.CapabilityToken != "" {
				return CheckBulkResult{}, fmt.Errorf("capability_token: %w", ErrTokensOff)
			}
		}
	}
	for _, it := range req.Items {
		if err := c.contextualWithin(it.Contextual, it.CapabilityToken); err != nil {
			return CheckBulkResult{}, err
		}
	}
	rev, err := c.pinnedRevision(ctx, req.Consistency)
	if err != nil {
		return CheckBulkResult{}, err
	}
	out := CheckBulkResult{Revision: rev, Items: make([]CheckItemResult, len(req.Items))}
	reqs := make([]engine.CheckRequest, 0, len(req.Items))
	at := make([]int, 0, len(req.Items))
	for i, it := range req.Items {
		if it.Err != nil {
			out.Items[i].Err = it.Err
			continue
		}
		if it.CapabilityToken != "" {
			res, err := c.checkToken(ctx, it.CheckRequest, rev)
			if err == nil {
				c.applyApprovals(ctx, it.CheckRequest, &res)
				c.decided(res.Decision)
			}
			out.Items[i] = CheckItemResult{CheckResult: res, Err: err}
			continue
		}
		reqs = append(reqs, it.engine(rev, req.Explain))
		at = append(at, i)
	}
	if len(reqs) > 0 {
		results, errs := c.eng.CheckBulk(ctx, reqs)
		for j, i := range at {
			if errs[j] != nil {
				out.Items[i].Err = errs[j]
				continue
			}
			res := CheckResult{CheckResult: results[j], Contextual: req.Items[i].Contextual}
			c.applyApprovals(ctx, req.Items[i].CheckRequest, &res)
			c.decided(res.Decision)
			out.Items[i].CheckResult = res
		}
	}
	if err := ctx.Err(); err != nil {
		return CheckBulkResult{}, err
	}
	return out, nil
}

func (r CheckBulkRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpCheckBulk, err)
	ev.Count = int64(len(r.Items))
	return []*audit.Event{ev}
}

// describeCheck fills what a check's event says of its request.
func describeCheck(ev *audit.Event, r CheckRequest) {
	ev.Resource, ev.Permission, ev.Subject = objectString(r.Resource), r.Permission, subjectString(r.Subject)
	if r.OnBehalfOf != nil {
		ev.OnBehalfOf = objectString(*r.OnBehalfOf)
	}
	ev.Context = r.Context
	describeContextual(ev, r.Contextual)
}

// checkEvent fills a check's event from its request and the engine's
// answer (res is zero when err is set). The answer says whether the
// subject is an agent (it explains a delegation); only a check that failed
// before the engine answered asks the schema.
func (c *Core) checkEvent(ev *audit.Event, r CheckRequest, res CheckResult, err error, rev store.Revision) {
	describeCheck(ev, r)
	ev.Revision = uint64(rev)
	defer approvalEvent(ev, res.Approval)
	if r.CapabilityToken != "" {
		tokenEvent(ev, res, err)
		return
	}
	d := res.Delegation
	switch {
	case d != nil:
		ev.SubjectKind = audit.Agent
	case r.Subject.Relation != "":
		ev.SubjectKind = audit.Userset
	case err != nil:
		ev.SubjectKind = kindIn(c.eng.Schema(rev), r.Subject)
	default:
		ev.SubjectKind = audit.Person
	}
	switch {
	case ev.SubjectKind == audit.Person:
		ev.Principal = ev.Subject
	case ev.SubjectKind == audit.Agent && d == nil:
		ev.Principal = ev.OnBehalfOf
	}
	if err != nil {
		return
	}
	ev.Decision, ev.Missing = decision(res.Decision), res.Missing
	if d == nil {
		return
	}
	ev.Reason = string(d.Reason)
	ev.ResolvableByApproval = d.ResolvableByApproval
	ev.Chain = make([]audit.Link, len(d.Chain))
	for i, e := range d.Chain {
		l := audit.Link{Subject: objectString(e.Subject), Grant: decision(e.Grant), Missing: e.Missing}
		if i < len(d.Chain)-1 {
			l.Link = decision(e.Link)
		}
		l.Failed = d.Reason != "" && d.FailedAt == i
		ev.Chain[i] = l
	}
	// The chain ends at the principal unless it failed before reaching a
	// person (no delegation, a cycle, too deep): only then does the last
	// member's type need the schema the engine answered with.
	if n := len(d.Chain); n > 1 {
		last := d.Chain[n-1].Subject
		if d.Reason == "" || kindIn(c.eng.Schema(res.Revision), rel.Subject{Type: last.Type, ID: last.ID}) == audit.Person {
			ev.Principal = ev.Chain[n-1].Subject
		}
	}
}

// LookupResourcesRequest asks which resources of ResourceType Subject has
// Permission on, one page at a time.
type LookupResourcesRequest struct {
	ResourceType string
	Permission   string
	Subject      rel.Subject
	Context      map[string]any
	OnBehalfOf   *rel.Object
	Consistency  Consistency
	// After resumes a paged lookup after the last ID returned ("": from
	// the start); Consistency then names the page's revision exactly.
	After string
	// Limit bounds the page (0: every result).
	Limit int
	// CapabilityToken, when set, looks up as the token's holder (Subject):
	// the resources the token's rights cover that its principal holds
	// now (see token.go).
	CapabilityToken string
	// Contextual relationships hold for this lookup only.
	Contextual []rel.Relationship
}

// LookupResult is a page of lookup results at the revision they were
// computed at, sorted by ID.
type LookupResult struct {
	Revision store.Revision
	Results  []engine.LookupResult
}

// LookupResources answers one page of a resource lookup.
func (c *Core) LookupResources(ctx context.Context, req LookupResourcesRequest) (LookupResult, error) {
	var d *capability.Decision
	out, err := c.lookup(ctx, req.Limit, req.Consistency, req.Contextual, func(rev store.Revision) ([]engine.LookupResult, store.Revision, error) {
		if req.CapabilityToken != "" {
			res, rev, dec, err := c.lookupToken(ctx, req, rev)
			d = dec
			return res, rev, err
		}
		return c.eng.LookupResources(ctx, engine.LookupResourcesRequest{
			ResourceType: req.ResourceType, Permission: req.Permission, Subject: req.Subject,
			Context: req.Context, OnBehalfOf: req.OnBehalfOf, Revision: rev, After: req.After, Limit: req.Limit,
			Contextual: req.Contextual,
		})
	})
	call := callFrom(ctx)
	ev := call.event(audit.OpLookupResources, err)
	describeLookupResources(ev, req)
	ev.Revision, ev.Count = uint64(out.Revision), int64(len(out.Results))
	if req.CapabilityToken != "" {
		lookupTokenEvent(ev, d, err)
	} else if req.Subject.Type != "" {
		ev.SubjectKind = kindIn(c.eng.Schema(out.Revision), req.Subject)
		switch {
		case ev.SubjectKind == audit.Person:
			ev.Principal = ev.Subject
		case ev.OnBehalfOf != "":
			ev.Principal = ev.OnBehalfOf
		}
	}
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return LookupResult{}, aerr
	}
	return out, err
}

// lookup runs one page of a lookup within the limit, at the revision its
// consistency asks for.
func (c *Core) lookup(ctx context.Context, limit int, cons Consistency, contextual []rel.Relationship, run func(store.Revision) ([]engine.LookupResult, store.Revision, error)) (LookupResult, error) {
	if err := c.within(LimitLookup, limit, c.lim.MaxLookupLimit); err != nil {
		return LookupResult{}, err
	}
	if err := c.contextualWithin(contextual, ""); err != nil {
		return LookupResult{}, err
	}
	rev, err := c.engineRevision(ctx, cons)
	if err != nil {
		return LookupResult{}, err
	}
	var out LookupResult
	out.Results, out.Revision, err = run(rev)
	return out, err
}

func describeLookupResources(ev *audit.Event, r LookupResourcesRequest) {
	ev.Resource, ev.Permission, ev.Subject = r.ResourceType, r.Permission, subjectString(r.Subject)
	if r.OnBehalfOf != nil {
		ev.OnBehalfOf = objectString(*r.OnBehalfOf)
	}
	ev.Context = r.Context
	describeContextual(ev, r.Contextual)
}

func (r LookupResourcesRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpLookupResources, err)
	describeLookupResources(ev, r)
	return []*audit.Event{ev}
}

// LookupSubjectsRequest asks which subjects of SubjectType (and
// SubjectRelation) have Permission on Resource, one page at a time.
type LookupSubjectsRequest struct {
	Resource        rel.Object
	Permission      string
	SubjectType     string
	SubjectRelation string
	Context         map[string]any
	Consistency     Consistency
	// After and Limit page as in LookupResourcesRequest.
	After string
	Limit int
	// Contextual relationships hold for this lookup only.
	Contextual []rel.Relationship
}

// LookupSubjects answers one page of a subject lookup.
func (c *Core) LookupSubjects(ctx context.Context, req LookupSubjectsRequest) (LookupResult, error) {
	out, err := c.lookup(ctx, req.Limit, req.Consistency, req.Contextual, func(rev store.Revision) ([]engine.LookupResult, store.Revision, error) {
		return c.eng.LookupSubjects(ctx, engine.LookupSubjectsRequest{
			Resource: req.Resource, Permission: req.Permission, SubjectType: req.SubjectType,
			SubjectRelation: req.SubjectRelation, Context: req.Context, Revision: rev, After: req.After, Limit: req.Limit,
			Contextual: req.Contextual,
		})
	})
	call := callFrom(ctx)
	ev := call.event(audit.OpLookupSubjects, err)
	describeLookupSubjects(ev, req)
	ev.Revision, ev.Count = uint64(out.Revision), int64(len(out.Results))
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return LookupResult{}, aerr
	}
	return out, err
}

func describeLookupSubjects(ev *audit.Event, r LookupSubjectsRequest) {
	ev.Resource, ev.Permission = objectString(r.Resource), r.Permission
	ev.Subject = r.SubjectType
	if r.SubjectRelation != "" {
		ev.Subject += "#" + r.SubjectRelation
	}
	ev.Context = r.Context
	describeContextual(ev, r.Contextual)
}

func (r LookupSubjectsRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpLookupSubjects, err)
	describeLookupSubjects(ev, r)
	return []*audit.Event{ev}
}

// ExpandRequest asks for the tree of who has Permission on Resource.
type ExpandRequest struct {
	Resource    rel.Object
	Permission  string
	Consistency Consistency
	// Recursive expands usersets down to their subjects; otherwise they
	// stay subjects and only arrows are followed (SpiceDB's Expand).
	Recursive bool
}

// ExpandResult is the tree at the revision it was expanded at.
type ExpandResult struct {
	Revision store.Revision
	Tree     *engine.ExpandNode
}

// Expand expands a permission.
func (c *Core) Expand(ctx context.Context, req ExpandRequest) (ExpandResult, error) {
	call := callFrom(ctx)
	rev, err := c.pinnedRevision(ctx, req.Consistency)
	var out ExpandResult
	if err == nil {
		out.Revision = rev
		out.Tree, err = c.eng.Expand(ctx, req.Resource, req.Permission, rev, req.Recursive)
	}
	ev := call.event(audit.OpExpand, err)
	ev.Resource, ev.Permission, ev.Revision = objectString(req.Resource), req.Permission, uint64(out.Revision)
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return ExpandResult{}, aerr
	}
	return out, err
}

func (r ExpandRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(audit.OpExpand, err)
	ev.Resource, ev.Permission = objectString(r.Resource), r.Permission
	return []*audit.Event{ev}
}
