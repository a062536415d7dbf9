package server_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/store/rel"
)

// Mint, list, inspect and revoke go through the operation core: each is
// audited (refusals too) with the token's id, holder and principal, and
// the token's text reaches neither the audit trail, the logs nor the
// store's records. Minted tokens are listed by principal, holder and
// task; a token attenuated offline is listed once a check allowed it.
func TestTokenOperationsAuditedWithoutSecrets(t *testing.T) {
	key, err := capability.GenerateKey("k-audit", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capability.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) { c.CapabilityKeys, c.Audit = keys, rec })
	ts.writeSchema(calendarSchema)
	ts.write(update(create, mustParse(t, "calendar:bob#owner@user:bob")...)...)
	ctx := ts.ctx()
	tokens := pb.NewTokenServiceClient(ts.conn)
	svc := ts.srv.TokenService()
	if svc == nil {
		t.Fatal("TokenService() is nil on a server with keys")
	}
	rec.take()
	var all []*audit.Event
	take := func() []*audit.Event {
		evs := rec.take()
		all = append(all, evs...)
		return evs
	}

	mint := func(holder, task string) *pb.MintResponse {
		t.Helper()
		m, err := tokens.Mint(ctx, &pb.MintRequest{Holder: obj("agent", holder), OnBehalfOf: obj("user", "bob"), Task: task,
			Rights: []*pb.TokenRight{{ResourceType: "calendar", ResourceId: "bob", Permissions: []string{"read"}}}, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatalf("Mint: %v", err)
		}
		return m
	}
	a, b := mint("a", "T"), mint("b", "")
	evs := take()
	if len(evs) != 2 {
		t.Fatalf("%d events for two mints: %+v", len(evs), evs)
	}
	ev := evs[0]
	if ev.Operation != audit.OpTokenMint || ev.TokenID != a.GetTokenId() || ev.Subject != "agent:a" || ev.Principal != "user:bob" ||
		ev.Decision != audit.OK || ev.Revision == 0 || ev.ExpiresAt == nil || !strings.Contains(ev.Detail, "calendar:bob#read") {
		t.Fatalf("mint event %+v", ev)
	}

	_, err = tokens.Mint(ctx, &pb.MintRequest{Holder: obj("agent", "a"), OnBehalfOf: obj("user", "bob"),
		Rights: []*pb.TokenRight{{ResourceType: "calendar", ResourceId: "ann", Permissions: []string{"read"}}}, Ttl: durationpb.New(time.Hour)})
	wantCode(t, err, codes.PermissionDenied, "user:bob", "calendar:ann")
	if ev := one(t, take()); ev.Operation != audit.OpTokenMint || ev.Code != "PermissionDenied" || ev.TokenID != "" {
		t.Fatalf("refused mint event %+v", ev)
	}
	_, err = tokens.Mint(ctx, &pb.MintRequest{Holder: obj("agent", "a"), OnBehalfOf: obj("user", "bob"), Ttl: durationpb.New(time.Hour)})
	wantCode(t, err, codes.InvalidArgument, "rights")
	_, err = tokens.Mint(ctx, &pb.MintRequest{OnBehalfOf: obj("user", "bob")})
	wantCode(t, err, codes.InvalidArgument, "holder")
	for _, ev := range take() {
		if ev.Operation != audit.OpTokenMint || ev.Code != "InvalidArgument" {
			t.Fatalf("bad mint event %+v", ev)
		}
	}

	list := func(req *pb.ListTokensRequest) []string {
		t.Helper()
		resp, err := tokens.ListTokens(ctx, req)
		if err != nil {
			t.Fatalf("ListTokens(%v): %v", req, err)
		}
		var ids []string
		for _, m := range resp.GetTokens() {
			ids = append(ids, m.GetTokenId())
		}
		return ids
	}
	if got := list(&pb.ListTokensRequest{Principal: obj("user", "bob")}); len(got) != 2 {
		t.Fatalf("bob's tokens: %v", got)
	}
	if got := list(&pb.ListTokensRequest{Holder: obj("agent", "b")}); len(got) != 1 || got[0] != b.GetTokenId() {
		t.Fatalf("agent:b's tokens: %v", got)
	}
	if got := list(&pb.ListTokensRequest{Task: "T"}); len(got) != 1 || got[0] != a.GetTokenId() {
		t.Fatalf("task T's tokens: %v", got)
	}
	if ev := take()[2]; ev.Operation != audit.OpTokenList || ev.Detail != "task=T" || ev.Count != 1 {
		t.Fatalf("list event %+v", ev)
	}
	// The Go method the web inbox uses.
	mine, err := svc.Tokens(ctx, capability.MintedFilter{Holder: "agent:a"})
	if err != nil || len(mine) != 1 || mine[0].ID != a.GetTokenId() || mine[0].Task != "T" {
		t.Fatalf("Tokens(agent:a) = %+v, %v", mine, err)
	}
	take()

	// Attenuated offline: not listed until a check allows it.
	parent, err := capability.Inspect(b.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	child, err := capability.Attenuate(parent, capability.Narrowing{Holder: &rel.Object{Type: "agent", ID: "c"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	childText, err := child.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got := list(&pb.ListTokensRequest{Holder: obj("agent", "c")}); len(got) != 0 {
		t.Fatalf("an offline attenuation is listed before use: %v", got)
	}
	resp, err := ts.perm.Check(ctx, &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read",
		Subject: subj("agent", "c"), CapabilityToken: childText})
	if err != nil || resp.GetDecision() != pb.Decision_DECISION_ALLOWED {
		t.Fatalf("check with the attenuation: %v %v", resp, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for got := list(&pb.ListTokensRequest{Holder: obj("agent", "c")}); len(got) != 1 || got[0] != child.ID(); got = list(&pb.ListTokensRequest{Holder: obj("agent", "c")}) {
		if time.Now().After(deadline) {
			t.Fatalf("the used attenuation is not listed: %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}

	if _, err := tokens.Inspect(ctx, &pb.InspectRequest{Token: a.GetToken()}); err != nil {
		t.Fatal(err)
	}
	tampered := a.GetToken()[:len(a.GetToken())-8] + "AAAAAAAA"
	if ins, err := tokens.Inspect(ctx, &pb.InspectRequest{Token: tampered}); err == nil && ins.GetVerified() {
		t.Fatal("a tampered token verified")
	}
	_, _ = tokens.Inspect(ctx, &pb.InspectRequest{Token: a.GetToken()[:40]})
	revoked, err := tokens.Revoke(ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_Token{Token: a.GetToken()}, Reason: "leaked"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tokens.Revoke(ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_TokenId{TokenId: "nope"}})
	wantCode(t, err, codes.InvalidArgument, "token id")
	if _, err := svc.RevokeTokens(ctx, capability.Revocation{By: capability.RevokeHolder, Value: "agent:b"}); err != nil {
		t.Fatal(err)
	}
	var sawRevoke bool
	for _, ev := range take() {
		if ev.Operation == audit.OpTokenRevoke && ev.TokenID == a.GetTokenId() && ev.Reason == "leaked" && ev.Decision == audit.OK {
			sawRevoke = true
			if ev.Revision == 0 || revoked.GetRevokedAt() == nil {
				t.Fatalf("revoke event without a revision: %+v", ev)
			}
		}
	}
	if !sawRevoke {
		t.Fatal("no revoke event with the token id and reason")
	}
	// Revoked tokens are not listed: a by id, b by holder, and c, derived
	// from b, with it.
	if got := list(&pb.ListTokensRequest{Principal: obj("user", "bob")}); len(got) != 0 {
		t.Fatalf("revoked tokens listed: %v", got)
	}
	if _, err := tokens.ListRevocations(ctx, &pb.ListRevocationsRequest{}); err != nil {
		t.Fatal(err)
	}

	// No secret anywhere: every event of the test, the server's log and
	// the store's records.
	var trail strings.Builder
	for _, ev := range append(all, take()...) {
		b, _ := json.Marshal(ev)
		trail.Write(b)
	}
	recs := ""
	for _, kind := range []string{capability.MintedKind, capability.RevocationKind} {
		rs, _, err := ts.st.ReadRecords(ctx, kind)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			recs += string(r.Data)
		}
	}
	for _, tok := range []string{a.GetToken(), b.GetToken(), childText, tampered} {
		secret := tok[len(tok)/2 : len(tok)/2+24]
		for where, text := range map[string]string{"the audit trail": trail.String(), "the log": ts.logs.String(), "the records": recs} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds token bytes %q", where, secret)
			}
		}
	}
}
