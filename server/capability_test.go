package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/capability"
)

const calendarSchema = `definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	permission read = owner
	permission write = owner
}`

// A server given capability keys mints over REST, answers REST checks
// carrying capability_token, publishes its public key on the HTTP port,
// and refuses checks with a token that are shaped wrongly instead of
// answering them some other way.
func TestCapabilityTokensWired(t *testing.T) {
	key, err := capability.GenerateKey("k-wired", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *server.Config) { c.CapabilityKeys = keys })
	ts.writeSchema(calendarSchema)
	ts.write(update(create, mustParse(t, "calendar:bob#owner@user:bob")...)...)

	code, minted := ts.restCall("/v1/tokens/mint", testKey, `{"holder":{"objectType":"agent","objectId":"a"},
		"onBehalfOf":{"objectType":"user","objectId":"bob"},
		"rights":[{"resourceType":"calendar","resourceId":"bob","permissions":["read"]}],"ttl":"3600s"}`)
	tok, _ := minted["token"].(string)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("REST mint: HTTP %d %v", code, minted)
	}
	checkBody := func(perm string) string {
		return `{"resource":{"objectType":"calendar","objectId":"bob"},"permission":"` + perm +
			`","subject":{"object":{"objectType":"agent","objectId":"a"}},"capabilityToken":"` + tok + `"}`
	}
	code, got := ts.restCall("/v1/permissions/check", testKey, checkBody("read"))
	explained, _ := got["token"].(map[string]any)
	if code != http.StatusOK || got["decision"] != "DECISION_ALLOWED" || explained["tokenId"] != minted["tokenId"] {
		t.Fatalf("REST check with the token: HTTP %d %v", code, got)
	}
	code, got = ts.restCall("/v1/permissions/check", testKey, checkBody("write"))
	explained, _ = got["token"].(map[string]any)
	if code != http.StatusOK || got["decision"] != "DECISION_DENIED" || explained["reason"] != string(capability.ReasonOutOfScope) {
		t.Fatalf("REST check of write with the token: HTTP %d %v", code, got)
	}

	resp := ts.restRaw(http.MethodGet, capability.PublicKeysPath, "", nil)
	defer resp.Body.Close()
	jwks, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(jwks), `"kid":"k-wired"`) {
		t.Fatalf("public keys: HTTP %d %s", resp.StatusCode, jwks)
	}

	ctx := ts.ctx()
	calendar := &pb.ObjectReference{ObjectType: "calendar", ObjectId: "bob"}
	agentA := &pb.ObjectReference{ObjectType: "agent", ObjectId: "a"}
	_, err = ts.perm.Check(ctx, &pb.CheckRequest{Resource: calendar, Permission: "read", CapabilityToken: tok,
		Subject: &pb.SubjectReference{Object: agentA, OptionalRelation: "acts_for"}})
	wantCode(t, err, codes.InvalidArgument, "subject", "userset")
	_, err = ts.perm.Check(ctx, &pb.CheckRequest{Resource: calendar, Permission: "read", CapabilityToken: tok,
		Subject: &pb.SubjectReference{Object: agentA}, OnBehalfOf: &pb.ObjectReference{ObjectType: "user", ObjectId: "bob"}})
	wantCode(t, err, codes.InvalidArgument, "on_behalf_of")

	zed := mandateClient(t, ts, testKey)
	zreq := &v1.CheckPermissionRequest{Resource: &v1.ObjectReference{ObjectType: "calendar", ObjectId: "bob"}, Permission: "read",
		Subject: &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: "agent", ObjectId: "a"}}}
	zresp, err := zed.CheckPermission(metadata.AppendToOutgoingContext(ctx, server.CapabilityHeader, tok), zreq)
	if err != nil || zresp.GetPermissionship() != v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION {
		t.Fatalf("authzed check with the header: %v %v", zresp, err)
	}
	_, err = zed.CheckPermission(metadata.AppendToOutgoingContext(ctx, server.CapabilityHeader, tok, server.CapabilityHeader, tok), zreq)
	wantCode(t, err, codes.InvalidArgument, server.CapabilityHeader, "2 times")
	stream, err := zed.LookupResources(metadata.AppendToOutgoingContext(ctx, server.CapabilityHeader, tok), &v1.LookupResourcesRequest{
		ResourceObjectType: "calendar", Permission: "read", Subject: zreq.GetSubject()})
	if err != nil {
		t.Fatal(err)
	}
	zgot, err := stream.Recv()
	if err != nil || zgot.GetResourceObjectId() != "bob" {
		t.Fatalf("authzed LookupResources with the header: %v, %v", zgot, err)
	}
}
