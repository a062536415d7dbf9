package capability

import (
	"context"
	"fmt"
	"slices"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// LookupRequest is a LookupResources call made with a token.
type LookupRequest struct {
	Token        string
	ResourceType string
	Permission   string
	// Subject makes the call; it must be the token's holder.
	Subject rel.Object
	Task    string
	Context map[string]any
}

// LookupScope is what a LookupResources call made with a token runs as:
// the engine looks up Principal's resources with Context, Keep filters
// them to those the token allows, and Confirm, given the revision the
// lookup answered at, makes sure no revocation up to it was missed.
type LookupScope struct {
	Principal rel.Object
	Context   map[string]any
	// Decision describes the token (its ids, holders and principal).
	Decision Decision

	c   *Checker
	vt  *Verified
	req LookupRequest
}

// Lookup prepares a LookupResources call made with a token. A token that
// cannot allow anything for the call (bad, expired, revoked, held by
// someone else, without a right on the type and permission) is a denial:
// the scope is nil and the decision says why.
func (c *Checker) Lookup(eng Engine, req LookupRequest) (*LookupScope, Decision) {
	d := Decision{Block: -1}
	vt, err := c.Verifier.Verify(req.Token)
	if err != nil {
		return nil, deny(d, err)
	}
	d.TokenID, d.RootID, d.Holders, d.Principal, d.Task = vt.ID(), vt.RootID(), vt.Holders(), vt.Principal(), vt.Task()
	if holder := vt.Holder(); holder != req.Subject.String() {
		return nil, deny(d, &Error{Reason: ReasonWrongHolder, Block: vt.holderBlock(), Err: fmt.Errorf("token is held by %s, the request is made by %s", holder, req.Subject)})
	}
	for i, b := range vt.Blocks {
		if len(b.Rights) > 0 && !anyTypeCovers(b.Rights, req.ResourceType, req.Permission) {
			return nil, deny(d, &Error{Reason: ReasonOutOfScope, Block: i, Err: fmt.Errorf("no right to %s on any %s", req.Permission, req.ResourceType)})
		}
	}
	principal, _ := parseObject(vt.Principal())
	if _, err := checkTypes(eng, vt, req.ResourceType, req.Permission, principal); err != nil {
		return nil, deny(d, err)
	}
	if r, block, revoked := c.Revocations.Revoked(&vt.Token); revoked {
		return nil, deny(d, &Error{Reason: ReasonRevoked, Block: block, Err: fmt.Errorf("revoked by %s %s at revision %d", r.By, r.Value, r.Revision)})
	}
	return &LookupScope{Principal: principal, Context: mergeContext(req.Context, vt), Decision: d, c: c, vt: vt, req: req}, d
}

func anyTypeCovers(rights []Right, typ, permission string) bool {
	for _, r := range rights {
		if r.Type == typ && slices.Contains(r.Permissions, permission) {
			return true
		}
	}
	return false
}

// Keep reports whether the token allows the call's permission on the
// resource with id (expiry, rights and task, as Check decides them).
func (s *LookupScope) Keep(id string) bool {
	_, err := s.c.Verifier.Allow(s.vt, Request{
		Resource: rel.Object{Type: s.req.ResourceType, ID: id}, Permission: s.req.Permission,
		Holder: s.req.Subject, Task: s.req.Task,
	})
	return err == nil
}

// Confirm is called with the revision the lookup answered at: it waits
// until this replica's revocations have reached it and denies when the
// token was revoked by then.
func (s *LookupScope) Confirm(ctx context.Context, rev store.Revision) (Decision, bool) {
	d := s.Decision
	if err := s.c.waitForRevocations(ctx, rev); err != nil {
		return deny(d, &Error{Reason: ReasonRevocationsBehind, Block: -1, Err: err}), false
	}
	if r, block, revoked := s.c.Revocations.Revoked(&s.vt.Token); revoked {
		return deny(d, &Error{Reason: ReasonRevoked, Block: block, Err: fmt.Errorf("revoked by %s %s at revision %d", r.By, r.Value, r.Revision)}), false
	}
	d.Allowed, d.Revision = true, rev
	return d, true
}
