package mcpgateway_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	mcpgoclient "github.com/mark3labs/mcp-go/client"
	mcpgotransport "github.com/mark3labs/mcp-go/client/transport"
	mcpgo "github.com/mark3labs/mcp-go/mcp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandate-authz/mandate/mcpgateway"
	"github.com/mandate-authz/mandate/mcpgateway/oidctest"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// denialOf unwraps a JSON-RPC denial from a client error.
func denialOf(t *testing.T, err error) (code int64, data map[string]any) {
	t.Helper()
	var je *jsonrpc.Error
	if !errors.As(err, &je) {
		t.Fatalf("expected a JSON-RPC error, got %v", err)
	}
	if len(je.Data) > 0 {
		if err := json.Unmarshal(je.Data, &data); err != nil {
			t.Fatalf("error data %s: %v", je.Data, err)
		}
	}
	return je.Code, data
}

func textOf(t *testing.T, res *mcp.CallToolResult) string {
	t.Helper()
	if res.IsError || len(res.Content) != 1 {
		t.Fatalf("tool result %+v", res)
	}
	return res.Content[0].(*mcp.TextContent).Text
}

func callTool(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) (*mcp.CallToolResult, error) {
	t.Helper()
	return cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: name, Arguments: args})
}

// TestGoSDKStatelessEra drives the go-sdk client at revision 2026-07-28
// (no session, Mcp-Method/Mcp-Name headers) through the gateway to a
// stateless go-sdk server.
func TestGoSDKStatelessEra(t *testing.T) {
	e := newEnv(t, envOptions{stateless: true})
	// The token has every scope: what the list hides, Mandate hid.
	cs, tap := e.goClient(e.resource, e.token("alice", "helper", map[string]any{"scope": "mcp calendar.write"}), "")
	if v := cs.InitializeResult().ProtocolVersion; v != "2026-07-28" {
		t.Fatalf("negotiated %s, want 2026-07-28", v)
	}

	// tools/list: the MCP server has three tools; the agent may use two.
	direct, _ := e.goClient(e.direct, "", "")
	all, err := direct.ListTools(ctxT(t), nil)
	if err != nil || toolNames(all) != "add_event,read_calendar,summarize_calendar" {
		t.Fatalf("direct tools/list: %v %v", toolNames(all), err)
	}
	got, err := cs.ListTools(ctxT(t), nil)
	if err != nil || toolNames(got) != "read_calendar,summarize_calendar" || got.CacheScope != "private" || all.CacheScope != "public" {
		t.Fatalf("filtered tools/list: %q %v (cacheScope %q, upstream %q)", toolNames(got), err, got.CacheScope, all.CacheScope)
	}

	// Allowed: helper reads alice's calendar for alice.
	res, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"})
	if err != nil || textOf(t, res) != "events of alice: standup 09:00" {
		t.Fatalf("allowed call: %v %v", res, err)
	}

	// Denied: alice cannot read bob's calendar, so neither can her agent.
	_, err = callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "bob"})
	code, data := denialOf(t, err)
	if code != mcpgateway.CodeDenied || data["reason"] != "principal_denied" || data["resource"] != "calendar:bob" || data["failed_at"] != 1.0 ||
		!slices.Equal(anyStrings(data["chain"]), []string{"agent:helper", "user:alice"}) {
		t.Fatalf("denied call: code %d data %v", code, data)
	}
	if len(e.upstream.find(`"calendar_id":"bob"`)) != 0 {
		t.Fatal("a denied call reached the MCP server")
	}

	// The SSE-streamed result (progress, then the result) arrives byte for
	// byte as the MCP server wrote it.
	res, err = cs.CallTool(ctxT(t), &mcp.CallToolParams{Name: "summarize_calendar", Arguments: map[string]any{"calendar_id": "alice"}, Meta: mcp.Meta{"progressToken": "p-1"}})
	if err != nil || textOf(t, res) != "summary of alice: one meeting" {
		t.Fatalf("streamed call: %v %v", res, err)
	}
	// Both taps record an exchange once its stream has ended, which may be
	// just after the client has its result.
	sent, recv := waitFind(&e.upstream.recorder, `"summarize_calendar"`), waitFind(&tap.recorder, `"summarize_calendar"`)
	if len(sent) != 1 || len(recv) != 1 {
		t.Fatalf("summarize exchanges: %d upstream, %d client", len(sent), len(recv))
	}
	if !bytes.Contains(sent[0].respBody, []byte("event: message")) || bytes.Count(sent[0].respBody, []byte("notifications/progress")) != 3 {
		t.Fatalf("the MCP server did not stream SSE progress: %s", sent[0].respBody)
	}
	if !bytes.Equal(sent[0].respBody, recv[0].respBody) {
		t.Fatalf("SSE stream altered:\nupstream: %q\nclient:   %q", sent[0].respBody, recv[0].respBody)
	}

	// The client's token never reached the MCP server.
	if leaked := e.upstream.find("LEAKED-CREDENTIAL"); len(leaked) != 0 {
		t.Fatalf("credential forwarded upstream: %s", leaked[0].reqBody)
	}

	// Every decision is in Mandate's audit trail with the MCP fields.
	ev := findAudit(t, e, "agent:helper", func(ev *pb.AuditEvent) bool {
		return ev.GetOperation() == "check" && ev.GetResource() == "calendar:bob"
	})
	ctx := ev.GetContext().AsMap()
	if ev.GetDecision() != "denied" || ev.GetPrincipal() != "user:alice" || ctx["mcp_method"] != "tools/call" || ctx["mcp_name"] != "read_calendar" ||
		ctx["mcp_agent"] != "agent:helper" || len(ev.GetChain()) != 2 || ev.GetCaller() != "mcp-gateway" {
		t.Fatalf("audit event: %v", ev)
	}
	findAudit(t, e, "agent:helper", func(ev *pb.AuditEvent) bool {
		c := ev.GetContext().AsMap()
		return ev.GetOperation() == "check_bulk" && c["mcp_method"] == "tools/list" && c["mcp_name"] == "add_event" && ev.GetDecision() == "denied"
	})
}

func waitFind(r *recorder, s string) []*exchange {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if got := r.find(s); len(got) > 0 {
			return got
		}
	}
	return nil
}

func waitExchange(r *recorder, ok func(*exchange) bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if slices.ContainsFunc(r.find(""), ok) {
			return true
		}
	}
	return false
}

func anyStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// findAudit waits for an audit event of agent matching ok.
func findAudit(t *testing.T, e *env, agent string, ok func(*pb.AuditEvent) bool) *pb.AuditEvent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := e.mandate.audit.Query(ctxT(t), &pb.AuditServiceQueryRequest{Agent: agent, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.GetEvents() {
			if ok(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching audit event among %d", len(resp.GetEvents()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMiddlewareInProcess: the same checks with Middleware wrapping the
// go-sdk handler directly; the handler sees the verified identity.
func TestMiddlewareInProcess(t *testing.T) {
	for _, version := range []string{"", "2025-11-25"} {
		e := newEnv(t, envOptions{inProcess: true, stateless: version == ""})
		cs, _ := e.goClient(e.resource, e.token("alice", "helper", nil), version)
		if got, err := cs.ListTools(ctxT(t), nil); err != nil || toolNames(got) != "read_calendar,summarize_calendar" {
			t.Fatalf("%q: tools/list %q %v", version, toolNames(got), err)
		}
		if res, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"}); err != nil || textOf(t, res) != "events of alice: standup 09:00" {
			t.Fatalf("%q: allowed call: %v %v", version, res, err)
		}
		_, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "bob"})
		if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != "principal_denied" {
			t.Fatalf("%q: denied call: %d %v", version, code, data)
		}
		calls := waitFind(&e.upstream.recorder, `"read_calendar"`)
		if len(calls) != 1 {
			t.Fatalf("%q: the handler saw %d calls", version, len(calls))
		}
		if calls[0].identity != "agent:helper,user:alice" {
			t.Fatalf("%q: the handler saw identity %q", version, calls[0].identity)
		}
		if leaked := e.upstream.find("LEAKED-CREDENTIAL"); len(leaked) != 0 {
			t.Fatalf("%q: the token reached the handler", version)
		}
	}
}

// TestMandateDownFailsClosed: when Mandate cannot be reached, calls are
// refused, never answered from the cache, and lists are withheld.
func TestMandateDownFailsClosed(t *testing.T) {
	e := newEnv(t, envOptions{stateless: true, cacheTTL: time.Hour})
	cs, _ := e.goClient(e.resource, e.token("alice", "helper", nil), "")
	for range 2 {
		if _, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	if hits, _ := e.gw.CacheStats(); hits == 0 {
		t.Fatal("the second call was not cached")
	}
	e.mandate.stop()
	for deadline := time.Now().Add(5 * time.Second); e.gw.CacheReady(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the gateway still trusts its cache with Mandate down")
		}
	}
	_, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"})
	if code, _ := denialOf(t, err); code != mcpgateway.CodeUnavailable {
		t.Fatalf("call with Mandate down: %v", err)
	}
	_, err = cs.ListTools(ctxT(t), nil)
	if code, _ := denialOf(t, err); code != mcpgateway.CodeUnavailable {
		t.Fatalf("tools/list with Mandate down: %v", err)
	}
}

// TestJSONResponses: with an MCP server answering in JSON rather than SSE,
// lists are filtered in the JSON body and results pass unchanged.
func TestJSONResponses(t *testing.T) {
	for _, version := range []string{"2025-11-25", ""} {
		e := newEnv(t, envOptions{json: true, stateless: version == ""})
		cs, tap := e.goClient(e.resource, e.token("alice", "helper", nil), version)
		got, err := cs.ListTools(ctxT(t), nil)
		if err != nil || toolNames(got) != "read_calendar,summarize_calendar" {
			t.Fatalf("%s: filtered tools/list: %q %v", version, toolNames(got), err)
		}
		if res, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"}); err != nil || textOf(t, res) != "events of alice: standup 09:00" {
			t.Fatalf("%s: call: %v %v", version, res, err)
		}
		sent, recv := waitFind(&e.upstream.recorder, `"read_calendar"`), waitFind(&tap.recorder, `"read_calendar"`)
		if len(sent) != 1 || len(recv) != 1 || !bytes.HasPrefix(sent[0].respBody, []byte("{")) || !bytes.Equal(sent[0].respBody, recv[0].respBody) {
			t.Fatalf("%s: JSON result altered or not JSON: %d %d", version, len(sent), len(recv))
		}
	}
}

// TestPromptsAndResources: prompts/get and resources/read are checked,
// and their lists filtered, like tools.
func TestPromptsAndResources(t *testing.T) {
	e := newEnv(t, envOptions{stateless: true})
	cs, _ := e.goClient(e.resource, e.token("alice", "helper", nil), "")
	prompts, err := cs.ListPrompts(ctxT(t), nil)
	if err != nil || len(prompts.Prompts) != 1 || prompts.Prompts[0].Name != "plan_week" {
		t.Fatalf("prompts/list: %v %v", prompts, err)
	}
	p, err := cs.GetPrompt(ctxT(t), &mcp.GetPromptParams{Name: "plan_week", Arguments: map[string]string{"calendar_id": "alice"}})
	if err != nil || p.Messages[0].Content.(*mcp.TextContent).Text != "Plan the week of alice" {
		t.Fatalf("prompts/get: %v %v", p, err)
	}
	_, err = cs.GetPrompt(ctxT(t), &mcp.GetPromptParams{Name: "plan_week", Arguments: map[string]string{"calendar_id": "bob"}})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != "principal_denied" {
		t.Fatalf("prompts/get bob: %d %v", code, data)
	}

	direct, _ := e.goClient(e.direct, "", "")
	if all, err := direct.ListResources(ctxT(t), nil); err != nil || len(all.Resources) != 2 {
		t.Fatalf("direct resources/list: %v %v", all, err)
	}
	res, err := cs.ListResources(ctxT(t), nil)
	if err != nil || len(res.Resources) != 1 || res.Resources[0].URI != "calendar://alice/events" {
		t.Fatalf("filtered resources/list: %v %v", res, err)
	}
	read, err := cs.ReadResource(ctxT(t), &mcp.ReadResourceParams{URI: "calendar://alice/events"})
	if err != nil || read.Contents[0].Text != "events of alice" {
		t.Fatalf("resources/read: %v %v", read, err)
	}
	_, err = cs.ReadResource(ctxT(t), &mcp.ReadResourceParams{URI: "calendar://bob/events"})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["resource"] != "calendar:bob" {
		t.Fatalf("resources/read bob: %d %v", code, data)
	}
	_, err = cs.ReadResource(ctxT(t), &mcp.ReadResourceParams{URI: "file:///etc/passwd"})
	if code, _ := denialOf(t, err); code != mcpgateway.CodeInvalidParams {
		t.Fatalf("unmapped resource: %v", err)
	}
}

// TestMcpGoSessionEra drives mcp-go pinned to revision 2025-11-25
// (initialize, Mcp-Session-Id, a GET stream, DELETE) through the gateway
// to a stateful go-sdk server, as a sub-agent whose act chain is revoked
// mid-session.
func TestMcpGoSessionEra(t *testing.T) {
	for _, cached := range []bool{false, true} {
		name := "uncached"
		ttl := time.Duration(0)
		if cached {
			name, ttl = "cached", time.Minute
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOptions{cacheTTL: ttl})
			tok := e.token("alice", "sub", map[string]any{"act": oidctest.Act("sub", "helper")})
			tr, err := mcpgotransport.NewStreamableHTTP(e.resource,
				// mcp-go sends its DELETE without WithHTTPHeaders' headers: the
				// token goes in through the HTTP client instead.
				mcpgotransport.WithHTTPBasicClient(&http.Client{Transport: &clientTap{token: func() string { return tok }}}),
				//lint:ignore SA1019 the standalone GET stream is what revision 2025-11-25 has
				mcpgotransport.WithContinuousListening())
			if err != nil {
				t.Fatal(err)
			}
			c := mcpgoclient.NewClient(tr, mcpgoclient.WithProtocolVersion("2025-11-25"))
			if err := c.Start(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			init, err := c.Initialize(ctxT(t), mcpgo.InitializeRequest{Params: mcpgo.InitializeParams{ProtocolVersion: "2025-11-25", ClientInfo: mcpgo.Implementation{Name: "mcp-go-test", Version: "1"}}})
			if err != nil || init.ProtocolVersion != "2025-11-25" {
				t.Fatalf("initialize: %v %v", init, err)
			}
			session := tr.GetSessionId()
			if session == "" {
				t.Fatal("no Mcp-Session-Id")
			}

			tools, err := c.ListTools(ctxT(t), mcpgo.ListToolsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, tl := range tools.Tools {
				names = append(names, tl.Name)
			}
			if strings.Join(names, ",") != "read_calendar,summarize_calendar" {
				t.Fatalf("filtered tools/list: %v", names)
			}

			call := func(calendar string) (*mcpgo.CallToolResult, error) {
				return c.CallTool(ctxT(t), mcpgo.CallToolRequest{Params: mcpgo.CallToolParams{Name: "read_calendar", Arguments: map[string]any{"calendar_id": calendar}}})
			}
			for range 2 { // the second may come from the cache
				res, err := call("alice")
				if err != nil || res.IsError || res.Content[0].(mcpgo.TextContent).Text != "events of alice: standup 09:00" {
					t.Fatalf("sub-agent call through agent:sub -> agent:helper -> user:alice: %v %v", res, err)
				}
			}
			ev := findAudit(t, e, "agent:sub", func(ev *pb.AuditEvent) bool {
				return ev.GetOperation() == "check" && ev.GetDecision() == "allowed" && ev.GetContext().AsMap()["mcp_session_id"] == session
			})
			var chain []string
			for _, l := range ev.GetChain() {
				chain = append(chain, l.GetSubject())
			}
			if !slices.Equal(chain, []string{"agent:sub", "agent:helper", "user:alice"}) || ev.GetPrincipal() != "user:alice" {
				t.Fatalf("audited chain %v principal %s", chain, ev.GetPrincipal())
			}

			// Another identity cannot use the session.
			other := e.token("bob", "helper", nil)
			resp := rawPost(t, e.resource, other, map[string]string{"Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-11-25"},
				`{"jsonrpc":"2.0","id":9,"method":"tools/list"}`)
			if resp.status != http.StatusNotFound || resp.code != mcpgateway.CodeSessionNotFound {
				t.Fatalf("hijacked session: %d %s", resp.status, resp.body)
			}

			// Revoke the link agent:sub -> agent:helper mid-session: the very
			// next call is refused (cached or not).
			e.mandate.write(t, pb.RelationshipUpdate_OPERATION_DELETE, "agent:sub#acts_for@agent:helper")
			start := time.Now()
			var denied error
			attempts := 0
			for time.Since(start) < 5*time.Second {
				attempts++
				if _, denied = call("alice"); denied != nil {
					break
				}
			}
			if !cached && attempts != 1 {
				// Without the cache every call is a Mandate check, which
				// sees an acknowledged write.
				t.Fatalf("uncached: %d calls were allowed after the revoke", attempts-1)
			}
			if denied == nil || !strings.Contains(denied.Error(), "no_delegation") && !strings.Contains(denied.Error(), "chain_mismatch") {
				t.Fatalf("after revoking agent:sub -> agent:helper: %v", denied)
			}
			t.Logf("revoke to first denied call: %v (%d calls)", time.Since(start), attempts)
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			// DELETE ended the session at the gateway too.
			if !waitExchange(&e.upstream.recorder, func(x *exchange) bool { return x.method == http.MethodDelete && x.session == session }) {
				t.Fatal("the DELETE did not reach the MCP server")
			}
			if !waitExchange(&e.upstream.recorder, func(x *exchange) bool { return x.method == http.MethodGet && x.session == session }) {
				t.Fatal("the GET stream did not reach the MCP server")
			}
			resp = rawPost(t, e.resource, tok, map[string]string{"Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-11-25"},
				`{"jsonrpc":"2.0","id":10,"method":"tools/list"}`)
			if resp.status != http.StatusNotFound {
				t.Fatalf("a deleted session still answers: %d %s", resp.status, resp.body)
			}
		})
	}
}

// TestGoSDKSessionEraSubAgent runs the go-sdk client at 2025-11-25 with a
// claimed chain that Mandate's live chain contradicts.
func TestGoSDKSessionEraChainMismatch(t *testing.T) {
	e := newEnv(t, envOptions{})
	// agent:sub acts for alice through helper, but its token claims a
	// direct delegation: the claim does not match the live chain.
	cs, _ := e.goClient(e.resource, e.token("alice", "sub", nil), "2025-11-25")
	if cs.ID() == "" {
		t.Fatal("no session")
	}
	_, err := callTool(t, cs, "read_calendar", map[string]any{"calendar_id": "alice"})
	code, data := denialOf(t, err)
	if code != mcpgateway.CodeDenied || data["reason"] != mcpgateway.ReasonChainMismatch ||
		!slices.Equal(anyStrings(data["claimed_chain"]), []string{"agent:sub", "user:alice"}) ||
		!slices.Equal(anyStrings(data["chain"]), []string{"agent:sub", "agent:helper", "user:alice"}) {
		t.Fatalf("chain mismatch: %d %v", code, data)
	}
	// An act claim naming an agent with no live link grants nothing either.
	cs2, _ := e.goClient(e.resource, e.token("alice", "sub", map[string]any{"act": oidctest.Act("sub", "stranger")}), "2025-11-25")
	_, err = callTool(t, cs2, "read_calendar", map[string]any{"calendar_id": "alice"})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != mcpgateway.ReasonChainMismatch {
		t.Fatalf("claimed stranger: %d %v", code, data)
	}
	// add_event needs a scope the token lacks: 403 insufficient_scope.
	resp := rawPost(t, e.resource, e.token("alice", "helper", nil), map[string]string{"Mcp-Protocol-Version": "2025-11-25"},
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add_event","arguments":{"calendar_id":"alice","title":"x"}}}`)
	if resp.status != http.StatusForbidden || !strings.Contains(resp.challenge, `error="insufficient_scope"`) || !strings.Contains(resp.challenge, `scope="calendar.write"`) {
		t.Fatalf("insufficient scope: %d %q", resp.status, resp.challenge)
	}
	// With the scope, Mandate denies: agents are never granted write, and
	// only the agent's own grant is missing.
	cs3, _ := e.goClient(e.resource, e.token("alice", "helper", map[string]any{"scope": "mcp calendar.write"}), "2025-11-25")
	_, err = callTool(t, cs3, "add_event", map[string]any{"calendar_id": "alice", "title": "x"})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["reason"] != "agent_not_granted" || data["resolvable_by_approval"] != true {
		t.Fatalf("agent write: %d %v", code, data)
	}
}
