package server_test

import (
	"context"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/postgres"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
)

// replica is a server on loopback over a store it shares with others.
type replica struct {
	t      *testing.T
	name   string
	srv    *server.Server
	conn   *grpc.ClientConn
	perm   pb.PermissionServiceClient
	rels   pb.RelationshipServiceClient
	health healthpb.HealthClient
	base   string
	logs   *logBuffer
}

// startReplica serves st under storeName (replicas of one store share it,
// so that their tokens are valid on each other) and waits until ready.
// The server stops in t.Cleanup; the caller closes st.
func startReplica(t *testing.T, name string, st store.Store, storeName string, mutate func(*server.Config)) *replica {
	t.Helper()
	logs := &logBuffer{}
	cfg := server.Config{
		GRPCAddr:            "127.0.0.1:0",
		HTTPAddr:            "127.0.0.1:0",
		PresharedKeys:       []string{testKey},
		ShutdownGracePeriod: 5 * time.Second,
		StoreName:           storeName,
		// Generous: a loaded machine may be slow to follow; the outage
		// tests set a short wait where they mean to hit it.
		MaxRevisionWait: 30 * time.Second,
		Logger:          slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(st, engine.New(), cfg)
	if err != nil {
		t.Fatalf("%s: server.New: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s: did not shut down within 30s; log:\n%s", name, logs.String())
		}
	})
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearer(testKey)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r := &replica{t: t, name: name, srv: srv, conn: conn, logs: logs,
		perm: pb.NewPermissionServiceClient(conn), rels: pb.NewRelationshipServiceClient(conn),
		health: healthpb.NewHealthClient(conn), base: "http://" + srv.HTTPAddr().String()}
	r.waitReady(true, 60*time.Second)
	return r
}

// waitReady polls until the server's readiness is want, failing after
// within. Polling a condition: nothing here assumes how long it takes.
func (r *replica) waitReady(want bool, within time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for r.srv.Ready() != want {
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: ready is still %v after %v; log:\n%s", r.name, !want, within, r.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// callCtx bounds one call generously, so that a hang fails the test
// rather than the test binary.
func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (r *replica) writeSchema(text string) string {
	r.t.Helper()
	resp, err := pb.NewSchemaServiceClient(r.conn).WriteSchema(callCtx(r.t), &pb.WriteSchemaRequest{Schema: text})
	if err != nil {
		r.t.Fatalf("%s: WriteSchema: %v", r.name, err)
	}
	return resp.GetWrittenAt().GetToken()
}

func (r *replica) write(ops ...*pb.RelationshipUpdate) string {
	r.t.Helper()
	resp, err := r.rels.WriteRelationships(callCtx(r.t), &pb.WriteRelationshipsRequest{Updates: ops})
	if err != nil {
		r.t.Fatalf("%s: WriteRelationships: %v", r.name, err)
	}
	return resp.GetWrittenAt().GetToken()
}

func (r *replica) check(c *pb.Consistency, res, sub string) (pb.Decision, error) {
	resp, err := r.perm.Check(callCtx(r.t), checkRequest(c, res, sub))
	return resp.GetDecision(), err
}

func (r *replica) mustCheck(c *pb.Consistency, res, sub string) pb.Decision {
	r.t.Helper()
	d, err := r.check(c, res, sub)
	if err != nil {
		r.t.Fatalf("%s: Check(%s view %s): %v", r.name, res, sub, err)
	}
	return d
}

// checkRequest asks whether sub ("user:ann") may view res ("doc:a").
func checkRequest(c *pb.Consistency, res, sub string) *pb.CheckRequest {
	rt, rid, _ := strings.Cut(res, ":")
	st, sid, _ := strings.Cut(sub, ":")
	return &pb.CheckRequest{Consistency: c, Resource: obj(rt, rid), Permission: "view", Subject: subj(st, sid)}
}

func viewerRel(doc, user string) *pb.Relationship {
	return &pb.Relationship{Resource: obj("doc", doc), Relation: "viewer", Subject: subj("user", user)}
}

func exactAt(token string) *pb.Consistency {
	return &pb.Consistency{Requirement: &pb.Consistency_AtExactSnapshot{AtExactSnapshot: &pb.RevisionToken{Token: token}}}
}

func minimizeLatency() *pb.Consistency {
	return &pb.Consistency{Requirement: &pb.Consistency_MinimizeLatency{MinimizeLatency: true}}
}

// openPostgres opens a store on uri (migrating it) that t.Cleanup closes.
// Cleanup runs last-registered first, so the servers started after it
// stop before it closes.
func openPostgres(t *testing.T, uri string, opts postgres.Options) *postgres.Store {
	t.Helper()
	opts.Migrate = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := postgres.Open(ctx, uri, opts)
	if err != nil {
		t.Fatalf("postgres.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// lagging delivers its store's changes lag late.
type lagging struct {
	store.Store
	lag time.Duration
}

func (l lagging) Watch(ctx context.Context, after store.Revision) iter.Seq2[store.Change, error] {
	return func(yield func(store.Change, error) bool) {
		for ch, err := range l.Store.Watch(ctx, after) {
			if err == nil {
				t := time.NewTimer(l.lag)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			if !yield(ch, err) {
				return
			}
		}
	}
}

// TestReplicasOverPostgres runs two servers, each with its own engine and
// connection pool, over one PostgreSQL database: a write through A is seen
// by a check through B at_least_as_fresh of the write's token, and so is a
// revoke, every time. No sleeps: the token alone must make B fresh enough.
func TestReplicasOverPostgres(t *testing.T) {
	uri := pgtest.URL(t)
	stA := openPostgres(t, uri, postgres.Options{MaxConns: 4})
	stB := openPostgres(t, uri, postgres.Options{MaxConns: 4})
	if stA.ID() != stB.ID() {
		t.Fatalf("two stores on one database have identities %s and %s", stA.ID(), stB.ID())
	}
	name := "postgres:" + stA.ID()
	// Each replica applies changes a little late, as one across a network
	// would: a check that did not wait for its token would then see the
	// state before the write, and fail the test.
	a := startReplica(t, "A", lagging{stA, 20 * time.Millisecond}, name, nil)
	b := startReplica(t, "B", lagging{stB, 20 * time.Millisecond}, name, nil)
	a.writeSchema(testSchema)

	const rounds = 40
	for i := range rounds {
		doc := fmt.Sprintf("r%d", i)
		// Alternate the writer, so both directions are covered.
		w, r := a, b
		if i%2 == 1 {
			w, r = b, a
		}
		granted := w.write(update(touch, viewerRel(doc, "ann"))...)
		if d := r.mustCheck(fresh(granted), "doc:"+doc, "user:ann"); d != pb.Decision_DECISION_ALLOWED {
			t.Fatalf("round %d: %s wrote doc:%s#viewer@user:ann; %s at_least_as_fresh of its token says %v", i, w.name, doc, r.name, d)
		}
		revoked := w.write(update(del, viewerRel(doc, "ann"))...)
		if d := r.mustCheck(fresh(revoked), "doc:"+doc, "user:ann"); d != pb.Decision_DECISION_DENIED {
			t.Fatalf("round %d: %s revoked doc:%s#viewer@user:ann; %s at_least_as_fresh of the revoke's token says %v", i, w.name, doc, r.name, d)
		}
		// The grant's token still names a state with access on the
		// other replica.
		if d := r.mustCheck(exactAt(granted), "doc:"+doc, "user:ann"); d != pb.Decision_DECISION_ALLOWED {
			t.Fatalf("round %d: %s at_exact_snapshot of the grant says %v", i, r.name, d)
		}
	}

	// One round over REST: write through A, check through B.
	ctx := callCtx(t)
	restViewer := `{"resource":{"objectType":"doc","objectId":"rest"},"relation":"viewer","subject":{"object":{"objectType":"user","objectId":"bob"}}}`
	code, body, err := restPost(ctx, a.base+"/v1/relationships/write", `{"updates":[{"operation":"OPERATION_TOUCH","relationship":`+restViewer+`}]}`)
	if err != nil || code != http.StatusOK {
		t.Fatalf("REST write through A: HTTP %d %v %v", code, body, err)
	}
	token := body["writtenAt"].(map[string]any)["token"].(string)
	restCheck := func(token, want string) {
		t.Helper()
		code, body, err := restPost(ctx, b.base+"/v1/permissions/check", `{"resource":{"objectType":"doc","objectId":"rest"},"permission":"view",
			"subject":{"object":{"objectType":"user","objectId":"bob"}},"consistency":{"atLeastAsFresh":{"token":"`+token+`"}}}`)
		if err != nil || code != http.StatusOK {
			t.Fatalf("REST check through B: HTTP %d %v %v", code, body, err)
		}
		if body["decision"] != want {
			t.Fatalf("REST check through B at_least_as_fresh: %v, want %s", body["decision"], want)
		}
	}
	restCheck(token, "DECISION_ALLOWED")
	code, body, err = restPost(ctx, a.base+"/v1/relationships/write", `{"updates":[{"operation":"OPERATION_DELETE","relationship":`+restViewer+`}]}`)
	if err != nil || code != http.StatusOK {
		t.Fatalf("REST revoke through A: HTTP %d %v %v", code, body, err)
	}
	restCheck(body["writtenAt"].(map[string]any)["token"].(string), "DECISION_DENIED")
}
