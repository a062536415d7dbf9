package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// startEmbeddedServe runs serve on the embedded store in dir until stop.
func startEmbeddedServe(t *testing.T, dir string) (pb.PermissionServiceClient, pb.RelationshipServiceClient, pb.SchemaServiceClient, context.Context, func()) {
	t.Helper()
	const key = "compact-key-7d2c"
	logs := &syncBuffer{}
	root := newRootCommand()
	root.SetArgs([]string{"serve", "--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "",
		"--grpc-preshared-key", key, "--audit-sink", "none", "--grpc-shutdown-grace-period", "5s"})
	root.SetOut(logs)
	root.SetErr(logs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	serving := regexp.MustCompile(`msg=serving grpc=(\S+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); ; {
		if m := serving.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("the server did not start; log:\n%s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	callCtx, callCancel := context.WithTimeout(context.Background(), 20*time.Second)
	authed := metadata.AppendToOutgoingContext(callCtx, "authorization", "Bearer "+key)
	stop := func() {
		t.Helper()
		conn.Close()
		callCancel()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
	return pb.NewPermissionServiceClient(conn), pb.NewRelationshipServiceClient(conn), pb.NewSchemaServiceClient(conn), authed, stop
}

// TestCompactCLI runs `mandate compact` on a served data directory: refused
// while the server runs, then, with it stopped, it reports the sizes and
// the restarted server answers as before.
func TestCompactCLI(t *testing.T) {
	dir := t.TempDir()
	perm, rels, schemas, ctx, stop := startEmbeddedServe(t, dir)
	if _, err := schemas.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: "definition user {}\ndefinition doc {\n relation viewer: user\n permission view = viewer\n}"}); err != nil {
		t.Fatal(err)
	}
	var updates []*pb.RelationshipUpdate
	for i := 0; i < 500; i++ {
		updates = append(updates, &pb.RelationshipUpdate{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: &pb.Relationship{
			Resource: &pb.ObjectReference{ObjectType: "doc", ObjectId: "d" + strings.Repeat("x", i%50) + string(rune('a'+i%26))},
			Relation: "viewer",
			Subject:  &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}},
		}})
	}
	if _, err := rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: updates}); err != nil {
		t.Fatal(err)
	}
	compact := func() (string, error) {
		var out bytes.Buffer
		root := newRootCommand()
		root.SetArgs([]string{"compact", "--data-dir", dir})
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.Execute()
		return out.String(), err
	}
	if _, err := compact(); err == nil || !strings.Contains(err.Error(), "in use by another mandate process") {
		t.Fatalf("compact while serving: %v, want the directory-in-use error", err)
	}
	stop()

	out, err := compact()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^compacted \S+: \d+(\.\d+)? [KMG]?i?B -> \d+(\.\d+)? [KMG]?i?B\n$`).MatchString(out) {
		t.Fatalf("compact printed %q", out)
	}

	perm, _, _, ctx, stop = startEmbeddedServe(t, dir)
	defer stop()
	resp, err := perm.Check(ctx, &pb.CheckRequest{
		Resource: updates[7].GetRelationship().GetResource(), Permission: "view",
		Subject:     &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}},
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}},
	})
	if err != nil || resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("check after compacting: %v, %v", resp.GetDecision(), err)
	}
}
