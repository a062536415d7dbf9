package server_test

import (
	"context"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// flakyStore is a store behind a network that a test can cut: while down,
// every call fails as a refused connection would, and every watch ends
// with that error, as the postgres store's do when its database goes away.
type flakyStore struct {
	store.Store
	mu   sync.Mutex
	down bool
	cut  chan struct{} // closed when the store goes down
}

func newFlakyStore(st store.Store) *flakyStore {
	return &flakyStore{Store: st, cut: make(chan struct{})}
}

func (f *flakyStore) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if down && !f.down {
		close(f.cut)
	}
	if !down && f.down {
		f.cut = make(chan struct{})
	}
	f.down = down
}

// state returns the channel closed when the store next goes down and the
// error calls fail with now (nil when up).
func (f *flakyStore) state() (<-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return f.cut, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return f.cut, nil
}

func (f *flakyStore) Head(ctx context.Context) (store.Revision, error) {
	if _, err := f.state(); err != nil {
		return 0, fmt.Errorf("head: %w", err)
	}
	return f.Store.Head(ctx)
}

func (f *flakyStore) WriteSchema(ctx context.Context, text string) (store.Revision, error) {
	if _, err := f.state(); err != nil {
		return 0, fmt.Errorf("write schema: %w", err)
	}
	return f.Store.WriteSchema(ctx, text)
}

func (f *flakyStore) ReadSchema(ctx context.Context, rev store.Revision) (string, store.Revision, error) {
	if _, err := f.state(); err != nil {
		return "", 0, fmt.Errorf("read schema: %w", err)
	}
	return f.Store.ReadSchema(ctx, rev)
}

func (f *flakyStore) Write(ctx context.Context, pre []store.Precondition, muts []store.Mutation) (store.Revision, error) {
	if _, err := f.state(); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	return f.Store.Write(ctx, pre, muts)
}

func (f *flakyStore) DeleteMatching(ctx context.Context, pre []store.Precondition, filter rel.Filter, limit int) (store.Revision, int, error) {
	if _, err := f.state(); err != nil {
		return 0, 0, fmt.Errorf("delete: %w", err)
	}
	return f.Store.DeleteMatching(ctx, pre, filter, limit)
}

func (f *flakyStore) Read(ctx context.Context, rev store.Revision, filter rel.Filter, after *rel.Key) iter.Seq2[rel.Relationship, error] {
	return func(yield func(rel.Relationship, error) bool) {
		if _, err := f.state(); err != nil {
			yield(rel.Relationship{}, fmt.Errorf("read: %w", err))
			return
		}
		for r, err := range f.Store.Read(ctx, rev, filter, after) {
			if !yield(r, err) {
				return
			}
		}
	}
}

func (f *flakyStore) Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error] {
	return func(yield func(store.Change, error) bool) {
		cut, err := f.state()
		if err != nil {
			yield(store.Change{}, fmt.Errorf("watch: %w", err))
			return
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-cut:
				cancel()
			case <-wctx.Done():
			}
		}()
		for ch, err := range f.Store.Watch(wctx, after) {
			if err != nil || !yield(ch, nil) {
				if err != nil {
					yield(store.Change{}, err)
				}
				return
			}
		}
		if ctx.Err() == nil {
			_, err := f.state()
			yield(store.Change{}, fmt.Errorf("watch: %w", err))
		}
	}
}

// sharedMemory is a memory store served by replica A through a flaky
// link and by replica B directly: B can write while A is cut off.
func sharedMemory(t *testing.T, wait time.Duration) (mem *memory.Store, link *flakyStore, a, b *replica) {
	mem = memory.New()
	t.Cleanup(func() { mem.Close() })
	link = newFlakyStore(mem)
	a = startReplica(t, "A", link, "shared-memory", func(c *server.Config) { c.MaxRevisionWait = wait })
	b = startReplica(t, "B", mem, "shared-memory", nil)
	return mem, link, a, b
}

// wantUnavailable asserts err is Unavailable mentioning every fragment.
func wantUnavailable(t *testing.T, what string, err error, fragments ...string) {
	t.Helper()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("%s: got %v (code %v), want Unavailable", what, err, status.Code(err))
	}
	for _, f := range fragments {
		if !strings.Contains(status.Convert(err).Message(), f) {
			t.Errorf("%s: message %q does not mention %q", what, status.Convert(err).Message(), f)
		}
	}
}

// TestFollowSurvivesStoreOutage cuts a server off from its store and
// brings it back: it turns not ready without stopping, keeps answering
// what its index can answer truthfully, refuses the rest with
// Unavailable within the configured wait, and once the store is back it
// is ready again, having caught up with what another replica wrote.
func TestFollowSurvivesStoreOutage(t *testing.T) {
	const wait = 300 * time.Millisecond
	mem, link, a, b := sharedMemory(t, wait)
	a.writeSchema(testSchema)
	before := a.write(update(touch, viewerRel("a", "ann"))...)
	a.mustCheck(fresh(before), "doc:a", "user:ann") // A has applied it
	b.mustCheck(fresh(before), "doc:a", "user:ann") // and so has B

	link.setDown(true)
	a.waitReady(false, 20*time.Second)
	if h, err := a.health.Check(callCtx(t), &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health while the store is down: %v, %v; want NOT_SERVING", h, err)
	}
	if code, _, _ := restGet(t, a.base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while the store is down: HTTP %d, want 503", code)
	}
	if !strings.Contains(a.logs.String(), "cannot follow the store") {
		t.Errorf("the outage was not logged; log:\n%s", a.logs.String())
	}

	// Writes fail with Unavailable.
	_, err := a.rels.WriteRelationships(callCtx(t), &pb.WriteRelationshipsRequest{Updates: update(touch, viewerRel("b", "bob"))})
	wantUnavailable(t, "write", err, "connection refused")
	// What the index holds is still answered: latency-minimized, and
	// fresh or exact at a token it has applied.
	for name, c := range map[string]*pb.Consistency{"minimize_latency": minimizeLatency(), "at_least_as_fresh": fresh(before), "at_exact_snapshot": exactAt(before)} {
		if d, err := a.check(c, "doc:a", "user:ann"); err != nil || d != pb.Decision_DECISION_ALLOWED {
			t.Errorf("%s check of an applied write while the store is down: %v, %v; want allowed", name, d, err)
		}
	}
	// fully_consistent needs the store.
	_, err = a.check(fullyConsistent(), "doc:a", "user:ann")
	wantUnavailable(t, "fully_consistent check", err, "fully_consistent", "unreachable")

	// B, still connected, revokes ann's access. A must not answer for
	// B's token from its older index: it waits, then fails naming the
	// revision.
	revoked := b.write(update(del, viewerRel("a", "ann"))...)
	head, _ := mem.Head(context.Background())
	for name, c := range map[string]*pb.Consistency{"at_least_as_fresh": fresh(revoked), "at_exact_snapshot": exactAt(revoked)} {
		start := time.Now()
		d, err := a.check(c, "doc:a", "user:ann")
		took := time.Since(start)
		wantUnavailable(t, name+" check of a revision A has not applied", err, fmt.Sprintf("revision %d", head), "--max-revision-wait")
		if err == nil {
			t.Errorf("%s: answered %v from an index older than the token", name, d)
		}
		if took < wait {
			t.Errorf("%s: failed after %v, before the revision wait of %v", name, took, wait)
		}
	}
	// A lookup keeps the same promise.
	stream, err := a.perm.LookupResources(callCtx(t), &pb.LookupResourcesRequest{Consistency: fresh(revoked), ResourceObjectType: "doc", Permission: "view", Subject: subj("user", "ann")})
	if err == nil {
		_, err = stream.Recv()
	}
	wantUnavailable(t, "LookupResources at_least_as_fresh of an unapplied revision", err, fmt.Sprintf("revision %d", head))

	link.setDown(false)
	a.waitReady(true, 30*time.Second)
	if d := a.mustCheck(fresh(revoked), "doc:a", "user:ann"); d != pb.Decision_DECISION_DENIED {
		t.Fatalf("after the store came back, A says %v for a revoked grant at the revoke's token", d)
	}
	after := a.write(update(touch, viewerRel("b", "bob"))...)
	if d := b.mustCheck(fresh(after), "doc:b", "user:bob"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("a write through A after recovery: B says %v", d)
	}
	if d := a.mustCheck(fullyConsistent(), "doc:b", "user:bob"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("fully_consistent through A after recovery: %v", d)
	}
	// It resumed from its head rather than reloading a snapshot.
	if strings.Contains(a.logs.String(), "reloading a snapshot") {
		t.Errorf("A reloaded a snapshot though the store kept its history; log:\n%s", a.logs.String())
	}
}

// TestFollowReloadsSnapshotWhenHistoryIsGone: while a server is cut off,
// another replica writes and the store collects the history after the
// server's head. Resuming then fails with ErrRevisionGone, so the server
// reloads a snapshot and answers from it.
func TestFollowReloadsSnapshotWhenHistoryIsGone(t *testing.T) {
	mem, link, a, b := sharedMemory(t, 30*time.Second)
	a.writeSchema(testSchema)
	granted := a.write(update(touch, viewerRel("a", "ann"), viewerRel("keep", "ann"))...)
	a.mustCheck(fresh(granted), "doc:a", "user:ann") // A has applied it

	link.setDown(true)
	a.waitReady(false, 20*time.Second)
	b.write(update(del, viewerRel("a", "ann"))...)
	latest := b.write(update(touch, viewerRel("c", "carl"))...)
	head, err := mem.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.ForgetBefore(context.Background(), head); err != nil {
		t.Fatal(err)
	}

	link.setDown(false)
	a.waitReady(true, 30*time.Second)
	for _, c := range []struct {
		res, sub string
		want     pb.Decision
	}{
		{"doc:a", "user:ann", pb.Decision_DECISION_DENIED},
		{"doc:keep", "user:ann", pb.Decision_DECISION_ALLOWED},
		{"doc:c", "user:carl", pb.Decision_DECISION_ALLOWED},
	} {
		if d := a.mustCheck(fresh(latest), c.res, c.sub); d != c.want {
			t.Errorf("after reloading, %s view %s = %v, want %v", c.res, c.sub, d, c.want)
		}
	}
	if !strings.Contains(a.logs.String(), "reloading a snapshot") {
		t.Errorf("no snapshot reload was logged; log:\n%s", a.logs.String())
	}
	// And it follows the stream again afterwards.
	next := b.write(update(touch, viewerRel("d", "dan"))...)
	if d := a.mustCheck(fresh(next), "doc:d", "user:dan"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("a write after the reload: A says %v", d)
	}
}

func restGet(t *testing.T, url string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(callCtx(t), http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}
