package main

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/mandate-authz/mandate/engine"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/tokenapi"
	"github.com/mandate-authz/mandate/store"
	"github.com/mandate-authz/mandate/store/memory"
	"github.com/mandate-authz/mandate/store/rel"
)

// tokenServer serves the TokenService over loopback gRPC on a memory store
// holding calendar:bob#owner@user:bob.
func tokenServer(t *testing.T) (string, *capability.Checker, *engine.Engine) {
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
	keys, err := capability.LoadKeyDir(t.TempDir()+"/"+capability.KeyDir, true, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	checker := &capability.Checker{Keys: keys, Verifier: capability.NewVerifier(keys, capability.VerifierOptions{}), Revocations: revs}
	srv := grpc.NewServer()
	pb.RegisterTokenServiceServer(srv, tokenapi.New(checker, capability.ForEngine(eng), st, func(rev store.Revision) *pb.RevisionToken {
		return &pb.RevisionToken{Token: strconv.FormatUint(uint64(rev), 10)}
	}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), checker, eng
}

// Bob's calendar over the CLI: mint for agent:a, attenuate offline for
// agent:b, check, revoke agent:a's token, and agent:b is denied at the
// revocation's revision.
func TestTokenMintRevokeCommands(t *testing.T) {
	addr, checker, eng := tokenServer(t)
	conn := []string{"--endpoint", addr, "--insecure"}
	out, errOut, code := runTokenCLI(t, "", append([]string{"token", "mint", "--holder", "agent:a", "--on-behalf-of", "user:bob",
		"--allow", "calendar:bob#read", "--ttl", "60m", "--task", "T"}, conn...)...)
	if code != 0 {
		t.Fatalf("mint: exit %d, %s", code, errOut)
	}
	parent := strings.TrimSpace(out)
	out, errOut, code = runTokenCLI(t, "", "token", "attenuate", parent, "--holder", "agent:b", "--ttl", "10m")
	if code != 0 {
		t.Fatal(errOut)
	}
	child := strings.TrimSpace(out)
	check := func(perm string, rev store.Revision) capability.Decision {
		t.Helper()
		d, err := checker.Check(t.Context(), capability.ForEngine(eng), capability.CheckRequest{Token: child,
			Resource: rel.Object{Type: "calendar", ID: "bob"}, Permission: perm, Subject: rel.Object{Type: "agent", ID: "b"}, Task: "T", Revision: rev})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := check("read", 0); !d.Allowed {
		t.Fatalf("read with the sub-token: %+v", d)
	}
	if d := check("write", 0); d.Allowed || d.Reason != capability.ReasonOutOfScope {
		t.Fatalf("write with the sub-token: %+v", d)
	}
	out, errOut, code = runTokenCLI(t, "", append([]string{"token", "revoke", parent, "--reason", "test"}, conn...)...)
	rev, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(out), "revoked at revision "), 10, 64)
	if code != 0 || err != nil {
		t.Fatalf("revoke: exit %d, %q, %s", code, out, errOut)
	}
	if d := check("read", store.Revision(rev)); d.Allowed || d.Reason != capability.ReasonRevoked || d.Block != 0 {
		t.Fatalf("read with the sub-token after revoking its parent: %+v", d)
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
	} {
		if out, errOut, code := runTokenCLI(t, "", append(tc.args, conn...)...); code == 0 || out != "" || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want a failure mentioning %q", tc.args, code, out, errOut, tc.want)
		}
	}
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
