package capability

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const testSchema = `
definition user {}

definition agent {
	relation acts_for: user | agent
}

definition calendar {
	relation owner: user
	relation reader: user | agent
	permission read = owner + reader
	permission write = owner
}

definition doc {
	relation viewer: user
	permission view = viewer
}
`

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fixture is a store, an engine following it, a revocation set following
// it and a checker over them.
type fixture struct {
	t     *testing.T
	ctx   context.Context
	clock *clock
	st    *memory.Store
	eng   *engine.Engine
	keys  *KeySet
	c     *Checker
}

func obj(s string) rel.Object {
	o, err := parseObject(s)
	if err != nil {
		panic(err)
	}
	return o
}

func newFixture(t *testing.T, rels ...string) *fixture {
	t.Helper()
	ctx := t.Context()
	clk := &clock{t: time.Now().Truncate(time.Second)}
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	if _, err := st.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	if len(rels) > 0 {
		muts := make([]store.Mutation, len(rels))
		for i, r := range rels {
			p, err := rel.Parse(r)
			if err != nil {
				t.Fatal(err)
			}
			muts[i] = store.Mutation{Op: store.Touch, Rel: p}
		}
		if _, err := st.Write(ctx, nil, muts); err != nil {
			t.Fatal(err)
		}
	}
	eng := engine.New()
	followCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { followEngine(followCtx, st, eng) })
	revs := NewRevocationSet()
	wg.Go(func() { _ = Follow(followCtx, st, revs) })
	key, err := GenerateKey("k1", clk.now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	head, _ := st.Head(ctx)
	if err := eng.WaitForRevision(ctx, head); err != nil {
		t.Fatal(err)
	}
	if err := revs.WaitFor(ctx, head); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, ctx: ctx, clock: clk, st: st, eng: eng, keys: keys, c: &Checker{
		Keys: keys, Verifier: NewVerifier(keys, VerifierOptions{Now: clk.now}), Revocations: revs, Now: clk.now,
	}}
}

func (f *fixture) mint(g Grant) string {
	f.t.Helper()
	tok, err := f.c.Mint(f.ctx, ForEngine(f.eng), g)
	if err != nil {
		f.t.Fatalf("Mint: %v", err)
	}
	text, err := tok.Encode()
	if err != nil {
		f.t.Fatal(err)
	}
	return text
}

func (f *fixture) attenuate(text string, n Narrowing) string {
	f.t.Helper()
	tok, err := Inspect(text)
	if err != nil {
		f.t.Fatalf("Inspect: %v", err)
	}
	next, err := Attenuate(tok, n, f.clock.now())
	if err != nil {
		f.t.Fatalf("Attenuate: %v", err)
	}
	out, err := next.Encode()
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) check(text, resourcePerm, subject string, atLeast store.Revision) Decision {
	f.t.Helper()
	return f.checkTask(text, resourcePerm, subject, "", atLeast)
}

func (f *fixture) checkTask(text, resourcePerm, subject, task string, atLeast store.Revision) Decision {
	f.t.Helper()
	res, perm, _ := strings.Cut(resourcePerm, "#")
	d, err := f.c.Check(f.ctx, ForEngine(f.eng), CheckRequest{Token: text, Resource: obj(res), Permission: perm, Subject: obj(subject), Task: task, Revision: atLeast})
	if err != nil {
		f.t.Fatalf("Check: %v", err)
	}
	return d
}

func (f *fixture) expect(d Decision, allowed bool, reason Reason, block int) {
	f.t.Helper()
	if d.Allowed != allowed || d.Reason != reason || d.Block != block {
		f.t.Fatalf("decision allowed=%v reason=%q block=%d (%s); want allowed=%v reason=%q block=%d", d.Allowed, d.Reason, d.Block, d.Detail, allowed, reason, block)
	}
}

func (f *fixture) write(op store.Op, rels ...string) store.Revision {
	f.t.Helper()
	muts := make([]store.Mutation, len(rels))
	for i, r := range rels {
		p, err := rel.Parse(r)
		if err != nil {
			f.t.Fatal(err)
		}
		muts[i] = store.Mutation{Op: op, Rel: p}
	}
	rev, err := f.st.Write(f.ctx, nil, muts)
	if err != nil {
		f.t.Fatal(err)
	}
	return rev
}

var bobRead = Grant{
	Holder: rel.Object{Type: "agent", ID: "a"}, OnBehalfOf: rel.Object{Type: "user", ID: "bob"},
	Rights: []Right{{Type: "calendar", ID: "bob", Permissions: []string{"read"}}}, TTL: 60 * time.Minute,
}

// Bob's calendar through agent:a -> agent:b: read allowed, write denied,
// allowed until the sub-token's shorter expiry, denied after; the parent
// lasts until its own.
func TestCalendarScenario(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	parent := f.mint(bobRead)
	child := f.attenuate(parent, Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}, TTL: 10 * time.Minute})

	d := f.check(child, "calendar:bob#read", "agent:b", 0)
	f.expect(d, true, ReasonNone, 1)
	if d.Principal != "user:bob" || strings.Join(d.Holders, ",") != "agent:a,agent:b" || d.TokenID == d.RootID || d.Revision == 0 {
		t.Fatalf("explanation %+v: want principal user:bob, holders agent:a,agent:b, distinct token and root ids, a revision", d)
	}
	f.expect(f.check(child, "calendar:bob#write", "agent:b", 0), false, ReasonOutOfScope, 0)
	f.expect(f.check(child, "calendar:alice#read", "agent:b", 0), false, ReasonOutOfScope, 0)
	f.expect(f.check(child, "calendar:bob#read", "agent:a", 0), false, ReasonWrongHolder, 1)
	f.expect(f.check(parent, "calendar:bob#read", "agent:b", 0), false, ReasonWrongHolder, 0)
	f.expect(f.check(parent, "calendar:bob#read", "agent:a", 0), true, ReasonNone, 0)

	f.clock.advance(10*time.Minute + time.Second)
	f.expect(f.check(child, "calendar:bob#read", "agent:b", 0), false, ReasonExpired, 1)
	f.expect(f.check(parent, "calendar:bob#read", "agent:a", 0), true, ReasonNone, 0)
	f.clock.advance(50 * time.Minute)
	f.expect(f.check(parent, "calendar:bob#read", "agent:a", 0), false, ReasonExpired, 0)
}

// Removing Bob's own access denies both tokens at once; the token stands in
// for the holders' grants and links, never for the principal's.
func TestPrincipalAccessRemoved(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	parent := f.mint(bobRead)
	child := f.attenuate(parent, Narrowing{Holder: &rel.Object{Type: "agent", ID: "b"}})
	f.expect(f.check(child, "calendar:bob#read", "agent:b", 0), true, ReasonNone, 1)
	rev := f.write(store.Delete, "calendar:bob#owner@user:bob")
	f.expect(f.check(child, "calendar:bob#read", "agent:b", rev), false, ReasonPrincipalDenied, 0)
	f.expect(f.check(parent, "calendar:bob#read", "agent:a", rev), false, ReasonPrincipalDenied, 0)
}

// An agent principal's own chain is evaluated live: cutting its acts_for
// link kills the token.
func TestAgentPrincipalChain(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob", "calendar:bob#reader@agent:p", "agent:p#acts_for@user:bob")
	g := bobRead
	g.OnBehalfOf = rel.Object{Type: "agent", ID: "p"}
	tok := f.mint(g)
	d := f.check(tok, "calendar:bob#read", "agent:a", 0)
	f.expect(d, true, ReasonNone, 0)
	if strings.Join(d.PrincipalChain, ",") != "agent:p,user:bob" {
		t.Fatalf("principal chain %q, want agent:p,user:bob", d.PrincipalChain)
	}
	rev := f.write(store.Delete, "agent:p#acts_for@user:bob")
	d = f.check(tok, "calendar:bob#read", "agent:a", rev)
	f.expect(d, false, ReasonPrincipalDenied, 0)
	if d.EngineReason != string(engine.ReasonNoDelegation) {
		t.Fatalf("engine reason %q, want %q", d.EngineReason, engine.ReasonNoDelegation)
	}
}

func TestMintRefusesWhatThePrincipalLacks(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	cases := []struct {
		name string
		edit func(g *Grant)
		want string
	}{
		{"another's calendar", func(g *Grant) {
			g.Rights = append(g.Rights, Right{Type: "calendar", ID: "alice", Permissions: []string{"read"}})
		}, "user:bob does not hold read on calendar:alice"},
		{"undefined permission", func(g *Grant) { g.Rights = []Right{{Type: "calendar", ID: "bob", Permissions: []string{"delete"}}} }, `calendar defines no "delete"`},
		{"undefined type", func(g *Grant) { g.Rights = []Right{{Type: "folder", ID: "x", Permissions: []string{"read"}}} }, `type "folder" is not defined`},
		{"holder not an agent", func(g *Grant) { g.Holder = rel.Object{Type: "user", ID: "eve"} }, `"user" is not an agent type`},
		{"no ttl", func(g *Grant) { g.TTL = 0 }, "ttl 0s"},
		{"too long a ttl", func(g *Grant) { g.TTL = MaxTTL + time.Hour }, "at most 720h0m0s"},
		{"no rights", func(g *Grant) { g.Rights = nil }, "expected at least one right"},
	}
	for _, tc := range cases {
		g := bobRead
		g.Rights = append([]Right(nil), g.Rights...)
		tc.edit(&g)
		_, err := f.c.Mint(f.ctx, ForEngine(f.eng), g)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Mint error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	// A type right is checked per object at use.
	g := bobRead
	g.Rights = []Right{{Type: "calendar", Permissions: []string{"read"}}}
	tok := f.mint(g)
	f.expect(f.check(tok, "calendar:bob#read", "agent:a", 0), true, ReasonNone, 0)
	f.expect(f.check(tok, "calendar:alice#read", "agent:a", 0), false, ReasonPrincipalDenied, 0)
}

func TestTaskRestriction(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	tok := f.attenuate(f.mint(bobRead), Narrowing{Task: "T1"})
	d, err := f.c.Check(f.ctx, ForEngine(f.eng), CheckRequest{Token: tok, Resource: obj("calendar:bob"), Permission: "read", Subject: obj("agent:a"), Task: "T1"})
	if err != nil || !d.Allowed || d.Task != "T1" {
		t.Fatalf("check for task T1: %+v, %v", d, err)
	}
	f.expect(f.check(tok, "calendar:bob#read", "agent:a", 0), false, ReasonTaskMismatch, 1)
	// A later block cannot move the token to another task.
	parsed, _ := Inspect(tok)
	if _, err := Attenuate(parsed, Narrowing{Task: "T2"}, f.clock.now()); !errors.Is(err, ErrWidening) {
		t.Fatalf("attenuating task T1 to T2: %v, want ErrWidening", err)
	}
}

func TestMaxUses(t *testing.T) {
	f := newFixture(t, "calendar:bob#owner@user:bob")
	g := bobRead
	g.MaxUses = 2
	tok := f.mint(g)
	f.expect(f.check(tok, "calendar:bob#read", "agent:a", 0), true, ReasonNone, 0)
	f.expect(f.check(tok, "calendar:bob#read", "agent:a", 0), true, ReasonNone, 0)
	f.expect(f.check(tok, "calendar:bob#read", "agent:a", 0), false, ReasonUsesExhausted, 0)
}

// followEngine applies the store's change stream to eng from the start
// (a memory store keeps its whole history) until ctx ends.
func followEngine(ctx context.Context, st store.Store, eng *engine.Engine) {
	for ch, err := range st.Watch(ctx, 0) {
		if err != nil || eng.Apply(ch) != nil {
			return
		}
	}
}
