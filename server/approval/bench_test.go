package approval_test

import (
	"context"
	"testing"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store/rel"
)

// noMatch is an escalator whose rules never match: what the approvals hook
// costs an allowed agent check on its own.
type noMatch struct{}

func (noMatch) Escalate(context.Context, op.EscalationInput) (op.EscalationMatch, bool, error) {
	return op.EscalationMatch{}, false, nil
}
func (noMatch) Observe(op.EscalationInput, bool) {}

// BenchmarkAgentCheck compares an allowed agent check through the core
// without approvals, with the approval service and a rule set that never
// matches, and with a rule that holds the check and a live grant lifting
// it (the grant lookup on every check).
func BenchmarkAgentCheck(b *testing.B) {
	for _, bc := range []struct {
		name  string
		esc   op.Escalator
		grant bool
		off   bool
	}{
		{name: "approvals-off", off: true},
		{name: "no-rule-matches", esc: noMatch{}},
		{name: "held-and-granted", esc: rulePermission{perm: "view"}, grant: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			t := &testing.T{}
			f := newFixture(t, bc.esc, baseRels...)
			f.t = t
			if bc.off {
				f.core.SetApprovals(nil, nil)
			}
			if bc.grant {
				r := f.file("view")
				if _, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: alice}); err != nil {
					b.Fatal(err)
				}
			}
			if res := f.check("view", ""); res.Decision != engine.Allowed {
				b.Fatalf("warm-up check: %v", res.Decision)
			}
			req := op.CheckRequest{Resource: doc1, Permission: "view", Subject: rel.Subject{Type: "agent", ID: "bot"}}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				res, err := f.core.Check(ctx, req)
				if err != nil || res.Decision != engine.Allowed {
					b.Fatalf("check: %v %v", res.Decision, err)
				}
			}
		})
	}
}
