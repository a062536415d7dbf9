package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/rel"
)

// watcher consumes a Watch in its own goroutine.
type watcher struct {
	cancel context.CancelFunc
	items  chan watchItem
	done   chan struct{}
}

type watchItem struct {
	change store.Change
	err    error
}

func startWatch(h *harness, after store.Revision) *watcher {
	ctx, cancel := context.WithCancel(h.ctx)
	w := &watcher{cancel: cancel, items: make(chan watchItem), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ch, err := range h.s.Watch(ctx, after) {
			select {
			case w.items <- watchItem{ch, err}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return w
}

// next returns the next change, failing on an error or a timeout.
func (w *watcher) next(t *testing.T) store.Change {
	t.Helper()
	ch, err := w.nextItem(t)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	return ch
}

func (w *watcher) nextItem(t *testing.T) (store.Change, error) {
	t.Helper()
	select {
	case it := <-w.items:
		return it.change, it.err
	case <-w.done:
		t.Fatalf("Watch ended while a change was expected")
	case <-time.After(waitLimit):
		t.Fatalf("no change from Watch within %v", waitLimit)
	}
	return store.Change{}, nil
}

// expectQuiet asserts nothing arrives for a short while.
func (w *watcher) expectQuiet(t *testing.T) {
	t.Helper()
	select {
	case it := <-w.items:
		t.Fatalf("unexpected item from Watch: %s, %v", formatChange(it.change), it.err)
	case <-w.done:
		t.Fatalf("Watch ended while it should wait for changes")
	case <-time.After(50 * time.Millisecond):
	}
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}

func formatChange(ch store.Change) string {
	var b strings.Builder
	fmt.Fprintf(&b, "revision %d", ch.Revision)
	if ch.Schema != nil {
		fmt.Fprintf(&b, " schema(%d bytes)", len(*ch.Schema))
	}
	for _, u := range ch.Updates {
		fmt.Fprintf(&b, " [%s %s]", u.Op, u.Rel)
	}
	return b.String()
}

// expectUpdates asserts a change's updates are exactly want ("OP text"),
// in any order.
func expectUpdates(t *testing.T, ch store.Change, want ...string) {
	t.Helper()
	got := make([]string, len(ch.Updates))
	for i, u := range ch.Updates {
		got[i] = u.Op.String() + " " + u.Rel.String()
	}
	w := make([]string, len(want))
	for i, s := range want {
		op, text, _ := strings.Cut(s, " ")
		w[i] = op + " " + parse(t, text).String()
	}
	slices.Sort(got)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Fatalf("revision %d updates:\n got  %q\n want %q", ch.Revision, got, w)
	}
}

// expectedChange is a change the test made.
type expectedChange struct {
	rev     store.Revision
	schema  string // "" when the change wrote no schema
	updates []string
}

func expectChange(t *testing.T, got store.Change, want expectedChange) {
	t.Helper()
	if got.Revision != want.rev {
		t.Fatalf("change %s: want revision %d", formatChange(got), want.rev)
	}
	switch {
	case want.schema == "" && got.Schema != nil:
		t.Fatalf("change %s carries a schema; none was written", formatChange(got))
	case want.schema != "" && (got.Schema == nil || *got.Schema != want.schema):
		t.Fatalf("change %s: want the schema written at %d", formatChange(got), want.rev)
	}
	expectUpdates(t, got, want.updates...)
}

func testWatch(t *testing.T, newStore func(t *testing.T) store.Store) {
	const (
		a       = "doc:1#viewer@user:ann"
		aCav    = `doc:1#viewer@user:ann[min_level:{"required":3}]`
		bCav    = `doc:2#viewer@user:bob[min_level:{"required":2}]`
		b       = "doc:2#viewer@user:bob"
		schema2 = baseSchema + "\ndefinition team {}\n"
	)
	h := open(t, newStore)
	var want []expectedChange
	rev := h.writeSchema(baseSchema)
	want = append(want, expectedChange{rev: rev, schema: baseSchema})
	rev = h.write(nil, batch(create(a), touch(bCav))...)
	want = append(want, expectedChange{rev: rev, updates: []string{"TOUCH " + a, "TOUCH " + bCav}})
	middle := rev
	// A Delete update carries the relationship as stored, not as the
	// mutation named it.
	rev = h.write(nil, batch(touch(aCav), del(b))...)
	want = append(want, expectedChange{rev: rev, updates: []string{"TOUCH " + aCav, "DELETE " + bCav}})
	rev = h.write(nil, del("doc:9#owner@user:nobody")...) // changes nothing, but is a write
	want = append(want, expectedChange{rev: rev})
	rev, n, err := h.s.DeleteMatching(h.ctx, nil, rel.Filter{ResourceType: "doc", ResourceIDs: []string{"1"}}, 0)
	if err != nil || n != 1 {
		t.Fatalf("DeleteMatching = %d, %v; want 1 deleted", n, err)
	}
	want = append(want, expectedChange{rev: rev, updates: []string{"DELETE " + aCav}})
	rev = h.writeSchema(schema2)
	want = append(want, expectedChange{rev: rev, schema: schema2})

	for i, start := range []store.Revision{0, middle, h.head()} {
		t.Run(fmt.Sprintf("after %d", start), func(t *testing.T) {
			h := h.in(t)
			w := startWatch(h, start)
			defer w.stop()
			for _, c := range want {
				if c.rev > start {
					expectChange(t, w.next(t), c)
				}
			}
			w.expectQuiet(t)
			// A write committed while watching arrives too.
			added := fmt.Sprintf("doc:live%d#owner@user:u%d", i, i)
			rev := h.write(nil, touch(added)...)
			c := expectedChange{rev: rev, updates: []string{"TOUCH " + added}}
			expectChange(t, w.next(t), c)
			want = append(want, c)
		})
	}
}

func testWatchErrors(t *testing.T, newStore func(t *testing.T) store.Store) {
	h := openWithSchema(t, newStore, "doc:1#owner@user:ann")
	w := startWatch(h, h.head()+1)
	defer w.stop()
	if _, err := w.nextItem(t); !errors.Is(err, store.ErrFutureRevision) {
		t.Fatalf("Watch(head+1): error %v, want ErrFutureRevision", err)
	}
}

func testWatchCancel(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Run("while waiting", func(t *testing.T) {
		h := openWithSchema(t, newStore, "doc:1#owner@user:ann")
		w := startWatch(h, h.head())
		w.expectQuiet(t)
		w.cancel()
		select {
		case <-w.done:
		case <-time.After(waitLimit):
			t.Fatalf("Watch did not end within %v of its context being cancelled", waitLimit)
		}
	})
	t.Run("while streaming", func(t *testing.T) {
		h := openWithSchema(t, newStore)
		for i := range 5 {
			h.write(nil, touch(fmt.Sprintf("doc:%d#owner@user:ann", i))...)
		}
		ctx, cancel := context.WithCancel(h.ctx)
		defer cancel()
		type result struct {
			changes int
			errs    []error
		}
		done := make(chan result, 1)
		go func() {
			var res result
			for _, err := range h.s.Watch(ctx, 0) {
				if err != nil {
					res.errs = append(res.errs, err)
					continue
				}
				res.changes++
				if res.changes == 2 {
					cancel()
				}
			}
			done <- res
		}()
		select {
		case res := <-done:
			if res.changes != 2 {
				t.Fatalf("Watch yielded %d changes, want 2: none after its context was cancelled", res.changes)
			}
			for _, err := range res.errs {
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Watch ended with %v; want nothing or an error wrapping context.Canceled", err)
				}
			}
		case <-time.After(waitLimit):
			t.Fatalf("Watch did not end within %v of its context being cancelled", waitLimit)
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		h := openWithSchema(t, newStore, "doc:1#owner@user:ann")
		ctx, cancel := context.WithCancel(h.ctx)
		cancel()
		done := make(chan error, 1)
		go func() {
			for ch, err := range h.s.Watch(ctx, 0) {
				if err == nil {
					err = fmt.Errorf("yielded %s", formatChange(ch))
				}
				if !errors.Is(err, context.Canceled) {
					done <- err
					return
				}
			}
			done <- nil
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Watch with a cancelled context: %v; want nothing or an error wrapping context.Canceled", err)
			}
		case <-time.After(waitLimit):
			t.Fatalf("Watch with a cancelled context did not end within %v", waitLimit)
		}
	})
}
