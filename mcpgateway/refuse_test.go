package mcpgateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/mandate-authz/mandate/mcpgateway"
	"github.com/mandate-authz/mandate/mcpgateway/oidctest"
)

type rawResponse struct {
	status    int
	code      int
	message   string
	body      string
	challenge string
}

// rawPost sends one JSON-RPC body with the given token and headers.
func rawPost(t *testing.T, url, token string, headers map[string]string, body string) rawResponse {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := rawResponse{status: resp.StatusCode, body: string(b), challenge: resp.Header.Get("WWW-Authenticate")}
	var m struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &m) == nil {
		out.code, out.message = m.Error.Code, m.Error.Message
	}
	return out
}

// TestResourceServer covers the OAuth duties: metadata, challenges, and
// every way a token is refused.
func TestResourceServer(t *testing.T) {
	e := newEnv(t, envOptions{stateless: true})

	// RFC 9728 metadata at the path-inserted well-known URL.
	meta, err := oauthex.GetProtectedResourceMetadata(ctxT(t), e.gw.MetadataURL(), e.resource, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Resource != e.resource || len(meta.AuthorizationServers) != 1 || meta.AuthorizationServers[0] != e.issuer.URL {
		t.Fatalf("metadata %+v", meta)
	}
	if !strings.HasSuffix(e.gw.MetadataURL(), "/.well-known/oauth-protected-resource/mcp") {
		t.Fatalf("metadata URL %s", e.gw.MetadataURL())
	}

	other, err := oidctest.New("http://127.0.0.1:1") // an issuer the gateway does not trust
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.Mint(map[string]any{"sub": "alice", "client_id": "helper", "aud": e.resource, "scope": "mcp", "iss": e.issuer.URL})
	past := time.Now().Add(-2 * time.Minute).Unix()
	future := time.Now().Add(2 * time.Minute).Unix()
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}`
	h := map[string]string{"Mcp-Protocol-Version": "2025-11-25"}
	for _, tc := range []struct {
		name   string
		token  string
		status int
		code   string // the challenge's error, "" for none
		detail string
	}{
		{"no token", "", 401, "", "no bearer token"},
		{"wrong audience", e.token("alice", "helper", map[string]any{"aud": "http://127.0.0.1:9/other"}), 401, "invalid_token", "audience"},
		{"expired", e.token("alice", "helper", map[string]any{"exp": past}), 401, "invalid_token", "expired"},
		{"not yet valid", e.token("alice", "helper", map[string]any{"nbf": future}), 401, "invalid_token", "not valid before"},
		{"no exp", e.token("alice", "helper", map[string]any{"exp": nil}), 401, "invalid_token", "no exp"},
		{"signed by another issuer", foreign, 401, "invalid_token", "signature"},
		{"not a JWT", "abc.def", 401, "invalid_token", "JWT"},
		{"no client", e.token("alice", "", map[string]any{"client_id": nil}), 401, "invalid_token", "client_id"},
		{"act too deep", e.token("alice", "a0", map[string]any{"act": oidctest.Act("a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8")}), 401, "invalid_token", "deeper than 8"},
		{"bad subject id", e.token("al ice", "helper", nil), 401, "invalid_token", "not a valid Mandate subject"},
		{"missing scope", e.token("alice", "helper", map[string]any{"scope": "other"}), 403, "insufficient_scope", "lacks scope mcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.upstream.find(""))
			r := rawPost(t, e.resource, tc.token, h, body)
			if r.status != tc.status || !strings.Contains(r.message, tc.detail) {
				t.Fatalf("status %d message %q, want %d containing %q", r.status, r.message, tc.status, tc.detail)
			}
			chs, err := oauthex.ParseWWWAuthenticate([]string{r.challenge})
			if err != nil || len(chs) != 1 || chs[0].Scheme != "bearer" {
				t.Fatalf("WWW-Authenticate %q: %v", r.challenge, err)
			}
			if chs[0].Params["resource_metadata"] != e.gw.MetadataURL() || chs[0].Params["error"] != tc.code {
				t.Fatalf("WWW-Authenticate %q", r.challenge)
			}
			if len(e.upstream.find("")) != before {
				t.Fatal("a refused request reached the MCP server")
			}
		})
	}

	// Key rotation: tokens signed with a new key verify once the gateway
	// refetches the JWKS.
	if err := e.issuer.Rotate(false); err != nil {
		t.Fatal(err)
	}
	if r := rawPost(t, e.resource, e.token("alice", "helper", nil), h, body); r.status != 200 || r.code != 0 {
		t.Fatalf("after key rotation: %d %s", r.status, r.body)
	}
}

// TestBadInput: each malformed or unmappable request gets a clear error
// and is never forwarded.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envOptions{stateless: true})
	tok := e.token("alice", "helper", nil)
	modern := func(method, name string) map[string]string {
		h := map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": method}
		if name != "" {
			h["Mcp-Name"] = name
		}
		return h
	}
	legacy := map[string]string{"Mcp-Protocol-Version": "2025-11-25"}
	call := func(args string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_calendar","arguments":` + args + `}}`
	}
	for _, tc := range []struct {
		name    string
		headers map[string]string
		body    string
		status  int
		code    int
		detail  string
	}{
		{"malformed JSON", legacy, `{"jsonrpc":"2.0",`, 400, mcpgateway.CodeParseError, "malformed JSON"},
		{"batch", legacy, `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`, 400, mcpgateway.CodeInvalidRequest, "batches"},
		{"not JSON-RPC 2.0", legacy, `{"jsonrpc":"1.0","id":1,"method":"ping"}`, 400, mcpgateway.CodeInvalidRequest, `"2.0"`},
		{"neither request nor response", legacy, `{"jsonrpc":"2.0","id":1}`, 400, mcpgateway.CodeInvalidRequest, "expected a request"},
		{"duplicate key", legacy, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_calendar","name":"add_event","arguments":{"calendar_id":"alice"}}}`, 400, mcpgateway.CodeParseError, "twice"},
		{"keys equal up to case", legacy, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_calendar","Name":"add_event","arguments":{"calendar_id":"alice"}}}`, 400, mcpgateway.CodeParseError, "twice"},
		{"oversized body", legacy, call(`{"calendar_id":"` + strings.Repeat("a", 2<<20) + `"}`), 413, mcpgateway.CodeInvalidRequest, "limit of 1048576 bytes"},
		{"unknown tool", legacy, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"drop_tables","arguments":{}}}`, 200, mcpgateway.CodeInvalidParams, `unknown tool "drop_tables"`},
		{"missing argument", legacy, call(`{}`), 200, mcpgateway.CodeInvalidParams, `"calendar_id": missing`},
		{"wildcard id", legacy, call(`{"calendar_id":"*"}`), 200, mcpgateway.CodeInvalidParams, "pattern"},
		{"path in id", legacy, call(`{"calendar_id":"../bob"}`), 200, mcpgateway.CodeInvalidParams, "pattern"},
		{"object as id", legacy, call(`{"calendar_id":{"x":1}}`), 200, mcpgateway.CodeInvalidParams, "expected a string or an integer"},
		{"id unfit for Mandate", legacy, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"summarize_calendar","arguments":{"calendar_id":"a b"}}}`, 200, mcpgateway.CodeInvalidParams, "not a valid object ID"},
		{"call sent as a notification", legacy, `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"add_event","arguments":{"calendar_id":"bob"}}}`, 400, mcpgateway.CodeInvalidRequest, "only notifications/*"},
		{"null id", legacy, `{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"add_event","arguments":{"calendar_id":"bob"}}}`, 400, mcpgateway.CodeInvalidRequest, "id: expected"},
		{"params not an object", legacy, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["add_event"]}`, 400, mcpgateway.CodeInvalidParams, "params: expected an object"},
		{"method in another case", legacy, `{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"add_event","arguments":{"calendar_id":"bob"}}}`, 200, mcpgateway.CodeMethodNotFound, "not allowed through the gateway"},
		{"unmapped method without params", legacy, `{"jsonrpc":"2.0","id":1,"method":"sampling/anything"}`, 200, mcpgateway.CodeMethodNotFound, `"sampling/anything" is not allowed`},
		{"tools/call without params", legacy, `{"jsonrpc":"2.0","id":1,"method":"tools/call"}`, 200, mcpgateway.CodeInvalidParams, "params are required"},
		{"unmapped method", legacy, `{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{}}`, 200, mcpgateway.CodeMethodNotFound, "not allowed through the gateway"},
		{"Mcp-Method missing", map[string]string{"Mcp-Protocol-Version": "2026-07-28"}, call(`{"calendar_id":"alice"}`), 400, mcpgateway.CodeHeaderMismatch, "missing required Mcp-Method"},
		{"Mcp-Method mismatch", modern("tools/list", "read_calendar"), call(`{"calendar_id":"alice"}`), 400, mcpgateway.CodeHeaderMismatch, "does not match body"},
		{"Mcp-Name mismatch", modern("tools/call", "summarize_calendar"), call(`{"calendar_id":"alice"}`), 400, mcpgateway.CodeHeaderMismatch, `Mcp-Name header value "summarize_calendar" does not match body value "read_calendar"`},
		{"Mcp-Name missing", modern("tools/call", ""), call(`{"calendar_id":"alice"}`), 400, mcpgateway.CodeHeaderMismatch, "missing required Mcp-Name"},
		{"capability header that is no token", map[string]string{"Mcp-Protocol-Version": "2025-11-25", mcpgateway.CapabilityHeader: "cap-token"}, call(`{"calendar_id":"alice"}`), 200, mcpgateway.CodeDenied, "token_malformed"},
		{"empty capability header", map[string]string{"Mcp-Protocol-Version": "2025-11-25", mcpgateway.CapabilityHeader: " "}, call(`{"calendar_id":"alice"}`), 400, mcpgateway.CodeInvalidRequest, "Mandate-Capability: empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.upstream.find(""))
			r := rawPost(t, e.resource, tok, tc.headers, tc.body)
			if r.status != tc.status || r.code != tc.code || !strings.Contains(r.message, tc.detail) {
				t.Fatalf("got %d %d %q, want %d %d containing %q", r.status, r.code, r.message, tc.status, tc.code, tc.detail)
			}
			if len(e.upstream.find("")) != before {
				t.Fatal("refused request reached the MCP server")
			}
		})
	}
}
