package main

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
)

// Bob's calendar against `mandate serve` (embedded store): mint over gRPC
// for agent:a on behalf of user:bob, attenuate offline to agent:b, check
// over mandate.v1, authzed.api.v1 and the CLI; write is denied, a tampered
// token is denied, revoking agent:a's token denies agent:b, and removing
// bob's own access denies a live token.
func TestCapabilityTokensServed(t *testing.T) {
	served := startServe(t, "--datastore-engine", "embedded", "--data-dir", t.TempDir())
	ctx := served.ctx
	if _, err := pb.NewSchemaServiceClient(served.conn).WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: `definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	permission read = owner
	permission write = owner
}`}); err != nil {
		t.Fatal(err)
	}
	obj := func(typ, id string) *pb.ObjectReference { return &pb.ObjectReference{ObjectType: typ, ObjectId: id} }
	bobOwns := &pb.Relationship{Resource: obj("calendar", "bob"), Relation: "owner", Subject: &pb.SubjectReference{Object: obj("user", "bob")}}
	rels := pb.NewRelationshipServiceClient(served.conn)
	if _, err := rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: bobOwns}}}); err != nil {
		t.Fatal(err)
	}
	tokens := pb.NewTokenServiceClient(served.conn)
	perm := pb.NewPermissionServiceClient(served.conn)

	mintAndAttenuate := func() (parent, child string) {
		t.Helper()
		m, err := tokens.Mint(ctx, &pb.MintRequest{Holder: obj("agent", "a"), OnBehalfOf: obj("user", "bob"),
			Rights: []*pb.TokenRight{{ResourceType: "calendar", ResourceId: "bob", Permissions: []string{"read"}}}, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		out, errOut, code := runTokenCLI(t, "", "token", "attenuate", m.GetToken(), "--holder", "agent:b", "--ttl", "10m")
		if code != 0 {
			t.Fatalf("attenuate: %s", errOut)
		}
		return m.GetToken(), strings.TrimSpace(out)
	}
	check := func(tok, permission string, fresh *pb.RevisionToken) *pb.CheckResponse {
		t.Helper()
		req := &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: permission,
			Subject: &pb.SubjectReference{Object: obj("agent", "b")}, CapabilityToken: tok}
		if fresh != nil {
			req.Consistency = &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: fresh}}
		}
		resp, err := perm.Check(ctx, req)
		if err != nil {
			t.Fatalf("check %s: %v", permission, err)
		}
		return resp
	}
	wantDenied := func(what string, resp *pb.CheckResponse, reason capability.Reason) {
		t.Helper()
		if resp.GetDecision() != pb.Decision_DECISION_DENIED || resp.GetToken().GetReason() != string(reason) {
			t.Fatalf("%s: %v, token %v; want denied with %s", what, resp.GetDecision(), resp.GetToken(), reason)
		}
	}

	parent, child := mintAndAttenuate()
	childTok, err := capability.Inspect(child)
	if err != nil {
		t.Fatal(err)
	}
	resp := check(child, "read", nil)
	if resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("read with agent:b's token: %v %v", resp.GetDecision(), resp.GetToken())
	}
	if e := resp.GetToken(); e.GetTokenId() != childTok.ID() || e.GetBlock() != 1 || len(e.GetHolders()) != 2 ||
		e.GetHolders()[1].GetObjectId() != "b" || e.GetPrincipal().GetObjectId() != "bob" || e.GetReason() != "" {
		t.Fatalf("explanation of the allowed read: %v", e)
	}
	wantDenied("write with agent:b's token", check(child, "write", nil), capability.ReasonOutOfScope)
	// The token is what allowed: agent:b holds nothing stored.
	if resp := check("", "read", nil); resp.GetDecision() != pb.Decision_DECISION_DENIED {
		t.Fatalf("read without the token: %v", resp.GetDecision())
	}
	// agent:a holds the parent, not the child.
	if resp, err := perm.Check(ctx, &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read",
		Subject: &pb.SubjectReference{Object: obj("agent", "a")}, CapabilityToken: child}); err != nil || resp.GetDecision() != pb.Decision_DECISION_DENIED ||
		resp.GetToken().GetReason() != string(capability.ReasonWrongHolder) {
		t.Fatalf("agent:a checking with agent:b's token: %v %v", resp, err)
	}

	bulk, err := perm.CheckBulk(ctx, &pb.CheckBulkRequest{CapabilityToken: child, Items: []*pb.CheckBulkRequestItem{
		{Resource: obj("calendar", "bob"), Permission: "read", Subject: &pb.SubjectReference{Object: obj("agent", "b")}},
		{Resource: obj("calendar", "bob"), Permission: "write", Subject: &pb.SubjectReference{Object: obj("agent", "b")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if p := bulk.GetPairs(); len(p) != 2 || p[0].GetItem().GetDecision() != pb.Decision_DECISION_ALLOWED ||
		p[1].GetItem().GetDecision() != pb.Decision_DECISION_DENIED || p[1].GetItem().GetToken().GetReason() != string(capability.ReasonOutOfScope) {
		t.Fatalf("bulk check with the token: %v", p)
	}

	zed := v1.NewPermissionsServiceClient(served.conn)
	zedCheck := func(tok string) v1.CheckPermissionResponse_Permissionship {
		t.Helper()
		resp, err := zed.CheckPermission(metadata.AppendToOutgoingContext(ctx, "mandate-capability", tok), &v1.CheckPermissionRequest{
			Resource: &v1.ObjectReference{ObjectType: "calendar", ObjectId: "bob"}, Permission: "read",
			Subject:     &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "agent", ObjectId: "b"}},
			Consistency: &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetPermissionship()
	}
	if got := zedCheck(child); got != v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION {
		t.Fatalf("authzed check with the token: %v", got)
	}

	cli := []string{"--endpoint", served.conn.Target(), "--insecure", "--token", serveKey}
	out, errOut, code := runTokenCLI(t, "", append([]string{"check", "calendar:bob#read", "agent:b", "--capability-token", child, "--explain"}, cli...)...)
	if code != 0 || !strings.HasPrefix(out, "allowed\n") || !strings.Contains(out, "token: "+childTok.ID()) || !strings.Contains(out, "holders: agent:a -> agent:b") {
		t.Fatalf("mandate check --capability-token: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = runTokenCLI(t, child, append([]string{"check", "calendar:bob#write", "agent:b", "--capability-token", "-", "--explain"}, cli...)...)
	if code != 0 || !strings.HasPrefix(out, "denied\n") || !strings.Contains(out, "reason: "+string(capability.ReasonOutOfScope)) {
		t.Fatalf("mandate check --capability-token - for write: exit %d\n%s", code, out)
	}

	raw, err := base64.RawURLEncoding.DecodeString(child)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x01
	tampered := check(base64.RawURLEncoding.EncodeToString(raw), "read", nil)
	if tampered.GetDecision() != pb.Decision_DECISION_DENIED || !capability.Reason(tampered.GetToken().GetReason()).Invalid() {
		t.Fatalf("tampered token: %v %v", tampered.GetDecision(), tampered.GetToken())
	}

	rv, err := tokens.Revoke(ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_Token{Token: parent}, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	wantDenied("agent:b after revoking agent:a's token", check(child, "read", rv.GetRevokedAt()), capability.ReasonRevoked)
	if got := zedCheck(child); got != v1.CheckPermissionResponse_PERMISSIONSHIP_NO_PERMISSION {
		t.Fatalf("authzed check after the revocation: %v", got)
	}

	_, live := mintAndAttenuate()
	if resp := check(live, "read", nil); resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("read with a fresh token: %v %v", resp.GetDecision(), resp.GetToken())
	}
	del, err := rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: []*pb.RelationshipUpdate{{Operation: pb.RelationshipUpdate_OPERATION_DELETE, Relationship: bobOwns}}})
	if err != nil {
		t.Fatal(err)
	}
	wantDenied("agent:b after bob lost his own access", check(live, "read", del.GetWrittenAt()), capability.ReasonPrincipalDenied)
}
