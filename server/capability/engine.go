package capability

import (
	"context"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store/rel"
)

// ForEngine adapts an in-process engine to Engine: principal checks at the
// revision asked for (waiting until the engine has applied it), with the
// delegation chain explained for agent principals.
func ForEngine(e *engine.Engine) Engine { return engineAdapter{e} }

type engineAdapter struct{ e *engine.Engine }

func (a engineAdapter) CheckPrincipal(ctx context.Context, q PrincipalQuery) (PrincipalAnswer, error) {
	if q.Revision != 0 && q.Revision > a.e.Head() {
		if err := a.e.WaitForRevision(ctx, q.Revision); err != nil {
			return PrincipalAnswer{}, err
		}
	}
	res, err := a.e.Check(ctx, engine.CheckRequest{
		Resource: q.Resource, Permission: q.Permission,
		Subject: rel.Subject{Type: q.Principal.Type, ID: q.Principal.ID},
		Context: q.Context, Revision: q.Revision, Explain: q.PrincipalIsAgent,
	})
	if err != nil {
		return PrincipalAnswer{}, err
	}
	ans := PrincipalAnswer{
		Allowed: res.Decision == engine.Allowed, Conditional: res.Decision == engine.Conditional,
		Missing: res.Missing, Revision: res.Revision,
	}
	if d := res.Delegation; d != nil {
		ans.Reason = string(d.Reason)
		for _, el := range d.Chain {
			ans.Chain = append(ans.Chain, el.Subject.String())
		}
	}
	return ans, nil
}

func (a engineAdapter) Type(name string) (TypeInfo, bool) {
	sch := a.e.Schema(0)
	if sch == nil {
		return TypeInfo{}, false
	}
	def := sch.Definition(name)
	if def == nil {
		return TypeInfo{}, false
	}
	return TypeInfo{Agent: def.IsAgent(), Names: def.Order}, true
}
