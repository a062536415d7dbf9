package op

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
)

// The token service's operations: minting, revoking, listing and
// inspecting capability tokens, each audited like every other operation.
// A token's text is a bearer credential: it never reaches an event or a
// log, only its id does.

// ErrInvalidTokenRequest: a token operation's request is shaped wrongly (the
// error names the field and what was expected).
var ErrInvalidTokenRequest = errors.New("invalid token request")

// MintResult is a minted token and its registry entry.
type MintResult struct {
	// Token is the token's text: hand it to its holder, never log it.
	Token  string
	Minted capability.Minted
	// Revision registered the token.
	Revision store.Revision
}

// tokenRecords is the store's record half, needed by the registry and
// revocations.
func (c *Core) tokenRecords() (capability.RecordStore, error) {
	if c.tokens == nil {
		return nil, ErrTokensOff
	}
	rs, ok := c.st.(capability.RecordStore)
	if !ok {
		return nil, fmt.Errorf("%w: the store keeps no records", ErrTokensOff)
	}
	return rs, nil
}

// MintToken signs a token for g after the engine confirms the principal
// holds every right, and registers it (its metadata, not its text).
func (c *Core) MintToken(ctx context.Context, g capability.Grant) (MintResult, error) {
	res, err := c.mintToken(ctx, g)
	call := callFrom(ctx)
	ev := call.event(audit.OpTokenMint, err)
	ev.Subject, ev.SubjectKind = g.Holder.String(), audit.Agent
	ev.OnBehalfOf, ev.Principal = g.OnBehalfOf.String(), g.OnBehalfOf.String()
	ev.Context = g.Context
	rights := make([]string, len(g.Rights))
	for i, r := range g.Rights {
		rights[i] = r.String()
	}
	ev.Detail = strings.Join(rights, " ")
	if g.Task != "" {
		ev.Detail += " task=" + g.Task
	}
	if err == nil {
		ev.TokenID, ev.Revision = res.Minted.ID, uint64(res.Revision)
		exp := res.Minted.Expires
		ev.ExpiresAt = &exp
	}
	if aerr := c.recordWrite(ctx, call, ev); aerr != nil {
		return MintResult{}, aerr
	}
	return res, err
}

func (c *Core) mintToken(ctx context.Context, g capability.Grant) (MintResult, error) {
	rs, err := c.tokenRecords()
	if err != nil {
		return MintResult{}, err
	}
	// The principal must hold every right now: checked at the store's
	// head, not at whatever this replica has applied.
	rev, err := c.engineRevision(ctx, Consistency{Mode: FullyConsistent})
	if err != nil {
		return MintResult{}, err
	}
	tok, err := c.tokens.MintAt(ctx, c.tokenEng, g, rev)
	switch {
	case errors.Is(err, capability.ErrInvalidGrant):
		return MintResult{}, fmt.Errorf("%w: %w", ErrInvalidTokenRequest, err)
	case err != nil:
		return MintResult{}, err
	}
	text, err := tok.Encode()
	if err != nil {
		return MintResult{}, fmt.Errorf("encoding the token: %w", err)
	}
	registered, err := capability.Register(ctx, rs, tok)
	if err != nil {
		return MintResult{}, err
	}
	return MintResult{Token: text, Minted: capability.MintedOf(tok), Revision: registered}, nil
}

// RevokeTokens stores a revocation durably and returns its revision: a
// check at least as fresh as it is denied on every replica.
func (c *Core) RevokeTokens(ctx context.Context, r capability.Revocation) (store.Revision, error) {
	rev, err := c.revokeTokens(ctx, r)
	call := callFrom(ctx)
	ev := call.event(audit.OpTokenRevoke, err)
	ev.Detail, ev.Reason, ev.Revision = string(r.By)+" "+r.Value, r.Reason, uint64(rev)
	switch r.By {
	case capability.RevokeToken:
		ev.TokenID = r.Value
	case capability.RevokeHolder:
		ev.Subject, ev.SubjectKind = r.Value, audit.Agent
	case capability.RevokePrincipal:
		ev.Principal = r.Value
	}
	if aerr := c.recordWrite(ctx, call, ev); aerr != nil {
		return 0, aerr
	}
	return rev, err
}

func (c *Core) revokeTokens(ctx context.Context, r capability.Revocation) (store.Revision, error) {
	rs, err := c.tokenRecords()
	if err != nil {
		return 0, err
	}
	rev, err := capability.Revoke(ctx, rs, r)
	if errors.Is(err, capability.ErrInvalidRevocation) || errors.Is(err, store.ErrInvalidRecord) {
		return 0, fmt.Errorf("%w: %w", ErrInvalidTokenRequest, err)
	}
	return rev, err
}

// ListTokens lists the registered tokens matching f that have neither
// expired nor been revoked, soonest expiry first, as fresh as the store's head. Tokens attenuated
// offline are listed once a check on this cluster has allowed them (see
// usedTokens).
func (c *Core) ListTokens(ctx context.Context, f capability.MintedFilter) ([]capability.Minted, store.Revision, error) {
	var (
		out []capability.Minted
		rev store.Revision
	)
	rs, err := c.tokenRecords()
	if err == nil {
		out, rev, err = c.listTokens(ctx, rs, f)
	}
	call := callFrom(ctx)
	ev := call.event(audit.OpTokenList, err)
	ev.Subject, ev.Principal, ev.Revision, ev.Count = f.Holder, f.Principal, uint64(rev), int64(len(out))
	if f.Holder != "" {
		ev.SubjectKind = audit.Agent
	}
	if f.Task != "" {
		ev.Detail = "task=" + f.Task
	}
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return nil, 0, aerr
	}
	return out, rev, err
}

// listTokens lists the registered tokens matching f that are neither
// expired nor revoked as of the list's revision (waiting, within the
// revision wait, for this replica's revocations to reach it; if they do
// not, a revocation just written may not hide its token yet).
func (c *Core) listTokens(ctx context.Context, rs capability.RecordStore, f capability.MintedFilter) ([]capability.Minted, store.Revision, error) {
	all, rev, err := capability.ListMinted(ctx, rs, f, time.Now())
	if err != nil {
		return nil, 0, err
	}
	wctx, cancel := c.boundRevisionWait(ctx)
	_ = c.tokens.Revocations.WaitFor(wctx, rev)
	cancel()
	out := all[:0]
	for _, m := range all {
		if !c.tokens.Revocations.RevokedMinted(m) {
			out = append(out, m)
		}
	}
	return out, rev, nil
}

// InspectResult is a token's blocks and whether it verifies here.
type InspectResult struct {
	Token *capability.Token
	// Err says why it does not verify (nil: it does).
	Err error
}

// InspectToken parses a token and verifies it against this server's keys.
func (c *Core) InspectToken(ctx context.Context, text string) (InspectResult, error) {
	var res InspectResult
	if c.tokens == nil {
		return res, c.inspectEvent(ctx, res, ErrTokensOff)
	}
	tok, err := capability.Inspect(text)
	if err != nil {
		err = fmt.Errorf("%w: token: %w", ErrInvalidTokenRequest, err)
		return res, c.inspectEvent(ctx, res, err)
	}
	res.Token = tok
	if _, verr := c.tokens.Verifier.Verify(text); verr != nil {
		res.Err = verr
	}
	return res, c.inspectEvent(ctx, res, nil)
}

func (c *Core) inspectEvent(ctx context.Context, res InspectResult, err error) error {
	call := callFrom(ctx)
	ev := call.event(audit.OpTokenInspect, err)
	if res.Token != nil {
		ev.TokenID, ev.Principal, ev.Subject, ev.SubjectKind = res.Token.ID(), res.Token.Principal(), res.Token.Holder(), audit.Agent
		if res.Err != nil {
			var e *capability.Error
			if errors.As(res.Err, &e) {
				ev.Reason = string(e.Reason)
			}
		}
	}
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return aerr
	}
	return err
}

// TokenRevocations lists the revocations this replica has applied.
func (c *Core) TokenRevocations(ctx context.Context) ([]capability.Revocation, error) {
	var out []capability.Revocation
	var err error
	if c.tokens == nil {
		err = ErrTokensOff
	} else {
		out = c.tokens.Revocations.List()
	}
	call := callFrom(ctx)
	ev := call.event(audit.OpTokenListRevocations, err)
	ev.Count = int64(len(out))
	if aerr := c.recordRead(ctx, call, ev); aerr != nil {
		return nil, aerr
	}
	return out, err
}

// TokenRequest describes a token operation refused before it ran (its
// input did not parse), for its audit event: the operation and whatever
// of the holder and principal was given. Never the token's text.
type TokenRequest struct {
	Operation         audit.Operation
	Holder, Principal string
}

func (r TokenRequest) events(call *Call, err error) []*audit.Event {
	ev := call.event(r.Operation, err)
	ev.Subject, ev.Principal = r.Holder, r.Principal
	if r.Holder != "" {
		ev.SubjectKind = audit.Agent
	}
	return []*audit.Event{ev}
}

// usedTokens registers tokens attenuated offline when a check first
// allows one (no server saw them before), so that the registry lists them
// from then on. It runs beside the check, never in its way: at most
// maxRegistering at once (more are dropped and registered on a later
// use), each id once per server until seen holds maxSeen ids (then it
// starts over; registering again is a harmless rewrite).
type usedTokens struct {
	mu   sync.Mutex
	seen map[string]bool
	busy chan struct{}
}

const (
	maxRegistering = 4
	maxSeen        = 100_000
)

func newUsedTokens() *usedTokens {
	return &usedTokens{seen: make(map[string]bool), busy: make(chan struct{}, maxRegistering)}
}

// registerUsed registers the attenuated token text (decided d) unless it
// was already, in the background.
func (c *Core) registerUsed(text string, d *capability.Decision) {
	if d == nil || !d.Allowed || d.TokenID == d.RootID {
		return // minted tokens were registered by MintToken
	}
	rs, err := c.tokenRecords()
	if err != nil {
		return
	}
	u := c.used
	u.mu.Lock()
	if u.seen[d.TokenID] {
		u.mu.Unlock()
		return
	}
	select {
	case u.busy <- struct{}{}:
	default:
		u.mu.Unlock()
		return
	}
	if len(u.seen) >= maxSeen {
		u.seen = make(map[string]bool)
	}
	u.seen[d.TokenID] = true
	u.mu.Unlock()
	go func() {
		defer func() { <-u.busy }()
		ctx, cancel := context.WithTimeout(context.Background(), c.lim.RequestTimeout)
		defer cancel()
		tok, err := capability.Inspect(text)
		if err == nil {
			_, err = capability.Register(ctx, rs, tok)
		}
		if err != nil {
			u.mu.Lock()
			delete(u.seen, d.TokenID)
			u.mu.Unlock()
			c.log.Warn("registering an attenuated token on its first use failed; a later use retries", "token_id", d.TokenID, "error", err)
		}
	}()
}
