package mcpgateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mcpgoclient "github.com/mark3labs/mcp-go/client"
	mcpgotransport "github.com/mark3labs/mcp-go/client/transport"
	mcpgo "github.com/mark3labs/mcp-go/mcp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mandate-authz/mandate/mcpgateway"
	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server/approval"
	"github.com/mandate-authz/mandate/store/rel"
)

// heldRules hold every agent read of a calendar for the owner's consent.
const heldRules = `rules:
  - name: calendar-read-needs-consent
    description: Reading a calendar needs its owner's consent.
    match:
      resource_types: [calendar]
      permissions: [read]
`

const inboxBase = "https://mandate.example.com/ui/"

// elicitingClient is the go-sdk client declaring URL-mode elicitation
// (capabilities.elicitation.url) at initialize.
func elicitingClient(t *testing.T, e *env, token, version string, handler func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error)) *mcp.ClientSession {
	t.Helper()
	if handler == nil {
		handler = func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "cancel"}, nil
		}
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "eliciting-client", Version: "1"}, &mcp.ClientOptions{
		Capabilities:       &mcp.ClientCapabilities{Elicitation: &mcp.ElicitationCapabilities{URL: &mcp.URLElicitationCapabilities{}}},
		ElicitationHandler: handler,
	})
	cs, err := c.Connect(ctxT(t), &mcp.StreamableClientTransport{Endpoint: e.resource,
		HTTPClient: &http.Client{Transport: &clientTap{token: func() string { return token }}}, MaxRetries: -1},
		&mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// mcpGoClient is mcp-go at revision 2025-11-25, declaring no elicitation.
func mcpGoClient(t *testing.T, e *env, token string) (*mcpgoclient.Client, *clientTap) {
	t.Helper()
	tap := &clientTap{token: func() string { return token }}
	tr, err := mcpgotransport.NewStreamableHTTP(e.resource, mcpgotransport.WithHTTPBasicClient(&http.Client{Transport: tap}))
	if err != nil {
		t.Fatal(err)
	}
	c := mcpgoclient.NewClient(tr, mcpgoclient.WithProtocolVersion("2025-11-25"))
	if err := c.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Initialize(ctxT(t), mcpgo.InitializeRequest{Params: mcpgo.InitializeParams{ProtocolVersion: "2025-11-25",
		ClientInfo: mcpgo.Implementation{Name: "mcp-go-test", Version: "1"}}}); err != nil {
		t.Fatal(err)
	}
	return c, tap
}

// urlElicitation reads a -32042 error: its one URL-mode elicitation.
func urlElicitation(t *testing.T, err error) (id, url, message string) {
	t.Helper()
	var je *jsonrpc.Error
	if !errors.As(err, &je) || je.Code != mcp.CodeURLElicitationRequired || mcpgateway.CodeURLElicitationRequired != mcp.CodeURLElicitationRequired {
		t.Fatalf("expected URLElicitationRequiredError -32042, got %v", err)
	}
	var data struct {
		Elicitations []struct {
			Mode, ElicitationID, URL, Message string
		}
	}
	if err := json.Unmarshal(je.Data, &data); err != nil || len(data.Elicitations) != 1 || data.Elicitations[0].Mode != "url" {
		t.Fatalf("-32042 data %s: %v", je.Data, err)
	}
	el := data.Elicitations[0]
	return el.ElicitationID, el.URL, el.Message
}

func (e *env) pendingApprovals(t *testing.T) []*pb.Approval {
	t.Helper()
	resp, err := pb.NewApprovalServiceClient(e.mandate.conn).List(ctxT(t), &pb.ApprovalServiceListRequest{Filter: &pb.ApprovalFilter{
		Agent: &pb.ObjectReference{ObjectType: "agent", ObjectId: "helper"}, Status: pb.ApprovalStatus_APPROVAL_STATUS_PENDING}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetApprovals()
}

var alice = rel.Object{Type: "user", ID: "alice"}

// TestApprovalElicitation: a call an escalation rule holds files one
// approval request (however often the agent retries), sends a client
// declaring URL elicitation to the inbox with -32042 and tells one that
// does not in the denial's data; once alice approves, the next call
// passes; once the grant is revoked, or a new request denied, it is held
// again. With the cache on, no held or granted decision is ever reused.
func TestApprovalElicitation(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run("cache="+ttl.String(), func(t *testing.T) {
			e := newEnv(t, envOptions{cacheTTL: ttl, escalation: heldRules, approvalURL: inboxBase})
			tok := e.token("alice", "helper", nil)
			eliciting := elicitingClient(t, e, tok, "2025-11-25", nil)
			plain, tap := mcpGoClient(t, e, tok)
			args := map[string]any{"calendar_id": "alice"}
			plainCall := func() (*mcpgo.CallToolResult, error) {
				return plain.CallTool(ctxT(t), mcpgo.CallToolRequest{Params: mcpgo.CallToolParams{Name: "read_calendar", Arguments: args}})
			}

			// Held: the eliciting client is sent to the request's inbox page.
			_, err := callTool(t, eliciting, "read_calendar", args)
			id, url, msg := urlElicitation(t, err)
			if id == "" || url != inboxBase+"requests/"+id || !strings.Contains(msg, "calendar-read-needs-consent") {
				t.Fatalf("elicitation id %q url %q message %q", id, url, msg)
			}
			// A retry, and the other client, find the same pending request.
			_, err = callTool(t, eliciting, "read_calendar", args)
			if again, _, _ := urlElicitation(t, err); again != id {
				t.Fatalf("the retry was sent to request %s, not %s", again, id)
			}
			_, err = plainCall()
			data := mcpGoDenial(t, tap, 0, err)
			ap, _ := data["approval"].(map[string]any)
			req, _ := ap["request"].(map[string]any)
			if data["reason"] != mcpgateway.ReasonApprovalRequired || ap["request_id"] != id || ap["rule"] != "calendar-read-needs-consent" ||
				ap["evaluation_id"] == "" || ap["url"] != url || req["permission"] != "read" || ap["status"] != "APPROVAL_STATUS_PENDING" {
				t.Fatalf("denial data of a client without URL elicitation: %v", data)
			}
			pending := e.pendingApprovals(t)
			if len(pending) != 1 || pending[0].GetId() != id || pending[0].GetRule() != "calendar-read-needs-consent" ||
				!strings.Contains(pending[0].GetReason(), `tools/call "read_calendar"`) || pending[0].GetResource().GetObjectId() != "alice" {
				t.Fatalf("pending requests after three held calls: %v", pending)
			}
			if len(e.upstream.find(`"read_calendar"`)) != 0 {
				t.Fatal("a held call reached the MCP server")
			}

			// alice approves: the very next call passes, for both clients.
			svc := e.mandate.srv.Approvals()
			if _, err := svc.Approve(ctxT(t), id, approval.Decision{Approver: alice}); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if res, err := callTool(t, eliciting, "read_calendar", args); err != nil || textOf(t, res) != "events of alice: standup 09:00" {
					t.Fatalf("call after approval: %v %v", res, err)
				}
			}
			if res, err := plainCall(); err != nil || res.IsError {
				t.Fatalf("mcp-go call after approval: %v %v", res, err)
			}

			// Revoking the grant holds the very next call again (a grant's
			// allow is never cached) and files a new request.
			if _, err := svc.Revoke(ctxT(t), id, alice); err != nil {
				t.Fatal(err)
			}
			_, err = callTool(t, eliciting, "read_calendar", args)
			second, _, _ := urlElicitation(t, err)
			if second == id {
				t.Fatal("the revoked request was given again")
			}
			// alice denies it: the call stays refused.
			if _, err := svc.Deny(ctxT(t), second, approval.Decision{Approver: alice}); err != nil {
				t.Fatal(err)
			}
			seen := len(tap.find(`"tools/call"`))
			_, err = plainCall()
			if d := mcpGoDenial(t, tap, seen, err); d["reason"] != mcpgateway.ReasonApprovalRequired {
				t.Fatalf("call after deny: %v", d)
			}
			if hits, _ := e.gw.CacheStats(); hits != 0 {
				t.Fatalf("%d held or granted decisions came from the cache", hits)
			}
		})
	}
}

// mcpGoDenial reads the data of the CodeDenied error mcp-go just got:
// mcp-go's error keeps only the message, so the data is read from the
// response its tap recorded.
func mcpGoDenial(t *testing.T, tap *clientTap, seen int, err error) map[string]any {
	t.Helper()
	if err == nil {
		t.Fatal("expected a denial, the call passed")
	}
	var got []*exchange
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if got = tap.find(`"tools/call"`); len(got) > seen {
			break
		}
	}
	if len(got) <= seen {
		t.Fatalf("the tap saw no new tools/call (%v)", err)
	}
	var resp struct {
		Error struct {
			Code int            `json:"code"`
			Data map[string]any `json:"data"`
		} `json:"error"`
	}
	if jerr := json.Unmarshal(got[len(got)-1].respBody, &resp); jerr != nil || resp.Error.Code != mcpgateway.CodeDenied {
		t.Fatalf("mcp-go's call: %v; response %s", err, got[len(got)-1].respBody)
	}
	return resp.Error.Data
}

// TestApprovalElicitationStateless: at revision 2026-07-28 a client
// declares its capabilities in each request's _meta, and a held call is
// answered in band with an input_required result carrying the URL-mode
// elicitation; the go-sdk client shows it (here: alice approves), retries
// and passes. A client declaring no URL elicitation gets the denial's
// data, for tools/call and prompts/get alike.
func TestApprovalElicitationStateless(t *testing.T) {
	e := newEnv(t, envOptions{stateless: true, escalation: heldRules, approvalURL: inboxBase})
	tok := e.token("alice", "helper", nil)
	svc := e.mandate.srv.Approvals()
	var asked []*mcp.ElicitParams
	eliciting := elicitingClient(t, e, tok, "", func(ctx context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
		asked = append(asked, req.Params)
		// The person opens the URL and approves there.
		id := strings.TrimPrefix(req.Params.URL, inboxBase+"requests/")
		if _, err := svc.Approve(ctx, id, approval.Decision{Approver: alice}); err != nil {
			return nil, err
		}
		return &mcp.ElicitResult{Action: "accept"}, nil
	})
	if v := eliciting.InitializeResult().ProtocolVersion; v != "2026-07-28" {
		t.Fatalf("negotiated %s", v)
	}
	plain, _ := e.goClient(e.resource, tok, "")

	// A client without URL elicitation: the request in the denial's data.
	_, err := callTool(t, plain, "read_calendar", map[string]any{"calendar_id": "alice"})
	code, data := denialOf(t, err)
	ap, _ := data["approval"].(map[string]any)
	id, _ := ap["request_id"].(string)
	if code != mcpgateway.CodeDenied || data["reason"] != mcpgateway.ReasonApprovalRequired || id == "" || ap["url"] != inboxBase+"requests/"+id {
		t.Fatalf("stateless denial: %d %v", code, data)
	}
	_, err = plain.GetPrompt(ctxT(t), &mcp.GetPromptParams{Name: "plan_week", Arguments: map[string]string{"calendar_id": "alice"}})
	if code, data := denialOf(t, err); code != mcpgateway.CodeDenied || data["approval"].(map[string]any)["request_id"] != id {
		t.Fatalf("prompts/get held: %d %v", code, data)
	}

	// The eliciting client is asked in band, approves, retries, passes.
	res, err := callTool(t, eliciting, "read_calendar", map[string]any{"calendar_id": "alice"})
	if err != nil || textOf(t, res) != "events of alice: standup 09:00" {
		t.Fatalf("call through the elicitation: %v %v", res, err)
	}
	if len(asked) != 1 || asked[0].Mode != "url" || asked[0].ElicitationID != id || asked[0].URL != inboxBase+"requests/"+id ||
		!strings.Contains(asked[0].Message, "calendar-read-needs-consent") {
		t.Fatalf("elicitations asked: %+v", asked)
	}
	if p := e.pendingApprovals(t); len(p) != 0 {
		t.Fatalf("pending after approval: %v", p)
	}
	// The grant holds for the client without elicitation too.
	if res, err := callTool(t, plain, "read_calendar", map[string]any{"calendar_id": "alice"}); err != nil || res.IsError {
		t.Fatalf("plain call after approval: %v %v", res, err)
	}
}

// TestApprovalRequestableDenial: with no escalation rule, a denial only
// the agent's own grant is missing for (agents may not write calendars)
// is held the same way: concurrent retries file one request, with no
// rule, and alice's approval lets the write through.
func TestApprovalRequestableDenial(t *testing.T) {
	e := newEnv(t, envOptions{cacheTTL: time.Minute, approvalURL: inboxBase})
	tok := e.token("alice", "helper", map[string]any{"scope": "mcp calendar.write"})
	eliciting := elicitingClient(t, e, tok, "2025-11-25", nil)
	args := map[string]any{"calendar_id": "alice", "title": "review"}
	ids := make(chan string, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := eliciting.CallTool(ctxT(t), &mcp.CallToolParams{Name: "add_event", Arguments: args})
			var je *jsonrpc.Error
			if !errors.As(err, &je) || je.Code != mcp.CodeURLElicitationRequired {
				t.Errorf("concurrent held call: %v", err)
				ids <- ""
				return
			}
			var data struct {
				Elicitations []struct{ ElicitationID, Message string }
			}
			json.Unmarshal(je.Data, &data)
			if len(data.Elicitations) != 1 || !strings.Contains(data.Elicitations[0].Message, "a person's approval is required") {
				t.Errorf("elicitation data %s", je.Data)
			}
			ids <- data.Elicitations[0].ElicitationID
		}()
	}
	wg.Wait()
	close(ids)
	var first string
	for id := range ids {
		if first == "" {
			first = id
		}
		if id == "" || id != first {
			t.Fatalf("concurrent held calls were sent to different requests (%q, %q)", first, id)
		}
	}
	pending := e.pendingApprovals(t)
	if len(pending) != 1 || pending[0].GetId() != first || pending[0].GetRule() != "" || pending[0].GetPermission() != "write" {
		t.Fatalf("pending requests: %v", pending)
	}
	if _, err := e.mandate.srv.Approvals().Approve(ctxT(t), first, approval.Decision{Approver: alice}); err != nil {
		t.Fatal(err)
	}
	if res, err := callTool(t, eliciting, "add_event", args); err != nil || textOf(t, res) != "added review to alice" {
		t.Fatalf("write after approval: %v %v", res, err)
	}
}

// TestSingleUseGrantThroughGateway: MCP cannot name a grant, so the
// gateway names a single-use grant alice approved for exactly the held
// call: the next call passes and redeems it, the one after is held again
// (a new request is filed), and the MCP server saw the call once.
func TestSingleUseGrantThroughGateway(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Minute} {
		t.Run("cache="+ttl.String(), func(t *testing.T) {
			e := newEnv(t, envOptions{cacheTTL: ttl, escalation: heldRules})
			cs, _ := e.goClient(e.resource, e.token("alice", "helper", nil), "2025-11-25")
			args := map[string]any{"calendar_id": "alice"}
			if _, err := callTool(t, cs, "read_calendar", args); err == nil {
				t.Fatal("the rule's call passed before any approval")
			}
			pending := e.pendingApprovals(t)
			if len(pending) != 1 {
				t.Fatalf("pending requests: %v", pending)
			}
			first := pending[0].GetId()
			svc := e.mandate.srv.Approvals()
			if _, err := svc.Approve(ctxT(t), first, approval.Decision{Approver: alice, SingleUse: true}); err != nil {
				t.Fatal(err)
			}
			if res, err := callTool(t, cs, "read_calendar", args); err != nil || textOf(t, res) != "events of alice: standup 09:00" {
				t.Fatalf("call with a single-use grant: %v %v", res, err)
			}
			if _, err := callTool(t, cs, "read_calendar", args); err == nil {
				t.Fatal("a redeemed single-use grant allowed a second call")
			}
			if again := e.pendingApprovals(t); len(again) != 1 || again[0].GetId() == first {
				t.Fatalf("after redeeming %s: pending %v, want one new request", first, again)
			}
			if n := len(e.upstream.find(`"read_calendar"`)); n != 1 {
				t.Fatalf("the MCP server saw %d read_calendar calls, want 1", n)
			}
			if hits, _ := e.gw.CacheStats(); hits != 0 {
				t.Fatalf("%d held or granted decisions came from the cache", hits)
			}
		})
	}
}

// TestSingleUseGrantIsTheCallersOnly: a single-use grant names an agent
// and principal; another agent's held call never redeems it.
func TestSingleUseGrantIsTheCallersOnly(t *testing.T) {
	e := newEnv(t, envOptions{escalation: heldRules})
	e.mandate.write(t, pb.RelationshipUpdate_OPERATION_TOUCH, "agent:other#acts_for@user:alice")
	helper, _ := e.goClient(e.resource, e.token("alice", "helper", nil), "2025-11-25")
	other, _ := e.goClient(e.resource, e.token("alice", "other", nil), "2025-11-25")
	args := map[string]any{"calendar_id": "alice"}
	if _, err := callTool(t, helper, "read_calendar", args); err == nil {
		t.Fatal("held call passed")
	}
	pending := e.pendingApprovals(t)
	if len(pending) != 1 {
		t.Fatalf("pending: %v", pending)
	}
	if _, err := e.mandate.srv.Approvals().Approve(ctxT(t), pending[0].GetId(), approval.Decision{Approver: alice, SingleUse: true}); err != nil {
		t.Fatal(err)
	}
	if res, err := callTool(t, other, "read_calendar", args); err == nil && !res.IsError {
		t.Fatal("another agent's call redeemed helper's single-use grant")
	}
	if res, err := callTool(t, helper, "read_calendar", args); err != nil || res.IsError {
		t.Fatalf("helper's call with its grant: %v %v", res, err)
	}
}
