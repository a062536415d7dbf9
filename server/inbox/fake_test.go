package inbox

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// fakeApprovals stands in for approval.Service in the inbox's unit tests:
// the principal, and those in mayDecide, may decide.
type fakeApprovals struct {
	mu        sync.Mutex
	reqs      map[string]approval.Request
	mayDecide map[rel.Object]bool
	changed   chan struct{} // closed and replaced on every change
	n         int
}

func newFakeApprovals() *fakeApprovals {
	return &fakeApprovals{reqs: map[string]approval.Request{}, mayDecide: map[rel.Object]bool{}, changed: make(chan struct{})}
}

func (f *fakeApprovals) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeApprovals) File(_ context.Context, r approval.Request) (approval.Request, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	r.ID = fmt.Sprintf("req-%d", f.n)
	r.Created = time.Now().Add(-time.Duration(f.n) * time.Minute)
	r.Expires = r.Created.Add(24 * time.Hour)
	r.Status = approval.Pending
	r.Revision = store.Revision(f.n)
	f.reqs[r.ID] = r
	f.notify()
	return r, nil
}

func (f *fakeApprovals) Get(_ context.Context, id string) (approval.Request, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.reqs[id]
	if !ok {
		return r, fmt.Errorf("%w: %q", approval.ErrNotFound, id)
	}
	return r, nil
}

func (f *fakeApprovals) may(r approval.Request, who rel.Object) bool {
	return r.Principal == who || f.mayDecide[who]
}

func (f *fakeApprovals) matches(r approval.Request, fl approval.Filter) bool {
	return (fl.Principal == nil || r.Principal == *fl.Principal) &&
		(fl.Approver == nil || f.may(r, *fl.Approver)) &&
		(fl.Agent == nil || r.Agent == *fl.Agent) &&
		(fl.Status == "" || r.Status == fl.Status) &&
		(fl.Task == "" || r.Task == fl.Task)
}

func (f *fakeApprovals) List(_ context.Context, fl approval.Filter) ([]approval.Request, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []approval.Request
	for _, r := range f.reqs {
		if f.matches(r, fl) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b approval.Request) int { return a.Created.Compare(b.Created) })
	return out, nil
}

func (f *fakeApprovals) decide(id string, d approval.Decision, st approval.Status) (approval.Request, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.reqs[id]
	switch {
	case !ok:
		return r, approval.ErrNotFound
	case !f.may(r, d.Approver):
		return r, fmt.Errorf("%w: %s", approval.ErrNotAllowed, d.Approver)
	case r.Status != approval.Pending:
		return r, approval.ErrNotPending
	}
	r.Status, r.Decider, r.Note, r.Decided = st, d.Approver, d.Note, time.Now()
	if st == approval.Approved {
		r.SingleUse = d.SingleUse
		r.GrantExpires = r.Decided.Add(cmpOr(d.Duration, 15*time.Minute))
	}
	f.n++
	r.Revision = store.Revision(f.n)
	f.reqs[id] = r
	f.notify()
	return r, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func (f *fakeApprovals) Approve(_ context.Context, id string, d approval.Decision) (approval.Request, error) {
	return f.decide(id, d, approval.Approved)
}

func (f *fakeApprovals) Deny(_ context.Context, id string, d approval.Decision) (approval.Request, error) {
	return f.decide(id, d, approval.Denied)
}

func (f *fakeApprovals) Revoke(_ context.Context, id string, by rel.Object) (approval.Request, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.reqs[id]
	if !ok || r.Status != approval.Approved {
		return r, approval.ErrNotPending
	}
	r.Status = approval.Revoked
	f.reqs[id] = r
	f.notify()
	return r, nil
}

// Watch yields the current matches, then every later version of a
// matching request.
func (f *fakeApprovals) Watch(ctx context.Context, fl approval.Filter) iter.Seq2[approval.Request, error] {
	return func(yield func(approval.Request, error) bool) {
		seen := map[string]store.Revision{}
		for {
			f.mu.Lock()
			var out []approval.Request
			for _, r := range f.reqs {
				if seen[r.ID] != r.Revision && f.matches(r, approval.Filter{Principal: fl.Principal, Approver: fl.Approver, Agent: fl.Agent, Task: fl.Task}) {
					seen[r.ID] = r.Revision
					out = append(out, r)
				}
			}
			wait := f.changed
			f.mu.Unlock()
			for _, r := range out {
				if !yield(r, nil) {
					return
				}
			}
			select {
			case <-ctx.Done():
				yield(approval.Request{}, ctx.Err())
				return
			case <-wait:
			}
		}
	}
}

// fakeTokens is the token registry and its revocations.
type fakeTokens struct {
	mu      sync.Mutex
	minted  []capability.Minted
	revoked []capability.Revocation
}

func (f *fakeTokens) Tokens(_ context.Context, fl capability.MintedFilter) ([]capability.Minted, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []capability.Minted
	for _, m := range f.minted {
		if fl.Principal == "" || m.Principal == fl.Principal {
			out = append(out, m)
		}
	}
	return out, nil
}

func (f *fakeTokens) RevokeTokens(_ context.Context, r capability.Revocation) (store.Revision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, r)
	return store.Revision(len(f.revoked)), nil
}

func (f *fakeTokens) TokenRevocations(context.Context) ([]capability.Revocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.revoked), nil
}

const testSchema = `use expiration

definition user {}

definition agent {
	relation acts_for: user | user with expiration | agent
}

definition doc {
	relation viewer: user | agent | agent with expiration
	relation editor: user | agent
	relation reader: user | agent:*
	permission view = viewer + editor + reader
	permission edit = editor
}
`

// newCore is a real operation core over a memory store holding the test
// schema and rels.
func newCore(t *testing.T, rels ...string) *op.Core {
	t.Helper()
	return newAuditedCore(t, nil, rels...)
}

// recorder keeps the core's audit events.
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

func (r *recorder) events(op audit.Operation) []*audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*audit.Event
	for _, ev := range r.evs {
		if ev.Operation == op {
			out = append(out, ev)
		}
	}
	return out
}

func newAuditedCore(t *testing.T, aud op.Auditor, rels ...string) *op.Core {
	t.Helper()
	st := memory.New()
	eng := engine.New()
	c, err := op.New(op.Config{Engine: eng, Store: st, Auditor: aud})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The engine follows the store, as the server's follower makes it.
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch, err := range st.Watch(fctx, 0) {
			if err != nil || eng.Apply(ch) != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { stop(); <-done })
	if _, err := c.WriteSchema(ctx, op.WriteSchemaRequest{Text: testSchema}); err != nil {
		t.Fatal(err)
	}
	if len(rels) > 0 {
		muts := make([]store.Mutation, len(rels))
		for i, text := range rels {
			r, err := rel.Parse(text)
			if err != nil {
				t.Fatal(err)
			}
			muts[i] = store.Mutation{Op: store.Touch, Rel: r}
		}
		if _, err := c.Write(ctx, op.WriteRequest{Mutations: muts}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func obj(s string) rel.Object {
	o, err := parseObject(s)
	if err != nil {
		panic(err)
	}
	return o
}
