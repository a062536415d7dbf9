package capability

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Engine is what checking with a token needs from the engine. The server
// adapts its engine (and schema) to it.
type Engine interface {
	// CheckPrincipal answers whether principal holds permission on
	// resource, through its own live delegation chain when it is an agent,
	// at q.Revision (0: the latest revision applied), waiting until that
	// revision is applied.
	CheckPrincipal(ctx context.Context, q PrincipalQuery) (PrincipalAnswer, error)
	// Type describes a type of the schema in force; false when the schema
	// does not define it.
	Type(name string) (TypeInfo, bool)
}

// PrincipalQuery is one engine check of a token's principal.
type PrincipalQuery struct {
	Resource   rel.Object
	Permission string
	Principal  rel.Object
	// PrincipalIsAgent asks for the principal's delegation chain.
	PrincipalIsAgent bool
	Context          map[string]any
	// Revision to answer at; 0: the latest applied.
	Revision store.Revision
}

// PrincipalAnswer is the engine's answer.
type PrincipalAnswer struct {
	Allowed     bool
	Conditional bool
	Missing     []string
	// Revision is the revision the answer was computed at.
	Revision store.Revision
	// Reason is the engine's reason code for a denial, when it has one
	// (e.g. no_delegation for an agent principal whose chain is cut).
	Reason string
	// Chain is the principal's resolved chain, for an agent principal.
	Chain []string
}

// TypeInfo describes a schema type.
type TypeInfo struct {
	// Agent: the type is an agent type (it has an acts_for relation).
	Agent bool
	// Names lists its relations and permissions.
	Names []string
}

// UseCounter counts the uses of blocks with a use limit.
type UseCounter interface {
	// Use records one use of each block id, all or none: it fails with
	// false when any would exceed its limit.
	Use(ctx context.Context, limits map[string]int) (bool, error)
}

// Checker checks requests made with tokens and mints tokens against the
// engine. Its fields are shared by every call; a Checker is safe for
// concurrent use.
type Checker struct {
	Keys        *KeySet
	Verifier    *Verifier
	Revocations *RevocationSet
	// Uses counts uses of tokens with max_uses: StoreUses holds a limit
	// across replicas; nil counts in this process only (one replica,
	// tests).
	Uses UseCounter
	// RevocationWait bounds how long a check waits for this replica's
	// revocations to catch up with the revision it answered at.
	RevocationWait time.Duration
	Now            func() time.Time

	defaultUses memoryUses
}

// CheckRequest is a request made with a token.
type CheckRequest struct {
	Token      string
	Resource   rel.Object
	Permission string
	// Subject makes the request; it must be the token's holder.
	Subject rel.Object
	Task    string
	Context map[string]any
	// Revision is the revision to answer at, resolved from the request's
	// consistency by the caller (0: the latest applied). Revocations up to
	// the revision answered at are always seen.
	Revision store.Revision
}

// Decision explains a check made with a token.
type Decision struct {
	Allowed     bool
	Conditional bool
	Missing     []string
	// Reason is why the token did not allow the request (ReasonNone when
	// it did); Detail says more, for people.
	Reason Reason
	Detail string
	// EngineReason is the engine's reason code when the principal was
	// denied.
	EngineReason string
	// TokenID is the token's id (its last block's) and RootID its
	// authority block's; Block is the deciding block (-1: none).
	TokenID, RootID string
	Block           int
	// Holders lists the token's holders, first to current; Principal is
	// whom they act for; PrincipalChain the principal's own chain when it
	// is an agent.
	Holders        []string
	Principal      string
	PrincipalChain []string
	Task           string
	// Revision is the revision the principal's check was answered at.
	Revision store.Revision
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func deny(d Decision, err error) Decision {
	reason, block := reasonOf(err)
	d.Allowed, d.Conditional, d.Reason, d.Detail = false, false, reason, err.Error()
	if block >= 0 || d.Block < 0 {
		d.Block = block
	}
	return d
}

// Check decides a request made with a token: the token must verify, not be
// revoked, be held by the subject and allow the request in every block; the
// resource, holder and principal types must still exist in the schema; and
// the principal's live chain must hold the permission now. Every failure is
// a denial with a reason; the error is for failures to decide at all
// (the engine or ctx failing).
func (c *Checker) Check(ctx context.Context, eng Engine, req CheckRequest) (Decision, error) {
	d := Decision{Block: -1}
	now := c.Verifier.opts.Now()
	vt, err := c.Verifier.verifyAt(req.Token, now)
	if err != nil {
		return deny(d, err), nil
	}
	d.TokenID, d.RootID, d.Holders, d.Principal, d.Task = vt.ID(), vt.RootID(), vt.Holders(), vt.Principal(), vt.Task()
	allowance, err := c.Verifier.allowAt(vt, Request{Resource: req.Resource, Permission: req.Permission, Holder: req.Subject, Task: req.Task}, now)
	if err != nil {
		return deny(d, err), nil
	}
	d.Block = allowance.Block
	principal, _ := parseObject(vt.Principal()) // validated by decodeToken
	agent, err := checkTypes(eng, vt, req.Resource.Type, req.Permission, principal)
	if err != nil {
		return deny(d, err), nil
	}
	ans, err := eng.CheckPrincipal(ctx, PrincipalQuery{Resource: req.Resource, Permission: req.Permission, Principal: principal, PrincipalIsAgent: agent,
		Context: mergeContext(req.Context, vt), Revision: req.Revision})
	if err != nil {
		return Decision{}, fmt.Errorf("checking the token's principal %s: %w", principal, err)
	}
	d.Revision, d.PrincipalChain = ans.Revision, ans.Chain
	// No new enemy: the revocations applied here must be at least as fresh
	// as the answer, else a revocation this replica has not seen yet could
	// be ignored.
	if err := c.waitForRevocations(ctx, max(ans.Revision, req.Revision)); err != nil {
		return deny(d, &Error{Reason: ReasonRevocationsBehind, Block: -1, Err: err}), nil
	}
	if r, block, revoked := c.Revocations.Revoked(&vt.Token); revoked {
		return deny(d, &Error{Reason: ReasonRevoked, Block: block, Err: fmt.Errorf("revoked by %s %s at revision %d", r.By, r.Value, r.Revision)}), nil
	}
	switch {
	case ans.Conditional:
		d.Conditional, d.Missing = true, ans.Missing
		return d, nil
	case !ans.Allowed:
		d.EngineReason = ans.Reason
		return deny(d, &Error{Reason: ReasonPrincipalDenied, Block: 0, Err: fmt.Errorf("%s does not hold %s on %s", principal, req.Permission, req.Resource)}), nil
	}
	if limits := useLimits(vt); len(limits) > 0 {
		uses := c.Uses
		if uses == nil {
			uses = &c.defaultUses
		}
		ok, err := uses.Use(ctx, limits)
		if err != nil {
			return Decision{}, fmt.Errorf("counting token uses: %w", err)
		}
		if !ok {
			return deny(d, &Error{Reason: ReasonUsesExhausted, Block: -1, Err: errors.New("the token's use limit is reached")}), nil
		}
	}
	d.Allowed = true
	return d, nil
}

// mergeContext lets the token's context override the request's: the
// caller cannot widen what the principal delegated.
func mergeContext(reqCtx map[string]any, vt *Verified) map[string]any {
	tc := vt.Blocks[0].Context
	if len(tc) == 0 {
		return reqCtx
	}
	out := maps.Clone(reqCtx)
	if out == nil {
		out = make(map[string]any, len(tc))
	}
	maps.Copy(out, tc)
	return out
}

func (c *Checker) waitForRevocations(ctx context.Context, rev store.Revision) error {
	if c.Revocations.Revision() >= rev {
		return nil
	}
	wait := c.RevocationWait
	if wait <= 0 {
		wait = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return c.Revocations.WaitFor(ctx, rev)
}

// checkTypes refuses a token or request naming types the schema no longer
// defines (or no longer defines as needed), and reports whether the
// principal is an agent.
func checkTypes(eng Engine, vt *Verified, resourceType, permission string, principal rel.Object) (principalIsAgent bool, err error) {
	res, ok := eng.Type(resourceType)
	if !ok || !slices.Contains(res.Names, permission) {
		return false, &Error{Reason: ReasonUnknownType, Block: -1, Err: fmt.Errorf("the schema defines no %s#%s", resourceType, permission)}
	}
	p, ok := eng.Type(principal.Type)
	if !ok {
		return false, &Error{Reason: ReasonUnknownType, Block: 0, Err: fmt.Errorf("principal type %q is not defined in the schema", principal.Type)}
	}
	checked := ""
	for i, b := range vt.Blocks {
		if b.Holder == "" {
			continue
		}
		h, _ := parseObject(b.Holder)
		if h.Type == checked {
			continue // holders are usually all of one agent type
		}
		if t, ok := eng.Type(h.Type); !ok || !t.Agent {
			return false, &Error{Reason: ReasonUnknownType, Block: i, Err: fmt.Errorf("holder %s: %q is not an agent type of the schema", b.Holder, h.Type)}
		}
		checked = h.Type
	}
	return p.Agent, nil
}

func useLimits(vt *Verified) map[string]int {
	var limits map[string]int
	for _, b := range vt.Blocks {
		if b.MaxUses > 0 {
			if limits == nil {
				limits = make(map[string]int)
			}
			limits[b.ID] = b.MaxUses
		}
	}
	return limits
}

// memoryUses counts uses in this process only.
type memoryUses struct {
	mu   sync.Mutex
	used map[string]int
}

func (m *memoryUses) Use(_ context.Context, limits map[string]int) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used == nil {
		m.used = make(map[string]int)
	}
	for id, limit := range limits {
		if m.used[id] >= limit {
			return false, nil
		}
	}
	for id := range limits {
		m.used[id]++
	}
	return true, nil
}

// Mint mints a token after checking, with the engine, that the principal
// holds every right it delegates: for an object right, the permission on
// that object; for a type right, that the type defines the permission (the
// principal's hold on each object is checked at every use). A right the
// principal lacks is refused by name.
func (c *Checker) Mint(ctx context.Context, eng Engine, g Grant) (*Token, error) {
	return c.MintAt(ctx, eng, g, 0)
}

// MintAt is Mint with the principal's rights checked at rev (0: the
// engine's latest applied revision); the server passes the store's head,
// so that a lagging replica cannot delegate a right already removed.
func (c *Checker) MintAt(ctx context.Context, eng Engine, g Grant, rev store.Revision) (*Token, error) {
	holder, ok := eng.Type(g.Holder.Type)
	if !ok || !holder.Agent {
		return nil, fmt.Errorf("mint: %w: holder %s: %q is not an agent type of the schema", ErrInvalidGrant, g.Holder, g.Holder.Type)
	}
	if _, ok := eng.Type(g.OnBehalfOf.Type); !ok {
		return nil, fmt.Errorf("mint: %w: on_behalf_of %s: type %q is not defined in the schema", ErrInvalidGrant, g.OnBehalfOf, g.OnBehalfOf.Type)
	}
	for _, r := range g.Rights {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("mint: %w: right %s: %w", ErrInvalidGrant, r, err)
		}
		t, ok := eng.Type(r.Type)
		if !ok {
			return nil, fmt.Errorf("mint: %w: right %s: type %q is not defined in the schema", ErrInvalidGrant, r, r.Type)
		}
		for _, p := range r.Permissions {
			if !slices.Contains(t.Names, p) {
				return nil, fmt.Errorf("mint: %w: right %s: %s defines no %q", ErrInvalidGrant, r, r.Type, p)
			}
			if r.ID == "" {
				continue
			}
			obj := rel.Object{Type: r.Type, ID: r.ID}
			ans, err := eng.CheckPrincipal(ctx, PrincipalQuery{Resource: obj, Permission: p, Principal: g.OnBehalfOf, Context: g.Context, Revision: rev})
			if err != nil {
				return nil, fmt.Errorf("mint: checking %s#%s for %s: %w", obj, p, g.OnBehalfOf, err)
			}
			if !ans.Allowed {
				return nil, fmt.Errorf("mint: %w: %s does not hold %s on %s", ErrNotHeld, g.OnBehalfOf, p, obj)
			}
		}
	}
	return Mint(c.Keys, g, c.now())
}

// ErrNotHeld refuses to mint a right the principal does not hold.
var ErrNotHeld = errors.New("cannot delegate a right the principal does not hold")
