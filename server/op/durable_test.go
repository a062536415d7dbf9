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

// durableRecorder is a DurableAuditor: it keeps, per RecordDurable call,
// the operations recorded durably; fail makes RecordDurable fail.
type durableRecorder struct {
	recorder
	dmu     sync.Mutex
	durable [][]audit.Operation
	fail    error
}

func (d *durableRecorder) RecordDurable(_ context.Context, evs ...*audit.Event) error {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	if d.fail != nil {
		return d.fail
	}
	ops := make([]audit.Operation, len(evs))
	for i, ev := range evs {
		ops[i] = ev.Operation
	}
	d.durable = append(d.durable, ops)
	return nil
}

func newDurableFixture(t *testing.T) (*op.Core, *durableRecorder, *memory.Store, *engine.Engine) {
	t.Helper()
	st, eng, d := memory.New(), engine.New(), &durableRecorder{}
	c, err := op.New(op.Config{Engine: eng, Store: st, Auditor: d, MaxRevisionWait: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c, d, st, eng
}

// TestChangesAreRecordedDurably: a write (all its events in one durable
// record call), a delete and a schema change go through RecordDurable; a
// check does not.
func TestChangesAreRecordedDurably(t *testing.T) {
	c, d, _, _ := newDurableFixture(t)
	ctx := context.Background()
	if _, err := c.WriteSchema(ctx, op.WriteSchemaRequest{Text: testSchema}); err != nil {
		t.Fatal(err)
	}
	r1, _ := rel.Parse("doc:1#viewer@user:ann")
	r2, _ := rel.Parse("doc:2#viewer@user:ann")
	if _, err := c.Write(ctx, op.WriteRequest{Mutations: []store.Mutation{{Op: store.Touch, Rel: r1}, {Op: store.Touch, Rel: r2}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteMatching(ctx, op.DeleteRequest{Filter: op.Filter{Filter: rel.Filter{ResourceType: "doc", ResourceIDs: []string{"2"}}}}); err != nil {
		t.Fatal(err)
	}
	c.Check(ctx, check("user:ann", op.Consistency{}))
	want := [][]audit.Operation{
		{audit.OpWriteSchema},
		{audit.OpWriteRelationships, audit.OpWriteRelationships},
		{audit.OpDeleteRelationships},
	}
	if !slices.EqualFunc(d.durable, want, slices.Equal) {
		t.Fatalf("durable record calls %v, want %v", d.durable, want)
	}
	if evs := d.take(); len(evs) != 1 || evs[0].Operation != audit.OpCheck {
		t.Errorf("asynchronous records %v, want the check only", evs)
	}
}

// TestWriteNotDurableIsNotAcknowledged: when its records cannot be made
// durable, a write that was applied answers ErrUnavailable, never success.
func TestWriteNotDurableIsNotAcknowledged(t *testing.T) {
	c, d, st, _ := newDurableFixture(t)
	ctx := context.Background()
	if _, err := c.WriteSchema(ctx, op.WriteSchemaRequest{Text: testSchema}); err != nil {
		t.Fatal(err)
	}
	before, _ := st.Head(ctx)
	d.fail = errors.New("disk full")
	r, _ := rel.Parse("doc:1#viewer@user:ann")
	out, err := c.Write(ctx, op.WriteRequest{Mutations: []store.Mutation{{Op: store.Touch, Rel: r}}})
	if !errors.Is(err, op.ErrUnavailable) || out.Revision != 0 {
		t.Fatalf("write whose record is not durable: %+v, %v; want ErrUnavailable and no revision", out, err)
	}
	if head, _ := st.Head(ctx); head == before {
		t.Fatal("the write was not applied; the test expects it applied and unacknowledged")
	}
	if _, err := c.WriteSchema(ctx, op.WriteSchemaRequest{Text: testSchema}); !errors.Is(err, op.ErrUnavailable) {
		t.Errorf("schema write whose record is not durable: %v, want ErrUnavailable", err)
	}
}
