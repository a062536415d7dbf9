package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// TestCompactCLI runs `mandate compact` on a served data directory: refused
// while the server runs, then, with it stopped, it reports the sizes and
// the restarted server answers as before.
func TestCompactCLI(t *testing.T) {
	dir := t.TempDir()
	srv := startServe(t, "--data-dir", dir)
	ctx := srv.ctx
	if _, err := pb.NewSchemaServiceClient(srv.conn).WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: "definition user {}\ndefinition doc {\n relation viewer: user\n permission view = viewer\n}"}); err != nil {
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
	if _, err := pb.NewRelationshipServiceClient(srv.conn).WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: updates}); err != nil {
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
	srv.stop()

	out, err := compact()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^compacted \S+: \d+(\.\d+)? [KMG]?i?B -> \d+(\.\d+)? [KMG]?i?B\n$`).MatchString(out) {
		t.Fatalf("compact printed %q", out)
	}

	srv = startServe(t, "--data-dir", dir)
	resp, err := pb.NewPermissionServiceClient(srv.conn).Check(srv.ctx, &pb.CheckRequest{
		Resource: updates[7].GetRelationship().GetResource(), Permission: "view",
		Subject:     &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}},
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_FullyConsistent{FullyConsistent: true}},
	})
	if err != nil || resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("check after compacting: %v, %v", resp.GetDecision(), err)
	}
}
