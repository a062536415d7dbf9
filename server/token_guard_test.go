package server_test

import (
	"testing"

	"google.golang.org/grpc/codes"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// A server without capability keys (Config.CapabilityKeys nil) refuses a
// request carrying a token rather than answer it for the bare subject; so
// does LookupResources.
func TestCapabilityTokenRefusedUntilServed(t *testing.T) {
	ts := startServer(t, nil)
	ctx := t.Context()
	obj := &pb.ObjectReference{ObjectType: "doc", ObjectId: "1"}
	sub := &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "ann"}}
	_, err := ts.perm.Check(ctx, &pb.CheckRequest{Resource: obj, Permission: "view", Subject: sub, CapabilityToken: "x"})
	wantCode(t, err, codes.Unimplemented, "capability_token")
	_, err = ts.perm.CheckBulk(ctx, &pb.CheckBulkRequest{Items: []*pb.CheckBulkRequestItem{{Resource: obj, Permission: "view", Subject: sub}}, CapabilityToken: "x"})
	wantCode(t, err, codes.Unimplemented, "capability_token")
	stream, err := ts.perm.LookupResources(ctx, &pb.LookupResourcesRequest{ResourceObjectType: "doc", Permission: "view", Subject: sub, CapabilityToken: "x"})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.Unimplemented, "capability_token")
}
