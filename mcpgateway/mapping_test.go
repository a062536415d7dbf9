package mcpgateway

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseMappingErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		line       int
		want       string
	}{
		{"not a mapping", "- a\n- b\n", 1, "expected a mapping"},
		{"unknown top key", "tools: {}\nidentiy: {}\n", 2, `unknown key "identiy"`},
		{"nothing mapped", "scopes: [mcp]\n", 1, "no tools, prompts or resources"},
		{"no check", "tools:\n  a_tool:\n    list: x_tool:a#use\n", 3, "check is required"},
		{"bad target", "tools:\n  a_tool:\n    check: calendar#read\n", 3, "expected type:id#permission"},
		{"bad type", "tools:\n  a_tool:\n    check: Calendar:x#read\n", 3, "not a valid type name"},
		{"bad literal id", "tools:\n  a_tool:\n    check: cal:a b#read\n", 3, "cal:a b#read"},
		{"malformed placeholder", "tools:\n  a_tool:\n    check: cal:{x#read\n    list: cal:x#read\n", 3, "malformed placeholder"},
		{"args need list", "tools:\n  a_tool:\n    check: cal:{id}#read\n", 3, "list (what tools/list checks) is required"},
		{"list with args", "tools:\n  a_tool:\n    check: cal:{id}#read\n    list: cal:{id}#read\n", 4, "may not name arguments"},
		{"unused pattern", "tools:\n  a_tool:\n    check: cal:{id}#read\n    list: cal:x#read\n    arguments:\n      other: '[a-z]+'\n", 6, `"other" has a pattern`},
		{"bad regexp", "tools:\n  a_tool:\n    check: cal:{id}#read\n    list: cal:x#read\n    arguments:\n      id: '[a-z'\n", 6, "invalid regular expression"},
		{"unknown rule key", "tools:\n  a_tool:\n    check: cal:x#read\n    perm: read\n", 4, `unknown key "perm"`},
		{"bad scope", "scopes: ['a b']\ntools:\n  t:\n    check: cal:x#read\n", 1, "without spaces"},
		{"resource placeholder not captured", "resources:\n  - uri: cal://{id}\n    check: cal:{other}#read\n", 3, "which uri cal://{id} does not capture"},
		{"bad identity type", "identity:\n  agent_type: Agent\ntools:\n  t:\n    check: cal:x#read\n", 2, "expected an object type name"},
		{"yaml syntax", "tools:\n  a: [\n", 0, "yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMapping([]byte(tc.text))
			var me *MappingError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), tc.want) || (tc.line != 0 && me.Line != tc.line) {
				t.Fatalf("got %v (line %d), want line %d containing %q", err, lineOf(me), tc.line, tc.want)
			}
		})
	}
}

func lineOf(e *MappingError) int {
	if e == nil {
		return -1
	}
	return e.Line
}

func TestResolveArguments(t *testing.T) {
	m, err := ParseMapping([]byte(`tools:
  read:
    check: calendar:cal_{owner}_{n}#read
    list: tool:read#use
    arguments:
      owner: '[a-z]+'
resources:
  - uri: calendar://{owner}/events
    check: calendar:{owner}#read
`))
	if err != nil {
		t.Fatal(err)
	}
	r := m.Tools["read"]
	for _, tc := range []struct {
		args string
		want string // object, or the error
	}{
		{`{"owner":"ann","n":7}`, "calendar:cal_ann_7"},
		{`{"owner":"ann","n":"x"}`, "calendar:cal_ann_x"},
		{`{"owner":"Ann","n":1}`, "does not match the pattern"},
		{`{"owner":"ann"}`, `"n": missing`},
		{`{"owner":"ann","n":null}`, `"n": missing`},
		{`{"owner":"ann","n":1.5}`, "expected a string or an integer"},
		{`{"owner":"ann","n":true}`, "expected a string or an integer"},
		{`{"owner":"ann","n":""}`, `"n": empty`},
		{`{"owner":"ann","n":"a#b"}`, "not a valid object ID"},
		{`{"owner":"ann","n":"` + strings.Repeat("x", 1025) + `"}`, "longer than 1024"},
	} {
		var args map[string]json.RawMessage
		json.Unmarshal([]byte(tc.args), &args)
		o, err := r.Check.Resolve(args, r.Patterns)
		got := o.String()
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.args, got, tc.want)
		}
	}
	rr, args := m.MatchResource("calendar://ann/events")
	if rr == nil {
		t.Fatal("no rule for calendar://ann/events")
	}
	if o, err := rr.Check.Resolve(args, rr.Patterns); err != nil || o.String() != "calendar:ann" {
		t.Fatalf("resource: %v %v", o, err)
	}
	for _, uri := range []string{"calendar://ann/events/x", "calendar://a/b/events", "calendar:///events"} {
		if rr, _ := m.MatchResource(uri); rr != nil {
			t.Errorf("%s matched", uri)
		}
	}
}

func TestIdentityFromClaims(t *testing.T) {
	m := &Mapping{PrincipalType: "user", AgentType: "agent"}
	a := &authenticator{mapping: m}
	for _, tc := range []struct {
		claims string
		chain  string // or the error
	}{
		{`{"sub":"alice","client_id":"helper"}`, "agent:helper,user:alice"},
		{`{"sub":"alice","azp":"helper"}`, "agent:helper,user:alice"},
		{`{"sub":"alice","client_id":"sub","act":{"sub":"sub","act":{"sub":"helper"}}}`, "agent:sub,agent:helper,user:alice"},
		{`{"sub":"alice","client_id":"sub","act":{"sub":"helper"}}`, "agent:sub,agent:helper,user:alice"},
		{`{"sub":"alice","client_id":"sub","act":{"sub":"helper","act":{"sub":"helper"}}}`, "names agent:helper twice"},
		{`{"sub":"alice","client_id":"sub","act":{"sub":"x","act":{"sub":"sub"}}}`, "names agent:sub twice"},
		{`{"sub":"alice","client_id":"sub","act":"helper"}`, "act: expected"},
		{`{"sub":"alice","client_id":"sub","act":{"sub":"h*"}}`, "not a valid agent ID"},
		{`{"client_id":"helper"}`, "no sub"},
		{`{"sub":"alice"}`, "names no client"},
		{`{"sub":"*","client_id":"helper"}`, "not a valid Mandate subject"},
	} {
		var c tokenClaims
		if err := json.Unmarshal([]byte(tc.claims), &c); err != nil {
			t.Fatal(err)
		}
		id, err := a.identity(&c)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = strings.Join(id.ChainStrings(), ",")
		}
		if !strings.Contains(got, tc.chain) {
			t.Errorf("%s: got %q, want %q", tc.claims, got, tc.chain)
		}
	}
}

func TestCheckUniqueKeys(t *testing.T) {
	for body, ok := range map[string]bool{
		`{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}`: true,
		`{"a":1,"a":2}`:                   false,
		`{"a":{"x":1,"X":2}}`:             false,
		`{"a":[{"k":1,"k":1}]}`:           false,
		`{"a":"{\"k\":1,\"k\":2}"}`:       true,
		`{"a":[],"b":{},"c":[[{"d":1}]]}`: true,
	} {
		if err := checkUniqueKeys([]byte(body)); (err == nil) != ok {
			t.Errorf("%s: %v", body, err)
		}
	}
}
