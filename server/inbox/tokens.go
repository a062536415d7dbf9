package inbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// Tokens is what the inbox needs of the token service (*tokenapi.Service):
// the minted-token registry and revocation. Tokens attenuated offline are
// registered, and so listed, once a check has allowed them.
type Tokens interface {
	Tokens(ctx context.Context, f capability.MintedFilter) ([]capability.Minted, error)
	RevokeTokens(ctx context.Context, r capability.Revocation) (store.Revision, error)
}

// Revocations lists the token revocations in force (*op.Core), so that a
// revoked token, or one made from a revoked one, is not shown as live.
type Revocations interface {
	TokenRevocations(ctx context.Context) ([]capability.Revocation, error)
}

// tokenView is a live token of mine, as "my agents" shows it.
type tokenView struct {
	ID      string
	Holder  rel.Object
	Rights  []string
	Task    string
	Expires time.Time
}

// tokensFor lists the live tokens whose principal is me: registered,
// unexpired, and matched by no revocation (of the token or any token it
// was made from, its holder, its task or me).
func (in *Inbox) tokensFor(ctx context.Context, me rel.Object) ([]tokenView, error) {
	if in.deps.Tokens == nil {
		return nil, nil
	}
	minted, err := in.deps.Tokens.Tokens(ctx, capability.MintedFilter{Principal: me.String()})
	if err != nil {
		return nil, fmt.Errorf("listing tokens: %w", err)
	}
	revs, err := in.deps.Revocations.TokenRevocations(ctx)
	if err != nil && !errors.Is(err, op.ErrTokensOff) {
		return nil, fmt.Errorf("listing token revocations: %w", err)
	}
	revoked := map[capability.RevokeBy]map[string]bool{}
	for _, r := range revs {
		if revoked[r.By] == nil {
			revoked[r.By] = map[string]bool{}
		}
		revoked[r.By][r.Value] = true
	}
	byID := map[string]capability.Minted{}
	for _, m := range minted {
		byID[m.ID] = m
	}
	// dead: m, or a token it was made from (as far as the registry knows
	// them), is revoked.
	dead := func(m capability.Minted) bool {
		if revoked[capability.RevokePrincipal][m.Principal] || revoked[capability.RevokeToken][m.RootID] {
			return true
		}
		for seen := 0; seen <= len(byID); seen++ {
			if revoked[capability.RevokeToken][m.ID] || revoked[capability.RevokeHolder][m.Holder] || (m.Task != "" && revoked[capability.RevokeTask][m.Task]) {
				return true
			}
			parent, ok := byID[m.Parent]
			if m.Parent == "" || !ok {
				return revoked[capability.RevokeToken][m.Parent]
			}
			m = parent
		}
		return true // a cycle in the registry: show nothing live
	}
	now := time.Now()
	var out []tokenView
	for _, m := range minted {
		holder, err := parseObject(m.Holder)
		if err != nil || dead(m) || (!m.Expires.IsZero() && !now.Before(m.Expires)) {
			continue
		}
		v := tokenView{ID: m.ID, Holder: holder, Task: m.Task, Expires: m.Expires}
		for _, r := range m.Rights {
			v.Rights = append(v.Rights, r.String())
		}
		out = append(out, v)
	}
	return out, nil
}

// revokeToken revokes a live capability token minted for me (and so every
// token made from it).
func (in *Inbox) revokeToken(w http.ResponseWriter, r *http.Request) {
	if in.deps.Tokens == nil {
		in.fail(w, r, http.StatusServiceUnavailable, "Capability tokens are not served by this server.")
		return
	}
	me := personFrom(r.Context()).Object
	id := r.PathValue("id")
	tokens, err := in.tokensFor(r.Context(), me)
	if err != nil {
		in.serviceFailed(w, r, "listing your tokens", err)
		return
	}
	i := slices.IndexFunc(tokens, func(t tokenView) bool { return t.ID == id })
	if i < 0 {
		in.fail(w, r, http.StatusNotFound, "There is no such live token of yours.")
		return
	}
	_, err = in.deps.Tokens.RevokeTokens(r.Context(), capability.Revocation{
		By: capability.RevokeToken, Value: id, Reason: "revoked in the web inbox by " + me.String(),
		RevokedAt: time.Now().UTC(), Until: tokens[i].Expires,
	})
	if err != nil {
		in.serviceFailed(w, r, "revoking the token", err)
		return
	}
	http.Redirect(w, r, "/ui/agents?done=token", http.StatusSeeOther)
}
