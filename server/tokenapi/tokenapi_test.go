package tokenapi

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/op"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

const schema = `
definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	permission read = owner
	permission write = owner
}
`

type fixture struct {
	svc     *Service
	checker *capability.Checker
	eng     *engine.Engine
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	if _, err := st.WriteSchema(ctx, schema); err != nil {
		t.Fatal(err)
	}
	r, _ := rel.Parse("calendar:bob#owner@user:bob")
	head, err := st.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}})
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New()
	revs := capability.NewRevocationSet()
	fctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { followEngine(fctx, st, eng) })
	wg.Go(func() { _ = capability.Follow(fctx, st, revs) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	if err := eng.WaitForRevision(ctx, head); err != nil {
		t.Fatal(err)
	}
	key, _ := capability.GenerateKey("k1", time.Now())
	keys, _ := capability.NewKeySet(key)
	checker := &capability.Checker{Keys: keys, Verifier: capability.NewVerifier(keys, capability.VerifierOptions{}), Revocations: revs}
	token := func(rev store.Revision) *pb.RevisionToken {
		return &pb.RevisionToken{Token: strconv.FormatUint(uint64(rev), 10)}
	}
	core, err := op.New(op.Config{Engine: eng, Store: st, Tokens: checker})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: New(core, token), checker: checker, eng: eng}
}

func mintRequest(resource, id string) *pb.MintRequest {
	return &pb.MintRequest{
		Holder:     &pb.ObjectReference{ObjectType: "agent", ObjectId: "a"},
		OnBehalfOf: &pb.ObjectReference{ObjectType: "user", ObjectId: "bob"},
		Rights:     []*pb.TokenRight{{ResourceType: resource, ResourceId: id, Permissions: []string{"read"}}},
		Ttl:        durationpb.New(time.Hour), Task: "T",
	}
}

func TestTokenServiceOverGRPC(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	minted, err := f.svc.Mint(ctx, mintRequest("calendar", "bob"))
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if minted.GetTokenId() == "" || time.Until(minted.GetExpiresAt().AsTime()) > time.Hour {
		t.Fatalf("Mint answer %v", minted)
	}
	for _, tc := range []struct {
		name string
		req  *pb.MintRequest
		code codes.Code
	}{
		{"a right bob lacks", mintRequest("calendar", "alice"), codes.PermissionDenied},
		{"an undefined type", mintRequest("folder", "x"), codes.InvalidArgument},
		{"no holder", func() *pb.MintRequest { r := mintRequest("calendar", "bob"); r.Holder = nil; return r }(), codes.InvalidArgument},
		{"no ttl", func() *pb.MintRequest { r := mintRequest("calendar", "bob"); r.Ttl = nil; return r }(), codes.InvalidArgument},
	} {
		if _, err := f.svc.Mint(ctx, tc.req); code(err) != tc.code {
			t.Errorf("Mint with %s: %v, want %v", tc.name, err, tc.code)
		}
	}

	ins, err := f.svc.Inspect(ctx, &pb.InspectRequest{Token: minted.GetToken()})
	if err != nil || !ins.GetVerified() || len(ins.GetBlocks()) != 1 || ins.GetBlocks()[0].GetHolder().GetObjectId() != "a" || ins.GetBlocks()[0].GetTask() != "T" {
		t.Fatalf("Inspect: %v, %v", ins, err)
	}
	if _, err := f.svc.Inspect(ctx, &pb.InspectRequest{Token: "garbage"}); code(err) != codes.InvalidArgument {
		t.Fatalf("Inspect of garbage: %v", err)
	}

	req := capability.CheckRequest{Token: minted.GetToken(), Resource: rel.Object{Type: "calendar", ID: "bob"}, Permission: "read",
		Subject: rel.Object{Type: "agent", ID: "a"}, Task: "T"}
	if d, err := f.checker.Check(ctx, capability.ForEngine(f.eng), req); err != nil || !d.Allowed {
		t.Fatalf("check with the minted token: %+v, %v", d, err)
	}
	revoked, err := f.svc.Revoke(ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_Token{Token: minted.GetToken()}, Reason: "leaked"})
	if err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	rev, _ := strconv.ParseUint(revoked.GetRevokedAt().GetToken(), 10, 64)
	req.Revision = store.Revision(rev)
	if d, err := f.checker.Check(ctx, capability.ForEngine(f.eng), req); err != nil || d.Allowed || d.Reason != capability.ReasonRevoked {
		t.Fatalf("check at the revocation's revision: %+v, %v", d, err)
	}
	list, err := f.svc.ListRevocations(ctx, &pb.ListRevocationsRequest{})
	if err != nil || len(list.GetRevocations()) != 1 || list.GetRevocations()[0].GetValue() != minted.GetTokenId() || list.GetRevocations()[0].GetReason() != "leaked" {
		t.Fatalf("ListRevocations: %v, %v", list, err)
	}
	for _, bad := range []*pb.RevokeRequest{
		{},
		{Target: &pb.RevokeRequest_TokenId{TokenId: "nope"}},
		{Target: &pb.RevokeRequest_Holder{Holder: &pb.ObjectReference{ObjectType: "agent"}}},
		{Target: &pb.RevokeRequest_Token{Token: "garbage"}},
	} {
		if _, err := f.svc.Revoke(ctx, bad); code(err) != codes.InvalidArgument {
			t.Errorf("Revoke(%v): %v, want InvalidArgument", bad, err)
		}
	}
}

// code is the gRPC code the server's interceptor gives the facade's
// errors (server/errors.go): status errors keep theirs, the core's
// sentinels map.
func code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, capability.ErrNotHeld):
		return codes.PermissionDenied
	case errors.Is(err, op.ErrInvalidTokenRequest):
		return codes.InvalidArgument
	}
	return status.Code(err)
}

// followEngine applies the store's change stream to eng from the start
// (a memory store keeps its whole history) until ctx ends.
func followEngine(ctx context.Context, st store.Store, eng *engine.Engine) {
	for ch, err := range st.Watch(ctx, 0) {
		if err != nil || eng.Apply(ch) != nil {
			return
		}
	}
}
