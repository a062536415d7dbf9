package server_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/server"
	"github.com/mandate-authz/mandate/server/authzen"
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
