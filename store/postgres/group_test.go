package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
	"github.com/mandate-authz/mandate/store/rel"
)

const groupSchema = `use expiration

caveat tagged(tag string) {
	tag == "ok"
}

definition user {}

definition doc {
	relation owner: user
	relation viewer: user | user with expiration | user with tagged
}
`

// groupWrite is one write of TestGroupCommitKeepsEachWriteOwnOutcome:
// what it sends and what it must get.
type groupWrite struct {
	name    string
	write   func(s store.Store) (store.Revision, error)
	wantErr error    // nil: must succeed
	changes []string // for a success: the keys its revision changes
	stored  string   // for a success writing one relationship: it, as stored
}

// TestGroupCommitKeepsEachWriteOwnOutcome sends writes that succeed and
// writes that fail in every way a write can fail (a failed precondition,
// a CREATE conflict, a DeleteMatching over its limit, a value PostgreSQL
// refuses) at once, so that they share groups: each gets exactly the
// outcome it would alone, the successes get consecutive revisions, the
// store holds exactly their changes, and Watch reports each at its
// revision.
//
// In the second case another store over the same database writes just
// before the group runs, so that the head the committer numbered the
// group's revisions from is stale: the group must run again from the new
// head, every write keeping its outcome.
func TestGroupCommitKeepsEachWriteOwnOutcome(t *testing.T) {
	for _, moved := range []bool{false, true} {
		name := "alone"
		if moved {
			name = "after another store moved the head"
		}
		t.Run(name, func(t *testing.T) { testGroupOutcomes(t, moved) })
	}
}

func testGroupOutcomes(t *testing.T, moveHead bool) {
	ctx := t.Context()
	uri := pgtest.URL(t)
	s := openAt(t, uri, postgres.Options{})
	if _, err := s.WriteSchema(ctx, groupSchema); err != nil {
		t.Fatal(err)
	}
	seed := touch(t, "doc:taken#owner@user:ann", "doc:many#viewer@user:a", "doc:many#viewer@user:b", "doc:many#viewer@user:c")
	for i := range 4 {
		seed = append(seed, touch(t, fmt.Sprintf("doc:del%d#viewer@user:d", i))...)
	}
	head0, err := s.Write(ctx, nil, seed)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var sizes []int
	var other *postgres.Store
	var moveErr error
	moved := "doc:moved#owner@user:bob"
	if moveHead {
		other = openAt(t, uri, postgres.Options{})
	}
	release := s.HoldCommitter(t, func(n int) {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, n)
		if other != nil && n > 1 {
			// The committer is about to run the group, numbered from
			// the head its last commit left.
			head0, moveErr = other.Write(ctx, nil, touch(t, moved))
			other = nil
		}
	})

	mustExist := func(id string) []store.Precondition {
		return []store.Precondition{{MustExist: true, Filter: rel.Filter{ResourceType: "doc", ResourceIDs: []string{id}}}}
	}
	var writes []groupWrite
	for i := range 4 {
		touchKey := fmt.Sprintf("doc:t%d#viewer@user:u%d", i, i)
		createKey := fmt.Sprintf("doc:c%d#owner@user:u%d", i, i)
		delKey := fmt.Sprintf("doc:del%d#viewer@user:d", i)
		writes = append(writes,
			groupWrite{name: "touch " + touchKey, changes: []string{touchKey}, stored: touchKey,
				write: func(s store.Store) (store.Revision, error) {
					return s.Write(ctx, nil, touch(t, touchKey))
				}},
			groupWrite{name: "create of a live key", wantErr: store.ErrAlreadyExists,
				write: func(s store.Store) (store.Revision, error) {
					return s.Write(ctx, nil, []store.Mutation{{Op: store.Create, Rel: mustRel(t, "doc:taken#owner@user:ann")}})
				}},
			groupWrite{name: "precondition on a missing doc", wantErr: store.ErrPreconditionFailed,
				write: func(s store.Store) (store.Revision, error) {
					return s.Write(ctx, mustExist("missing"), touch(t, fmt.Sprintf("doc:p%d#owner@user:u%d", i, i)))
				}},
			groupWrite{name: "precondition that holds, create " + createKey, changes: []string{createKey}, stored: createKey,
				write: func(s store.Store) (store.Revision, error) {
					return s.Write(ctx, mustExist("taken"), []store.Mutation{{Op: store.Create, Rel: mustRel(t, createKey)}})
				}},
			groupWrite{name: "delete " + delKey, changes: []string{delKey},
				write: func(s store.Store) (store.Revision, error) {
					rev, n, err := s.DeleteMatching(ctx, nil, rel.Filter{ResourceType: "doc", ResourceIDs: []string{fmt.Sprintf("del%d", i)}}, 1)
					if err == nil && n != 1 {
						err = fmt.Errorf("deleted %d, want 1", n)
					}
					return rev, err
				}},
			groupWrite{name: "delete over its limit", wantErr: store.ErrLimitExceeded,
				write: func(s store.Store) (store.Revision, error) {
					rev, _, err := s.DeleteMatching(ctx, nil, rel.Filter{ResourceType: "doc", ResourceIDs: []string{"many"}}, 2)
					return rev, err
				}},
			// PostgreSQL's jsonb refuses \u0000: the statement fails in the
			// database, not in a check.
			groupWrite{name: "caveat context PostgreSQL refuses", wantErr: errRefused,
				write: func(s store.Store) (store.Revision, error) {
					r := mustRel(t, fmt.Sprintf("doc:r%d#viewer@user:u%d", i, i))
					r.Caveat = &rel.Caveat{Name: "tagged", Context: map[string]any{"tag": "a\x00b"}}
					return s.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}})
				}},
			// The same key twice in one group: the later revision's version
			// is the one stored.
			groupWrite{name: fmt.Sprintf("touch of a shared key (%d)", i), changes: []string{"doc:same#viewer@user:zed"},
				stored: fmt.Sprintf("doc:same#viewer@user:zed[expiration:2100-01-0%dT00:00:00Z]", 1+i),
				write: func(s store.Store) (store.Revision, error) {
					r := mustRel(t, fmt.Sprintf("doc:same#viewer@user:zed[expiration:2100-01-0%dT00:00:00Z]", 1+i))
					return s.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}})
				}},
		)
	}
	if moveHead {
		// A refusal runs the group again, from a head read afresh: left
		// out, the group's only way to the new head is the stale head's
		// guard.
		writes = slices.DeleteFunc(writes, func(w groupWrite) bool { return w.wantErr == errRefused })
	}

	revs := make([]store.Revision, len(writes))
	errs := make([]error, len(writes))
	var wg sync.WaitGroup
	for i, w := range writes {
		wg.Go(func() { revs[i], errs[i] = w.write(s) })
	}
	// Let every writer reach the committer's queue, then let it run.
	time.Sleep(300 * time.Millisecond)
	release()
	wg.Wait()
	if moveErr != nil {
		t.Fatalf("the other store's write: %v", moveErr)
	}

	byRev := map[store.Revision]groupWrite{}
	for i, w := range writes {
		switch {
		case w.wantErr == errRefused:
			if errs[i] == nil || errors.Is(errs[i], store.ErrPreconditionFailed) || errors.Is(errs[i], store.ErrAlreadyExists) {
				t.Errorf("%s: got %v, want the database's refusal", w.name, errs[i])
			}
		case w.wantErr != nil:
			if !errors.Is(errs[i], w.wantErr) {
				t.Errorf("%s: got %v, want %v", w.name, errs[i], w.wantErr)
			}
		case errs[i] != nil:
			t.Errorf("%s: %v", w.name, errs[i])
		default:
			if other, dup := byRev[revs[i]]; dup {
				t.Errorf("%s and %s both got revision %d", w.name, other.name, revs[i])
			}
			byRev[revs[i]] = w
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	head, err := s.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := head0 + store.Revision(len(byRev)); head != want {
		t.Fatalf("head %d after %d successful writes from %d, want %d: failed writes must not take revisions", head, len(byRev), head0, want)
	}
	for r := head0 + 1; r <= head; r++ {
		if _, ok := byRev[r]; !ok {
			t.Fatalf("no write acknowledged revision %d", r)
		}
	}
	mu.Lock()
	grouped := slices.Max(sizes)
	mu.Unlock()
	if grouped < len(writes)/2 {
		t.Errorf("the largest group had %d writes of %d sent at once; want them grouped", grouped, len(writes))
	}

	// The store holds the seeds, minus the deletes, plus the successes.
	got, err := readAll(ctx, s, head)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	if moveHead {
		want = append(want, moved)
	}
	for _, r := range seed {
		if r.Rel.Resource.ID[:3] != "del" {
			want = append(want, r.Rel.String())
		}
	}
	// Of the writes to the shared key, the one at the highest revision
	// wrote the version stored.
	lastShared := store.Revision(0)
	for r, w := range byRev {
		switch {
		case w.changes[0] == "doc:same#viewer@user:zed":
			lastShared = max(lastShared, r)
		case w.stored != "":
			want = append(want, w.stored)
		}
	}
	want = append(want, byRev[lastShared].stored)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("stored after the group:\n%q\nwant\n%q", got, want)
	}

	// Watch reports each success at its revision, changing its key.
	seen := 0
	for ch, err := range s.Watch(ctx, head0) {
		if err != nil {
			t.Fatal(err)
		}
		w := byRev[ch.Revision]
		var keys []string
		for _, u := range ch.Updates {
			keys = append(keys, u.Rel.Key().String())
		}
		if !slices.Equal(keys, w.changes) {
			t.Errorf("Watch at %d (%s): %q, want %q", ch.Revision, w.name, keys, w.changes)
		}
		if seen++; ch.Revision == head {
			break
		}
	}
	if seen != len(byRev) {
		t.Errorf("Watch reported %d revisions, want %d", seen, len(byRev))
	}
}

// errRefused marks a write the database itself must refuse.
var errRefused = errors.New("refused by the database")

// TestGroupCommitSkipsAbandonedWrites: a caller that gives up while its
// write waits for the committer gets its context's error, and the write
// is not applied when the group runs.
func TestGroupCommitSkipsAbandonedWrites(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Options{})
	if _, err := s.WriteSchema(ctx, groupSchema); err != nil {
		t.Fatal(err)
	}
	head0, err := s.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release := s.HoldCommitter(t, nil)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(wctx, nil, touch(t, "doc:gone#owner@user:ann"))
		done <- err
	}()
	kept := make(chan error, 1)
	go func() {
		_, err := s.Write(ctx, nil, touch(t, "doc:kept#owner@user:ann"))
		kept <- err
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the abandoned write returned %v, want context.Canceled", err)
	}
	release()
	if err := <-kept; err != nil {
		t.Fatalf("the write sharing the group: %v", err)
	}
	got, err := readAll(ctx, s, head0+1)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"doc:kept#owner@user:ann"}; !slices.Equal(got, want) {
		t.Fatalf("stored %q, want %q: the abandoned write must not be applied", got, want)
	}
	if head, _ := s.Head(ctx); head != head0+1 {
		t.Fatalf("head %d, want %d", head, head0+1)
	}
}
