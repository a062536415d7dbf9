package server_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/apikey"
	"github.com/mandate-authz/mandate/server/audit"
	"github.com/mandate-authz/mandate/server/authzen"
	"github.com/mandate-authz/mandate/server/capability"
	"github.com/mandate-authz/mandate/server/escalation"
)

// TestAuthZENContextualRelationships: the mapping's relationship templates
// turn request properties into contextual relationships (an IdP's group
// claims into memberships) that decide that request only: evaluation,
// evaluations and the searches; the decision's context and the audit name
// them; nothing is stored; a value that would inject another relationship,
// a wildcard or too many relationships is refused with the member named.
func TestAuthZENContextualRelationships(t *testing.T) {
	m, err := authzen.ParseMapping([]byte(`
relationships:
  - "group:{subject.properties.groups}#member@user:{subject.id}"
  - "doc:{context.shared_doc}#viewer@user:{subject.id}"
`))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	ts := startServer(t, func(c *server.Config) {
		c.Audit, c.AuthZEN = rec, m
		c.Limits.MaxContextualRelationships = 3
	})
	ts.writeSchema(testSchema)
	tok := ts.write(update(touch, mustParse(t, "doc:1#viewer@group:eng#member", "group:eng#member@user:ann")...)...)
	if _, err := ts.perm.Check(ts.ctx(), checkRequest(fresh(tok), "doc:1", "user:ann")); err != nil {
		t.Fatal(err)
	}
	before := ts.state()
	rec.take()
	auth := "Bearer " + testKey
	post := func(path, body string) (int, map[string]any) {
		t.Helper()
		status, _, out := ts.authzenPost(path, auth, "", body)
		var v map[string]any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%s: %s", body, out)
		}
		return status, v
	}
	bob := func(props string) string {
		return `{"subject":{"type":"user","id":"bob"` + props + `},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`
	}
	for round := range 2 {
		status, v := post("/access/v1/evaluation", bob(`,"properties":{"groups":["ops","eng"]}`))
		if status != 200 || v["decision"] != true {
			t.Fatalf("round %d: bob in eng by his claims: %d %v", round, status, v)
		}
		got, _ := v["context"].(map[string]any)["contextual_relationships"].([]any)
		if len(got) != 2 || got[0] != "group:ops#member@user:bob" || got[1] != "group:eng#member@user:bob" {
			t.Errorf("decision context lists %v", got)
		}
		if ev := one(t, rec.take()); !slices.Equal(ev.Contextual, []string{"group:ops#member@user:bob", "group:eng#member@user:bob"}) {
			t.Errorf("audit event names %v", ev.Contextual)
		}
		if status, v := post("/access/v1/evaluation", bob(``)); status != 200 || v["decision"] != false {
			t.Fatalf("round %d: bob without claims: %d %v", round, status, v)
		}
		rec.take()
	}
	status, v := post("/access/v1/evaluations", `{"subject":{"type":"user","id":"bob","properties":{"groups":["eng"]}},"action":{"name":"view"},"context":{"shared_doc":"7"},
		"evaluations":[{"resource":{"type":"doc","id":"1"}},{"resource":{"type":"doc","id":"7"}},{"resource":{"type":"doc","id":"8"}}]}`)
	if evs, _ := json.Marshal(v["evaluations"]); status != 200 || string(evs) != `[{"decision":true},{"decision":true},{"decision":false}]` {
		t.Errorf("evaluations: %d %v", status, v)
	}
	status, v = post("/access/v1/search/resource", `{"subject":{"type":"user","id":"bob","properties":{"groups":["eng"]}},"action":{"name":"view"},"resource":{"type":"doc"},"context":{"shared_doc":"7"}}`)
	if res, _ := json.Marshal(v["results"]); status != 200 || string(res) != `[{"id":"1","type":"doc"},{"id":"7","type":"doc"}]` {
		t.Errorf("resource search: %d %v", status, v)
	}
	status, v = post("/access/v1/search/subject", `{"subject":{"type":"user","id":"bob","properties":{"groups":["eng"]}},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
	if res, _ := json.Marshal(v["results"]); status != 200 || string(res) != `[{"id":"ann","type":"user"},{"id":"bob","type":"user"}]` {
		t.Errorf("subject search: %d %v", status, v)
	}

	refused := []struct{ name, body, member string }{
		{"a value that would add a relationship", bob(`,"properties":{"groups":["eng#member@user:eve"]}`), "subject.properties.groups"},
		{"a wildcard", bob(`,"properties":{"groups":["*"]}`), "subject.properties.groups"},
		{"not a string", bob(`,"properties":{"groups":[7]}`), "subject.properties.groups[0]"},
		{"too many", bob(`,"properties":{"groups":["a1","a2","a3","a4"]}`), "--max-contextual-relationships"},
	}
	for _, tc := range refused {
		status, v := post("/access/v1/evaluation", tc.body)
		msg, _ := v["error"].(map[string]any)["message"].(string)
		if status != http.StatusBadRequest || !strings.Contains(msg, tc.member) || v["decision"] == true {
			t.Errorf("%s: %d %v, want 400 naming %s", tc.name, status, v, tc.member)
		}
	}
	if after := ts.state(); !after.equal(before) {
		t.Errorf("the store changed: %v, was %v", after, before)
	}
}

// TestAuthZENCapabilityToken: a capability token in context.capability_token
// decides an agent's evaluation as mandate.v1's capability_token does; the
// decision's context names the token and the reason; the audit records its
// id, never the token; searches that cannot honour it refuse it; a server
// without capability keys refuses it instead of ignoring it.
func TestAuthZENCapabilityToken(t *testing.T) {
	key, err := capability.GenerateKey("k-authzen", time.Now())
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
	wtok := ts.write(update(create, mustParse(t, "calendar:bob#owner@user:bob")...)...)
	// Wait for the engine to apply them (minting and AuthZEN read its latest).
	if _, err := ts.perm.Check(ts.ctx(), &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read", Subject: subj("user", "bob"), Consistency: fresh(wtok)}); err != nil {
		t.Fatal(err)
	}
	code, minted := ts.restCall("/v1/tokens/mint", testKey, `{"holder":{"objectType":"agent","objectId":"a"},
		"onBehalfOf":{"objectType":"user","objectId":"bob"},
		"rights":[{"resourceType":"calendar","resourceId":"bob","permissions":["read"]}],"ttl":"3600s"}`)
	tok, _ := minted["token"].(string)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("mint: HTTP %d %v", code, minted)
	}
	rec.take()
	eval := func(action, context string) (int, map[string]any) {
		t.Helper()
		status, _, out := ts.authzenPost("/access/v1/evaluation", "Bearer "+testKey, "",
			`{"subject":{"type":"agent","id":"a"},"action":{"name":"`+action+`"},"resource":{"type":"calendar","id":"bob"},"context":`+context+`}`)
		var v map[string]any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%s", out)
		}
		return status, v
	}
	withToken := `{"capability_token":"` + tok + `"}`
	status, v := eval("read", withToken)
	dctx, _ := v["context"].(map[string]any)
	if status != 200 || v["decision"] != true || dctx["token_id"] != minted["tokenId"] {
		t.Fatalf("read with the token: %d %v", status, v)
	}
	ev := one(t, rec.take())
	if ev.TokenID != minted["tokenId"] || ev.Decision != audit.Allowed {
		t.Errorf("audit event: %+v", ev)
	}
	if b, _ := json.Marshal(ev); strings.Contains(string(b), tok) {
		t.Errorf("the audit event holds the token itself: %s", b)
	}
	status, v = eval("write", withToken)
	dctx, _ = v["context"].(map[string]any)
	if status != 200 || v["decision"] != false || dctx["reason"] != string(capability.ReasonOutOfScope) {
		t.Errorf("write with a read token: %d %v", status, v)
	}
	if status, v = eval("read", `{}`); status != 200 || v["decision"] != false {
		t.Errorf("read without the token: %d %v", status, v)
	}
	if status, v = eval("read", `{"capability_token":7}`); status != 400 || !strings.Contains(v["error"].(map[string]any)["message"].(string), "context.capability_token") {
		t.Errorf("a token that is not a string: %d %v", status, v)
	}
	status, _, out := ts.authzenPost("/access/v1/search/resource", "Bearer "+testKey, "",
		`{"subject":{"type":"agent","id":"a"},"action":{"name":"read"},"resource":{"type":"calendar"},"context":`+withToken+`}`)
	if status != 400 || !strings.Contains(string(out), "context.capability_token") {
		t.Errorf("resource search with a token: %d %s", status, out)
	}
	status, _, out = ts.authzenPost("/access/v1/search/action", "Bearer "+testKey, "",
		`{"subject":{"type":"agent","id":"a"},"resource":{"type":"calendar","id":"bob"},"context":`+withToken+`}`)
	if status != 200 || !strings.Contains(string(out), `"results":[{"name":"read"}]`) {
		t.Errorf("action search with a token: %d %s", status, out)
	}

	off := startServer(t, nil)
	offTok := off.writeSchema(calendarSchema)
	if _, err := off.perm.Check(off.ctx(), &pb.CheckRequest{Resource: obj("calendar", "bob"), Permission: "read", Subject: subj("user", "bob"), Consistency: fresh(offTok)}); err != nil {
		t.Fatal(err)
	}
	status, _, out = off.authzenPost("/access/v1/evaluation", "Bearer "+testKey, "",
		`{"subject":{"type":"agent","id":"a"},"action":{"name":"read"},"resource":{"type":"calendar","id":"bob"},"context":`+withToken+`}`)
	if status != 400 || !strings.Contains(string(out), "context.capability_token") || strings.Contains(string(out), `"decision":true`) {
		t.Errorf("a server without capability keys: %d %s", status, out)
	}
}

// TestAuthZENBasePath: a PDP whose identifier has a path serves its
// endpoints under it and its metadata at the well-known path with it
// appended, the metadata naming those URLs; the root paths are not served.
func TestAuthZENBasePath(t *testing.T) {
	ts := startServer(t, func(c *server.Config) { c.AuthZENBasePath = "/pdp/tenant1" })
	tok := ts.writeSchema(testSchema)
	if _, err := ts.perm.Check(ts.ctx(), checkRequest(fresh(tok), "doc:1", "user:ann")); err != nil {
		t.Fatal(err)
	}
	resp := ts.restRaw(http.MethodGet, "/.well-known/authzen-configuration/pdp/tenant1", "", nil)
	var meta map[string]string
	err := json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || meta["policy_decision_point"] != ts.base+"/pdp/tenant1" ||
		meta["access_evaluation_endpoint"] != ts.base+"/pdp/tenant1/access/v1/evaluation" ||
		meta["search_action_endpoint"] != ts.base+"/pdp/tenant1/access/v1/search/action" {
		t.Fatalf("metadata: %d %v %v", resp.StatusCode, meta, err)
	}
	body := `{"subject":{"type":"user","id":"ann"},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`
	if status, _, out := ts.authzenPost("/pdp/tenant1/access/v1/evaluation", "Bearer "+testKey, "", body); status != 200 || !strings.Contains(string(out), `"decision":false`) {
		t.Errorf("evaluation under the base path: %d %s", status, out)
	}
	if status, _, _ := ts.authzenPost("/access/v1/evaluation", "Bearer "+testKey, "", body); status == 200 {
		t.Errorf("the root path still serves evaluations")
	}
	if resp := ts.restRaw(http.MethodGet, "/.well-known/authzen-configuration", "", nil); resp.StatusCode == 200 {
		resp.Body.Close()
		t.Errorf("metadata at the root path")
	}
	for p, ok := range map[string]bool{"": true, "/a": true, "/a/b-c.d": true, "/trailing/": false, "no-slash": false, "/a//b": false, "/a b": false} {
		if err := authzen.CheckBasePath(p); (err == nil) != ok {
			t.Errorf("base path %q: %v", p, err)
		}
	}
}

// TestAuthZENApprovals: an agent's evaluation an escalation rule holds is
// denied with reason approval_required and the approval hint (the request
// to file, the evaluation id); once a person approves a single-use grant,
// the retry naming it in context.approval_id is allowed (the context names
// the grant), and a second retry is denied again.
func TestAuthZENApprovals(t *testing.T) {
	rules, err := escalation.Parse("rules.yaml", []byte("rules:\n  - name: view-needs-consent\n    description: Viewing needs the owner's consent.\n    match:\n      permissions: [view]\n"))
	if err != nil {
		t.Fatal(err)
	}
	aliceKey, aliceHash, err := apikey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "keys.yaml")
	if err := os.WriteFile(path, []byte("keys:\n  - {name: alice, hash: "+aliceHash+", scopes: [approvals], person: \"user:ann\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ring, err := apikey.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *server.Config) { c.Keys, c.Escalation = ring, escalation.New(rules, escalation.Options{}) })
	ts.writeSchema(testSchema)
	tok := ts.write(update(touch, mustParse(t, "doc:1#owner@user:ann", "doc:1#viewer@agent:bot", "agent:bot#acts_for@user:ann")...)...)
	if _, err := ts.perm.Check(ts.ctx(), checkRequest(fresh(tok), "doc:1", "user:ann")); err != nil {
		t.Fatal(err)
	}
	type hint struct {
		Required     bool
		Rule         string
		EvaluationID string `json:"evaluation_id"`
		GrantID      string `json:"grant_id"`
		Request      *struct {
			Agent, Principal, Resource struct{ Type, ID string }
			Permission                 string
		}
	}
	eval := func(context string) (bool, string, hint) {
		t.Helper()
		status, _, out := ts.authzenPost("/access/v1/evaluation", "Bearer "+testKey, "",
			`{"subject":{"type":"agent","id":"bot"},"action":{"name":"edit"},"resource":{"type":"doc","id":"1"},"context":`+context+`}`)
		var v struct {
			Decision bool
			Context  struct {
				Reason   string
				Approval hint
			}
		}
		if status != 200 || json.Unmarshal(out, &v) != nil {
			t.Fatalf("evaluation: %d %s", status, out)
		}
		return v.Decision, v.Context.Reason, v.Context.Approval
	}
	// An allowed check a rule holds: approval_required, naming the rule.
	status, _, out := ts.authzenPost("/access/v1/evaluation", "Bearer "+testKey, "",
		`{"subject":{"type":"agent","id":"bot"},"action":{"name":"view"},"resource":{"type":"doc","id":"1"}}`)
	if status != 200 || !strings.Contains(string(out), `"decision":false`) || !strings.Contains(string(out), `"reason":"approval_required"`) ||
		!strings.Contains(string(out), `"rule":"view-needs-consent"`) || !strings.Contains(string(out), `"evaluation_id":"`) {
		t.Fatalf("an escalated evaluation: %d %s", status, out)
	}
	allowed, reason, h := eval(`{}`)
	if allowed || reason != "agent_not_granted" || !h.Required || h.EvaluationID == "" || h.Request == nil ||
		h.Request.Agent.ID != "bot" || h.Request.Principal.ID != "ann" || h.Request.Resource.ID != "1" || h.Request.Permission != "edit" {
		t.Fatalf("a denial an approval would lift: %v %q %+v", allowed, reason, h)
	}
	code, filed := ts.restCall("/v1/approvals/request", testKey, map[string]any{
		"agent": map[string]any{"objectType": "agent", "objectId": "bot"}, "principal": map[string]any{"objectType": "user", "objectId": "ann"},
		"resource": map[string]any{"objectType": "doc", "objectId": "1"}, "permission": "edit", "evaluationId": h.EvaluationID})
	id, _ := filed["approval"].(map[string]any)["id"].(string)
	if code != 200 || id == "" {
		t.Fatalf("filing: %d %v", code, filed)
	}
	if code, out := ts.restCall("/v1/approvals/approve", aliceKey, map[string]any{"id": id, "singleUse": true}); code != 200 {
		t.Fatalf("approving: %d %v", code, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		allowed, _, h = eval(`{"approval_id":"` + id + `"}`)
		if allowed || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // the grant reaches the core through the change stream
	}
	if !allowed || h.GrantID != id {
		t.Fatalf("the retry naming the grant: %v %+v", allowed, h)
	}
	if allowed, _, _ = eval(`{"approval_id":"` + id + `"}`); allowed {
		t.Errorf("a single-use grant allowed twice")
	}
	if status, _, out := ts.authzenPost("/access/v1/evaluation", "Bearer "+testKey, "",
		`{"subject":{"type":"agent","id":"bot"},"action":{"name":"edit"},"resource":{"type":"doc","id":"1"},"context":{"approval_id":5}}`); status != 400 || !strings.Contains(string(out), "context.approval_id") {
		t.Errorf("an approval id that is not a string: %d %s", status, out)
	}
}
