package memory_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
	"github.com/mandate-authz/mandate/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return memory.New() })
}

const testSchema = `use expiration

definition user {}

definition doc {
	relation owner: user
	relation viewer: user | user with expiration
}
`

func mustRel(t testing.TB, text string) rel.Relationship {
	t.Helper()
	r, err := rel.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func touch(t testing.TB, texts ...string) []store.Mutation {
	t.Helper()
	out := make([]store.Mutation, len(texts))
	for i, text := range texts {
		out[i] = store.Mutation{Op: store.Touch, Rel: mustRel(t, text)}
	}
	return out
}

func readAll(t *testing.T, s *memory.Store, rev store.Revision) ([]string, error) {
	t.Helper()
	var out []string
	for r, err := range s.Read(t.Context(), rev, rel.Filter{}, nil) {
		if err != nil {
			return nil, err
		}
		out = append(out, r.String())
	}
	return out, nil
}

func TestRevisionsAreContiguous(t *testing.T) {
	ctx := t.Context()
	s := memory.New()
	step := func(want store.Revision, rev store.Revision, err error) {
		t.Helper()
		if err != nil || rev != want {
			t.Fatalf("got revision %d, %v; want %d", rev, err, want)
		}
	}
	rev, err := s.WriteSchema(ctx, testSchema)
	step(1, rev, err)
	rev, err = s.Write(ctx, nil, touch(t, "doc:1#owner@user:ann"))
	step(2, rev, err)
	if _, err := s.Write(ctx, nil, touch(t, "doc:1#nope@user:ann")); !errors.Is(err, store.ErrInvalidRelationship) {
		t.Fatalf("invalid write: %v", err)
	}
	rev, _, err = s.DeleteMatching(ctx, nil, rel.Filter{}, 0)
	step(3, rev, err)
	rev, err = s.Head(ctx)
	step(3, rev, err)
}

func TestClockDecidesExpiration(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := memory.New(memory.WithClock(clock))
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	rev, err := s.Write(ctx, nil, touch(t, "doc:1#viewer@user:ann[expiration:2030-01-01T01:00:00Z]"))
	if err != nil {
		t.Fatal(err)
	}
	create := []store.Mutation{{Op: store.Create, Rel: mustRel(t, "doc:1#viewer@user:ann")}}
	if _, err := s.Write(ctx, nil, create); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("CREATE over a live relationship: %v, want ErrAlreadyExists", err)
	}
	if got, _ := readAll(t, s, rev); len(got) != 1 {
		t.Fatalf("before expiry: %q", got)
	}
	mu.Lock()
	now = now.Add(time.Hour) // the expiration instant itself is already expired
	mu.Unlock()
	if got, _ := readAll(t, s, rev); len(got) != 0 {
		t.Fatalf("after expiry: %q", got)
	}
	if _, err := s.Write(ctx, nil, create); err != nil {
		t.Fatalf("CREATE over an expired relationship: %v", err)
	}
}

func TestForgetBefore(t *testing.T) {
	ctx := t.Context()
	s := memory.New()
	r1, _ := s.WriteSchema(ctx, testSchema)
	r2, _ := s.Write(ctx, nil, touch(t, "doc:1#owner@user:ann", "doc:2#owner@user:bob", "doc:3#viewer@user:old[expiration:2000-01-01T00:00:00Z]"))
	r3, _ := s.Write(ctx, nil, []store.Mutation{{Op: store.Delete, Rel: mustRel(t, "doc:1#owner@user:ann")}})
	r4, _ := s.Write(ctx, nil, touch(t, "doc:4#owner@user:cat"))
	r5, err := s.Write(ctx, nil, touch(t, "doc:5#owner@user:dan"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetBefore(ctx, r3); err != nil {
		t.Fatal(err)
	}

	if _, err := readAll(t, s, r2); !errors.Is(err, store.ErrRevisionGone) {
		t.Fatalf("Read(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", r2, r3, err)
	}
	if _, _, err := s.ReadSchema(ctx, r2); !errors.Is(err, store.ErrRevisionGone) {
		t.Fatalf("ReadSchema(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", r2, r3, err)
	}
	want := map[store.Revision]string{
		r3: "doc:2#owner@user:bob",
		r4: "doc:2#owner@user:bob doc:4#owner@user:cat",
		r5: "doc:2#owner@user:bob doc:4#owner@user:cat doc:5#owner@user:dan",
	}
	for rev, w := range want {
		got, err := readAll(t, s, rev)
		if err != nil || strings.Join(got, " ") != w {
			t.Fatalf("Read(%d) = %q, %v; want %s", rev, got, err, w)
		}
	}
	if text, at, err := s.ReadSchema(ctx, r3); err != nil || text != testSchema || at != r1 {
		t.Fatalf("ReadSchema(%d) = %q, %d, %v; want the schema written at %d", r3, text, at, err, r1)
	}
	for _, err := range s.Watch(ctx, r2) {
		if !errors.Is(err, store.ErrRevisionGone) {
			t.Fatalf("Watch(%d) after ForgetBefore(%d): %v, want ErrRevisionGone", r2, r3, err)
		}
		break
	}
	var seen []store.Revision
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for ch, err := range s.Watch(wctx, r3) {
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, ch.Revision)
		if ch.Revision == r5 {
			cancel()
		}
	}
	if fmt.Sprint(seen) != fmt.Sprint([]store.Revision{r4, r5}) {
		t.Fatalf("Watch(%d) after ForgetBefore saw %v, want [%d %d]", r3, seen, r4, r5)
	}
	// Forgetting is idempotent and never passes the head.
	if err := s.ForgetBefore(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetBefore(ctx, r5+10); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, s, r5); err != nil || len(got) != 3 {
		t.Fatalf("Read(head) after ForgetBefore past head = %q, %v", got, err)
	}
	// The history is still writable and watchable.
	r6, err := s.Write(ctx, nil, touch(t, "doc:1#owner@user:ann"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, s, r6); err != nil || len(got) != 4 {
		t.Fatalf("Read(%d) = %q, %v", r6, got, err)
	}
}

func TestClose(t *testing.T) {
	ctx := t.Context()
	s := memory.New()
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	watchErr := make(chan error, 1)
	go func() {
		for _, err := range s.Watch(ctx, 1) {
			watchErr <- err
			return
		}
		watchErr <- nil
	}()
	time.Sleep(20 * time.Millisecond) // let the watcher block
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case err := <-watchErr:
		if !errors.Is(err, memory.ErrClosed) {
			t.Fatalf("a waiting Watch ended with %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a waiting Watch")
	}
	if _, err := s.Head(ctx); !errors.Is(err, memory.ErrClosed) {
		t.Fatalf("Head after Close: %v", err)
	}
	if _, err := s.Write(ctx, nil, nil); !errors.Is(err, memory.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, err := readAll(t, s, 1); !errors.Is(err, memory.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
}

func TestOrphanListIsBounded(t *testing.T) {
	ctx := t.Context()
	s := memory.New()
	if _, err := s.WriteSchema(ctx, testSchema); err != nil {
		t.Fatal(err)
	}
	var texts []string
	for i := range 150 {
		texts = append(texts, fmt.Sprintf("doc:%d#viewer@user:u", i))
	}
	if _, err := s.Write(ctx, nil, touch(t, texts...)); err != nil {
		t.Fatal(err)
	}
	_, err := s.WriteSchema(ctx, strings.Replace(testSchema, "\trelation viewer: user | user with expiration\n", "", 1))
	if !errors.Is(err, store.ErrSchemaOrphans) {
		t.Fatalf("WriteSchema: %v, want ErrSchemaOrphans", err)
	}
	if n := strings.Count(err.Error(), "#viewer@user:u"); n != 100 {
		t.Fatalf("refusal names %d orphans, want the first 100: %v", n, err)
	}
}

func TestDeleteMatchingNegativeLimit(t *testing.T) {
	s := memory.New()
	if _, _, err := s.DeleteMatching(t.Context(), nil, rel.Filter{}, -1); err == nil {
		t.Fatal("DeleteMatching with limit -1 succeeded")
	}
	if head, _ := s.Head(t.Context()); head != 0 {
		t.Fatalf("Head = %d after a refused DeleteMatching", head)
	}
}

// BenchmarkWrite measures one Write of a 1000-relationship batch, creating
// new keys (the store grows) or touching the same keys again (history
// grows).
func BenchmarkWrite(b *testing.B) {
	const size = 1000
	for _, mode := range []string{"new", "retouch"} {
		b.Run(mode+"/1000", func(b *testing.B) {
			ctx := context.Background()
			s := memory.New()
			if _, err := s.WriteSchema(ctx, testSchema); err != nil {
				b.Fatal(err)
			}
			batches := func(n int) []store.Mutation {
				muts := make([]store.Mutation, size)
				for i := range muts {
					muts[i] = store.Mutation{Op: store.Touch, Rel: rel.Relationship{
						Resource: rel.Object{Type: "doc", ID: fmt.Sprintf("d%d-%d", n, i)},
						Relation: "viewer",
						Subject:  rel.Subject{Type: "user", ID: fmt.Sprintf("u%d", i%97)},
					}}
				}
				return muts
			}
			fixed := batches(0)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				muts := fixed
				if mode == "new" {
					b.StopTimer()
					muts = batches(n)
					n++
					b.StartTimer()
				}
				if _, err := s.Write(ctx, nil, muts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/rel")
		})
	}
}

func BenchmarkPaging(b *testing.B) { storetest.BenchmarkPaging(b, memory.New()) }
