package mcpgateway_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-authz/mandate/mcpgateway"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/capability"
)

// Mandate-Capability through the gateway with the go-sdk client: Mandate
// checks each call with the token, bound to its holder (the calling
// agent) and its principal (the OAuth token's subject). A valid token
// allows what the agent alone may not (agents never write calendars
// here); an attenuation takes a tool away, in calls and in tools/list; a
// revocation denies the next call in the same session; a token held by
// another agent, or acting for someone else, denies; the token never
// reaches the MCP server.
func TestCapabilityTokenThroughGateway(t *testing.T) {
	e := newEnv(t, envOptions{cacheTTL: time.Minute})
	tokens := pb.NewTokenServiceClient(e.mandate.conn)
	ctx := ctxT(t)
	mint := func(holder, principal string, rights ...*pb.TokenRight) *pb.MintResponse {
		t.Helper()
		m, err := tokens.Mint(ctx, &pb.MintRequest{Holder: &pb.ObjectReference{ObjectType: "agent", ObjectId: holder},
			OnBehalfOf: &pb.ObjectReference{ObjectType: "user", ObjectId: principal}, Rights: rights, Ttl: durationpb.New(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	right := func(typ, id string, perms ...string) *pb.TokenRight {
		return &pb.TokenRight{ResourceType: typ, ResourceId: id, Permissions: perms}
	}
	full := mint("helper", "alice", right("calendar", "alice", "read", "write"), right("mcp_tool", "*", "use"))
	parent, err := capability.Inspect(full.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	readOnly, err := capability.Attenuate(parent, capability.Narrowing{Rights: []capability.Right{
		{Type: "calendar", ID: "alice", Permissions: []string{"read"}}, {Type: "mcp_tool", ID: "read_calendar", Permissions: []string{"use"}}}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	readOnlyText, err := readOnly.Encode()
	if err != nil {
		t.Fatal(err)
	}

	oauth := e.token("alice", "helper", map[string]any{"scope": "mcp calendar.write"})
	capTok := full.GetToken()
	cs, _ := e.goClientWith(&clientTap{token: func() string { return oauth }, capability: func() string { return capTok }}, e.resource, "2025-11-25")
	if got, err := cs.ListTools(ctxT(t), nil); err != nil || toolNames(got) != "add_event,read_calendar,summarize_calendar" {
		t.Fatalf("tools/list with the token: %q %v", toolNames(got), err)
	}
	add := map[string]any{"calendar_id": "alice", "title": "review"}
	if res, err := callTool(t, cs, "add_event", add); err != nil || res.IsError {
		t.Fatalf("add_event with the token (agents alone may not write): %v %v", res, err)
	}
	if res, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"}); err != nil || res.IsError {
		t.Fatalf("read_calendar with the token: %v %v", res, err)
	}

	// Attenuated away: add_event denied, and gone from the list.
	capTok = readOnlyText
	if got, err := cs.ListTools(ctxT(t), nil); err != nil || toolNames(got) != "read_calendar" {
		t.Fatalf("tools/list with the attenuated token: %q %v", toolNames(got), err)
	}
	_, err = callTool(t, cs, "add_event", add)
	code, data := denialOf(t, err)
	if code != mcpgateway.CodeDenied || data["reason"] != string(capability.ReasonOutOfScope) ||
		!slices.Equal(anyStrings(data["chain"]), []string{"agent:helper", "user:alice"}) {
		t.Fatalf("add_event with the attenuated token: code %d data %v", code, data)
	}
	if res, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"}); err != nil || res.IsError {
		t.Fatalf("read_calendar with the attenuated token: %v %v", res, err)
	}

	// Revoked mid-session: the parent's revocation kills the attenuation.
	revoked, err := tokens.Revoke(ctx, &pb.RevokeRequest{Target: &pb.RevokeRequest_TokenId{TokenId: full.GetTokenId()}})
	if err != nil {
		t.Fatal(err)
	}
	// The gateway checks at Mandate's latest applied revision: wait until
	// it has applied the revocation (on one server, microseconds).
	if _, err := pb.NewPermissionServiceClient(e.mandate.conn).Check(ctx, &pb.CheckRequest{
		Consistency: &pb.Consistency{Requirement: &pb.Consistency_AtLeastAsFresh{AtLeastAsFresh: revoked.GetRevokedAt()}},
		Resource:    &pb.ObjectReference{ObjectType: "calendar", ObjectId: "alice"}, Permission: "read",
		Subject: &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: "user", ObjectId: "alice"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != string(capability.ReasonRevoked) {
		t.Fatalf("read_calendar after the revocation: code %d data %v", code, data)
	}

	// Held by another agent: agent:sub's token presented by helper.
	capTok = mint("sub", "alice", right("calendar", "alice", "read")).GetToken()
	_, err = callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != string(capability.ReasonWrongHolder) {
		t.Fatalf("read_calendar with another agent's token: code %d data %v", code, data)
	}
	// Acting for someone else than the OAuth token's subject.
	capTok = mint("helper", "bob", right("calendar", "bob", "read")).GetToken()
	_, err = callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "bob"})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != mcpgateway.ReasonTokenPrincipal {
		t.Fatalf("read_calendar with bob's token in alice's session: code %d data %v", code, data)
	}

	if leaked := e.upstream.find("LEAKED-CREDENTIAL"); len(leaked) != 0 {
		t.Fatalf("credential forwarded upstream: %s", leaked[0].reqBody)
	}
	if len(e.upstream.find(`"review"`)) != 1 {
		t.Fatal("add_event reached the MCP server other than once")
	}
	ev := findAudit(t, e, "agent:helper", func(ev *pb.AuditEvent) bool {
		return ev.GetOperation() == "check" && ev.GetPermission() == "write" && ev.GetDecision() == "denied"
	})
	if ev.GetReason() != string(capability.ReasonOutOfScope) || ev.GetContext().AsMap()["mcp_name"] != "add_event" || ev.GetPrincipal() != "user:alice" {
		t.Fatalf("audit of the attenuated add_event: %v", ev)
	}
}
