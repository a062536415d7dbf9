package op_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/engine"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const testSchema = `definition user {}

definition agent {
	relation acts_for: user
}

definition doc {
	relation viewer: user | agent
	permission view = viewer
}
`

// recorder is an Auditor keeping events; refuse makes Record fail.
type recorder struct {
	mu     sync.Mutex
	evs    []*audit.Event
	refuse error
}

func (r *recorder) Record(_ context.Context, ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil {
		return r.refuse
	}
	r.evs = append(r.evs, ev)
	return nil
}

func (r *recorder) take() []*audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.evs
	r.evs = nil
	return out
}

// fixture is a core over a memory store and an engine that follows the
// store only when told to (catchUp), so tests control the engine's lag.
type fixture struct {
	t   *testing.T
	st  *memory.Store
	eng *engine.Engine
	c   *op.Core
	rec *recorder
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, st: memory.New(), eng: engine.New(), rec: &recorder{}}
	var err error
	f.c, err = op.New(op.Config{Engine: f.eng, Store: f.st, Auditor: f.rec, MaxRevisionWait: 50 * time.Millisecond,
		Limits: op.Limits{MaxCheckBulkItems: 2, MaxReadLimit: 10}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// catchUp applies the store's changes to the engine up to its head.
func (f *fixture) catchUp() {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	head, err := f.st.Head(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	if f.eng.Head() >= head {
		return
	}
	for ch, err := range f.st.Watch(ctx, f.eng.Head()) {
		if err != nil {
			f.t.Fatal(err)
		}
		if err := f.eng.Apply(ch); err != nil {
			f.t.Fatal(err)
		}
		if ch.Revision >= head {
			return
		}
	}
}

func (f *fixture) write(texts ...string) store.Revision {
	f.t.Helper()
	muts := make([]store.Mutation, len(texts))
	for i, text := range texts {
		r, err := rel.Parse(text)
		if err != nil {
			f.t.Fatal(err)
		}
		muts[i] = store.Mutation{Op: store.Touch, Rel: r}
	}
	out, err := f.c.Write(context.Background(), op.WriteRequest{Mutations: muts})
	if err != nil {
		f.t.Fatal(err)
	}
	return out.Revision
}

func (f *fixture) schema() store.Revision {
	f.t.Helper()
	out, err := f.c.WriteSchema(context.Background(), op.WriteSchemaRequest{Text: testSchema})
	if err != nil {
		f.t.Fatal(err)
	}
	return out.Revision
}

func check(subject string, cons op.Consistency) op.CheckRequest {
	s, _ := rel.ParseSubject(subject)
	return op.CheckRequest{Resource: rel.Object{Type: "doc", ID: "1"}, Permission: "view", Subject: s, Consistency: cons}
}

func TestConsistency(t *testing.T) {
	f := newFixture(t)
	f.schema()
	first := f.write("doc:1#viewer@user:ann")
	f.catchUp()
	second := f.write("doc:1#viewer@user:bob") // the engine lags behind this write
	ctx := context.Background()
	tests := []struct {
		name     string
		cons     op.Consistency
		subject  string
		decision engine.Decision
		at       store.Revision
		err      error
	}{
		{"minimize latency answers at the engine's head", op.Consistency{}, "user:bob", engine.Denied, first, nil},
		{"exact snapshot answers at the token", op.Consistency{Mode: op.AtExactSnapshot, Revision: first}, "user:ann", engine.Allowed, first, nil},
		{"at least as fresh waits for the token", op.Consistency{Mode: op.AtLeastAsFresh, Revision: second}, "user:bob", 0, 0, op.ErrUnavailable},
		{"fully consistent waits for the store's head", op.Consistency{Mode: op.FullyConsistent}, "user:bob", 0, 0, op.ErrUnavailable},
		{"a foreign token reads fully consistent", op.Consistency{Mode: op.AtLeastAsFresh, Foreign: true}, "user:bob", 0, 0, op.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := f.c.Check(ctx, check(tt.subject, tt.cons))
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if err == nil && (res.Decision != tt.decision || res.Revision != tt.at) {
				t.Errorf("%v at %d, want %v at %d", res.Decision, res.Revision, tt.decision, tt.at)
			}
		})
	}
	t.Run("a token ahead of the store is refused", func(t *testing.T) {
		_, err := f.c.Check(ctx, check("user:ann", op.Consistency{Mode: op.AtLeastAsFresh, Revision: second + 10, Field: "consistency.at_least_as_fresh"}))
		var ahead *op.TokenAheadError
		if !errors.As(err, &ahead) || ahead.Revision != second+10 || ahead.Head != second || ahead.Field != "consistency.at_least_as_fresh" {
			t.Fatalf("error %v, want a TokenAheadError", err)
		}
	})
	f.catchUp()
	t.Run("at least as fresh answers once the engine has the token", func(t *testing.T) {
		res, err := f.c.Check(ctx, check("user:bob", op.Consistency{Mode: op.AtLeastAsFresh, Revision: second}))
		if err != nil || res.Decision != engine.Allowed || res.Revision < second {
			t.Fatalf("%+v, %v", res, err)
		}
	})
}

// TestWriteEventNeedsNoIndex checks that a write's events name an agent
// subject as an agent even before the engine has applied the schema that
// defines the agent type: the core reads the schema the store validated
// the write with, and waits for nothing.
func TestWriteEventNeedsNoIndex(t *testing.T) {
	f := newFixture(t)
	f.schema()
	f.rec.take()
	rev := f.write("doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann")
	if f.eng.Head() != 0 {
		t.Fatalf("the engine applied revision %d; the test needs it behind", f.eng.Head())
	}
	evs := f.rec.take()
	if len(evs) != 2 {
		t.Fatalf("%d events, want one per mutation", len(evs))
	}
	if evs[0].SubjectKind != audit.Agent || evs[1].SubjectKind != audit.Person || evs[0].Revision != uint64(rev) || evs[0].Update != "touch" {
		t.Errorf("write events: %+v, %+v", evs[0], evs[1])
	}
}

// TestAgentCheckEvent checks that an agent's check event carries the chain
// and the principal from the engine's answer.
func TestAgentCheckEvent(t *testing.T) {
	f := newFixture(t)
	f.schema()
	f.write("doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann", "doc:1#viewer@user:ann")
	f.catchUp()
	f.rec.take()
	res, err := f.c.Check(context.Background(), check("agent:bot", op.Consistency{}))
	if err != nil || res.Decision != engine.Allowed {
		t.Fatalf("%+v, %v", res, err)
	}
	ev := f.rec.take()[0]
	chain := []string{}
	for _, l := range ev.Chain {
		chain = append(chain, l.Subject)
	}
	if ev.SubjectKind != audit.Agent || ev.Principal != "user:ann" || !slices.Equal(chain, []string{"agent:bot", "user:ann"}) || ev.Decision != audit.Allowed {
		t.Errorf("agent check event: %+v", ev)
	}
}

// TestAuditFailsReadsNotWrites checks that a read the trail cannot record
// is not answered, while a write (which has happened) keeps its answer.
func TestAuditFailsReadsNotWrites(t *testing.T) {
	f := newFixture(t)
	f.schema()
	f.catchUp()
	f.rec.refuse = errors.New("disk full")
	if _, err := f.c.Check(context.Background(), check("user:ann", op.Consistency{})); !errors.Is(err, op.ErrUnavailable) {
		t.Errorf("unaudited check: %v, want ErrUnavailable", err)
	}
	r, _ := rel.Parse("doc:1#viewer@user:ann")
	out, err := f.c.Write(context.Background(), op.WriteRequest{Mutations: []store.Mutation{{Op: store.Touch, Rel: r}}})
	if err != nil || out.Revision == 0 {
		t.Errorf("write whose event was lost: %+v, %v; want it answered", out, err)
	}
}

// TestRefusedCall checks that a call that never reached an operation is
// audited from its request, with the code its API names, and that a call
// that did is not audited twice.
func TestRefusedCall(t *testing.T) {
	f := newFixture(t)
	ctx, call := f.c.Begin(op.WithIdentity(context.Background(), op.Identity{Name: "svc"}), op.CallInfo{
		RequestID: "r1", Transport: "grpc", Classify: func(error) (string, string) { return "Unauthenticated", "no key" }})
	f.c.End(ctx, call, func() op.Request { return check("user:ann", op.Consistency{}) }, errors.New("refused"))
	evs := f.rec.take()
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	if ev := evs[0]; ev.Operation != audit.OpCheck || ev.Code != "Unauthenticated" || ev.Decision != audit.Error || ev.Resource != "doc:1" ||
		ev.Subject != "user:ann" || ev.Caller != "svc" || ev.RequestID != "r1" {
		t.Errorf("refused call event: %+v", ev)
	}

	f.schema()
	f.catchUp()
	f.rec.take()
	ctx, call = f.c.Begin(context.Background(), op.CallInfo{})
	if _, err := f.c.Check(ctx, check("user:ann", op.Consistency{})); err != nil {
		t.Fatal(err)
	}
	f.c.End(ctx, call, func() op.Request { t.Error("a served call was described as refused"); return nil }, nil)
	if n := len(f.rec.take()); n != 1 {
		t.Errorf("%d events for one check, want 1", n)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture(t)
	f.schema()
	f.catchUp()
	f.rec.take()
	ctx := context.Background()
	item := op.CheckItem{CheckRequest: check("user:ann", op.Consistency{})}
	_, err := f.c.CheckBulk(ctx, op.CheckBulkRequest{Items: []op.CheckItem{item, item, item}})
	var limit *op.LimitError
	if !errors.As(err, &limit) || limit.Limit != op.LimitCheckBulkItems || limit.Got != 3 || limit.Max != 2 {
		t.Errorf("bulk check over the limit: %v", err)
	}
	if _, err := f.c.Read(ctx, op.ReadRequest{Limit: 11}); !errors.As(err, &limit) || limit.Limit != op.LimitRead {
		t.Errorf("read over the limit: %v", err)
	}
	if evs := f.rec.take(); len(evs) != 2 || evs[0].Decision != audit.Error || evs[1].Decision != audit.Error {
		t.Errorf("refused calls' events: %+v", evs)
	}
}

// TestReadPages checks that a read resumes strictly after the key it is
// given, at the page's revision, and stops at its limit.
func TestReadPages(t *testing.T) {
	f := newFixture(t)
	f.schema()
	rev := f.write("doc:1#viewer@user:a", "doc:1#viewer@user:b", "doc:1#viewer@user:c", "doc:2#viewer@user:a")
	f.write("doc:1#viewer@user:d") // after the page's revision
	ctx := context.Background()
	var all []string
	var after *rel.Key
	for pages := 0; ; pages++ {
		page, err := f.c.Read(ctx, op.ReadRequest{Filter: op.Filter{Filter: rel.Filter{ResourceType: "doc"}},
			Consistency: op.Consistency{Mode: op.AtExactSnapshot, Revision: rev}, After: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for r, err := range page.Relationships {
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, r.String())
			k := r.Key()
			after = &k
			n++
		}
		if n < 3 || pages > 3 {
			break
		}
	}
	want := []string{"doc:1#viewer@user:a", "doc:1#viewer@user:b", "doc:1#viewer@user:c", "doc:2#viewer@user:a"}
	if !slices.Equal(all, want) {
		t.Errorf("pages read %q, want %q", all, want)
	}
	evs := f.rec.take()
	if last := evs[len(evs)-1]; last.Operation != audit.OpReadRelationships || last.Count != 1 || last.Revision != uint64(rev) {
		t.Errorf("last page's event: %+v", last)
	}
}
