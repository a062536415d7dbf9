package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store/postgres/pgtest"
)

// Capability tokens across two `mandate serve` replicas of one PostgreSQL
// database: replicas share the token keys by holding the same key files in
// --data-dir/capability-keys (copied here from A to B). Minted on A,
// allowed on B; revoked on A, a check on B at least as fresh as the
// revocation is denied; B lists what A minted; a replica with a key of its
// own refuses the token (token_unknown_key, or token_bad_signature when
// its key happens to have the same id).
func TestCapabilityTokensAcrossPostgresReplicas(t *testing.T) {
	uri := pgtest.URL(t)
	if code, _, stderr := runCLI(t, "migrate", "--datastore-engine", "postgres", "--datastore-conn-uri", uri); code != 0 {
		t.Fatalf("migrate: %s", stderr)
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startPGServe(t, uri, "--data-dir", dirA)
	keys, err := filepath.Glob(filepath.Join(dirA, capability.KeyDir, "*"))
	if err != nil || len(keys) == 0 {
		t.Fatalf("A's keys: %v %v", keys, err)
	}
	if err := os.MkdirAll(filepath.Join(dirB, capability.KeyDir), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirB, capability.KeyDir, filepath.Base(k)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b := startPGServe(t, uri, "--data-dir", dirB)
	other := startPGServe(t, uri, "--data-dir", t.TempDir())

	if _, err := pb.NewSchemaServiceClient(a.conn).WriteSchema(a.ctx, &pb.WriteSchemaRequest{Schema: `definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	permission read = owner
}`}); err != nil {
		t.Fatal(err)
	}
	obj := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	written, err := pb.NewRelationshipServiceClient(a.conn).WriteRelationships(a.ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{
		Operation:    pb.RelationshipUpdate_OPERATION_TOUCH,
		Relationship: &pb.Relationship{Resource: obj("calendar", "bob"), Relation: "owner", Subject: &pb.SubjectReference{Object: obj("user", "bob")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	minted, err := pb.NewTokenServiceClient(a.conn).Mint(a.ctx, &pb.MintRequest{Holder: obj("agent", "a"), OnBehalfOf: obj("user", "bob"),
		Rights: []*pb.TokenRight{{ResourceType: "calendar", ResourceId: "bob", Permissions: []string{"read"}}}, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	check := func(s *servedCLI, fresh *pb.RevisionToken) *pb.CheckResponse {
		t.Helper()
		resp, err := pb.NewPermissionServiceClient(s.conn).Check(s.ctx, &pb.CheckRequest{
			Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: fresh}},
			Resource:    obj("calendar", "bob"), Permission: "read",
			Subject: &pb.SubjectReference{Object: obj("agent", "a")}, CapabilityToken: minted.GetToken()})
		if err != nil {
			t.Fatalf("check: %v", err)
		}
		return resp
	}
	if resp := check(b, written.GetWrittenAt()); resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("B, with A's key file: %v %v", resp.GetDecision(), resp.GetToken())
	}
	// Its key may have A's key's id (ids name the creation time): then the
	// signature fails instead.
	if resp := check(other, written.GetWrittenAt()); resp.GetDecision() != pb.Decision_DECISION_DENIED ||
		(resp.GetToken().GetReason() != string(capability.ReasonUnknownKey) && resp.GetToken().GetReason() != string(capability.ReasonBadSignature)) {
		t.Fatalf("a replica with its own key: %v %v", resp.GetDecision(), resp.GetToken())
	}
	listed, err := pb.NewTokenServiceClient(b.conn).ListTokens(b.ctx, &pb.ListTokensRequest{Principal: obj("user", "bob")})
	if err != nil || len(listed.GetTokens()) != 1 || listed.GetTokens()[0].GetTokenId() != minted.GetTokenId() {
		t.Fatalf("B lists %v, %v; want A's token", listed, err)
	}
	revoked, err := pb.NewTokenServiceClient(a.conn).Revoke(a.ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_TokenId{TokenId: minted.GetTokenId()}})
	if err != nil {
		t.Fatal(err)
	}
	if resp := check(b, revoked.GetRevokedAt()); resp.GetDecision() != pb.Decision_DECISION_DENIED ||
		resp.GetToken().GetReason() != string(capability.ReasonRevoked) {
		t.Fatalf("B at the revocation's revision: %v %v", resp.GetDecision(), resp.GetToken())
	}
}
