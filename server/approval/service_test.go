package approval_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/feed"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const schemaText = `definition user {}

definition agent {
	relation acts_for: user
}

definition doc {
	relation viewer: user | agent
	relation editor: user | agent
	permission view = viewer + editor
	permission edit = editor
}
`

type recorder struct {
	mu  sync.Mutex
	evs []*audit.Event
}

func (r *recorder) Record(_ context.Context, ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
	return nil
}

func (r *recorder) ops() []audit.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Operation
	for _, ev := range r.evs {
		if ev.Operation != audit.OpCheck {
			out = append(out, ev.Operation)
		}
	}
	return out
}

// rulePermission escalates every allowed agent check of one permission.
type rulePermission struct {
	perm string
	err  error
	// failing names the rule whose evaluation failed, with err.
	failing string
}

func (e rulePermission) Escalate(_ context.Context, in op.EscalationInput) (op.EscalationMatch, bool, error) {
	if e.err != nil {
		return op.EscalationMatch{Rule: e.failing}, e.failing != "", e.err
	}
	return op.EscalationMatch{Rule: "risky-" + e.perm}, in.Permission == e.perm, nil
}
func (rulePermission) Observe(op.EscalationInput, bool) {}

type fixture struct {
	t    *testing.T
	st   *memory.Store
	core *op.Core
	svc  *approval.Service
	rec  *recorder
	now  time.Time
	mu   sync.Mutex
}

func newFixture(t *testing.T, esc op.Escalator, rels ...string) *fixture {
	t.Helper()
	return newFixtureWith(t, nil, esc, rels...)
}

// newFixtureWith is newFixture with the service's Config adjusted by tune.
func newFixtureWith(t *testing.T, tune func(*approval.Config), esc op.Escalator, rels ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, st: memory.New(), rec: &recorder{}, now: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	eng := engine.New()
	var err error
	f.core, err = op.New(op.Config{Engine: eng, Store: f.st, Auditor: f.rec})
	if err != nil {
		t.Fatal(err)
	}
	cfg := approval.Config{Records: f.st, Core: f.core, Now: f.clock}
	if tune != nil {
		tune(&cfg)
	}
	f.svc, err = approval.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.core.SetApprovals(f.svc, esc)
	if _, err := f.st.WriteSchema(ctx, schemaText); err != nil {
		t.Fatal(err)
	}
	var muts []store.Mutation
	for _, text := range rels {
		r, err := rel.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		muts = append(muts, store.Mutation{Op: store.Touch, Rel: r})
	}
	if len(muts) > 0 {
		if _, err := f.st.Write(ctx, nil, muts); err != nil {
			t.Fatal(err)
		}
	}
	go feed.Follow(ctx, eng, f.st, nil)
	go f.svc.Follow(ctx, f.st)
	return f
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

var (
	alice = rel.Object{Type: "user", ID: "alice"}
	bob   = rel.Object{Type: "user", ID: "bob"}
	carol = rel.Object{Type: "user", ID: "carol"}
	bot   = rel.Object{Type: "agent", ID: "bot"}
	doc1  = rel.Object{Type: "doc", ID: "1"}
)

func (f *fixture) check(perm, approvalID string) op.CheckResult {
	f.t.Helper()
	res, err := f.core.Check(context.Background(), op.CheckRequest{
		Resource: doc1, Permission: perm, Subject: rel.Subject{Type: "agent", ID: "bot"},
		ApprovalID: approvalID, Consistency: op.Consistency{Mode: op.FullyConsistent},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func (f *fixture) file(perm string) approval.Request {
	f.t.Helper()
	r, err := f.svc.File(context.Background(), approval.Request{Agent: bot, Principal: alice, Resource: doc1, Permission: perm, Task: "T", Reason: "need it"})
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// bot acts for alice, who edits doc:1; bob views it; bot itself may view.
var baseRels = []string{"agent:bot#acts_for@user:alice", "doc:1#editor@user:alice", "doc:1#viewer@user:bob", "doc:1#viewer@agent:bot"}

func TestEscalatedCheckApprovedThenAllowed(t *testing.T) {
	f := newFixture(t, rulePermission{perm: "view"}, baseRels...)
	res := f.check("view", "")
	if res.Decision != engine.Denied || res.Approval == nil || !res.Approval.Required || res.Approval.Rule != "risky-view" || res.Approval.EvaluationID == "" {
		t.Fatalf("escalated check = %v %+v, want denied, approval required by risky-view with an evaluation id", res.Decision, res.Approval)
	}
	r := f.file("view")
	if r.Status != approval.Pending || len(r.Chain) != 2 || r.Chain[1] != alice {
		t.Fatalf("filed %+v", r)
	}
	// Still required while pending.
	if res := f.check("view", ""); res.Decision != engine.Denied {
		t.Fatalf("pending: %v, want denied", res.Decision)
	}
	// carol holds nothing: refused. bob views doc:1 now: may decide.
	if _, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: carol}); !errors.Is(err, approval.ErrNotAllowed) {
		t.Fatalf("carol approves: %v, want ErrNotAllowed", err)
	}
	if _, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: bot}); !errors.Is(err, approval.ErrNotAllowed) {
		t.Fatalf("the agent approves itself: %v, want ErrNotAllowed", err)
	}
	if _, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: alice, Duration: 10 * time.Hour}); !errors.Is(err, approval.ErrInvalid) {
		t.Fatalf("over the maximum: %v, want ErrInvalid", err)
	}
	got, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: bob, Note: "ok"})
	if err != nil || got.Status != approval.Approved || got.Decider != bob {
		t.Fatalf("bob approves: %+v %v", got, err)
	}
	if res := f.check("view", ""); res.Decision != engine.Allowed || res.Approval == nil || res.Approval.GrantID != r.ID {
		t.Fatalf("after approval: %v %+v, want allowed by grant %s", res.Decision, res.Approval, r.ID)
	}
	// The grant is for view only.
	if _, err := f.svc.Deny(context.Background(), r.ID, approval.Decision{Approver: alice}); !errors.Is(err, approval.ErrNotPending) {
		t.Fatalf("deny after approve: %v, want ErrNotPending", err)
	}
	// Grants expire.
	f.advance(16 * time.Minute)
	if res := f.check("view", ""); res.Decision != engine.Denied {
		t.Fatalf("expired grant: %v, want denied", res.Decision)
	}
	if n, err := f.svc.Sweep(context.Background()); err != nil || n != 1 {
		t.Fatalf("sweep = %d, %v; want 1", n, err)
	}
	want := []audit.Operation{audit.OpApprovalRequested, audit.OpApprovalApproved, audit.OpApprovalExpired}
	if got := f.rec.ops(); !equalOps(got, want) {
		t.Fatalf("audited %v, want %v", got, want)
	}
}

func equalOps(a, b []audit.Operation) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestResolvableDenialAndSingleUse(t *testing.T) {
	f := newFixture(t, nil, baseRels...)
	// bot may not edit by its own grant; alice may: resolvable.
	res := f.check("edit", "")
	if res.Decision != engine.Denied || res.Approval == nil || !res.Approval.Required || res.Approval.Rule != "" {
		t.Fatalf("resolvable denial = %v %+v", res.Decision, res.Approval)
	}
	r := f.file("edit")
	if _, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: alice, SingleUse: true}); err != nil {
		t.Fatal(err)
	}
	if res := f.check("edit", ""); res.Decision != engine.Denied {
		t.Fatalf("single-use grant not named: %v, want denied", res.Decision)
	}
	if res := f.check("edit", "0123"); res.Decision != engine.Denied {
		t.Fatalf("another id: %v, want denied", res.Decision)
	}
	if res := f.check("edit", r.ID); res.Decision != engine.Allowed {
		t.Fatalf("named: %v, want allowed", res.Decision)
	}
	if res := f.check("edit", r.ID); res.Decision != engine.Denied {
		t.Fatalf("second use: %v, want denied", res.Decision)
	}
	got, _ := f.svc.Get(context.Background(), r.ID)
	if got.Status != approval.Redeemed {
		t.Fatalf("status %s, want redeemed", got.Status)
	}
}

func TestPlainDenialNeverAllowed(t *testing.T) {
	// carol's agent: carol holds nothing, so a grant cannot help.
	f := newFixture(t, nil, "agent:bot#acts_for@user:carol")
	res, err := f.core.Check(context.Background(), op.CheckRequest{Resource: doc1, Permission: "view", Subject: rel.Subject{Type: "agent", ID: "bot"}, Consistency: op.Consistency{Mode: op.FullyConsistent}})
	if err != nil || res.Decision != engine.Denied || res.Approval != nil {
		t.Fatalf("principal denied: %v %+v %v", res.Decision, res.Approval, err)
	}
	_, err = f.svc.File(context.Background(), approval.Request{Agent: bot, Principal: carol, Resource: doc1, Permission: "view"})
	if !errors.Is(err, approval.ErrInvalid) {
		t.Fatalf("filing what no grant resolves: %v, want ErrInvalid", err)
	}
}

func TestRuleErrorFailsClosed(t *testing.T) {
	named := newFixture(t, rulePermission{perm: "view", err: errors.New("boom"), failing: "costly-rule"}, baseRels...)
	if res := named.check("view", ""); res.Decision != engine.Denied || res.Approval == nil || res.Approval.Rule != "costly-rule" {
		t.Fatalf("named rule error: %v %+v, want denied (escalated) under costly-rule", res.Decision, res.Approval)
	}
	f := newFixture(t, rulePermission{perm: "view", err: errors.New("boom")}, baseRels...)
	if res := f.check("view", ""); res.Decision != engine.Denied || res.Approval == nil || res.Approval.Rule != "escalation-error" {
		t.Fatalf("rule error: %v %+v, want denied (escalated)", res.Decision, res.Approval)
	}
	// A person's own check is never escalated.
	res, err := f.core.Check(context.Background(), op.CheckRequest{Resource: doc1, Permission: "view", Subject: rel.Subject{Type: "user", ID: "bob"}, Consistency: op.Consistency{Mode: op.FullyConsistent}})
	if err != nil || res.Decision != engine.Allowed || res.Approval != nil {
		t.Fatalf("person: %v %+v %v", res.Decision, res.Approval, err)
	}
}

func TestDenyEndTaskAndPendingExpiry(t *testing.T) {
	f := newFixture(t, rulePermission{perm: "view"}, baseRels...)
	ctx := context.Background()
	r1 := f.file("view")
	if got, err := f.svc.Deny(ctx, r1.ID, approval.Decision{Approver: alice, Note: "no"}); err != nil || got.Status != approval.Denied {
		t.Fatalf("deny: %+v %v", got, err)
	}
	if _, err := f.svc.Approve(ctx, r1.ID, approval.Decision{Approver: alice}); !errors.Is(err, approval.ErrNotPending) {
		t.Fatalf("approve after deny: %v", err)
	}
	r2 := f.file("view")
	if _, err := f.svc.Approve(ctx, r2.ID, approval.Decision{Approver: alice, Duration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r3 := f.file("edit")
	if res := f.check("view", ""); res.Decision != engine.Allowed {
		t.Fatalf("granted: %v", res.Decision)
	}
	n, err := f.svc.EndTask(ctx, "T", alice)
	if err != nil || n != 2 {
		t.Fatalf("EndTask = %d, %v; want 2 (a grant and a pending request)", n, err)
	}
	if res := f.check("view", ""); res.Decision != engine.Denied {
		t.Fatalf("after EndTask: %v, want denied", res.Decision)
	}
	if got, _ := f.svc.Get(ctx, r3.ID); got.Status != approval.Revoked {
		t.Fatalf("pending request after EndTask: %s", got.Status)
	}
	recs, _, err := f.st.ReadRecords(ctx, "capability.revocation")
	if err != nil || len(recs) != 1 || recs[0].ID != "task:T" {
		t.Fatalf("token revocation by task: %v %v", recs, err)
	}
	r4 := f.file("view")
	f.advance(25 * time.Hour)
	if _, err := f.svc.Approve(ctx, r4.ID, approval.Decision{Approver: alice}); !errors.Is(err, approval.ErrNotPending) {
		t.Fatalf("approve an expired request: %v", err)
	}
	l, err := f.svc.List(ctx, approval.Filter{Status: approval.Expired})
	if err != nil || len(l) != 1 || l[0].ID != r4.ID {
		t.Fatalf("list expired: %v %v", l, err)
	}
	l, err = f.svc.List(ctx, approval.Filter{Approver: &carol})
	if err != nil || len(l) != 0 {
		t.Fatalf("carol's inbox: %v %v", l, err)
	}
	l, err = f.svc.List(ctx, approval.Filter{Approver: &bob})
	if err != nil || len(l) != 3 { // the view requests; bob does not edit
		t.Fatalf("bob's inbox: %d %v", len(l), err)
	}
}

func TestRedeemOnceUnderConcurrency(t *testing.T) {
	f := newFixture(t, nil, baseRels...)
	r := f.file("edit")
	if _, err := f.svc.Approve(context.Background(), r.ID, approval.Decision{Approver: alice, SingleUse: true}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f.check("edit", r.ID).Decision == engine.Allowed {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if allowed != 1 {
		t.Fatalf("%d of 8 concurrent checks allowed, want exactly 1", allowed)
	}
}

// A grant never outlives the principal's own right: once alice loses it,
// the agent's check is a plain denial again, which no grant lifts.
func TestGrantNeedsThePrincipalNow(t *testing.T) {
	f := newFixture(t, rulePermission{perm: "view"}, "agent:bot#acts_for@user:alice", "doc:1#editor@user:alice", "doc:1#viewer@agent:bot")
	ctx := context.Background()
	for _, perm := range []string{"view", "edit"} {
		r := f.file(perm)
		if _, err := f.svc.Approve(ctx, r.ID, approval.Decision{Approver: alice}); err != nil {
			t.Fatal(err)
		}
		if res := f.check(perm, ""); res.Decision != engine.Allowed {
			t.Fatalf("%s granted: %v", perm, res.Decision)
		}
	}
	rr, err := rel.Parse("doc:1#editor@user:alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Write(ctx, nil, []store.Mutation{{Op: store.Delete, Rel: rr}}); err != nil {
		t.Fatal(err)
	}
	for _, perm := range []string{"view", "edit"} {
		if res := f.check(perm, ""); res.Decision != engine.Denied || (res.Approval != nil && res.Approval.GrantID != "") {
			t.Fatalf("%s after alice lost it: %v %+v, want denied", perm, res.Decision, res.Approval)
		}
	}
}

// A watcher of pending requests sees one filed, then its decision (which
// takes it out of the filter), in order.
func TestWatchPendingSeesDecision(t *testing.T) {
	f := newFixture(t, rulePermission{perm: "view"}, baseRels...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan approval.Request, 10)
	go func() {
		for r, err := range f.svc.Watch(ctx, approval.Filter{Status: approval.Pending, Approver: &alice}) {
			if err != nil {
				t.Error(err)
				return
			}
			got <- r
		}
	}()
	time.Sleep(50 * time.Millisecond)
	r := f.file("view")
	if w := <-got; w.ID != r.ID || w.Status != approval.Pending {
		t.Fatalf("first: %+v", w)
	}
	if _, err := f.svc.Deny(context.Background(), r.ID, approval.Decision{Approver: alice}); err != nil {
		t.Fatal(err)
	}
	if w := <-got; w.ID != r.ID || w.Status != approval.Denied {
		t.Fatalf("second: %+v", w)
	}
}

// Finished requests stay visible until the retention has passed after
// their last time (pending expiry, grant expiry, decision), then go with
// their decision and end records, one store write per batch; pending and
// live ones stay, and a pruned grant allows nothing.
func TestPruneHistory(t *testing.T) {
	f := newFixtureWith(t, func(c *approval.Config) { c.HistoryRetention = time.Hour }, rulePermission{perm: "view"}, baseRels...)
	ctx := context.Background()
	denied := f.file("view")
	if _, err := f.svc.Deny(ctx, denied.ID, approval.Decision{Approver: alice}); err != nil {
		t.Fatal(err)
	}
	granted := f.file("view")
	if _, err := f.svc.Approve(ctx, granted.ID, approval.Decision{Approver: alice, Duration: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	redeemed := f.file("view")
	if _, err := f.svc.Approve(ctx, redeemed.ID, approval.Decision{Approver: alice, SingleUse: true}); err != nil {
		t.Fatal(err)
	}
	if res := f.check("view", redeemed.ID); res.Decision != engine.Allowed {
		t.Fatalf("single-use: %v", res.Decision)
	}
	f.file("edit") // left pending: it expires at 24h
	// Past every request's expiry but within the retention: swept, kept.
	f.advance(24*time.Hour + 30*time.Minute)
	if n, err := f.svc.Sweep(ctx); err != nil || n != 2 {
		t.Fatalf("sweep = %d, %v; want 2 (the expired grant and pending request)", n, err)
	}
	if n, err := f.svc.Prune(ctx); err != nil || n != 0 {
		t.Fatalf("prune within the retention = %d, %v", n, err)
	}
	if l, err := f.svc.List(ctx, approval.Filter{}); err != nil || len(l) != 4 {
		t.Fatalf("history within the retention: %d %v", len(l), err)
	}
	live := f.file("view") // pending, not finished: never pruned
	f.advance(time.Hour)
	if n, err := f.svc.Prune(ctx); err != nil || n != 4 {
		t.Fatalf("prune after the retention = %d, %v; want 4", n, err)
	}
	for kind, want := range map[string]int{approval.RequestKind: 1, approval.DecisionKind: 0, approval.EndKind: 0} {
		recs, _, err := f.st.ReadRecords(ctx, kind)
		if err != nil || len(recs) != want || (kind == approval.RequestKind && recs[0].ID != live.ID) {
			t.Fatalf("%s records after prune: %v %v; want %d", kind, recs, err, want)
		}
	}
	if _, err := f.svc.Get(ctx, denied.ID); !errors.Is(err, approval.ErrNotFound) {
		t.Fatalf("a pruned request: %v, want ErrNotFound", err)
	}
	if res := f.check("view", granted.ID); res.Decision != engine.Denied {
		t.Fatalf("check naming a pruned grant: %v, want denied", res.Decision)
	}

	// Many finished requests: one write per batch of 333 (1000 mutations).
	for range 340 {
		r := f.file("view")
		if _, err := f.svc.Deny(ctx, r.ID, approval.Decision{Approver: alice}); err != nil {
			t.Fatal(err)
		}
	}
	_, before, _ := f.st.ReadRecords(ctx, approval.RequestKind)
	f.advance(26 * time.Hour)
	if n, err := f.svc.Prune(ctx); err != nil || n != 340 { // not the live one: expired, but pending as stored until swept
		t.Fatalf("prune of many = %d, %v", n, err)
	}
	_, after, _ := f.st.ReadRecords(ctx, approval.RequestKind)
	if after-before != 2 {
		t.Fatalf("prune of 340 took %d writes, want 2", after-before)
	}
}
