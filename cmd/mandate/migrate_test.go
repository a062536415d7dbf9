package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
)

const serveKey = "serve-key-3f9a"

const pgServeSchema = `definition user {}

definition doc {
	relation viewer: user
	permission view = viewer
}
`

// servedCLI is `mandate serve`, run in-process.
type servedCLI struct {
	conn *grpc.ClientConn
	ctx  context.Context // carries the key
	stop func()
}

// startPGServe runs serve over the database at uri (see startServe).
func startPGServe(t *testing.T, uri string, extra ...string) *servedCLI {
	t.Helper()
	return startServe(t, append([]string{"--datastore-engine", "postgres", "--datastore-conn-uri", uri,
		"--datastore-conn-pool-max-open", "4"}, extra...)...)
}

// startServe runs serve with the given flags (on gRPC only, with serveKey)
// and waits until it is ready; stop shuts it down and checks it exited
// cleanly.
func startServe(t *testing.T, flags ...string) *servedCLI {
	t.Helper()
	logs := &syncBuffer{}
	root := newRootCommand()
	// --data-dir first, so that flags may override it: even a server on
	// PostgreSQL keeps its capability token keys there.
	root.SetArgs(append([]string{"serve", "--data-dir", t.TempDir(), "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--grpc-preshared-key", serveKey, "--audit-sink", "none", "--grpc-shutdown-grace-period", "5s"}, flags...))
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	stopped := false
	stop := func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v\nlog:\n%s", err, logs.String())
			}
		case <-time.After(20 * time.Second):
			t.Errorf("serve did not stop within 20s; log:\n%s", logs.String())
		}
	}
	t.Cleanup(stop)

	serving := regexp.MustCompile(`msg=serving grpc=(\S+)`)
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited before serving: %v\nlog:\n%s", err, logs.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start within 20s; log:\n%s", logs.String())
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(rcancel)
	authed := metadata.AppendToOutgoingContext(rctx, "authorization", "Bearer "+serveKey)
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := healthpb.NewHealthClient(conn).Check(authed, &healthpb.HealthCheckRequest{})
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready within 20s (%v); log:\n%s", err, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &servedCLI{conn: conn, ctx: authed, stop: stop}
}

func (s *servedCLI) check(t *testing.T, token, doc, user string) pb.Decision {
	t.Helper()
	resp, err := pb.NewPermissionServiceClient(s.conn).Check(s.ctx, &pb.CheckRequest{
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: &pb.RevisionToken{Token: token}}},
		Resource:    &pb.ObjectReference{ObjectType: "doc", ObjectId: doc},
		Permission:  "view",
		Subject:     &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: user}},
	})
	if err != nil {
		t.Fatalf("Check(doc:%s, user:%s): %v", doc, user, err)
	}
	return resp.GetDecision()
}

func (s *servedCLI) count(t *testing.T, token string) int {
	t.Helper()
	stream, err := pb.NewRelationshipServiceClient(s.conn).ExportRelationships(s.ctx, &pb.ExportRelationshipsRequest{
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: &pb.RevisionToken{Token: token}}},
	})
	if err != nil {
		t.Fatalf("ExportRelationships: %v", err)
	}
	n := 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatalf("ExportRelationships: %v", err)
		}
		n += len(resp.GetRelationships())
	}
}

func viewer(doc, user string) *pb.Relationship {
	return &pb.Relationship{
		Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: doc},
		Relation: "viewer",
		Subject:  &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: user}},
	}
}

// TestMigrateAndServeOverPostgres drives the PostgreSQL datastore as an
// operator would: serve refuses an unmigrated database, migrate applies the
// schema once and then nothing, and data written through one serve process
// (including a bulk import) is there, with its revision token still valid,
// after a restart.
func TestMigrateAndServeOverPostgres(t *testing.T) {
	uri := pgtest.URL(t)
	base := []string{"--datastore-engine", "postgres", "--datastore-conn-uri", uri}

	code, _, stderr := runCLI(t, append([]string{"serve", "--grpc-preshared-key", "k", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--audit-sink", "none"}, base...)...)
	if code == 0 || !strings.Contains(stderr, "mandate migrate") || !strings.Contains(stderr, "--datastore-migrate") {
		t.Fatalf("serve over an unmigrated database: exit %d, %q; want a failure telling to run mandate migrate", code, stderr)
	}

	storeID := regexp.MustCompile(`postgres datastore (\S+) is at schema version (\d+)`)
	code, first, stderr := runCLI(t, append([]string{"migrate"}, base...)...)
	if code != 0 || !strings.Contains(first, "applied 0001_init") || !storeID.MatchString(first) {
		t.Fatalf("first migrate: exit %d, stdout %q, stderr %q; want 0001_init applied", code, first, stderr)
	}
	code, second, stderr := runCLI(t, append([]string{"migrate"}, base...)...)
	if code != 0 || strings.Contains(second, "applied") || !strings.Contains(second, "already up to date") {
		t.Fatalf("second migrate: exit %d, stdout %q, stderr %q; want nothing applied", code, second, stderr)
	}
	if a, b := storeID.FindStringSubmatch(first), storeID.FindStringSubmatch(second); a == nil || b == nil || a[1] != b[1] {
		t.Fatalf("the store identity changed between migrations: %q, then %q", first, second)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate"}, "--datastore-conn-uri is required"},
		{[]string{"migrate", "--datastore-engine", "embedded", "--datastore-conn-uri", uri}, "expected postgres or cockroachdb"},
		{[]string{"migrate", "--datastore-engine", "cockroachdb", "--datastore-conn-uri", uri}, "the server at --datastore-conn-uri is postgres"},
		{[]string{"serve", "--grpc-preshared-key", "k", "--datastore-engine", "postgres"}, "--datastore-conn-uri is required by the postgres datastore"},
		{append([]string{"serve", "--grpc-preshared-key", "k", "--datastore-conn-pool-max-open", "0"}, base...), "--datastore-conn-pool-max-open"},
	} {
		t.Setenv("MANDATE_DATASTORE_CONN_URI", "")
		code, _, stderr := runCLI(t, bad.args...)
		if code == 0 || !strings.Contains(stderr, bad.want) {
			t.Errorf("%v: exit %d, %q; want an error mentioning %q", bad.args, code, stderr, bad.want)
		}
	}

	srv := startPGServe(t, uri)
	if _, err := pb.NewSchemaServiceClient(srv.conn).WriteSchema(srv.ctx, &pb.WriteSchemaRequest{Schema: pgServeSchema}); err != nil {
		t.Fatalf("WriteSchema: %v", err)
	}
	w, err := pb.NewRelationshipServiceClient(srv.conn).WriteRelationships(srv.ctx, &pb.WriteRelationshipsRequest{
		Updates: []*pb.RelationshipUpdate{
			{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: viewer("plan", "ann")},
			{Operation: pb.RelationshipUpdate_OPERATION_CREATE, Relationship: viewer("plan", "bob")},
		},
	})
	if err != nil {
		t.Fatalf("WriteRelationships: %v", err)
	}
	written := w.GetWrittenAt().GetToken()
	if d := srv.check(t, written, "plan", "ann"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("check after the write: %v", d)
	}

	// A bulk import: batches of 10,000, the store's COPY path.
	imp, err := pb.NewRelationshipServiceClient(srv.conn).ImportRelationships(srv.ctx)
	if err != nil {
		t.Fatal(err)
	}
	const imported = 25_000
	for start := 0; start < imported; start += 10_000 {
		var rels []*pb.Relationship
		for i := start; i < min(start+10_000, imported); i++ {
			rels = append(rels, viewer(fmt.Sprintf("bulk%d", i), fmt.Sprintf("u%d", i%100)))
		}
		if err := imp.Send(&pb.ImportRelationshipsRequest{Relationships: rels}); err != nil {
			t.Fatalf("import send: %v", err)
		}
	}
	impResp, err := imp.CloseAndRecv()
	if err != nil || impResp.GetNumLoaded() != imported {
		t.Fatalf("ImportRelationships: %v, %d loaded; want %d", err, impResp.GetNumLoaded(), imported)
	}
	importedAt := impResp.GetWrittenAt().GetToken()
	if n := srv.count(t, importedAt); n != imported+2 {
		t.Fatalf("%d relationships after the import, want %d", n, imported+2)
	}
	srv.stop()

	// A second process over the same database: same data, same identity.
	again := startPGServe(t, uri)
	if d := again.check(t, written, "plan", "bob"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("after a restart, check with the earlier token: %v, want allowed", d)
	}
	if d := again.check(t, importedAt, "bulk24999", "u99"); d != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("after a restart, check of an imported relationship: %v, want allowed", d)
	}
	if d := again.check(t, importedAt, "plan", "zed"); d != pb.Decision_DECISION_DENIED {
		t.Fatalf("after a restart, check of a stranger: %v, want denied", d)
	}
	if n := again.count(t, importedAt); n != imported+2 {
		t.Fatalf("%d relationships after the restart, want %d", n, imported+2)
	}
	sch, err := pb.NewSchemaServiceClient(again.conn).ReadSchema(again.ctx, &pb.ReadSchemaRequest{})
	if err != nil || sch.GetSchemaText() != pgServeSchema {
		t.Fatalf("ReadSchema after a restart: %q, %v", sch.GetSchemaText(), err)
	}
}

// TestServeMigratesWithFlag starts serve with --datastore-migrate on an
// empty database.
func TestServeMigratesWithFlag(t *testing.T) {
	uri := pgtest.URL(t)
	srv := startPGServe(t, uri, "--datastore-migrate", "--datastore-gc-interval", "50ms", "--datastore-gc-window", "1h")
	if _, err := pb.NewSchemaServiceClient(srv.conn).WriteSchema(srv.ctx, &pb.WriteSchemaRequest{Schema: pgServeSchema}); err != nil {
		t.Fatalf("WriteSchema after serve migrated: %v", err)
	}
	code, out, stderr := runCLI(t, "migrate", "--datastore-engine", "postgres", "--datastore-conn-uri", uri)
	if code != 0 || !strings.Contains(out, "already up to date") {
		t.Fatalf("migrate after serve --datastore-migrate: exit %d, %q, %q", code, out, stderr)
	}
}
