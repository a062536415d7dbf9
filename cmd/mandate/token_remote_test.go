package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// tokenServer runs a server with capability keys on loopback gRPC, over
// a memory store holding calendar:bob#owner@user:bob, and returns its
// address and a PermissionService client.
func tokenServer(t *testing.T) (string, pb.PermissionServiceClient) {
	t.Helper()
	ctx := t.Context()
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	if _, err := st.WriteSchema(ctx, `definition user {}
definition agent {
	relation acts_for: user | agent
}
definition calendar {
	relation owner: user
	permission read = owner
	permission write = owner
}`); err != nil {
		t.Fatal(err)
	}
	r, _ := rel.Parse("calendar:bob#owner@user:bob")
	if _, err := st.Write(ctx, nil, []store.Mutation{{Op: store.Touch, Rel: r}}); err != nil {
		t.Fatal(err)
	}
	keys, err := capability.LoadKeyDir(t.TempDir()+"/"+capability.KeyDir, true, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(st, engine.New(), server.Config{GRPCAddr: "127.0.0.1:0", AllowUnauthenticated: true,
		CapabilityKeys: keys, ShutdownGracePeriod: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(30 * time.Second); !srv.Ready(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the server did not turn ready")
		}
	}
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv.GRPCAddr().String(), pb.NewPermissionServiceClient(conn)
}

// Bob's calendar over the CLI: mint for agent:a, attenuate offline for
// agent:b, check, revoke agent:a's token, and agent:b is denied at the
// revocation's revision.
func TestTokenMintRevokeCommands(t *testing.T) {
	addr, perm := tokenServer(t)
	conn := []string{"--endpoint", addr, "--insecure"}
	out, errOut, code := runTokenCLI(t, "", append([]string{"token", "mint", "--holder", "agent:a", "--on-behalf-of", "user:bob",
		"--allow", "calendar:bob#read", "--ttl", "60m", "--task", "T"}, conn...)...)
	if code != 0 {
		t.Fatalf("mint: exit %d, %s", code, errOut)
	}
	parent := strings.TrimSpace(out)
	parentTok, err := capability.Inspect(parent)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runTokenCLI(t, "", append([]string{"token", "list", "--principal", "user:bob"}, conn...)...)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") ||
		!strings.Contains(lines[1], parentTok.ID()) || !strings.Contains(lines[1], "agent:a") || !strings.Contains(lines[1], "calendar:bob#read") {
		t.Fatalf("token list: exit %d, %q, %s", code, out, errOut)
	}
	out, errOut, code = runTokenCLI(t, "", append([]string{"token", "list", "--holder", "agent:a", "--task", "T", "--json"}, conn...)...)
	var listed []map[string]any
	if err := json.Unmarshal([]byte(out), &listed); code != 0 || err != nil || len(listed) != 1 || listed[0]["id"] != parentTok.ID() || listed[0]["task"] != "T" {
		t.Fatalf("token list --json: exit %d, %q, %s (%v)", code, out, errOut, err)
	}
	if strings.Contains(out, parent[20:60]) {
		t.Fatal("token list printed the token")
	}
	if out, _, code := runTokenCLI(t, "", append([]string{"token", "list", "--holder", "agent:nobody"}, conn...)...); code != 0 || strings.Count(out, "\n") != 1 {
		t.Fatalf("token list for nobody: %q", out)
	}
	out, errOut, code = runTokenCLI(t, "", "token", "attenuate", parent, "--holder", "agent:b", "--ttl", "10m")
	if code != 0 {
		t.Fatal(errOut)
	}
	child := strings.TrimSpace(out)
	check := func(permission string, revToken string) *pb.CheckResponse {
		t.Helper()
		req := &pb.CheckRequest{Resource: &pb.ObjectReference{ObjectType: "calendar", ObjectId: "bob"}, Permission: permission,
			Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "agent", ObjectId: "b"}}, CapabilityToken: child,
			Context: mustStructpb(t, map[string]any{"task": "T"})}
		if revToken != "" {
			req.Consistency = &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: &pb.RevisionToken{Token: revToken}}}
		}
		resp, err := perm.Check(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if d := check("read", ""); d.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("read with the sub-token: %v", d)
	}
	if d := check("write", ""); d.GetDecision() == pb.Decision_DECISION_ALLOWED || d.GetToken().GetReason() != string(capability.ReasonOutOfScope) {
		t.Fatalf("write with the sub-token: %v", d)
	}
	out, errOut, code = runTokenCLI(t, "", append([]string{"token", "revoke", parent, "--reason", "test"}, conn...)...)
	rev := strings.TrimPrefix(strings.TrimSpace(out), "revoked at revision ")
	if code != 0 || rev == "" {
		t.Fatalf("revoke: exit %d, %q, %s", code, out, errOut)
	}
	if d := check("read", rev); d.GetDecision() == pb.Decision_DECISION_ALLOWED || d.GetToken().GetReason() != string(capability.ReasonRevoked) || d.GetToken().GetBlock() != 0 {
		t.Fatalf("read with the sub-token after revoking its parent: %v", d)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "mint", "--holder", "agent:a", "--on-behalf-of", "user:bob", "--allow", "calendar:alice#read", "--ttl", "1h"}, "PermissionDenied"},
		{[]string{"token", "mint", "--holder", "agent:a", "--on-behalf-of", "user:bob", "--ttl", "1h"}, "--allow: expected at least one right"},
		{[]string{"token", "mint", "--holder", "agent:a", "--on-behalf-of", "user:bob", "--allow", "calendar:bob#read"}, "--ttl 0s"},
		{[]string{"token", "revoke"}, "exactly one of"},
		{[]string{"token", "revoke", parent, "--holder", "agent:a"}, "exactly one of"},
		{[]string{"token", "revoke", "--id", "nope"}, "InvalidArgument"},
		{[]string{"token", "list", "--holder", "nope"}, "--holder"},
	} {
		if out, errOut, code := runTokenCLI(t, "", append(tc.args, conn...)...); code == 0 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want a failure mentioning %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

func mustStructpb(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
