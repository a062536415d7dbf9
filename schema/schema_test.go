package schema_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mandate-authz/mandate/schema"
)

func TestCompileErrorsNamePosition(t *testing.T) {
	tests := []struct {
		name, text, want string
		line             int
	}{
		{"syntax", "definition user {}\ndefinition doc {\n  relation viewer user\n}", "Expected", 3},
		{"unknown type", "definition doc {\n  relation viewer: robot\n}", "robot", 2},
		{"unknown relation in permission", "definition user {}\ndefinition doc {\n  relation viewer: user\n  permission view = viewr\n}", "viewr", 4},
		{"acts_for as a permission", "definition user {}\ndefinition agent {\n  relation src: user\n  permission acts_for = src\n}", "acts_for", 0},
		{"acts_for on a userset", "definition user {}\ndefinition group {\n  relation member: user\n}\ndefinition agent {\n  relation acts_for: group#member\n}", "concrete", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := schema.Compile(context.Background(), tt.text)
			var se *schema.Error
			if !errors.As(err, &se) {
				t.Fatalf("want *schema.Error, got %v", err)
			}
			if !strings.Contains(se.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", se, tt.want)
			}
			if tt.line > 0 && se.Line != tt.line {
				t.Errorf("error at line %d, want %d (%v)", se.Line, tt.line, se)
			}
		})
	}
}

func TestCaveatMissingParamsAreUnique(t *testing.T) {
	sch, err := schema.Compile(context.Background(), `caveat weekday(day string) { day != "sat" && day != "sun" }`)
	if err != nil {
		t.Fatal(err)
	}
	res, err := sch.Caveats["weekday"].Evaluate(context.Background(), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != schema.Unknown || !slices.Equal(res.Missing, []string{"day"}) {
		t.Fatalf("got %v %v, want unknown [day]", res.Outcome, res.Missing)
	}
}

func TestEngineSuppliedParamsWin(t *testing.T) {
	sch, err := schema.Compile(context.Background(), `caveat scope(action string) { action == "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	c := sch.Caveats["scope"]
	res, err := c.Evaluate(context.Background(), map[string]any{"action": "read"}, map[string]any{"action": "read"}, map[string]any{"action": "write"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != schema.False {
		t.Fatalf("supplied action=write must override request and relationship context, got %v", res.Outcome)
	}
}

func TestAgentTypes(t *testing.T) {
	sch, err := schema.Compile(context.Background(), "definition user {}\ndefinition agent {\n  relation acts_for: user | agent\n}")
	if err != nil {
		t.Fatal(err)
	}
	if !sch.Definition("agent").IsAgent() || sch.Definition("user").IsAgent() {
		t.Fatal("agent must be an agent type and user must not")
	}
}
