package escalation

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		// want is the error's position and a part of its message.
		want string
	}{
		{"empty file", "", "f.yaml:1:1: the file is empty"},
		{"comment only", "# nothing\n", "f.yaml:1:1: the file is empty"},
		{"yaml syntax", "rules:\n\t- name: a\n", "f.yaml:2: invalid YAML: found character that cannot start any token"},
		{"yaml syntax without line", "rules: a: b\n", "f.yaml: invalid YAML: mapping values are not allowed in this context"},
		{"top not mapping", "- a\n", "f.yaml:1:1: expected a mapping with the key rules, found a list"},
		{"missing rules", "other: 1\n", "f.yaml:1:1: unknown key \"other\" (expected one of: rules)"},
		{"no rules key", "{}\n", "f.yaml:1:1: missing key rules"},
		{"rules null", "rules:\n", "f.yaml:1:7: rules is empty"},
		{"rules not list", "rules: 3\n", "f.yaml:1:8: rules: expected a list of rules, found a number (3)"},
		{"rule not mapping", "rules:\n  - just-a-name\n", "f.yaml:2:5: a rule: expected a mapping"},
		{"unknown rule key", "rules:\n  - name: a\n    conditon: \"true\"\n", "f.yaml:3:5: unknown key \"conditon\" (expected one of: condition, description, match, max_duration, name)"},
		{"repeated key", "rules:\n  - name: a\n    name: b\n", "f.yaml:3:5: key \"name\" repeated (first at line 2)"},
		{"no name", "rules:\n  - description: x\n", "f.yaml:2:5: a rule needs a name"},
		{"name not string", "rules:\n  - name: 12\n", "f.yaml:2:11: name: expected a string, found a number (12)"},
		{"bad name", "rules:\n  - name: has space\n", "f.yaml:2:11: name \"has space\": expected 1 to 64 letters"},
		{"duplicate name", "rules:\n  - name: a\n  - name: b\n  - name: a\n", "f.yaml:4:11: duplicate rule name \"a\" (first defined at line 2)"},
		{"description list", "rules:\n  - name: a\n    description: [x]\n", "f.yaml:3:18: description: expected a string, found a list"},
		{"match not mapping", "rules:\n  - name: a\n    match: payments\n", "f.yaml:3:12: match: expected a mapping"},
		{"unknown match key", "rules:\n  - name: a\n    match:\n      resource_type: [x]\n", "f.yaml:4:7: unknown key \"resource_type\" (expected one of: agent_types, chain_length, permissions, resource_types)"},
		{"permissions number", "rules:\n  - name: a\n    match:\n      permissions: [pay, 3]\n", "f.yaml:4:26: permissions: expected a non-empty string or a list of them, found a number (3)"},
		{"agent types mapping", "rules:\n  - name: a\n    match:\n      agent_types: {a: b}\n", "f.yaml:4:20: agent_types: expected a non-empty string or a list of them, found a mapping"},
		{"empty list", "rules:\n  - name: a\n    match:\n      resource_types: []\n", "f.yaml:4:23: resource_types: the list is empty"},
		{"empty string", "rules:\n  - name: a\n    match:\n      resource_types: [\"\"]\n", "f.yaml:4:24: resource_types: expected a non-empty string"},
		{"chain not mapping", "rules:\n  - name: a\n    match:\n      chain_length: 3\n", "f.yaml:4:21: chain_length: expected a mapping with min and/or max, found a number (3)"},
		{"chain min string", "rules:\n  - name: a\n    match:\n      chain_length: {min: three}\n", "f.yaml:4:27: chain_length.min: expected a whole number of chain members from 2"},
		{"chain min 1", "rules:\n  - name: a\n    match:\n      chain_length: {min: 1}\n", "f.yaml:4:27: chain_length.min: expected a whole number"},
		{"chain max below min", "rules:\n  - name: a\n    match:\n      chain_length: {min: 4, max: 3}\n", "f.yaml:4:35: chain_length: max 3 is below min 4"},
		{"chain unknown key", "rules:\n  - name: a\n    match:\n      chain_length: {least: 3}\n", "f.yaml:4:22: unknown key \"least\" (expected one of: max, min)"},
		{"bad duration", "rules:\n  - name: a\n    max_duration: 15 minutes\n", "f.yaml:3:19: max_duration \"15 minutes\": expected a positive duration"},
		{"negative duration", "rules:\n  - name: a\n    max_duration: -5m\n", "f.yaml:3:19: max_duration \"-5m\": expected a positive duration"},
		{"duration number", "rules:\n  - name: a\n    max_duration: 15\n", "f.yaml:3:19: max_duration: expected a string, found a number (15)"},
		{"condition syntax", "rules:\n  - name: a\n    condition: permission == \n", "f.yaml:3:29: condition: Syntax error"},
		{"condition undeclared", "rules:\n  - name: a\n    condition: signals.checks_last_minut > 3\n", "f.yaml:3:16: condition: undeclared reference to 'signals'"},
		{"condition quoted", "rules:\n  - name: a\n    condition: \"resource.type == 1\"\n", "f.yaml:3:31: condition: found no matching overload for '_==_' applied to '(string, int)'"},
		{"condition block", "rules:\n  - name: a\n    condition: |\n      resource.type == \"payment\" &&\n        request.context.amount > bogus\n", "f.yaml:5:34: condition: undeclared reference to 'bogus'"},
		{"condition folded", "rules:\n  - name: a\n    condition: >\n      resource.type ==\n      bogus\n", "f.yaml:3:16: condition: undeclared reference to 'bogus' (in container '')"},
		{"condition not bool", "rules:\n  - name: a\n    condition: resource.id\n", "f.yaml:3:16: condition: expected a boolean expression, found one of type string"},
		{"condition blank", "rules:\n  - name: a\n    condition: \"  \"\n", "f.yaml:3:16: condition is empty"},
		{"condition number", "rules:\n  - name: a\n    condition: 3\n", "f.yaml:3:16: condition: expected a string, found a number (3)"},
		{"alias", "x: &a [1]\nrules: *a\n", "f.yaml:2:8: YAML aliases are not supported"},
		{"condition too long", "rules:\n  - name: a\n    condition: \"" + strings.Repeat("1 == 1 && ", MaxConditionBytes/10+1) + "true\"\n", "f.yaml:3:16: condition is over 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.text))
			if err == nil {
				t.Fatalf("parsed; want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\nwant it to contain %q", err, tc.want)
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.File != "f.yaml" {
				t.Fatalf("error %#v is not an *Error with a position", err)
			}
		})
	}
}

func TestParseLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range MaxRules + 1 {
		b.WriteString("  - name: r" + strconv.Itoa(i) + "\n")
	}
	if _, err := Parse("f.yaml", []byte(b.String())); err == nil || !strings.Contains(err.Error(), "f.yaml:1002:5: more than 1000 rules") {
		t.Fatalf("%d rules: error %v", MaxRules+1, err)
	}
	big := "rules: []\n" + strings.Repeat("#", MaxFileBytes)
	if _, err := Parse("f.yaml", []byte(big)); err == nil || !strings.Contains(err.Error(), "over 1048576 bytes") {
		t.Fatalf("a file over the limit: error %v", err)
	}
}

func TestParseRule(t *testing.T) {
	rs, err := Parse("f.yaml", []byte(`# the first matching rule wins
rules:
  - name: payments.large
    description: Payments over 1000
    match:
      resource_types: payment
      permissions: [pay, refund]
      agent_types: [agent, bot]
      chain_length: {min: 2, max: 4}
    condition: request.context.amount > 1000
    max_duration: 1h30m
  - name: everything
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Names(); len(got) != 2 || got[0] != "payments.large" || got[1] != "everything" {
		t.Fatalf("names %v", got)
	}
	r := rs.rules[0]
	if r.description != "Payments over 1000" || len(r.resourceTypes) != 1 || r.resourceTypes[0] != "payment" ||
		len(r.permissions) != 2 || r.permissions[1] != "refund" || len(r.agentTypes) != 2 ||
		r.minChain != 2 || r.maxChain != 4 || r.prog == nil || r.maxDuration != 90*time.Minute {
		t.Fatalf("rule %+v", r)
	}
	if e := rs.rules[1]; e.prog != nil || e.resourceTypes != nil || e.minChain != 0 || e.maxDuration != 0 {
		t.Fatalf("a rule with only a name: %+v", e)
	}
	if rs, err := Parse("f.yaml", []byte("rules: []\n")); err != nil || rs.Len() != 0 {
		t.Fatalf("no rules: %v, %v", rs, err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, []byte("rules:\n  - name: a\n    max_duration: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.HasPrefix(err.Error(), path+":3:19: ") {
		t.Fatalf("error %v; want it to start with the path and position", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v", err)
	}
}

// TestExampleRules keeps the example rule file valid.
func TestExampleRules(t *testing.T) {
	rs, err := Load("../../examples/approvals/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if rs.Len() < 4 {
		t.Fatalf("%d example rules", rs.Len())
	}
}
