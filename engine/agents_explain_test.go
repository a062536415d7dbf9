package engine_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// explainNow is the engines' clock in these tests.
var explainNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

const explainSchema = `
use expiration

caveat scope(action string, allowed_actions list<string>, task string, allowed_task string) {
  action in allowed_actions && task == allowed_task
}

caveat on_resource(resource_type string, resource_id string, allowed_type string, allowed_id string) {
  resource_type == allowed_type && resource_id == allowed_id
}

definition user {}

definition agent {
  relation acts_for: user | user with expiration | user with scope | user with on_resource | agent | agent with scope
}

definition doc {
  relation owner: user
  relation viewer: user | agent | agent:*
  relation editor: user | agent
  permission read = owner + viewer
  permission write = owner + editor
}
`

// explainRelationships: alice owns doc:d and doc:e; bob reads doc:d; carol
// holds nothing. Every agent may read doc:d; writer and multi may write it.
var explainRelationships = []string{
	"doc:d#owner@user:alice",
	"doc:e#owner@user:alice",
	"doc:d#viewer@user:bob",
	"doc:d#viewer@agent:*",
	"doc:d#editor@agent:writer",
	"doc:d#editor@agent:for_carol",
	"doc:d#editor@agent:for_bob",
	"doc:d#editor@agent:multi",
	"doc:d#editor@agent:scoped2",
	"doc:e#viewer@agent:pinned",

	"agent:old#acts_for@user:alice[expiration:2001-01-01T00:00:00Z]",
	"agent:lapses_now#acts_for@user:alice[expiration:2025-06-01T12:00:00Z]",
	"agent:lapses_soon#acts_for@user:alice[expiration:2025-06-01T12:00:01Z]",
	"agent:sub_old#acts_for@agent:old",
	"agent:direct#acts_for@user:alice",
	"agent:writer#acts_for@user:alice",
	"agent:for_carol#acts_for@user:carol",
	"agent:for_bob#acts_for@user:bob",
	"agent:sub#acts_for@agent:direct",
	`agent:scoped#acts_for@user:alice[scope:{"allowed_actions":["read"],"allowed_task":"t1"}]`,
	`agent:scoped2#acts_for@user:alice[scope:{"allowed_actions":["read","write"],"allowed_task":"t1"}]`,
	"agent:sub_scoped#acts_for@agent:scoped",
	`agent:sub_link_scoped#acts_for@agent:direct[scope:{"allowed_actions":["read"],"allowed_task":"t1"}]`,
	`agent:pinned#acts_for@user:alice[on_resource:{"allowed_type":"doc","allowed_id":"d"}]`,
	"agent:x#acts_for@agent:y",
	"agent:y#acts_for@agent:x",
	"agent:multi#acts_for@user:alice",
	"agent:multi#acts_for@user:bob",
	"agent:c1#acts_for@user:alice",
	"agent:c2#acts_for@agent:c1",
	"agent:c3#acts_for@agent:c2",
	"agent:c4#acts_for@agent:c3",
	"agent:c5#acts_for@agent:c4",
	"agent:c6#acts_for@agent:c5",
	"agent:c7#acts_for@agent:c6",
	"agent:c8#acts_for@agent:c7",
	"agent:c9#acts_for@agent:c8",
}

func explainEngine(t *testing.T, opts ...engine.Option) *engine.Engine {
	t.Helper()
	rels := make([]rel.Relationship, len(explainRelationships))
	for i, line := range explainRelationships {
		r, err := rel.Parse(line)
		if err != nil {
			t.Fatalf("parsing %q: %v", line, err)
		}
		rels[i] = r
	}
	// The fixed clock first, so that a caller's own clock wins.
	opts = append([]engine.Option{engine.WithClock(func() time.Time { return explainNow })}, opts...)
	e, err := engine.Load(context.Background(), explainSchema, rels, opts...)
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	return e
}

func explainObject(t *testing.T, s string) rel.Object {
	t.Helper()
	typ, id, ok := strings.Cut(s, ":")
	if !ok {
		t.Fatalf("object %q: expected type:id", s)
	}
	return rel.Object{Type: typ, ID: id}
}

// explainChain renders c10 -> ... style chains of agents cN .. c1 -> alice.
func explainChain(from, to int) []string {
	var out []string
	for i := from; i >= to; i-- {
		out = append(out, "agent:c"+string(rune('0'+i)))
	}
	return out
}

func TestDelegationExplanation(t *testing.T) {
	const (
		A = engine.Allowed
		D = engine.Denied
		C = engine.Conditional
	)
	t1 := map[string]any{"task": "t1"}
	tests := []struct {
		name       string
		resource   string
		permission string
		subject    string
		context    map[string]any
		onBehalfOf string
		maxChain   int // 0: the default

		wantErr    error
		decision   engine.Decision
		missing    []string
		chain      []string
		reason     engine.Reason
		failedAt   int
		resolvable bool
		// grants and links, when set, are each chain element's own grant
		// and outgoing link.
		grants, links []engine.Decision
	}{
		{
			name: "direct delegation allowed", resource: "doc:d", permission: "read", subject: "agent:direct",
			decision: A, chain: []string{"agent:direct", "user:alice"}, failedAt: -1,
			grants: []engine.Decision{A, A}, links: []engine.Decision{A, A},
		},
		{
			name: "sub-agent chain is ordered agent to principal", resource: "doc:d", permission: "read", subject: "agent:sub",
			decision: A, chain: []string{"agent:sub", "agent:direct", "user:alice"}, failedAt: -1,
		},
		{
			name: "no delegation", resource: "doc:d", permission: "read", subject: "agent:lonely",
			decision: D, chain: []string{"agent:lonely"}, reason: engine.ReasonNoDelegation, failedAt: 0,
		},
		{
			name: "expired delegation", resource: "doc:d", permission: "read", subject: "agent:old",
			decision: D, chain: []string{"agent:old"}, reason: engine.ReasonDelegationExpired, failedAt: 0,
		},
		{
			name: "delegation expiring at the current instant is expired", resource: "doc:d", permission: "read", subject: "agent:lapses_now",
			decision: D, chain: []string{"agent:lapses_now"}, reason: engine.ReasonDelegationExpired, failedAt: 0,
		},
		{
			name: "delegation expiring a second later is live", resource: "doc:d", permission: "read", subject: "agent:lapses_soon",
			decision: A, chain: []string{"agent:lapses_soon", "user:alice"}, failedAt: -1,
		},
		{
			name: "expired link above a sub-agent", resource: "doc:d", permission: "read", subject: "agent:sub_old",
			decision: D, chain: []string{"agent:sub_old", "agent:old"}, reason: engine.ReasonDelegationExpired, failedAt: 1,
		},
		{
			name: "scoped delegation in scope", resource: "doc:d", permission: "read", subject: "agent:scoped", context: t1,
			decision: A, chain: []string{"agent:scoped", "user:alice"}, failedAt: -1,
		},
		{
			name: "scoped delegation for another task", resource: "doc:d", permission: "read", subject: "agent:scoped",
			context:  map[string]any{"task": "t2"},
			decision: D, chain: []string{"agent:scoped"}, reason: engine.ReasonOutOfScope, failedAt: 0,
		},
		{
			name: "scoped delegation for another action", resource: "doc:d", permission: "write", subject: "agent:scoped", context: t1,
			decision: D, chain: []string{"agent:scoped"}, reason: engine.ReasonOutOfScope, failedAt: 0,
		},
		{
			name: "request context cannot override action", resource: "doc:d", permission: "write", subject: "agent:scoped",
			context:  map[string]any{"task": "t1", "action": "read"},
			decision: D, chain: []string{"agent:scoped"}, reason: engine.ReasonOutOfScope, failedAt: 0,
		},
		{
			name: "request context naming another action changes nothing", resource: "doc:d", permission: "read", subject: "agent:scoped",
			context:  map[string]any{"task": "t1", "action": "write"},
			decision: A, chain: []string{"agent:scoped", "user:alice"}, failedAt: -1,
		},
		{
			name: "scoped delegation without its task is conditional", resource: "doc:d", permission: "read", subject: "agent:scoped",
			decision: C, missing: []string{"task"}, chain: []string{"agent:scoped", "user:alice"}, failedAt: -1,
			grants: []engine.Decision{A, A}, links: []engine.Decision{C, A},
		},
		{
			name: "out of scope above a sub-agent", resource: "doc:d", permission: "write", subject: "agent:sub_scoped", context: t1,
			decision: D, chain: []string{"agent:sub_scoped", "agent:scoped"}, reason: engine.ReasonOutOfScope, failedAt: 1,
		},
		{
			name: "scoped sub-agent in scope", resource: "doc:d", permission: "read", subject: "agent:sub_scoped", context: t1,
			decision: A, chain: []string{"agent:sub_scoped", "agent:scoped", "user:alice"}, failedAt: -1,
		},
		{
			name: "resource-pinned delegation on its resource", resource: "doc:d", permission: "read", subject: "agent:pinned",
			decision: A, chain: []string{"agent:pinned", "user:alice"}, failedAt: -1,
		},
		{
			name: "resource-pinned delegation elsewhere", resource: "doc:e", permission: "read", subject: "agent:pinned",
			decision: D, chain: []string{"agent:pinned"}, reason: engine.ReasonOutOfScope, failedAt: 0,
		},
		{
			name: "request context cannot override resource_type or resource_id", resource: "doc:e", permission: "read", subject: "agent:pinned",
			context:  map[string]any{"resource_type": "doc", "resource_id": "d"},
			decision: D, chain: []string{"agent:pinned"}, reason: engine.ReasonOutOfScope, failedAt: 0,
		},
		{
			name: "agent not granted, principal allows: resolvable", resource: "doc:d", permission: "write", subject: "agent:direct",
			decision: D, chain: []string{"agent:direct", "user:alice"}, reason: engine.ReasonAgentNotGranted, failedAt: 0, resolvable: true,
			grants: []engine.Decision{D, A}, links: []engine.Decision{A, A},
		},
		{
			name: "no agent in the chain granted, principal allows: resolvable", resource: "doc:d", permission: "write", subject: "agent:sub",
			decision: D, chain: []string{"agent:sub", "agent:direct", "user:alice"}, reason: engine.ReasonAgentNotGranted, failedAt: 0, resolvable: true,
			grants: []engine.Decision{D, D, A},
		},
		{
			name: "agent not granted while its link is conditional: not resolvable", resource: "doc:e", permission: "read", subject: "agent:sub_link_scoped",
			decision: D, chain: []string{"agent:sub_link_scoped", "agent:direct", "user:alice"}, reason: engine.ReasonAgentNotGranted, failedAt: 0,
			grants: []engine.Decision{D, D, A}, links: []engine.Decision{C, A, A},
		},
		{
			name: "agent not granted with every link in scope: resolvable", resource: "doc:e", permission: "read", subject: "agent:sub_link_scoped", context: t1,
			decision: D, chain: []string{"agent:sub_link_scoped", "agent:direct", "user:alice"}, reason: engine.ReasonAgentNotGranted, failedAt: 0, resolvable: true,
		},
		{
			name: "agent granted, principal denied", resource: "doc:d", permission: "write", subject: "agent:for_carol",
			decision: D, chain: []string{"agent:for_carol", "user:carol"}, reason: engine.ReasonPrincipalDenied, failedAt: 1,
			grants: []engine.Decision{A, D},
		},
		{
			name: "principal allows only reading", resource: "doc:d", permission: "write", subject: "agent:for_bob",
			decision: D, chain: []string{"agent:for_bob", "user:bob"}, reason: engine.ReasonPrincipalDenied, failedAt: 1,
		},
		{
			name: "agent and principal both denied: first failure, not resolvable", resource: "doc:e", permission: "read", subject: "agent:for_bob",
			decision: D, chain: []string{"agent:for_bob", "user:bob"}, reason: engine.ReasonAgentNotGranted, failedAt: 0,
			grants: []engine.Decision{D, D},
		},
		{
			name: "cycle", resource: "doc:d", permission: "read", subject: "agent:x",
			decision: D, chain: []string{"agent:x", "agent:y", "agent:x"}, reason: engine.ReasonCycle, failedAt: 2,
		},
		{
			name: "eight links is the default limit", resource: "doc:d", permission: "read", subject: "agent:c8",
			decision: A, chain: append(explainChain(8, 1), "user:alice"), failedAt: -1,
		},
		{
			name: "nine links is too deep", resource: "doc:d", permission: "read", subject: "agent:c9",
			decision: D, chain: explainChain(9, 1), reason: engine.ReasonChainTooDeep, failedAt: 8,
		},
		{
			name: "configured limit allows two links", resource: "doc:d", permission: "read", subject: "agent:c2", maxChain: 2,
			decision: A, chain: append(explainChain(2, 1), "user:alice"), failedAt: -1,
		},
		{
			name: "configured limit denies three links", resource: "doc:d", permission: "read", subject: "agent:c3", maxChain: 2,
			decision: D, chain: explainChain(3, 1), reason: engine.ReasonChainTooDeep, failedAt: 2,
		},
		{
			name: "two principals without on_behalf_of", resource: "doc:d", permission: "write", subject: "agent:multi",
			wantErr: engine.ErrAmbiguousAgent,
		},
		{
			name: "on_behalf_of selects the allowing principal", resource: "doc:d", permission: "write", subject: "agent:multi", onBehalfOf: "user:alice",
			decision: A, chain: []string{"agent:multi", "user:alice"}, failedAt: -1,
		},
		{
			name: "on_behalf_of selects the denying principal", resource: "doc:d", permission: "write", subject: "agent:multi", onBehalfOf: "user:bob",
			decision: D, chain: []string{"agent:multi", "user:bob"}, reason: engine.ReasonPrincipalDenied, failedAt: 1,
		},
		{
			name: "on_behalf_of someone the agent does not act for", resource: "doc:d", permission: "read", subject: "agent:multi", onBehalfOf: "user:carol",
			decision: D, chain: []string{"agent:multi"}, reason: engine.ReasonNoDelegation, failedAt: 0,
		},
		{
			name: "on_behalf_of the single principal", resource: "doc:d", permission: "read", subject: "agent:direct", onBehalfOf: "user:alice",
			decision: A, chain: []string{"agent:direct", "user:alice"}, failedAt: -1,
		},
		{
			name: "on_behalf_of a non-agent subject", resource: "doc:d", permission: "read", subject: "user:bob", onBehalfOf: "user:alice",
			wantErr: engine.ErrInvalidOnBehalfOf,
		},
		{
			name: "on_behalf_of that is not an object", resource: "doc:d", permission: "read", subject: "agent:multi", onBehalfOf: ":",
			wantErr: engine.ErrInvalidOnBehalfOf,
		},
		{
			name: "conditional link and denied grant: not resolvable", resource: "doc:e", permission: "write", subject: "agent:scoped2",
			decision: D, chain: []string{"agent:scoped2", "user:alice"}, reason: engine.ReasonAgentNotGranted, failedAt: 0,
			grants: []engine.Decision{D, A}, links: []engine.Decision{C, A},
		},
		{
			name: "in-scope link and denied grant: resolvable", resource: "doc:e", permission: "write", subject: "agent:scoped2", context: t1,
			decision: D, chain: []string{"agent:scoped2", "user:alice"}, reason: engine.ReasonAgentNotGranted, failedAt: 0, resolvable: true,
		},
	}
	engines := map[int]*engine.Engine{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := engines[tt.maxChain]
			if e == nil {
				var opts []engine.Option
				if tt.maxChain > 0 {
					opts = append(opts, engine.WithMaxChain(tt.maxChain))
				}
				e = explainEngine(t, opts...)
				engines[tt.maxChain] = e
			}
			sub, err := rel.ParseSubject(tt.subject)
			if err != nil {
				t.Fatal(err)
			}
			req := engine.CheckRequest{
				Resource: explainObject(t, tt.resource), Permission: tt.permission, Subject: sub,
				Context: tt.context, Explain: true,
			}
			if tt.onBehalfOf != "" {
				typ, id, _ := strings.Cut(tt.onBehalfOf, ":")
				req.OnBehalfOf = &rel.Object{Type: typ, ID: id}
			}
			got, err := e.Check(context.Background(), req)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Check = %+v, %v; want error %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if got.Decision != tt.decision || !slices.Equal(got.Missing, tt.missing) {
				t.Errorf("decision = %v missing %v, want %v missing %v", got.Decision, got.Missing, tt.decision, tt.missing)
			}
			d := got.Delegation
			if d == nil {
				t.Fatal("no delegation explanation for an agent subject")
			}
			var chain []string
			for _, el := range d.Chain {
				chain = append(chain, el.Subject.String())
			}
			if !slices.Equal(chain, tt.chain) {
				t.Errorf("chain = %v, want %v", chain, tt.chain)
			}
			if want := strings.Join(tt.chain, " -> "); d.String() != want {
				t.Errorf("String() = %q, want %q", d.String(), want)
			}
			if d.Reason != tt.reason || d.FailedAt != tt.failedAt {
				t.Errorf("reason %q failed at %d, want %q at %d", d.Reason, d.FailedAt, tt.reason, tt.failedAt)
			}
			if d.ResolvableByApproval != tt.resolvable {
				t.Errorf("resolvable by approval = %v, want %v", d.ResolvableByApproval, tt.resolvable)
			}
			for i, want := range tt.grants {
				if i < len(d.Chain) && d.Chain[i].Grant != want {
					t.Errorf("chain[%d] %s: grant %v, want %v", i, d.Chain[i].Subject, d.Chain[i].Grant, want)
				}
			}
			for i, want := range tt.links {
				if i < len(d.Chain) && d.Chain[i].Link != want {
					t.Errorf("chain[%d] %s: link %v, want %v", i, d.Chain[i].Subject, d.Chain[i].Link, want)
				}
			}
		})
	}
}

// A plain subject gets no delegation explanation, and the same question
// asked through an agent is explained.
func TestDelegationExplanationOnlyForAgents(t *testing.T) {
	e := explainEngine(t)
	ctx := context.Background()
	doc := rel.Object{Type: "doc", ID: "d"}
	got, err := e.Check(ctx, engine.CheckRequest{Resource: doc, Permission: "read", Subject: rel.Subject{Type: "user", ID: "alice"}, Explain: true})
	if err != nil || got.Decision != engine.Allowed || got.Delegation != nil {
		t.Errorf("user check = %+v, %v; want allowed without delegation", got, err)
	}
	// A wildcard agent subject is a plain check of the wildcard itself.
	got, err = e.Check(ctx, engine.CheckRequest{Resource: doc, Permission: "read", Subject: rel.Subject{Type: "agent", ID: rel.Wildcard}, Explain: true})
	if err != nil || got.Delegation != nil {
		t.Errorf("agent:* check = %+v, %v; want no delegation", got, err)
	}
}

// Revoking any link cuts everything below it at once; expiring one does so
// as the clock passes it.
func TestDelegationRevocationCutsBelow(t *testing.T) {
	now := explainNow
	e := explainEngine(t, engine.WithClock(func() time.Time { return now }))
	ctx := context.Background()
	check := func(subject string) engine.CheckResult {
		t.Helper()
		res, err := e.Check(ctx, engine.CheckRequest{
			Resource: rel.Object{Type: "doc", ID: "d"}, Permission: "read",
			Subject: rel.Subject{Type: "agent", ID: subject}, Explain: true,
		})
		if err != nil {
			t.Fatalf("check %s: %v", subject, err)
		}
		return res
	}
	if got := check("c5"); got.Decision != engine.Allowed {
		t.Fatalf("c5 before revocation: %v", got.Decision)
	}
	cut, err := rel.Parse("agent:c3#acts_for@agent:c2")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(store.Change{Revision: e.Head() + 1, Updates: []store.Update{{Op: store.Delete, Rel: cut}}}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"c3", "c4", "c5", "c9"} {
		got := check(a)
		if got.Decision != engine.Denied || got.Delegation.Reason != engine.ReasonNoDelegation {
			t.Errorf("%s after revoking c3 -> c2: %v %q, want denied no_delegation", a, got.Decision, got.Delegation.Reason)
		}
	}
	if got := check("c2"); got.Decision != engine.Allowed {
		t.Errorf("c2 above the revoked link: %v, want allowed", got.Decision)
	}

	if got := check("lapses_soon"); got.Decision != engine.Allowed {
		t.Fatalf("lapses_soon before its expiration: %v", got.Decision)
	}
	now = now.Add(time.Second)
	if got := check("lapses_soon"); got.Decision != engine.Denied || got.Delegation.Reason != engine.ReasonDelegationExpired {
		t.Errorf("lapses_soon at its expiration: %v %q, want denied delegation_expired", got.Decision, got.Delegation.Reason)
	}
}
