package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/audit"
)

// authzenPost posts an AuthZEN request with the given Authorization header
// ("" for none) and returns the status and the body.
func (ts *testServer) authzenPost(path, auth, reqID, body string) (int, http.Header, []byte) {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.base+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if reqID != "" {
		req.Header.Set("X-Request-ID", reqID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out
}

// TestAuthZENAgents: an agent subject's decision carries its reason code
// and chain in the single evaluation's context (evaluations items stay
// exactly {"decision": bool}); on_behalf_of names the principal; the
// audit records the call like any other API's, as transport authzen.
func TestAuthZENAgents(t *testing.T) {
	ts, rec := startAudited(t)
	ts.writeSchema(testSchema)
	tok := ts.write(update(touch, mustParse(t,
		"doc:1#viewer@user:ann", "doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann",
		"doc:2#viewer@user:ann",
		"agent:multi#acts_for@user:ann", "agent:multi#acts_for@user:bob", "doc:1#viewer@agent:multi")...)...)
	// Wait for the engine to apply the write (AuthZEN reads its latest).
	if _, err := ts.perm.Check(ts.ctx(), checkRequest(fresh(tok), "doc:1", "user:ann")); err != nil {
		t.Fatal(err)
	}
	rec.take()
	auth := "Bearer " + testKey
	type answer struct {
		Decision *bool
		Context  *struct {
			Reason               string
			Chain                []struct{ Subject struct{ Type, ID string } }
			ResolvableByApproval bool `json:"resolvable_by_approval"`
		}
	}
	eval := func(body string) answer {
		t.Helper()
		status, h, out := ts.authzenPost("/access/v1/evaluation", auth, "req-agents-1", body)
		if status != http.StatusOK || h.Get("X-Request-ID") != "req-agents-1" {
			t.Fatalf("%s: %d %v %s", body, status, h, out)
		}
		var a answer
		if err := json.Unmarshal(out, &a); err != nil || a.Decision == nil {
			t.Fatalf("%s: %s", body, out)
		}
		return a
	}
	a := eval(`{"subject":{"type":"agent","id":"bot"},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
	if !*a.Decision || a.Context == nil || len(a.Context.Chain) != 2 || a.Context.Chain[1].Subject.ID != "ann" || a.Context.Reason != "" {
		t.Errorf("allowed agent: %+v", a)
	}
	ev := one(t, rec.take())
	if ev.Transport != "authzen" || ev.RequestID != "req-agents-1" || ev.Caller != "key-1" || ev.Operation != audit.OpCheck ||
		ev.Decision != audit.Allowed || ev.SubjectKind != audit.Agent || ev.Principal != "user:ann" || ev.Resource != "doc:1" {
		t.Errorf("audit event: %+v", ev)
	}
	a = eval(`{"subject":{"type":"agent","id":"bot"},"action":{"name":"view"},"resource":{"type":"doc","id":"2"}}`)
	if *a.Decision || a.Context == nil || a.Context.Reason != "agent_not_granted" || !a.Context.ResolvableByApproval {
		t.Errorf("agent without its own grant: %+v", a.Context)
	}
	rec.take()
	// An agent acting for several principals is ambiguous until one is named.
	status, _, out := ts.authzenPost("/access/v1/evaluation", auth, "", `{"subject":{"type":"agent","id":"multi"},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
	if status == http.StatusOK && strings.Contains(string(out), `"decision":true`) {
		t.Errorf("an ambiguous agent was allowed: %s", out)
	}
	a = eval(`{"subject":{"type":"agent","id":"multi","properties":{"on_behalf_of":{"type":"user","id":"ann"}}},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
	if !*a.Decision {
		t.Errorf("agent on behalf of ann: %+v", a)
	}
	a = eval(`{"subject":{"type":"agent","id":"multi","properties":{"on_behalf_of":{"type":"user","id":"bob"}}},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
	if *a.Decision || a.Context == nil || a.Context.Reason != "principal_denied" {
		t.Errorf("agent on behalf of bob, who may not view: %+v", a.Context)
	}
	// Evaluations items stay bare, agents or not.
	rec.take()
	status, _, out = ts.authzenPost("/access/v1/evaluations", auth, "", `{"subject":{"type":"agent","id":"bot"},"action":{"name":"view"},"evaluations":[{"resource":{"type":"doc","id":"1"}},{"resource":{"type":"doc","id":"2"}}]}`)
	if status != http.StatusOK || !strings.Contains(string(out), `"evaluations":[{"decision":true},{"decision":false}]`) {
		t.Errorf("evaluations: %d %s", status, out)
	}
	if evs := rec.take(); len(evs) != 2 || evs[0].Operation != audit.OpCheckBulk || evs[1].Decision != audit.Denied {
		t.Errorf("evaluations audit: %+v", evs)
	}
	// A refused call is audited too.
	if status, _, _ := ts.authzenPost("/access/v1/evaluation", "Bearer wrong", "", `{}`); status != http.StatusUnauthorized {
		t.Errorf("wrong key: %d", status)
	}
	if ev := one(t, rec.take()); ev.Decision != audit.Error || ev.Code != "unauthenticated" || ev.Transport != "authzen" {
		t.Errorf("refused call's event: %+v", ev)
	}
	// Metrics count AuthZEN calls beside the other APIs'.
	m := ts.restRaw(http.MethodGet, "/metrics", "", nil)
	text, _ := io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(text), `mandate_requests_total{code="OK",method="/access/v1/evaluation",transport="authzen"}`) {
		t.Error("no AuthZEN request counter in /metrics")
	}
}

// TestAuthZENAuthOff: a server without keys ignores the Authorization
// header the interop runner sends when it has none.
func TestAuthZENAuthOff(t *testing.T) {
	ts := startServer(t, func(c *server.Config) { c.PresharedKeys, c.AllowUnauthenticated = nil, true })
	ts.writeSchema(testSchema)
	tok := ts.write(update(touch, mustParse(t, "doc:1#viewer@user:ann")...)...)
	if _, err := ts.perm.Check(ts.ctx(), checkRequest(fresh(tok), "doc:1", "user:ann")); err != nil {
		t.Fatal(err)
	}
	for _, auth := range []string{"", "undefined", "Bearer anything"} {
		status, _, out := ts.authzenPost("/access/v1/evaluation", auth, "", `{"subject":{"type":"user","id":"ann"},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
		if status != http.StatusOK || !strings.HasPrefix(string(out), `{"decision":true}`) {
			t.Errorf("Authorization %q: %d %s", auth, status, out)
		}
	}
}
